#!/usr/bin/env python3
"""Lifting on real footage, as a demonstration (issue "One camera is enough"; no bar).

Takes a session that ``livepose track --paced`` made from Pose2Sim's ``single/`` footage
(4 cameras, BlazePose, 100 frames), trains a lifter on livepose's own 4-camera 3D of the
first frames (measured keypoints only) seen through the *other* three recorded cameras and
virtual cameras around them, then lifts the remaining frames from the held-out camera's
recorded 2D alone and compares with the 4-camera 3D::

    livepose calibration import …/pose2sim-demo/calibration/Calib.qca.txt --out calib.toml
    livepose track …/pose2sim-demo/single -c calib.toml -o out --paced
    python scripts/lift_real_demo.py out/<session> --camera cam01 --json lift-real.json

Needs the ``torch`` extra (training). Errors are in mm against the 4-camera 3D, which is
itself an estimate (its reprojection error is in docs/benchmarks.md, "Real footage").
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from livepose.fusion.lift import Lifter
from livepose.lift.build import build_lifter, session_noise
from livepose.lift.pairs import Augment
from livepose.lift.sessions import SessionData, read_session
from livepose.lift.train import TrainConfig


def _elevation_deg(cam_center: np.ndarray, target: np.ndarray) -> float:
    d = cam_center - target
    return float(np.degrees(np.arctan2(d[2], np.linalg.norm(d[:2]))))


def _med(e: np.ndarray, q: float = 50.0) -> float | None:
    return round(float(np.percentile(e, q)), 1) if e.size else None


def _errors(lifter: Lifter, s: SessionData, ci: int, r: int, frames: slice,
            train: Any) -> dict[str, Any]:
    """Root-relative error of the lifted held-out camera (and of the nearest training pair)
    against the 4-camera 3D on ``frames``, and the root's placement error (mm)."""
    cam, te, p2 = s.cameras[ci], s.poses[frames], s.pose2d[frames, ci]
    lifted = lifter.lift(p2, cam)
    meas = np.isfinite(te).all(axis=2)
    mask = meas & meas[:, r : r + 1]
    mask[:, r] = False
    tc = te @ cam.R.T + cam.tvec
    rel_true = tc - tc[:, r : r + 1]
    e_rel = np.linalg.norm(lifted.rel - rel_true, axis=2)
    e_rel = e_rel[mask & np.isfinite(e_rel)]
    e_root = np.linalg.norm(lifted.xyz[:, r] - te[:, r], axis=1)
    e_root = e_root[np.isfinite(e_root)]
    feats, ok, *_ = lifter.prepare(p2, cam)
    f0 = 3 * len(s.keypoints) + 5  # the current frame's features (the NN is per frame)
    x = train.x[:, :f0]
    mu, sd = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-3)
    d = (((feats[:, :f0] - mu) / sd)[:, None, :] - ((x - mu) / sd)[None]) ** 2
    nn = np.full_like(lifted.rel, np.nan)
    nn[ok] = train.y[np.argmin(d.sum(axis=2), axis=1)].reshape(-1, len(s.keypoints), 3)
    e_nn = np.linalg.norm(nn - rel_true, axis=2)
    e_nn = e_nn[mask & np.isfinite(e_nn)]
    return {"lift_rel_median_mm": _med(e_rel), "lift_rel_p90_mm": _med(e_rel, 90.0),
            "nn_rel_median_mm": _med(e_nn), "root_median_mm": _med(e_root),
            "keypoints_compared": int(e_rel.size)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("session", type=Path)
    ap.add_argument("--camera", default="cam01", help="the held-out camera that is lifted")
    ap.add_argument("--train-frames", type=int, default=70)
    ap.add_argument("--root", default=None, help="root keypoint (default: the hips' left)")
    ap.add_argument("--views", type=int, default=32, help="virtual views per training pose")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--aim", type=float, default=15.0,
                    help="virtual cameras look up to this many degrees beside the subject")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    s = read_session(a.session)
    names = s.keypoints
    root = a.root or ("left_hip" if "left_hip" in names else names[0])
    r = names.index(root)
    ci = [c.name for c in s.cameras].index(a.camera)
    train_cams = [c for k, c in enumerate(s.cameras) if k != ci]
    n = a.train_frames
    tr, te = s.poses[:n], s.poses[n:]

    centre = np.nanmedian(tr.reshape(-1, 3), axis=0)
    el = [_elevation_deg(c.center, centre) for c in s.cameras]
    dist = [float(np.linalg.norm(c.center - centre)) for c in s.cameras]
    tr_el = [e for k, e in enumerate(el) if k != ci]
    tr_d = [d for k, d in enumerate(dist) if k != ci]
    aug = Augment(elevation_deg=(min(tr_el) - 15.0, max(tr_el) + 15.0),
                  distance_mm=(0.7 * min(tr_d), 1.3 * max(tr_d)), azimuth_deg=(0.0, 360.0),
                  views=a.views, aim_deg=a.aim)
    train_only = SessionData(poses=tr, keypoints=names, cameras=train_cams,
                             pose2d=np.delete(s.pose2d[:n], ci, axis=1))
    noise = session_noise([train_only], 0.3)
    with tempfile.TemporaryDirectory() as tmp:
        built = build_lifter(tr, te, names, root, train_cams, noise, aug,
                             TrainConfig(epochs=a.epochs), Path(tmp) / "lifter",
                             extra={"source": str(a.session)}, progress=print)
        lifter = Lifter(built.folder)
        test = _errors(lifter, s, ci, r, slice(n, None), built.train)
        seen = _errors(lifter, s, ci, r, slice(0, n), built.train)

    res = {
        "session": str(a.session), "camera": a.camera, "root": root,
        "train_frames": f"0-{n - 1}", "test_frames": f"{n}-{len(s.poses) - 1}",
        "camera_elevations_deg": {c.name: round(e, 1) for c, e in zip(s.cameras, el, strict=True)},
        "camera_distances_mm": {c.name: round(x) for c, x in zip(s.cameras, dist, strict=True)},
        "augmentation": aug.to_dict(),
        "pairs": built.report["pairs"],
        "training_error_median_mm": built.report["training_error"]["median_mm"],
        "test": test,
        "training_frames_from_the_held_out_camera": seen,
    }
    print(json.dumps(res, indent=2))
    if a.json is not None:
        a.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
