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
