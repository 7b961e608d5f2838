"""The closed loop on the live sim pipeline: a rule fires on real poses and every action lands
in the recording session's event log with the frame_id and timestamps that caused it."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from livepose.closedloop.actions import CameraOutput
from livepose.closedloop.rules import (
    ActionEvent,
    ActionLog,
    ClosedLoop,
    HalfSpace,
    Rule,
)
from livepose.core.config import load_default_config
from livepose.core.modelinfo import model_keypoints
from livepose.kit.session import read_events
from livepose.runtime.supervisor import Supervisor

pytestmark = pytest.mark.integration


def _control(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    ctx: zmq.Context[Any] = zmq.Context.instance()
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect(endpoint)
        s.send(json.dumps(body).encode())
        assert s.poll(5000), "no answer from the supervisor's control socket"
        reply: dict[str, Any] = json.loads(s.recv())
        return reply
    finally:
        s.close(0)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Supervisor]:
    cfg = load_default_config()
    cfg.recording.dir = tmp_path / "sessions"
    stop = threading.Event()
    with Supervisor(cfg) as sup:
        sup.launch()
        t = threading.Thread(target=lambda: [sup.poll(0.02) for _ in iter(stop.is_set, True)],
                             daemon=True)
        t.start()
        try:
            yield sup
        finally:
            stop.set()
            t.join(5)


def test_loop_actions_are_logged_into_the_session(running: Supervisor, tmp_path: Path) -> None:
    sup = running
    names, _ = model_keypoints(sup.cfg)
    calls: list[ActionEvent] = []
    always = HalfSpace((0, 0, 1), -1e6)  # z >= -1 km: every pose
    rule = Rule("always", names[0], always, action=calls.append, fire="while", refractory_s=0.2)
    # a camera output line: CameraOutput → camctl → cam1's OutputPulser (sim: virtual line)
    line = CameraOutput(sup.endpoints["camctl"], "cam1", line="Line2", width_us=500)
    pulse = Rule("pulse", names[0], always, action=line, fire="while", refractory_s=0.5)
    log = ActionLog(tmp_path / "outside.jsonl", control=sup.endpoints["control"])
    loop = ClosedLoop(sup.endpoints["pose3d"], names, [rule, pulse], log)
    reply = _control(sup.endpoints["control"], {"cmd": "record_start", "name": "loop"})
    assert reply["ok"], reply
    session = Path(reply["session"])
    sup.start_trigger()
    assert loop.run(duration_s=4.0, idle_timeout_s=10.0) > 30
    assert _control(sup.endpoints["control"], {"cmd": "record_stop"})["ok"]
    assert 10 <= len(calls) <= 25  # 5 per second at most (refractory 0.2 s)
    deadline = time.monotonic() + 3
    while sup.counters("cam1").get("outputs_fired", 0) < line.sent - 1 and time.monotonic() < deadline:
        time.sleep(0.1)  # health comes every 0.5 s
    assert line.sent >= 4
    assert line.sent - 1 <= sup.counters("cam1")["outputs_fired"] <= line.sent  # first may be lost
    assert sup.counters("cam0").get("outputs_fired", 0) == 0  # only the camera named
    gaps = [(b.t_trigger_ns or 0) - (a.t_trigger_ns or 0) for a, b in itertools.pairwise(calls)]
    assert min(gaps) >= 0.2e9 - 1e6
    actions = [e for e in read_events(session)
               if e.get("kind") == "action" and e.get("rule") == "always"]
    assert any(e.get("rule") == "pulse" for e in read_events(session))
    assert [e["frame_id"] for e in actions] == [c.frame_id for c in calls][: len(actions)]
    assert len(actions) >= len(calls) - 1  # the first may precede the first status answer
    a = actions[-1]
    assert a["source"] == "closedloop" and a["rule"] == "always"
    assert a["t_trigger_ns"] < a["t_fused_ns"] < a["t_recv_ns"] <= a["t_action_ns"]
