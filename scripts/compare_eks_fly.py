"""Compare ``livepose fuse`` with EKS's multi-camera smoother on ../shared/data/eks-fly.

Usage (``bench`` extra installed)::

    .venv/bin/python scripts/compare_eks_fly.py [--eks-dir DIR] [--out DIR]

Runs ``livepose fuse`` (filters none, kf, ekf) and, unless ``--eks-dir`` holds an earlier
``eks multicam`` output, EKS's ``fit_eks_multicam`` with the calibration (its CLI defaults:
variance inflation on, smoothing parameter fit on every frame — a few minutes). Prints, per
filter, the mean reprojection error of our output (px, against the ensemble median in the
views used) and its distance to EKS's 3D output (median and p95, calibration units).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from livepose.core.calibration import read_calibration
from livepose.formats.anipose3d import read_anipose3d
from livepose.fusion.offline import assign_files, fuse_files, load_views, reprojection

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "eks-fly"
CAMS = ["Cam-A", "Cam-B", "Cam-C"]


def eks_3d(eks_dir: Path, out: Path) -> np.ndarray:
    """EKS's ``(T, J, 3)``, computed into ``out`` unless ``eks_dir`` has it."""
    f = eks_dir / "multicam_3d_results.csv"
    if not f.exists():
        from eks.multicam_smoother import fit_eks_multicam

        out.mkdir(parents=True, exist_ok=True)
        fit_eks_multicam(input_source=str(DATA), save_dir=str(out),
                         calibration=str(DATA / "calibration.toml"), inflate_vars=True)
        f = out / "multicam_3d_results.csv"
    a = np.loadtxt(f, delimiter=",", skiprows=3)[:, 1:]
    return a.reshape(len(a), -1, 6)[..., :3]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eks-dir", type=Path, default=Path("artifacts/eks_fly"))
    ap.add_argument("--out", type=Path, default=Path("artifacts/fuse_fly"))
    args = ap.parse_args()
    eks = eks_3d(args.eks_dir, args.eks_dir)
    cams = read_calibration(DATA / "calibration.toml", CAMS)
    pts, _, _ = load_views(assign_files([DATA], CAMS))
    all_views = np.full(eks.shape[:2], 0b111, dtype=np.uint16)
    err_eks, _ = reprojection(cams, eks, pts, all_views)
    res: dict[str, dict[str, float]] = {"eks": {"mean_reproj_px": float(np.nanmean(err_eks))}}
    for flt in ("none", "kf", "ekf"):
        out = args.out / flt
        fuse_files(DATA / "calibration.toml", CAMS, [DATA], out, filter=flt, progress=False)
        t = read_anipose3d(out / "pose3d.csv")
        d = np.linalg.norm(t.xyz - eks, axis=2)
        res[flt] = {
            "mean_reproj_px": float(np.nanmean(t.error[t.ncams > 0])),
            "median_dist_to_eks": float(np.nanmedian(d)),
            "p95_dist_to_eks": float(np.nanpercentile(d, 95)),
            "measured_pct": float(100 * np.mean(t.ncams > 0)),
        }
    spread = np.nanmedian(np.linalg.norm(eks[:, 1] - eks[:, 0], axis=1))
    res["scale"] = {"median_L1A_L1B_distance": float(spread)}
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
