"""``livepose bench faults``: scripted faults on the sim rig, one at a time, measured.

One run of the demo rig (4 cameras, 30 fps, recording on, dashboard on) goes through:

- a camera gone for 3 s (``SIGSTOP``, then ``SIGCONT``), then back;
- ``kill -9`` of a camera, the inference worker, fusion, the recorder, an encoder and the
  dashboard;
- a disk that stops accepting writes for 3 s: the session lives on a small tmpfs of its
  own (``mount -t tmpfs``, needs root), filled up to the last byte and then emptied again
  (where mounting is not allowed, the fault is reported as not scripted);
- a burst of 20 000 malformed messages on the health socket (every process's way in to the
  supervisor).

Then the structured fuzzer (:mod:`livepose.bench.fuzz`: every socket kind, every ring header
field) runs, for the fuzz summary keys.

Each fault's *window* is its duration + 2 s (fixed, not a parameter). For each fault the
benchmark reports the recovery time: from the end of the fault until a pose of a pulse
triggered after the fault uses every camera again (a pose already in flight does not count),
for faults that touch recording (a camera, an encoder, the disk) until
the cameras concerned have recorded a frame again (``t_write_ns`` in their frame tables),
and for a killed stage that is restarted until the new process said it was ready —
whichever is latest. Over the whole run it counts the frame-sets outside every window
that were never fused (``poses_lost_outside_faults``) and the frames
outside every window that no camera's frame table says were recorded
(``recording_frames_lost_outside_faults``); ``crashes`` counts processes that died without
being killed by the script. A frame-set is inside a window when its pose was *due* in it
(its pulse + the 99th-percentile pulse-to-pose latency measured before the first fault; the
window keeps its length): what a killed stage held in flight when it died belongs to its
fault (the count by pulse time is
reported too, ``poses_lost_outside_faults_by_pulse_time``; each fault's frame ids are
``window_frames``). Each fault starts once the supervisor's warm spares
(livepose/runtime/spares.py) are warm again — faults in a real experiment are minutes
apart; the wait is reported (``spares_wait_s``), and so is each restarted stage's time to
ready (``stage_ready_s``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from livepose.core.config import load_default_config
from livepose.kit.session import encoder_name, segments
from livepose.runtime.monitor import Monitor
from livepose.runtime.supervisor import Supervisor
from livepose.transport import security

WINDOW_EXTRA_S = 2.0
SETTLE_S = 4.0  # quiet time between faults (recovery is measured inside it)
DISK_MB = 1024  # the session's own tmpfs
SPARES_WAIT_S = 60.0  # longest wait for warm spares before a fault
FAULTS: list[tuple[str, str, float]] = [  # (label, process, duration s)
    ("camera gone 3 s", "cam1", 3.0),
    ("kill -9 camera", "cam2", 0.0),
    ("kill -9 worker", "infer0", 0.0),
    ("kill -9 fusion", "fusion", 0.0),
    ("kill -9 recorder", "recorder", 0.0),
    ("kill -9 encoder", encoder_name("cam0"), 0.0),
    ("kill -9 dashboard", "dashboard", 0.0),
    ("disk stops accepting writes 3 s", "disk", 3.0),
    ("malformed burst", "health", 0.5),
]


def _mount_tmpfs(folder: Path) -> bool:
    """Mount a ``DISK_MB`` tmpfs on ``folder`` (root only); whether it worked."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs",
                            str(folder)], check=False, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _disk_full(folder: Path, full: bool) -> None:
    """Shrink the session's tmpfs to what it holds (every later write: ENOSPC), or give it
    its size back. A remount is instant, so the fault starts and ends at once."""
    if not full:
        subprocess.run(["mount", "-o", f"remount,size={DISK_MB}m", str(folder)], check=True,
                       capture_output=True, timeout=10)
        return
    for _ in range(20):  # writers keep writing between the measure and the remount
        st = os.statvfs(folder)
        used_kb = (st.f_blocks - st.f_bfree) * st.f_frsize // 1024
        r = subprocess.run(["mount", "-o", f"remount,size={used_kb + 64}k", str(folder)],
                           check=False, capture_output=True, timeout=10)
        if r.returncode == 0:
            break
    with contextlib.suppress(OSError), (folder / "filler").open("wb") as f:
        while True:  # the last free pages
            f.write(b"\0" * 4096)
            f.flush()


def _recorded_after(session: Path, cams: list[str], t_ns: int) -> float | None:
    """Seconds after ``t_ns`` when every camera in ``cams`` had recorded a frame again
    (its frame tables' ``t_write_ns``); ``None``: one never did."""
    last = 0
    for c in cams:
        first = None
        for stem in segments(session, c):
            with (session / "video" / f"{stem}_frames.csv").open() as f:
                for row in csv.DictReader(f):
                    tw = row.get("t_write_ns") or ""
                    if row.get("recorded") == "1" and tw.isdigit() and int(tw) > t_ns:
                        first = int(tw) if first is None else min(first, int(tw))
                        break
        if first is None:
            return None
        last = max(last, first)
    return (last - t_ns) / 1e9


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
        for stem in segments(session, c):
            with (session / "video" / f"{stem}_frames.csv").open() as f:
                for row in csv.DictReader(f):
                    if row.get("recorded") == "1" and row.get("frame_id", "").isdigit():
                        out[c].add(int(row["frame_id"]))
    return out


def _summary(session: Path, stem: str) -> dict[str, Any] | None:
    """A segment's writer summary (``None``: its writer never closed it)."""
    try:
        d = json.loads((session / "video" / f"{stem}.json").read_text())
    except (OSError, ValueError):
        return None
    keys = ("frames_recorded", "frames_lost", "lapped", "gap", "write_errors", "error")
    return {k: d.get(k) for k in keys}


def _ready_after(sup: Supervisor, proc: str, t_end: float) -> float | None:
    """Seconds from ``t_end`` until a restarted ``proc`` said it was ready (from the
    supervisor's restart record and the new process's health)."""
    rec = next((r for r in reversed(sup.restarts) if r["name"] == proc), None)
    h = sup.health.get(proc)
    if rec is None or h is None or h.state not in ("ready", "running"):
        return None
    t_ready = h.info.get("t_ready_ns")
    return None if t_ready is None else round(t_ready / 1e9 - t_end, 2)


def _record_recovery(label: str, proc: str, cams: list[str]) -> list[str]:
    """The cameras whose recording a fault touches (their frames must be recorded again)."""
    if proc == "disk":
        return cams
    if proc in cams:
        return [proc]
    return [c for c in cams if proc == encoder_name(c)]


def run(json_path: str | Path | None, fuzz_per_kind: int = 100_000,
        fps: float | None = None) -> dict[str, Any]:
    """Run the scripted faults, then the fuzzer; write and return the report.

    ``fps``: the trigger rate (default: the demo's 30). On a machine too loaded to sustain
    the demo's rate, frame-sets are skipped with or without faults; the report's
    ``baseline`` (the first seconds, before any fault) says whether the rate was sustained.
    """
    from livepose.bench.fuzz import main as fuzz
    from livepose.bench.results import write_json

    cfg = load_default_config()
    cfg.realtime = False
    if fps is not None:
        cfg.fps = fps
    folder = Path(tempfile.mkdtemp(prefix="livepose-faults-"))
    disk = folder / "disk"
    mounted = _mount_tmpfs(disk)
    cfg.recording.enabled = True
    cfg.recording.dir = disk if mounted else folder
    cfg.recording.name = "faults"
    cfg.dashboard.port = 0
    faults_run = [f for f in FAULTS if f[1] != "disk" or mounted]
    windows: list[tuple[float, float]] = []  # host seconds (time.time)
    faults: list[dict[str, Any]] = []
    poses: list[tuple[float, int, int]] = []  # receive time, frame_id, views (all keypoints)
    try:
        with Supervisor(cfg, dashboard=True) as sup:
            sup.launch()
            mon = Monitor(sup.endpoints, sup.zctx, sup.keys)
            sup.start_trigger(subscribers=[mon.hello])
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
            assert sup.recording.session is not None
            session = sup.recording.session.path
            for label, proc, duration in faults_run:
                # faults in a real experiment are minutes apart: the spares are warm again
                t_wait = time.monotonic()
                while sup.spares is not None and not sup.spares.all_warm() and \
                        time.monotonic() - t_wait < SPARES_WAIT_S:
                    run_for(0.2)
                spares_wait = round(time.monotonic() - t_wait, 1)
                t0 = time.time()
                if label.startswith("camera gone"):
                    pid = sup.procs[proc].pid
                    assert pid is not None
                    os.kill(pid, signal.SIGSTOP)
                    run_for(duration)
                    os.kill(pid, signal.SIGCONT)
                elif proc == "disk":
                    _disk_full(disk, True)
                    run_for(duration)
                    _disk_full(disk, False)
                    (disk / "filler").unlink(missing_ok=True)
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
                t_pulse0 = (mon.t_first_trigger or 0) / 1e9  # poses of pulses after the fault
                back = next((tr for tr, fid, views in poses
                             if t_pulse0 + fid / cfg.fps > t_end and views == full), None)
                pose_s = None if back is None else back - t_end
                cams = _record_recovery(label, proc, cfg.camera_names)
                rec_s = _recorded_after(session, cams, int(t_end * 1e9)) if cams else 0.0
                ready_s = _ready_after(sup, proc, t_end) if proc in sup.procs else None
                if proc in sup.procs and any(r["name"] == proc for r in sup.restarts) and \
                        ready_s is None:
                    ready_s = float("inf")  # restarted, never ready
                both = None if pose_s is None or rec_s is None else \
                    max(pose_s, rec_s, ready_s or 0.0)
                both = None if both == float("inf") else both
                faults.append({"fault": label, "process": proc, "duration_s": duration,
                               "window_s": round(t_end - t0 + WINDOW_EXTRA_S, 2),
                               "recovery_s": None if both is None else round(both, 2),
                               "poses_back_s": None if pose_s is None else round(pose_s, 2),
                               "recording_back_s": None if rec_s is None else round(rec_s, 2),
                               "stage_ready_s": ready_s,
                               "spares_wait_s": spares_wait})
            victims = {p for _, p, _ in faults_run}
            died = [n for n in sup.exited if n not in victims]
            sup.stop_trigger()
            run_for(2.0)
            mon.close()
            restarts = list(sup.restarts)
            t_first = (mon.t_first_trigger or 0) / 1e9
            triggered = sorted(mon.triggered)
            fused = set(mon.fused)
            foreign = sup.foreign_health
        status = sup.recording.last or {}
        period = 1.0 / cfg.fps

        first_fault = min((a for a, _ in windows), default=float("inf"))
        before = [f for f in triggered if t_first + f * period < first_fault - WINDOW_EXTRA_S]
        # when a pose is due: its pulse + the pipeline's 99th-percentile latency before any
        # fault (a lost pose has no latency of its own: the slow end is when it could still
        # have come). A fault at t0 takes the poses due after t0, including those still in
        # flight then (pulsed up to a latency earlier): a killed worker loses what it holds
        lat = [tr - (t_first + fid * period) for tr, fid, _ in poses
               if t_first + fid * period < first_fault - WINDOW_EXTRA_S]
        latency_s = float(np.percentile(lat, 99)) if lat else 0.0
        baseline = {"frame_sets": len(before), "not_fused": sum(f not in fused for f in before),
                    "latency_ms_median": round(1e3 * float(np.median(lat)), 1) if lat else None,
                    "latency_ms_p99": round(1e3 * latency_s, 1)}

        def inside(fid: int, shift: float = latency_s) -> bool:
            t = t_first + fid * period + shift
            return any(a <= t <= b for a, b in windows)

        outside = [f for f in triggered if not inside(f)]
        for fault, (a, b) in zip(faults, windows, strict=True):  # the window's frame ids
            fault["window_frames"] = [int(np.ceil((a - latency_s - t_first) / period)),
                                      int((b - latency_s - t_first) // period)]
        by_pulse = sum(1 for f in triggered if not inside(f, 0.0) and f not in fused)
        summaries = {stem: _summary(session, stem) for c in cfg.camera_names
                     for stem in segments(session, c)}
        lost_poses = [f for f in outside if f not in fused]
        recorded = _recorded(session, cfg.camera_names)
        rec_lost = {c: [f for f in outside if f not in recorded[c]] for c in cfg.camera_names}
        segs = {c: segments(session, c) for c in cfg.camera_names}
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], check=False, capture_output=True,
                           timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
    fz = fuzz(None, fuzz_per_kind)["summary"] if fuzz_per_kind > 0 else {}
    rec = [f["recovery_s"] for f in faults]
    crashed = died + [r["name"] for r in restarts if r["name"] not in victims]
    result = {
        "summary": {
            "recovery_s_max": None if any(r is None for r in rec) else max(rec),
            "poses_lost_outside_faults": len(lost_poses),
            "poses_lost_outside_faults_by_pulse_time": by_pulse,
            "recording_frames_lost_outside_faults": sum(len(v) for v in rec_lost.values()),
            "crashes": len(crashed) + int(fz.get("crashes", 0)),
            "fuzz_messages_per_kind_min": fz.get("fuzz_messages_per_kind_min"),
            "fuzz_uncounted": fz.get("fuzz_uncounted"),
            "fault_window_s": WINDOW_EXTRA_S,
            "foreign_health_ignored": foreign,
        },
        "fps": cfg.fps, "baseline_before_faults": baseline, "segments": summaries,
        "faults": faults, "restarts": restarts, "crashed": crashed,
        "run_s": round(time.time() - t_start, 1), "fuzz": fz,
        "session": {"state": status.get("state"), "reason": status.get("reason"),
                    "segments": segs},
        "not_scripted": [] if mounted else
        ["a disk that stops accepting writes (mounting a tmpfs was refused: not root?)"],
        "lost_pose_ids_sample": lost_poses[:50],
        "lost_recording_ids_sample": {c: v[:20] for c, v in rec_lost.items() if v},
        "views_timeline": [(round(tr - t_start, 2), fid, views) for tr, fid, views in poses][::15],
    }
    return write_json(result, json_path)
