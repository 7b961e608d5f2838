"""The trigger-box driver against an emulator of the firmware's serial protocol on a
pseudo-terminal (``os.openpty``): the driver opens the pty's device path with pyserial
exactly as it would open ``/dev/ttyACM0``."""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Iterator

import pytest

from livepose.core.config import parse_config
from livepose.core.errors import UserError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("serial") is None,
                                reason="pyserial not installed")


class FirmwareEmulator(threading.Thread):
    """The protocol of ``firmware/triggerbox/triggerbox.ino``, pulses computed from time."""

    def __init__(self, fd: int, ident: str = "LIVEPOSE-TRIGGERBOX 1") -> None:
        super().__init__(daemon=True)
        self.fd, self.id_reply = fd, ident
        self.rate, self.width, self.count = 30.0, 100, 0
        self.t0: float | None = None
        self.stopped_at: int | None = None
        self.commands: list[str] = []
        self._halt = threading.Event()

    def pulses(self) -> tuple[int, bool]:
        if self.t0 is None:
            return (self.stopped_at or 0), False
        n = int((time.monotonic() - self.t0) * self.rate) + 1
        if self.count and n >= self.count:
            return self.count, False
        return n, True

    def handle(self, line: str) -> str:
        self.commands.append(line)
        cmd, _, arg = line.partition(" ")
        if cmd == "ID?":
            return self.id_reply
        if cmd == "RATE":
            r = float(arg)
            if not 0.1 <= r <= 10000:
                return "ERR rate out of range or running"
            self.rate = r
            return f"OK RATE {r:.3f}"
        if cmd == "WIDTH":
            self.width = int(arg)
            return f"OK WIDTH {self.width}"
        if cmd == "COUNT":
            self.count = int(arg)
            return f"OK COUNT {self.count}"
        if cmd == "START":
            if self.width >= 1e6 / self.rate:
                return "ERR width must be shorter than the period"
            self.t0 = time.monotonic()
            return "OK START"
        if cmd == "STOP":
            n, _ = self.pulses()
            self.t0, self.stopped_at = None, n
            return f"OK STOP {n}"
        if cmd == "PULSES?":
            n, running = self.pulses()
            return f"PULSES {n} {int(running)}"
        return "ERR unknown command"

    def run(self) -> None:
        buf = b""
        while not self._halt.is_set():
            try:
                chunk = os.read(self.fd, 256)
            except OSError:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                os.write(self.fd, (self.handle(line.decode().strip()) + "\n").encode())

    def halt(self) -> None:
        self._halt.set()


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
