"""The dashboard's control client over a real REQ/REP pair: a slow supervisor's late answer to
a command still arrives, while ``status`` (polled every second) gives up quickly."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import zmq

from livepose.dashboard import control


def _slow_server(zctx: zmq.Context[Any], delay_s: float) -> tuple[str, threading.Thread]:
    rep = zctx.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    port = rep.bind_to_random_port("tcp://127.0.0.1")

    def serve() -> None:
        try:
            if rep.poll(5000):
                req = json.loads(rep.recv())
                time.sleep(delay_s)
                rep.send(json.dumps({"ok": True, "echo": req["cmd"]}).encode())
        finally:
            rep.close(0)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return f"tcp://127.0.0.1:{port}", t


def test_a_command_waits_longer_than_a_status_poll() -> None:
    assert control.COMMAND_TIMEOUT_S > 2 * control.TIMEOUT_S
    zctx = zmq.Context()
    try:
        # a record_start answered after 1.5 s (a loaded host opening the encoder) is received
        ep, t = _slow_server(zctx, 1.5)
        assert control.request(zctx, ep, {"cmd": "record_start", "name": "x"}) == \
            {"ok": True, "echo": "record_start"}
        t.join(5)
        # the same delay on a status poll: unavailable after TIMEOUT_S, said without a hint
        ep, t = _slow_server(zctx, 1.5)
        with pytest.raises(control.ControlUnavailable) as err:  # (the answer came at 1.5 s)
            control.request(zctx, ep, {"cmd": "status"})
        assert "may still take effect" not in str(err.value)
        t.join(5)
        # a command that does time out says it may have happened anyway
        ep, t = _slow_server(zctx, 1.0)
        with pytest.raises(control.ControlUnavailable, match="record_stop may still take effect"):
            control.request(zctx, ep, {"cmd": "record_stop"}, timeout_s=0.2)
        t.join(5)
    finally:
        zctx.term()


def test_a_missed_status_keeps_the_last_one_until_several_are_missed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    from types import SimpleNamespace

    from livepose.dashboard import process
    from livepose.dashboard.state import DashState

    monkeypatch.setattr(process, "CONTROL_PERIOD_S", 0.001)
    answers = iter([True, False, True, False, False, False, True])
    seen: list[dict[str, Any]] = []

    def status(body: dict[str, Any]) -> dict[str, Any]:
        ok = next(answers, None)
        if ok is None:  # the answers are used up: end the poll loop
            raise asyncio.CancelledError
        if not ok:
            raise control.ControlUnavailable("no answer (test)")
        return {"ok": True, "recording": False}

    hub = SimpleNamespace(state=DashState(["cam0"], 1, 2.0), control=status)

    async def run() -> None:
        task = asyncio.create_task(process._control_poll(hub))
        while not task.done():
            seen.append(dict(hub.state.recording))
            await asyncio.sleep(0)
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    states = [(r.get("available"), "stale" in r) for r in seen]
    dedup = [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]
    # first answer; one miss: still available, marked stale; answered again; three misses in a
    # row: unavailable; answered: available
    assert dedup == [(None, False), (True, False), (True, True), (True, False), (True, True),
                     (False, False), (True, False)]
