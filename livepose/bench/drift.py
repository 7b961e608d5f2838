"""The drift check (fusion/drift.py) on the sim rig, offline and fast: the sim animal's
ground-truth keypoints projected into 4 cameras (1280×1024, 30 fps) with 1.5 px noise and 1 %
outliers, triangulated by the fusion kernel, fed to the monitor.

- ``drift_detect_s``: camera ``cam2`` turns 0.5° (pan) 10 s into a 30 s run; seconds until
  the warning names it (``drift_named`` says whether it named that camera, and only it);
- ``drift_false_alarms``: cameras named in 10 minutes without drift.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from livepose.acquisition.sim.animal import Rodent
from livepose.acquisition.sim.rig import make_rig
from livepose.bench.results import write_json
from livepose.core.camera import CameraGroup, CameraModel, rodrigues, rodrigues_inv
from livepose.core.config import FusionConfig, SimConfig
from livepose.fusion.drift import DriftMonitor
from livepose.fusion.triangulate import Triangulator

FPS = 30.0
NAMES = ["cam0", "cam1", "cam2", "cam3"]
NOISE_PX = 1.5
OUTLIERS = 0.01
BARS = {"drift_detect_s": 2.0, "drift_false_alarms": 0}


def turned(cam: CameraModel, deg: float) -> CameraModel:
    """``cam`` panned by ``deg`` about its own vertical (image y) axis."""
    Rd = rodrigues(np.array([0.0, np.radians(deg), 0.0]))
    R = Rd @ cam.R
    return CameraModel(name=cam.name, size=cam.size, matrix=cam.matrix, dist=cam.dist,
                       rvec=rodrigues_inv(R), tvec=Rd @ cam.tvec, fisheye=cam.fisheye)


def simulate(calib: CameraGroup, seconds: float, drift_at_s: float | None = None,
             drift_cam: int = 2, drift_deg: float = 0.5, seed: int = 0
             ) -> tuple[list[tuple[float, str]], float]:
    """Run the monitor for ``seconds``; returns ``[(t_s, camera)]`` of the events and the
    monitor's cost per frame-set (s)."""
    sim = SimConfig(width=1280, height=1024, seed=3)
    animal = Rodent(seed, 0.5 * sim.arena_diameter_mm, sim.speed_mm_s)
    tri = Triangulator(calib, FusionConfig())
    mon = DriftMonitor(calib, FPS)
    moved = CameraGroup([turned(c, drift_deg) if i == drift_cam else c
                         for i, c in enumerate(calib)])
    rng = np.random.default_rng([seed, 77])
    events: list[tuple[float, str]] = []
    cost = 0.0
    n = round(seconds * FPS)
    step = max(1, round(FPS * mon.period))  # the monitor skips the others: so do we
    for f in range(0, n, step):
        t = f / FPS
        truth = moved if drift_at_s is not None and t >= drift_at_s else calib
        kp = animal.keypoints(t)
        uv = truth.project(kp) + rng.normal(0.0, NOISE_PX, (len(calib), kp.shape[0], 2))
        bad = rng.random(uv.shape[:2]) < OUTLIERS
        uv[bad] += rng.uniform(-30, 30, (int(bad.sum()), 2))
        pts = np.concatenate([uv, np.full((*uv.shape[:2], 1), 0.9)], axis=2).astype(
            np.float32)
        xyz = tri.triangulate(pts).xyz
        t0 = time.perf_counter()
        mon.update(f, pts, xyz)
        cost += time.perf_counter() - t0
        events += [(ev.frame_id / FPS, ev.camera) for ev in mon.pop_events()]
    return events, cost / max(len(range(0, n, step)), 1)


def run(json_path: Any = None, progress: Callable[[str], None] | None = None,
        quiet_minutes: float = 10.0) -> dict[str, Any]:
    """Both parts; returns ``{"summary", "bars", "passed"}`` and writes JSON."""
    say = progress or (lambda m: None)
    calib = make_rig(SimConfig(width=1280, height=1024, seed=3), NAMES)
    ev, cost = simulate(calib, 30.0, drift_at_s=10.0)
    named = [e for e in ev if e[0] >= 10.0]
    detect = named[0][0] - 10.0 if named and named[0][1] == NAMES[2] else float("nan")
    say(f"drift: events {ev}")
    quiet, cost_q = simulate(calib, 60.0 * quiet_minutes, seed=1)
    say(f"no drift, {quiet_minutes:g} min: events {quiet}")
    summary = {"drift_detect_s": detect,
               "drift_named": bool(ev) and all(c == NAMES[2] for _, c in ev) and not any(
                   t < 10.0 for t, _ in ev),
               "drift_false_alarms": len(quiet), "quiet_minutes": quiet_minutes,
               "monitor_us_per_check": 1e6 * (cost + cost_q) / 2,
               "checks_per_s": 1.0 / DriftMonitor(calib, FPS).period}
    passed = {k: bool(summary[k] <= v) for k, v in BARS.items()}
    return write_json({"summary": summary, "bars": BARS, "passed": passed}, json_path)
