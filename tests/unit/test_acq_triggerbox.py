"""The trigger-box driver against an emulator of the firmware's serial protocol on a
pseudo-terminal (``os.openpty``): the driver opens the pty's device path with pyserial
exactly as it would open ``/dev/ttyACM0``."""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from firmware_emulator import FirmwareEmulator

from livepose.core.config import parse_config
from livepose.core.errors import UserError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("serial") is None,
                                reason="pyserial not installed")


@pytest.fixture
def box_port() -> Iterator[tuple[str, FirmwareEmulator]]:
    master, slave = os.openpty()
    import tty

    tty.setraw(slave)
    emu = FirmwareEmulator(master)
    emu.start()
    yield os.ttyname(slave), emu
    emu.halt()
    os.close(slave)
    os.close(master)
    emu.join(2)


def test_driver_configures_starts_counts_and_stops(box_port: tuple[str, FirmwareEmulator]) -> None:
    from livepose.acquisition.triggerbox import TriggerBox

    port, emu = box_port
    box = TriggerBox(port, timeout_s=1.0)
    box.configure(200.0, 50, 0)
    box.start()
    time.sleep(0.1)
    n, running = box.status()
    assert running and 10 <= n <= 40
    total = box.stop()
    assert total >= n and box.status() == (total, False)
    with pytest.raises(UserError, match=r"trigger.port: trigger box on .*: 'RATE 0' refused: rate out of range"):
        box.configure(0, 50, 0)
    box.close()
    assert emu.commands[:4] == ["ID?", "RATE 200", "WIDTH 50", "COUNT 0"]


def test_serial_trigger_process_reports_every_pulse(box_port: tuple[str, FirmwareEmulator]) -> None:
    from livepose.acquisition.triggerbox import run_serial_trigger
    from livepose.kit.process import StageContext

    port, _ = box_port
    cfg = parse_config({"fps": 500, "trigger": {"source": "serial", "port": port},
                        "cameras": [{"backend": "sim", "name": "a"}, {"backend": "sim", "name": "b"}]})
    ctx = StageContext(name="trigger", cfg=cfg, endpoints={}, args={"count": 40})
    th = threading.Thread(target=run_serial_trigger, args=(ctx,), kwargs={"poll_s": 0.02})
    th.start()
    deadline = time.monotonic() + 5
    while ctx._state != "done" and time.monotonic() < deadline:
        time.sleep(0.01)
    ctx.request_stop()
    th.join(5)
    assert ctx._state == "done"
    assert ctx.info["pulses_total"] == 40 and ctx.counters["pulses"] == 40
    ctx.close()


def test_bad_port_and_wrong_device_are_clear_errors(tmp_path: object) -> None:
    from livepose.acquisition.triggerbox import TriggerBox

    with pytest.raises(UserError, match=r"trigger.port: cannot open /nonexistent/tty"):
        TriggerBox("/nonexistent/tty")
    master, slave = os.openpty()
    try:
        emu = FirmwareEmulator(master, ident="SOMETHING ELSE")
        emu.start()
        with pytest.raises(UserError, match=r"unexpected reply 'SOMETHING ELSE'"):
            TriggerBox(os.ttyname(slave), timeout_s=0.2, identify_wait_s=0.3)
        emu.halt()
    finally:
        os.close(slave)
        os.close(master)
    with pytest.raises(UserError, match=r"trigger\.port is required"):
        parse_config({"trigger": {"source": "serial"}, "cameras": [{"backend": "sim", "name": "a"},
                                                                   {"backend": "sim", "name": "b"}]})


def _trigger_ctx(tmp_path: Any, port: str, count: int, fps: float = 100.0) -> Any:
    from livepose.kit.process import StageContext

    cfg = parse_config({"fps": fps, "trigger": {"source": "serial", "port": port},
                        "cameras": [{"backend": "sim", "name": "a"}, {"backend": "sim", "name": "b"}]})
    return StageContext(name="trigger", cfg=cfg, endpoints={}, args={"count": count})


def test_pulse_times_come_from_the_board_clock_not_the_serial_latency(
    box_port: tuple[str, FirmwareEmulator], tmp_path: Any
) -> None:
    """Every pulse goes out as a ``trigger`` message whose time is the box's stamp through
    the ping clock fit: within its stated uncertainty of the true pulse time, although each
    line from the box is held back up to 16 ms (an FTDI latency timer) and the board clock
    runs 80 ppm fast from its own origin."""
    import zmq

    from livepose.acquisition.triggerbox import run_serial_trigger
    from livepose.core import protocol

    port, emu = box_port
    ctx = _trigger_ctx(tmp_path, port, count=60)
    zctx = zmq.Context.instance()
    pub, sub = zctx.socket(zmq.PUB), zctx.socket(zmq.SUB)
    ep = f"ipc://{tmp_path}/trigger.sock"
    pub.bind(ep)
    sub.connect(ep)
    sub.setsockopt(zmq.SUBSCRIBE, b"trigger")
    time.sleep(0.2)
    th = threading.Thread(target=run_serial_trigger, args=(ctx,),
                          kwargs={"poll_s": 0.05, "pub": pub})
    th.start()
    got: dict[int, protocol.Trigger] = {}
    deadline = time.monotonic() + 10
    while len(got) < 60 and time.monotonic() < deadline:
        if sub.poll(50):
            msg = protocol.decode_strict(sub.recv_multipart())
            assert isinstance(msg, protocol.Trigger)
            got[msg.frame_id] = msg
    ctx.request_stop()
    th.join(5)
    assert sorted(got) == list(range(60))
    errs = [abs(m.t_trigger_ns - emu.truth[k]) for k, m in got.items()]
    sigmas = [m.t_trigger_sigma_ns or 0 for m in got.values()]
    assert max(sigmas) < 5_000_000, max(sigmas)  # the stated uncertainty stays small …
    slack = 1_500_000  # the emulator stamps pulses from a 1 ms polling loop
    assert all(e <= s + slack for e, s in zip(errs, sigmas, strict=True)), (errs, sigmas)
    assert ctx.counters["pulses_reported"] == 60
    assert emu.commands[-1] == "STOP"  # stopped on the way out
    pub.close(0)
    sub.close(0)
    ctx.close()


def test_box_is_stopped_when_the_trigger_process_fails(
    box_port: tuple[str, FirmwareEmulator], tmp_path: Any
) -> None:
    """A crash inside the run loop (here: health reporting failing) still sends STOP."""
    from livepose.acquisition.triggerbox import run_serial_trigger

    port, emu = box_port
    ctx = _trigger_ctx(tmp_path, port, count=0)
    calls = {"n": 0}

    def failing_tick(force: bool = False) -> None:  # a stand-in for any failure mid-run
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("health socket broke")

    ctx.tick_health = failing_tick  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="health socket broke"):
        run_serial_trigger(ctx, poll_s=0.02)
    assert "START" in emu.commands and emu.commands[-1] == "STOP"
    assert emu.pulses()[1] is False  # not pulsing any more
    ctx.close()


def test_the_watchdog_stops_pulses_when_the_host_goes_silent(
    box_port: tuple[str, FirmwareEmulator]
) -> None:
    from livepose.acquisition.triggerbox import TriggerBox

    port, emu = box_port
    box = TriggerBox(port, timeout_s=1.0)
    assert box.version == 2
    box.configure(100.0, 50, 0, watchdog_ms=200)
    box.start()
    time.sleep(0.6)  # the host says nothing: a crashed process
    assert emu.watchdog_fired and not emu.pulses()[1]
    box.poll_events()
    assert box.watchdog_fired
    box.close()


def test_a_protocol_1_box_still_runs_without_pulse_times(tmp_path: Any) -> None:
    import tty

    from livepose.acquisition.triggerbox import run_serial_trigger

    master, slave = os.openpty()
    tty.setraw(slave)
    emu = FirmwareEmulator(master, ident="LIVEPOSE-TRIGGERBOX 1")
    emu.start()
    try:
        ctx = _trigger_ctx(tmp_path, os.ttyname(slave), count=20, fps=200)
        th = threading.Thread(target=run_serial_trigger, args=(ctx,), kwargs={"poll_s": 0.02})
        th.start()
        deadline = time.monotonic() + 5
        while ctx._state != "done" and time.monotonic() < deadline:
            time.sleep(0.01)
        ctx.request_stop()
        th.join(5)
        assert ctx.info["pulses_total"] == 20 and ctx.info["pulse_times"] is False
        assert "protocol 1" in (ctx.last_error or "")
        ctx.close()
    finally:
        emu.halt()
        os.close(slave)
        os.close(master)


def test_board_clock_fit_against_a_known_clock() -> None:
    """The fit recovers a board clock's offset and (over a long enough span) its drift from
    lopsided round trips, and states an uncertainty the true error stays within."""
    from livepose.acquisition.boardclock import BoardClock

    rng = np.random.default_rng(1)
    clock = BoardClock()
    drift = 120e-6
    true_host = lambda b: 5_000_000_000 + round((b - 7_000_000) * 1000 / (1 + drift))  # noqa: E731
    for k in range(200):  # 10 Hz pings over 20 s
        b = 7_000_000 + k * 100_000
        h = true_host(b)
        up = int(rng.uniform(0.2e6, 0.6e6))  # host → board: fast
        down = int(rng.uniform(0.2e6, 16e6))  # board → host: an FTDI latency timer
        clock.add(h - up, b, h + down)
    t, sigma = clock.to_host(7_000_000 + 150 * 100_000)
    assert abs(t - true_host(7_000_000 + 150 * 100_000)) <= sigma < 1_000_000
    assert clock.drift_ppm is not None and abs(clock.drift_ppm + 120) < 20
