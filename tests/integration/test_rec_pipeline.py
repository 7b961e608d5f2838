"""Recording in real processes: a session recorded from launch, replayed through the video
backend while a second session is started and stopped over the control socket; the replay
reproduces the recorded 2D and 3D."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from rich.console import Console

from livepose.acquisition.encoders import iter_frames
from livepose.acquisition.recorder import image_checksum
from livepose.bench.record import bench_config, pool_model
from livepose.cli.demo import run_pipeline
from livepose.formats.anipose3d import read_anipose3d
from livepose.formats.dlc import read_dlc_csv
from livepose.kit.session import pose2d_path, pose3d_path, read_events, read_status
from livepose.recording.tools import export_eks, fuse_only_session, replay_config
from livepose.runtime.supervisor import Supervisor

pytestmark = pytest.mark.integration
pytest.importorskip("av")
pytest.importorskip("onnx")

PULSES = 60
FPS = 20.0


def control(sup: Supervisor, zctx: zmq.Context[Any], body: dict[str, Any]) -> dict[str, Any]:
    req = zctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(sup.endpoints["control"])
    try:
        req.send(json.dumps(body).encode())
        deadline = time.monotonic() + 5
        while not req.poll(0):
            assert time.monotonic() < deadline, "no control reply"
            sup.poll(0.02)
        reply: dict[str, Any] = json.loads(req.recv())
        return reply
    finally:
        req.close(0)


def test_record_replay_and_control(tmp_path: Path) -> None:
    cams = ["cam0", "cam1", "cam2"]
    cfg = bench_config(tmp_path / "sessions", pool_model(tmp_path / "m", 96, 64, 4), FPS,
                       "ffv1", len(cams), 96, 64)
    cfg.fusion.filter = "none"  # per-frame triangulation: replay must match frame by frame
    cfg.frameset.deadline_frames = 10.0  # complete sets only, even on a loaded machine
    cfg.recording.name = "orig"
    with open(os.devnull, "w") as devnull:
        s = run_pipeline(cfg, pulses=PULSES, live=False, console=Console(file=devnull))
    orig = Path(s["session"]["path"])
    st = read_status(orig)
    assert st["state"] == "complete", st
    assert st["frames"] == dict.fromkeys(cams, PULSES)
    for cam in cams:  # every published frame is in the video, bit-exact
        import csv

        with (orig / "video" / f"{cam}_frames.csv").open() as f:
            rows = list(csv.DictReader(f))
        decoded = list(iter_frames(orig / "video" / f"{cam}.mkv"))
        assert [int(r["frame_id"]) for r in rows] == list(range(PULSES))
        assert [image_checksum(d) for d in decoded] == [r["checksum"] for r in rows]
    kinds = {e["kind"] for e in read_events(orig)}
    assert {"session_start", "record_start", "record_stop", "session_stop"} <= kinds
    files = export_eks(orig, tmp_path / "eks")
    assert {p.name for p in files} == {f"{orig.name}_{c}.csv" for c in cams} | {"calibration.toml"}
    refused = read_anipose3d(fuse_only_session(orig, tmp_path / "refused"))  # --fuse-only
    live3d = read_anipose3d(pose3d_path(orig))
    assert list(refused.fnum) == list(live3d.fnum)
    np.testing.assert_allclose(refused.xyz, live3d.xyz, rtol=1e-7, atol=1e-6)
    np.testing.assert_array_equal(refused.ncams, live3d.ncams)

    # replay the session; record part of it through the control socket
    rcfg, frames = replay_config(orig)
    assert frames == PULSES
    rcfg.recording.dir = tmp_path / "replays"
    # frame by frame: every set processed with every view, however slowly the videos decode
    # on a loaded machine (unpaced, a lagging camera's view went out NaN at the deadline)
    rcfg.trigger.paced = True
    rcfg.frameset.deadline_frames = 100.0
    zctx: zmq.Context[Any] = zmq.Context()
    try:
        with Supervisor(rcfg, trigger_count=frames) as sup:
            sup.launch()
            sup.start_trigger()
            started = control(sup, zctx, {"cmd": "record_start", "name": "again"})
            assert started["ok"], started
            assert control(sup, zctx, {"cmd": "record_start", "name": "x"})["ok"] is False
            assert control(sup, zctx, {"cmd": "event", "kind": "laser_on", "ms": 5})["ok"]
            assert control(sup, zctx, {"cmd": "status"})["recording"] is True
            assert control(sup, zctx, {"cmd": "nope"})["ok"] is False
            deadline = time.monotonic() + 60
            while sup.health.get("trigger") is None or sup.health["trigger"].state != "done":
                assert time.monotonic() < deadline
                sup.poll(0.05)
            t_end = time.monotonic() + 1.5  # let the last frame-sets through
            while time.monotonic() < t_end:
                sup.poll(0.05)
        last = sup.recording.last
    finally:
        zctx.term()
    assert last is not None and last["state"] == "complete", last
    again = Path(last["path"])
    first = int(started["first_frame"])
    assert 0 < first < PULSES
    assert any(e["kind"] == "laser_on" and e["ms"] == 5 for e in read_events(again))
    for cam in cams:
        a, b = read_dlc_csv(pose2d_path(orig, cam)), read_dlc_csv(pose2d_path(again, cam))
        assert b.index[0] == str(first)
        n = min(len(b.index), PULSES - first)
        np.testing.assert_allclose(b.points[:n], a.points[first:first + n], rtol=1e-5,
                                   atol=1e-3)
    a3, b3 = read_anipose3d(pose3d_path(orig)), read_anipose3d(pose3d_path(again))
    n = min(len(b3.fnum), PULSES - first)
    assert n > 10
    np.testing.assert_allclose(b3.xyz[:n], a3.xyz[first:first + n], rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("victim", ["cam1", "recorder"])
def test_kill_9_during_a_recording_leaves_a_readable_incomplete_session(
    tmp_path: Path, victim: str
) -> None:
    """``kill -9`` of a camera (its video writer dies with it) or of the recorder process
    in the middle of a recorded run where every camera is needed (``min_cameras``, no
    restarts): the supervisor reports a camera's death and stops the run, and a recorder's
    death leaves the experiment running (it is optional);
    every video decodes up to about a second before the kill, bit-exact against the frame
    table; every CSV parses; the status says the session did not close cleanly; ``repair``
    finalises it."""
    import csv
    import signal

    from livepose.recording.tools import repair
    from livepose.runtime.supervisor import ProcessDied

    cams = ["cam0", "cam1", "cam2"]
    cfg = bench_config(tmp_path / "sessions", pool_model(tmp_path / "m", 96, 64, 4), FPS,
                       "ffv1", len(cams), 96, 64)
    cfg.recording.enabled = True
    cfg.recording.name = "crash"
    cfg.frameset.min_cameras = len(cams)  # every camera needed: losing one ends the run
    cfg.restart.enabled = False  # and no camera comes back
    died = None
    with Supervisor(cfg) as sup:
        sup.launch()
        sup.start_trigger()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.0:  # 60 frame-sets recorded
            sup.poll(0.05)
        pid = sup.procs[victim].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        if victim == "recorder":  # optional: the experiment goes on without it
            while time.monotonic() - t_kill < 2:
                sup.poll(0.05)
            assert sup.exited["recorder"] == -signal.SIGKILL
            assert sup.procs["cam1"].is_alive() and sup.procs["fusion"].is_alive()
        else:
            with pytest.raises(ProcessDied) as ei:
                while time.monotonic() - t_kill < 10:
                    sup.poll(0.05)
            died = ei.value
        session = sup.recording.session
        assert session is not None
        path = session.path
    if victim != "recorder":
        assert died is not None and died.name == victim and died.exitcode == -signal.SIGKILL
    assert read_status(path)["state"] in ("incomplete", "failed"), read_status(path)
    assert any(e["kind"] == "process_died" and e["proc"] == victim for e in read_events(path))
    report = repair(path)
    assert read_status(path)["state"] in ("incomplete", "failed")
    for cam in cams:
        with (path / "video" / f"{cam}_frames.csv").open() as f:
            rows = [r for r in csv.DictReader(f) if r["recorded"] == "1"]
        decoded = list(iter_frames(path / "video" / f"{cam}.mkv"))
        assert len(decoded) >= 2.0 * FPS, (cam, len(decoded))  # all but ~1 s of 3 s
        assert report[cam]["frames_decodable"] == len(decoded)
        for r, img in zip(rows, decoded, strict=False):  # what decodes is what was published
            assert image_checksum(img) == r["checksum"]
    for csv_path in [*(path / "pose2d").glob("*.csv"), pose3d_path(path)]:
        if csv_path.exists():
            lines = [ln for ln in csv_path.read_text().splitlines() if ln]
            assert len({ln.count(",") for ln in lines[3:]}) <= 1, csv_path


def test_kill_9_of_an_encoder_never_touches_its_camera(tmp_path: Path) -> None:
    """``kill -9`` of camera 1's encoder in the middle of a recording (restarts on): the
    camera process lives on and keeps publishing, the supervisor starts the encoder again
    and it goes on in a new segment (``cam1.1``) — first with the frames its camera's ring
    still holds; the encoder's death is in the events and the session status; everything
    recorded before the kill decodes bit-exact against its table; every frame has exactly
    one table row over the two segments."""
    import csv
    import signal

    from livepose.kit.session import encoder_name, segments

    cams = ["cam0", "cam1", "cam2"]
    cfg = bench_config(tmp_path / "sessions", pool_model(tmp_path / "m", 96, 64, 4), FPS,
                       "ffv1", len(cams), 96, 64)
    cfg.recording.name = "enc"
    victim = encoder_name("cam1")
    with Supervisor(cfg) as sup:
        sup.launch()
        sup.start_trigger()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.5:
            sup.poll(0.05)
        cam_pid = sup.procs["cam1"].pid
        frames_before = sup.counters("cam1").get("frames", 0)
        pid = sup.procs[victim].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        # restarted (a cold spawn: imports take seconds on a loaded host) and recording again
        def recording_again() -> bool:
            h = sup.health.get(victim)
            return (h is not None and h.pid != pid and h.pid == sup.procs[victim].pid
                    and h.state == "running" and h.counters.get("rec_frames", 0) > 0)

        while time.monotonic() - t_kill < 5.0 or (
                time.monotonic() - t_kill < 60.0 and not recording_again()):
            sup.poll(0.05)
        assert sup.procs["cam1"].pid == cam_pid and sup.procs["cam1"].is_alive()
        assert sup.counters("cam1").get("frames", 0) >= frames_before + 3 * FPS
        assert [r["name"] for r in sup.restarts] == [victim]
        video = sup.recording.video()["cam1"]
        assert video["state"] == "running" and video["rec_frames"] > 0, video
        session = sup.recording.session
        assert session is not None
        path = session.path
    status = read_status(path)
    assert status["state"] == "incomplete" and victim in status["reason"], status
    assert any(e["kind"] == "process_died" and e["proc"] == victim for e in read_events(path))
    assert segments(path, "cam1") == ["cam1", "cam1.1"]
    assert segments(path, "cam0") == ["cam0"]
    ids: list[int] = []
    for stem in ("cam1", "cam1.1"):
        with (path / "video" / f"{stem}_frames.csv").open() as f:
            rows = list(csv.DictReader(f))
        ids += [int(r["frame_id"]) for r in rows]
        recorded = [r for r in rows if r["recorded"] == "1"]
        decoded = list(iter_frames(path / "video" / f"{stem}.mkv"))
        assert len(decoded) >= len(recorded) - 8  # a killed encoder's last few packets
        for r, img in zip(recorded, decoded, strict=False):  # nothing recorded is corrupted
            assert image_checksum(img) == r["checksum"]
    assert ids == list(range(len(ids))) and len(ids) > 6 * FPS
