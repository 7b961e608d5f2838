"""``livepose bench multi --real DIR``: several people on real footage (Pose2Sim's
multi-person demo, 4 colour cameras, 60 fps) with the bundled BlazePose.

Frame-set by frame-set: every view's detections through the keypoint model in one batched
call (:class:`~livepose.inference.topdown_multi.MultiTopDown`), then the multi-animal fusion
(:class:`~livepose.fusion.multitrack.MultiTracker`, free number of individuals, with the
gates and distractor rules of BlazePose's manifest: ``min_motion_mm``, ``min_depth_ratio``). There is no ground truth of
identities, so it reports what can be checked:

- ``tracks``: per confirmed id, the frame-sets it was output, measured (≥ 1 keypoint seen)
  and its reprojection error (px, median over its measured keypoints);
- ``births``, ``deaths``: a person tracked with a stable id is born once and never dies;
- ``jumps``: frame-sets where an id's 3D root (hip midpoint) moves more than
  ``jump_mm`` (a person cannot: a jump is an id taken over by another person);
- ``instances_per_view``: detections kept per view (the people and the distractors);
- ``rejected``: tentative tracks refused as static or flat (the distractors).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np


def _frames(path: Path, n: int) -> list[np.ndarray]:
    import av

    out = []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            out.append(f.to_ndarray(format="rgb24"))
            if len(out) >= n:
                break
    return out


def run_multi_real(data: Path, calibration: Path, frames: int = 100, jump_mm: float = 150.0,
                   config: Any = None) -> dict[str, Any]:
    """Run on ``data`` (the folder with ``cam01.mp4`` …) with ``calibration`` (TOML, e.g.
    from ``livepose calibration import``); returns the summary."""
    from livepose.core.calibration import read_calibration, read_calibration_units
    from livepose.core.config import Config, SimCameraConfig
    from livepose.core.modelinfo import apply_model_defaults
    from livepose.fusion.multitrack import MultiTracker
    from livepose.fusion.process import MM_PER_UNIT
    from livepose.inference.manifest import resolve_model
    from livepose.inference.topdown_multi import MultiTopDown

    t_start = time.perf_counter()
    group = read_calibration(calibration)
    units = read_calibration_units(calibration) or "mm"
    cams = list(group.names)
    cfg = config or Config(cameras=[SimCameraConfig(backend="sim", name=c) for c in cams],
                           fps=60.0)
    if config is None:  # BlazePose, free number of people, its manifest's gates for people
        cfg.model.path = "blazepose"
        cfg.model.intra_op_threads = 2
        cfg.fusion.multi.enabled, cfg.fusion.multi.individuals = True, None
    apply_model_defaults(cfg)
    path, manifest = resolve_model(cfg.model)
    td = MultiTopDown(path, manifest, cfg.model, len(cams), min_score=0.4)
    scale = 1.0 / MM_PER_UNIT[units]
    tracker = MultiTracker(group, len(manifest.keypoints), cfg.fusion, cfg.fps,
                           length_scale=scale)
    videos = [sorted(data.glob(f"{c}*.mp4"))[0] if list(data.glob(f"{c}*.mp4"))
              else sorted(data.glob("*.mp4"))[i] for i, c in enumerate(cams)]
    clips = [_frames(v, frames) for v in videos]
    T = min(len(c) for c in clips)
    names = list(manifest.keypoints)
    hips = [names.index("left_hip"), names.index("right_hip")]
    per_id: dict[int, dict[str, Any]] = {}
    n_inst = np.zeros((T, len(cams)), dtype=int)
    jumps = 0
    last_root: dict[int, np.ndarray] = {}
    ms = []
    for t in range(T):
        t0 = time.perf_counter()
        views = td([(clips[c][t], "RGB8") for c in range(len(cams))])
        ind = tracker.step(views, t / cfg.fps)
        ms.append(1e3 * (time.perf_counter() - t0))
        n_inst[t] = [len(v) for v in views]
        for i, x, st, rp in zip(ind.ids, ind.xyz, ind.status, ind.reproj, strict=True):
            d = per_id.setdefault(int(i), {"first": t, "frames": 0, "measured": 0,
                                           "reproj": []})
            d["frames"] += 1
            d["last"] = t
            meas = st == 1
            d["measured"] += bool(meas.any())
            d["reproj"] += rp[meas & np.isfinite(rp)].tolist()
            root = x[hips].mean(axis=0)
            if int(i) in last_root and np.all(np.isfinite(root)) and np.linalg.norm(
                    root - last_root[int(i)]) / scale > jump_mm:
                jumps += 1
            if np.all(np.isfinite(root)):
                last_root[int(i)] = root
    tracks = {str(i): {"first_frame": d["first"], "last_frame": d["last"],
                       "frames": d["frames"], "measured": d["measured"],
                       "reproj_px_median": float(np.median(d["reproj"])) if d["reproj"]
                       else None} for i, d in sorted(per_id.items())}
    return {
        "footage": str(data), "frames": T, "cameras": cams, "units": units,
        "tracks": tracks, "individuals": len(tracks),
        "births": tracker.counters["births"], "deaths": tracker.counters["deaths"],
        "jumps": jumps,
        "rejected": {"static": tracker.counters["rejected_static"],
                     "flat": tracker.counters["rejected_flat"]},
        "instances_per_view": {c: float(np.mean(n_inst[:, k])) for k, c in enumerate(cams)},
        "detector": td.counters,
        "ms_per_frameset_median": float(np.median(ms)),
        "id_log": tracker.id_log,
        "multi": cfg.fusion.multi.model_dump(mode="json"),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
