"""The closed-loop rule layer on synthetic poses: regions, speed, hysteresis, refractory
periods, action logging, and bad input (unknown keypoint, absent device, failing action)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from livepose.closedloop.actions import ActionDeviceError, CameraOutput, TTLPulse
from livepose.closedloop.client import Pose
from livepose.closedloop.rules import (
    ActionEvent,
    ActionLog,
    Box,
    HalfSpace,
    Rule,
    RuleEngine,
    RuleError,
    Sphere,
)
from livepose.core import protocol
from livepose.core.config import load_default_config
from livepose.core.latency import stage_latencies_ms
from livepose.core.modelinfo import model_keypoints

NAMES = ["snout", "tail_base"]
FPS = 100.0


def pose(fid: int, snout: tuple[float, float, float],
         status: np.ndarray | None = None) -> Pose:
    xyz = np.array([snout, (0.0, 0.0, 0.0)], dtype=np.float64)
    status = np.full(2, protocol.MEASURED, np.uint8) if status is None else status
    t = 1_000_000_000 + round(fid * 1e9 / FPS)
    msg = protocol.Pose3d(frame_id=fid, xyz=xyz, variance=np.ones((2, 3)),
                          reproj=np.zeros(2, np.float32), views=np.ones(2, np.uint16),
                          status=status, t_trigger_ns=t, t_fused_ns=t + 5_000_000)
    return Pose(fid, xyz, msg.variance, msg.reproj, msg.views, stage_latencies_ms(msg),
                t + 6_000_000, msg, status=msg.status)


def run(engine: RuleEngine, xs: list[float], start: int = 0) -> list[int]:
    fired = []
    for i, x in enumerate(xs, start):
        fired += [e.frame_id for e in engine.update(pose(i, (x, 0.0, 0.0)))]
    return fired


def test_loop_regions_signed_distance() -> None:
    p = np.array([1.0, 0.0, 0.0])
    assert Sphere((0, 0, 0), 2).distance(p) == pytest.approx(-1)
    assert Box((0, -1, -1), (4, 1, 1)).distance(p) == pytest.approx(-1)
    assert Box((2, -1, -1), (4, 1, 1)).distance(p) == pytest.approx(1)
    assert HalfSpace((2, 0, 0), 3).distance(p) == pytest.approx(2)  # unit normal
    with pytest.raises(RuleError, match="radius"):
        Sphere((0, 0, 0), -1)
    with pytest.raises(RuleError, match="below"):
        Box((0, 0, 0), (0, 1, 1))
    with pytest.raises(RuleError, match="3 finite"):
        HalfSpace((1, 0), 0)


def test_loop_enter_fires_once_with_hysteresis_and_refractory() -> None:
    calls: list[ActionEvent] = []
    rule = Rule("zone", "snout", Sphere((0, 0, 0), 10), action=calls.append, hysteresis_mm=5,
                refractory_s=0.0)
    eng = RuleEngine(NAMES, [rule])
    # in at 1, jitters across the boundary (11 < 10 + 5: still active), out at 4, in at 6
    assert run(eng, [20, 5, 11, 9, 16, 20, 5]) == [1, 6]
    assert [c.frame_id for c in calls] == [1, 6]
    ev = calls[0]
    assert ev.rule == "zone" and ev.keypoint == "snout" and ev.xyz == [5.0, 0.0, 0.0]
    assert ev.t_trigger_ns < ev.t_fused_ns < ev.t_recv_ns <= ev.t_decided_ns <= ev.t_action_ns
    # the refractory period holds back a quick re-entry (frames are 10 ms apart)
    slow = RuleEngine(NAMES, [Rule("z", "snout", Sphere((0, 0, 0), 10), action=calls.append,
                                   hysteresis_mm=0, refractory_s=0.05)])
    assert run(slow, [5, 20, 5, 20, 20, 20, 20, 5]) == [0, 7]


def test_loop_min_frames_while_and_nan() -> None:
    eng = RuleEngine(NAMES, [Rule("z", "snout", Box((-10, -10, -10), (10, 10, 10)),
                                  action=lambda e: None, min_frames=2, fire="while",
                                  refractory_s=0.0)])
    assert run(eng, [0, 20, 0, 0, 0, float("nan"), 0]) == [3, 4, 6]


def test_loop_speed_threshold_with_hysteresis() -> None:
    # 100 fps: 1 mm per frame = 100 mm/s
    eng = RuleEngine(NAMES, [Rule("fast", "snout", speed_above_mm_s=300, hysteresis_mm_s=100,
                                  action=lambda e: None, refractory_s=0)])
    xs = np.cumsum([0, 1, 1, 4, 4, 2.5, 4, 1, 1, 5]).tolist()
    # fast at 3; 250 mm/s is within the hysteresis (stays active); slow at 7; fast again at 9
    assert run(eng, xs) == [3, 9]


def test_loop_unknown_keypoint_is_a_clear_error_at_construction() -> None:
    with pytest.raises(RuleError, match=r"unknown keypoint 'snoot'.*did you mean snout"):
        RuleEngine(NAMES, [Rule("r", "snoot", Sphere((0, 0, 0), 1), action=print)])
    with pytest.raises(RuleError, match="region and/or speed"):
        RuleEngine(NAMES, [Rule("r", "snout", action=print)])
    with pytest.raises(RuleError, match="callable"):
        RuleEngine(NAMES, [Rule("r", "snout", Sphere((0, 0, 0), 1))])
    with pytest.raises(RuleError, match="no keypoint names"):
        RuleEngine([], [Rule("r", "snout", Sphere((0, 0, 0), 1), action=print)])


def test_loop_absent_devices_are_clear_errors(tmp_path: Path) -> None:
    ttl = TTLPulse("/dev/ttyACM-livepose-absent")
    with pytest.raises(ActionDeviceError, match="not found"):
        RuleEngine(NAMES, [Rule("r", "snout", Sphere((0, 0, 0), 1), action=ttl)])
    blocker = CameraOutput("tcp://127.0.0.1:*", "cam0")
    blocker.open()
    assert blocker._sock is not None
    taken = blocker._sock.getsockopt(zmq.LAST_ENDPOINT).decode()
    try:
        with pytest.raises(ActionDeviceError, match="cannot bind"):
            CameraOutput(taken, "cam0").open()
    finally:
        blocker.close()


def test_loop_failing_action_is_logged_and_the_loop_goes_on(tmp_path: Path) -> None:
    def boom(e: ActionEvent) -> None:
        raise OSError("device went away")

    log_path = tmp_path / "actions.jsonl"
    eng = RuleEngine(NAMES, [Rule("r", "snout", Sphere((0, 0, 0), 10), action=boom,
                                  refractory_s=0)], ActionLog(log_path))
    assert run(eng, [0, 20, 0]) == [0, 2]
    assert eng.failed == 2
    recs = [json.loads(ln) for ln in log_path.read_text().splitlines()]
    assert [r["frame_id"] for r in recs] == [0, 2]
    assert recs[0]["result"].startswith("error: OSError") and recs[0]["kind"] == "action"
    for key in ("t_trigger_ns", "t_fused_ns", "t_recv_ns", "t_decided_ns", "t_action_ns"):
        assert isinstance(recs[0][key], int)


def test_loop_action_log_into_a_session_folder(tmp_path: Path) -> None:
    eng = RuleEngine(NAMES, [Rule("r", "snout", Sphere((0, 0, 0), 10), action=lambda e: None)],
                     ActionLog(tmp_path))
    run(eng, [0])
    (rec,) = [json.loads(ln) for ln in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert rec["source"] == "closedloop" and rec["rule"] == "r"


def test_loop_model_keypoints_reads_the_manifest(tmp_path: Path) -> None:
    cfg = load_default_config()
    (tmp_path / "manifest.yaml").write_text("keypoints: [a, b]\nskeleton: [[a, b]]\n")
    cfg.model.manifest = tmp_path / "manifest.yaml"
    assert model_keypoints(cfg) == (["a", "b"], [("a", "b")])
    cfg.model.manifest = tmp_path / "missing.yaml"
    assert model_keypoints(cfg) == ([], [])


def test_loop_ttl_pulse_through_the_trigger_box_protocol(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("serial")
    from livepose.bench.latency import emulated_box

    port, box, slave = emulated_box()
    ttl = TTLPulse(port, width_us=500)
    try:
        eng = RuleEngine(NAMES, [Rule("r", "snout", Sphere((0, 0, 0), 10), action=ttl,
                                      refractory_s=0)])
        assert box.commands[:1] == ["ID?"] and "WIDTH 500" in box.commands
        assert "COUNT 1" in box.commands
        assert run(eng, [0, 20, 0]) == [0, 2]
        deadline = time.monotonic() + 5
        while box.pulses < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert box.pulses == 2 and ttl.sent == 2
        box.refuse_start = True  # the box answers ERR: logged at the next firing
        run(eng, [20, 0], start=3)
        time.sleep(0.2)
        run(eng, [20, 0], start=5)
        assert ttl.errors >= 1 and "refused a pulse" in caplog.text
    finally:
        ttl.close()
        box.halt()
        os.close(slave)


def test_rules_act_on_measured_keypoints_unless_asked() -> None:
    """A coasting (predicted) keypoint changes nothing for a default rule; accept='predicted'
    acts on it. Poses in metres are converted to the rules' mm."""
    hits: list[int] = []
    strict = Rule("strict", "snout", Sphere((0.0, 0.0, 0.0), 10.0), action=lambda e: hits.append(0))
    loose = Rule("loose", "snout", Sphere((0.0, 0.0, 0.0), 10.0), action=lambda e: hits.append(1),
                 accept="predicted")
    eng = RuleEngine(NAMES, [strict, loose])
    predicted = np.array([protocol.PREDICTED, protocol.MEASURED], np.uint8)
    eng.update(pose(1, (1.0, 0.0, 0.0), predicted))
    assert hits == [1]
    eng.update(pose(2, (1.0, 0.0, 0.0)))
    assert hits == [1, 0]
    far = pose(3, (0.5, 0.0, 0.0))  # 0.5 m = 500 mm: outside both spheres once converted
    far.units = "m"
    far.message.units = "m"
    r2 = Rule("m", "snout", Sphere((0.0, 0.0, 0.0), 10.0), action=lambda e: hits.append(2))
    RuleEngine(NAMES, [r2]).update(far)
    assert hits == [1, 0]


def test_loop_action_log_keeps_the_session_while_the_supervisor_answers_late(
        tmp_path: Path) -> None:
    """A supervisor (here a REP socket in a thread) answers the first status at once and the
    next one 1.5 s late: the firings meanwhile still go to the session, and none waits."""
    import threading

    session = tmp_path / "session"
    session.mkdir()
    ctx: zmq.Context[Any] = zmq.Context.instance()
    rep = ctx.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    port = rep.bind_to_random_port("tcp://127.0.0.1")
    delays = [0.0, 1.5, 0.0, 0.0, 0.0]

    def serve() -> None:
        for d in delays:
            if not rep.poll(10_000):
                break
            rep.recv()
            time.sleep(d)
            rep.send(json.dumps({"ok": True, "recording": True,
                                 "session": str(session)}).encode())
        rep.close(0)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    log = ActionLog(tmp_path / "outside.jsonl", control=f"tcp://127.0.0.1:{port}")
    ev = ActionEvent("r", "a", "snout", 0, [0.0, 0, 0], None, None, 1, 2, 3)
    waits = []
    for k in range(12):  # 3 s of firings, 4 a second
        ev.frame_id = k
        t0 = time.monotonic()
        log.write(ev)
        waits.append(time.monotonic() - t0)
        time.sleep(0.25)
    t.join(15)
    inside = [json.loads(ln)["frame_id"] for ln in (session / "events.jsonl").read_text()
              .splitlines()]
    assert inside == list(range(12))
    assert not (tmp_path / "outside.jsonl").exists()
    assert sorted(waits)[-2] < 0.5  # only the first firing may wait for the first answer
