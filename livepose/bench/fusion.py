"""``livepose bench fusion``: what fusing one frame-set costs.

For cameras ∈ {2, 4, 6, 8} × keypoints ∈ {12, 21, 50} on the sim rig (the sim animal's
keypoints, tiled to ``J``, projected with 1 px noise, confidences 0.6–1, 3 % of the views
misdetected by 15–60 px so that the outlier rule works as in practice), the wall time per
frame (median, p99) of:

- ``tri``: :meth:`Fuser.step` with ``filter: none`` (triangulation alone);
- ``kf``, ``kf_ca``, ``ekf``, ``ekf_ca``: the same with each filter — the whole online path
  a ``kp2d`` message takes in the fusion process, minus decoding and publishing;
- ``aniposelib``: ``CameraGroup.triangulate(points, undistort=True)``, one frame per call
  (the online setting; ``bench`` extra);
- ``numpy_dlt``: Pose2Sim's method, ``cv2.undistortPoints`` per camera then one weighted
  SVD per keypoint (:func:`livepose.bench.peers.numpy_dlt`).

Timings are ``time.perf_counter_ns`` around each call, garbage collector on, after a warm-up.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from livepose.bench import peers
from livepose.core.camera import CameraGroup
from livepose.core.config import Config, FusionConfig, SimCameraConfig

FILTERS = {"tri": ("none", "cv"), "kf": ("kf", "cv"), "kf_ca": ("kf", "ca"),
           "ekf": ("ekf", "cv"), "ekf_ca": ("ekf", "ca")}


def make_frames(C: int, J: int, n: int, seed: int = 0) -> tuple[CameraGroup, list[np.ndarray]]:
    """The sim rig with ``C`` cameras and ``n`` frame-sets ``(C, J, 3)`` float32 at 100 fps."""
    from livepose.acquisition.sim.animal import Rodent
    from livepose.acquisition.sim.rig import make_rig
    from livepose.core.config import SimConfig

    sim = SimConfig(seed=seed)
    rig = make_rig(sim, [f"cam{i}" for i in range(C)])
    animal = Rodent(seed, 0.5 * sim.arena_diameter_mm, sim.speed_mm_s)
    base = np.stack([animal.keypoints(t / 100.0) for t in range(n)])  # (n, 14, 3)
    reps = -(-J // base.shape[1])
    X = np.concatenate([base + np.array([8.0 * r, 0.0, 0.0]) for r in range(reps)], axis=1)[:, :J]
    uv = rig.project(X.reshape(-1, 3)).reshape(C, n, J, 2)
    rng = np.random.default_rng(seed)
    uv += rng.normal(size=uv.shape)
    bad = rng.random((C, n, J)) < 0.03
    ang = rng.uniform(0, 2 * np.pi, int(bad.sum()))
    uv[bad] += rng.uniform(15, 60, (len(ang), 1)) * np.stack([np.cos(ang), np.sin(ang)], 1)
    conf = rng.uniform(0.6, 1.0, (C, n, J, 1))
    pts = np.concatenate([uv, conf], axis=3).astype(np.float32)
    return rig, [np.ascontiguousarray(pts[:, t]) for t in range(n)]


def _stats(ns: np.ndarray) -> dict[str, float]:
    us = ns / 1000.0
    return {"median_us": round(float(np.median(us)), 2),
            "p99_us": round(float(np.percentile(us, 99)), 2),
            "mean_us": round(float(np.mean(us)), 2)}


def _time(fn: Callable[[int], object], n: int, warm: int) -> dict[str, float]:
    for i in range(warm):
        fn(i)
    ns = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter_ns()
        fn(warm + i)
        ns[i] = time.perf_counter_ns() - t0
    return _stats(ns)


def time_ours(rig: CameraGroup, frames: list[np.ndarray], flt: str, model: str,
              warm: int = 50) -> dict[str, float]:
    """Per-frame cost of :meth:`Fuser.step` with filter ``flt`` (model ``model``)."""
    from livepose.fusion.process import Fuser

    fusion = FusionConfig(filter=flt)
    fusion.kalman.model = model  # type: ignore[assignment]
    cfg = Config(cameras=[SimCameraConfig(backend="sim", name=n) for n in rig.names],
                 fps=100.0, fusion=fusion)
    fuser = Fuser(rig, cfg)
    fuser.warmup()
    n = len(frames) - warm
    return _time(lambda i: fuser.step(frames[i], i), n, warm)


def time_aniposelib(rig: CameraGroup, frames: list[np.ndarray], n: int) -> dict[str, float]:
    """aniposelib ``CameraGroup.triangulate`` on one frame per call."""
    group = peers.anipose_group(rig)
    uvs = [np.ascontiguousarray(f[..., :2], dtype=np.float64) for f in frames]
    return _time(lambda i: group.triangulate(uvs[i % len(uvs)], undistort=True), n, 5)


def time_numpy_dlt(rig: CameraGroup, frames: list[np.ndarray], n: int) -> dict[str, float]:
    """Pose2Sim's undistortion + weighted DLT per keypoint, one frame per call."""
    import cv2

    cams = rig.cameras
    Kp = np.stack([c.matrix @ c.P for c in cams])

    def one(i: int) -> np.ndarray:
        f = frames[i % len(frames)]
        und = np.stack([cv2.undistortPoints(np.ascontiguousarray(f[c, :, None, :2], np.float64),
                                            cams[c].matrix, cams[c].dist, P=cams[c].matrix)[:, 0]
                        for c in range(len(cams))])
        conf = np.where(f[..., 2] >= 0.3, f[..., 2], 0.0)
        return peers.numpy_dlt(Kp, und, conf)

    return _time(one, n, 5)


def run(json_path: Path | None, quick: bool = False,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark; write the JSON to ``json_path`` when given and return it."""
    cams, kps = ((2, 4), (12, 21)) if quick else ((2, 4, 6, 8), (12, 21, 50))
    n_ours, n_peer = (120, 10) if quick else (2050, 200)
    unavailable = {}
    if peers.missing("aniposelib", "cv2"):
        unavailable["aniposelib"] = ("not installed: "
                                     f"{', '.join(peers.missing('aniposelib', 'cv2'))} (bench extra)")
    if peers.missing("cv2"):
        unavailable["numpy_dlt"] = "not installed: cv2 (opencv-python-headless, dev group)"
    t0 = time.perf_counter()
    cases = []
    for C in cams:
        for J in kps:
            if progress:
                progress(f"{C} cameras × {J} keypoints")
            rig, frames = make_frames(C, J, n_ours)
            case: dict[str, Any] = {"cameras": C, "keypoints": J}
            for name, (flt, model) in FILTERS.items():
                case[name] = time_ours(rig, frames, flt, model, warm=min(50, n_ours // 4))
            if "aniposelib" not in unavailable:
                case["aniposelib"] = time_aniposelib(rig, frames, n_peer)
            if "numpy_dlt" not in unavailable:
                case["numpy_dlt"] = time_numpy_dlt(rig, frames, n_peer)
            cases.append(case)
    ref = next((c for c in cases if c["cameras"] == 4 and c["keypoints"] == 21), cases[-1])
    summary: dict[str, Any] = {
        "case": f"{ref['cameras']}x{ref['keypoints']}",
        "tri_4x21_median_us": ref["tri"]["median_us"],
        "ekf_4x21_median_us": ref["ekf"]["median_us"],
        "ekf_4x21_p99_us": ref["ekf"]["p99_us"],
        "kf_4x21_median_us": ref["kf"]["median_us"],
    }
    for peer, key in (("aniposelib", "speedup_vs_aniposelib_4x21"),
                      ("numpy_dlt", "speedup_vs_numpy_dlt_4x21")):
        summary[key] = (round(ref[peer]["median_us"] / ref["ekf"]["median_us"], 1)
                        if peer in ref else None)
    summary["unavailable"] = unavailable
    out = {
        "benchmark": "fusion",
        "summary": summary,
        "cases": cases,
        "machine": {"python": platform.python_version(), "machine": platform.machine(),
                    "processor": platform.processor(), "load_avg_1min": _load()},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(out, indent=2))
    return out


def _load() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
