"""``livepose bench faults``: scripted faults on the sim rig, one at a time, measured.

One run of the demo rig (4 cameras, 30 fps, recording on, dashboard on) goes through:

- a camera gone for 3 s (``SIGSTOP``, then ``SIGCONT``), then back;
- ``kill -9`` of a camera, the inference worker, fusion, the recorder and the dashboard;
- a burst of 20 000 malformed messages on the health socket (every process's way in to the
  supervisor) — the structured fuzzing of every socket kind is ``livepose bench fuzz``.

Each fault's *window* is its duration + 2 s (fixed, not a parameter). For each fault the
benchmark reports the recovery time (from the end of the fault to the first pose that again
uses every camera, with poses flowing), and over the whole run the frame-sets whose pulse
fell outside every window but were never fused (``poses_lost_outside_faults``) and the
frames outside every window that no camera's frame table says were recorded
(``recording_frames_lost_outside_faults``). A disk that stops accepting writes is not
scripted (it needs a mount this machine may not allow); say so in the results.
"""

from __future__ import annotations

import csv
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from livepose.core.config import load_default_config
from livepose.runtime.monitor import Monitor
from livepose.runtime.supervisor import Supervisor
from livepose.transport import security

WINDOW_EXTRA_S = 2.0
SETTLE_S = 4.0  # quiet time between faults (recovery is measured inside it)
FAULTS: list[tuple[str, str, float]] = [  # (label, process, duration s)
    ("camera gone 3 s", "cam1", 3.0),
    ("kill -9 camera", "cam2", 0.0),
    ("kill -9 worker", "infer0", 0.0),
    ("kill -9 fusion", "fusion", 0.0),
    ("kill -9 recorder", "recorder", 0.0),
    ("kill -9 dashboard", "dashboard", 0.0),
    ("malformed burst", "health", 0.5),
]


def _burst(endpoint: str, n: int) -> None:
    """``n`` garbage multiparts into the supervisor's health socket, as a stray process."""
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    security.connect(pub, endpoint, None)
    time.sleep(0.2)
    rng = np.random.default_rng(0)
    for k in range(n):
        pub.send_multipart([b"health/x", rng.bytes(int(rng.integers(0, 64))), b"%d" % k])
    time.sleep(0.2)
    pub.close(0)
    ctx.term()


def _recorded(session: Path, cams: list[str]) -> dict[str, set[int]]:
    """Frame ids each camera's frame tables (every segment) say were recorded."""
    out: dict[str, set[int]] = {c: set() for c in cams}
    for c in cams:
        for table in sorted((session / "video").glob(f"{c}*_frames.csv")):
            with table.open() as f:
                for row in csv.DictReader(f):
                    if row.get("recorded") == "1" and row.get("frame_id", "").isdigit():
                        out[c].add(int(row["frame_id"]))
    return out


def run(json_path: str | Path | None) -> dict[str, Any]:
    """Run the scripted faults; write and return the report."""
    from livepose.bench.results import write_json

    cfg = load_default_config()
    cfg.realtime = False
    folder = Path(tempfile.mkdtemp(prefix="livepose-faults-"))
    cfg.recording.enabled = True
    cfg.recording.dir = folder
    cfg.recording.name = "faults"
    cfg.dashboard.port = 0
    windows: list[tuple[float, float]] = []  # host seconds (time.time)
    faults: list[dict[str, Any]] = []
    poses: list[tuple[float, int, int]] = []  # receive time, frame_id, views (all keypoints)
    with Supervisor(cfg, dashboard=True) as sup:
        sup.launch()
        mon = Monitor(sup.endpoints, sup.zctx, sup.keys)
        sup.start_trigger()
        t_start = time.time()

        def run_for(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                n_before = len(mon.fused)
                mon.poll(10)
                sup.poll(0)
                for fid in mon.fused[n_before:]:
                    poses.append((time.time(), fid, mon.views_of.get(fid, 0)))

        run_for(SETTLE_S)
        for label, proc, duration in FAULTS:
            t0 = time.time()
            if label.startswith("camera gone"):
                pid = sup.procs[proc].pid
                assert pid is not None
                os.kill(pid, signal.SIGSTOP)
                run_for(duration)
                os.kill(pid, signal.SIGCONT)
            elif proc == "health":
                _burst(sup.endpoints["health"], 20_000)
            else:
                pid = sup.procs[proc].pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
            t_end = time.time()
            windows.append((t0, t_end + WINDOW_EXTRA_S))
            run_for(SETTLE_S + 2.0)
            full = (1 << len(cfg.cameras)) - 1
            back = next((tr for tr, _, views in poses if tr > t_end and views == full), None)
            faults.append({"fault": label, "process": proc, "duration_s": duration,
                           "window_s": round(t_end - t0 + WINDOW_EXTRA_S, 2),
                           "recovery_s": None if back is None else round(back - t_end, 2)})
        sup.stop_trigger()
        run_for(2.0)
        mon.close()
        session = sup.recording.session.path if sup.recording.session else None
        restarts = list(sup.restarts)
        t_first = (mon.t_first_trigger or 0) / 1e9
        triggered = sorted(mon.triggered)
        fused = set(mon.fused)
        foreign = sup.foreign_health
    period = 1.0 / cfg.fps

    def inside(fid: int) -> bool:
        t = t_first + fid * period
        return any(a <= t <= b for a, b in windows)

    outside = [f for f in triggered if not inside(f)]
    lost_poses = [f for f in outside if f not in fused]
    rec_lost = 0
    if session is not None:
        recorded = _recorded(session, cfg.camera_names)
        rec_lost = sum(1 for c in cfg.camera_names for f in outside if f not in recorded[c])
    rec = [f["recovery_s"] for f in faults]
    result = {
        "summary": {
            "recovery_s_max": None if any(r is None for r in rec) else max(rec),
            "poses_lost_outside_faults": len(lost_poses),
            "recording_frames_lost_outside_faults": rec_lost,
            "crashes": sum(1 for r in restarts if r["name"] not in
                           {p for _, p, _ in FAULTS}),
            "fault_window_s": WINDOW_EXTRA_S,
            "foreign_health_ignored": foreign,
        },
        "faults": faults, "restarts": restarts, "run_s": round(time.time() - t_start, 1),
        "not_scripted": ["a disk that stops accepting writes (needs a tmpfs mount)"],
        "lost_pose_ids_sample": lost_poses[:50],
        "views_timeline": [(round(tr - t_start, 2), fid, views) for tr, fid, views in poses][::15],
    }
    return write_json(result, json_path)
