"""``livepose bench real``: the bundled BlazePose on real footage (Pose2Sim's demo, 4 colour
cameras, 60 fps, portrait full HD), through ``livepose track`` — the live pipeline.

Runs (subprocesses of the ``livepose`` command a lab would use):

1. ``livepose calibration import`` of the demo's Qualisys file (mm);
2. ``livepose track --paced`` on the first ``frames`` frames (every frame-set processed);
3. ``livepose track`` unpaced (the videos' 60 fps; skips counted, as on a rig).

Reports (``--json``):

- ``agreement_px``: 2D of livepose's BlazePose vs MediaPipe's own runtime on the same frames
  (median / p95 px, all 33 keypoints where both have a pose). The oracle is an ``.npz`` made
  by ``scripts/blazepose_oracle.py`` in a scratch venv with ``mediapipe`` (its command is in
  the script; MediaPipe pins numpy < 2, so it is not a dependency);
- ``reproj_px``: livepose's 3D (``pose3d.csv``) projected into every camera against that
  camera's own 2D (views with confidence ≥ ``fusion.likelihood_threshold``): median, p99 and
  p99 / median;
- ``loo_px``: leave-one-camera-out — camera ``c``'s 2D predicted from the 3D of the others
  (livepose's fusion, the live ``Fuser``, run on the recorded 2D without ``c``), next to
  aniposelib's ``triangulate_ransac`` of the same 2D (same likelihood threshold; extra
  ``bench``, needs ``cv2``);
- ``coverage``: share of frames with every limb, hip, foot and nose keypoint in 3D, and the
  share of keypoints seen by ≥ 2 views (after the threshold) that have a 3D position;
- ``detector``: detector runs per frame-set after lock-on;
- ``paced_fps`` and ``live`` (skipped frame-sets at the videos' rate).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from livepose.core.calibration import read_calibration
from livepose.core.camera import CameraGroup

#: limb, hip, foot and nose keypoints (MediaPipe names) for ``coverage``
CORE = ("nose", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
        "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
        "right_ankle", "left_heel", "right_heel", "left_foot_index", "right_foot_index")


def _livepose(*args: str, timeout_s: float = 1800) -> None:
    """Run ``livepose ARGS`` (this interpreter); raise with its stderr tail on failure."""
    cmd = [sys.executable, "-m", "livepose", *args]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout_s,
                       env={**os.environ, "COLUMNS": "120"})
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed ({r.returncode}): {r.stderr[-800:]}")


def load_2d(folder: Path, cams: list[str], keypoints: list[str], n: int) -> np.ndarray:
    """``(C, n, J, 3)`` x, y, confidence from ``folder/<cam>.csv`` (DLC layout), rows by
    frame index; NaN where absent."""
    from livepose.formats.dlc import read_dlc_csv

    out = np.full((len(cams), n, len(keypoints), 3), np.nan)
    for c, cam in enumerate(cams):
        p = read_dlc_csv(folder / f"{cam}.csv")
        idx = [p.keypoints.index(k) for k in keypoints]
        rows = np.array([int(i) for i in p.index], dtype=np.int64)
        pts = p.points[:, idx]
        ok = rows < n
        out[c, rows[ok]] = pts[ok]
    return out


def project_all(group: CameraGroup, xyz: np.ndarray) -> np.ndarray:
    """``(T, J, 3)`` → ``(C, T, J, 2)`` pixels (NaN where ``xyz`` is)."""
    T, J, _ = xyz.shape
    flat = xyz.reshape(-1, 3)
    ok = np.isfinite(flat).all(1)
    out = np.full((len(group.cameras), T * J, 2), np.nan)
    for c, cam in enumerate(group.cameras):
        out[c, ok] = cam.project(flat[ok]).reshape(-1, 2)
    return out.reshape(len(group.cameras), T, J, 2)


def _err(pred: np.ndarray, obs: np.ndarray, thr: float) -> np.ndarray:
    """Pixel distances where ``obs`` (…, 3) is confident and ``pred`` finite."""
    d = np.linalg.norm(pred - obs[..., :2], axis=-1)
    use = (obs[..., 2] >= thr) & np.isfinite(d)
    return np.asarray(d[use])


def _stats(d: np.ndarray) -> dict[str, float | int | None]:
    if not len(d):
        return {"median": None, "p95": None, "p99": None, "n": 0}
    med = float(np.median(d))
    return {"median": round(med, 3), "p95": round(float(np.percentile(d, 95)), 3),
            "p99": round(float(np.percentile(d, 99)), 3),
            "p99_over_median": round(float(np.percentile(d, 99)) / med, 2) if med else None,
            "n": len(d)}


def fuse_offline(group: CameraGroup, cfg: Any, pts: np.ndarray) -> np.ndarray:
    """livepose's live ``Fuser`` over ``pts`` ``(C, T, J, 3)`` in frame order → ``(T, J, 3)``."""
    from livepose.fusion.process import Fuser

    fuser = Fuser(group, cfg)  # the model's noise, as the live fusion
    out = np.full(pts.shape[1:], np.nan)
    for t in range(pts.shape[1]):
        out[t] = fuser.step(np.ascontiguousarray(pts[:, t], np.float32), t).xyz
    return out


def measure_sigma(group: CameraGroup, cfg: Any, pts: np.ndarray,
                  power: float = 1.0) -> dict[str, Any]:
    """The 2D noise σ at confidence 1 (px) from the triangulation residuals of ``pts``.

    Every keypoint is triangulated (livepose's fusion, no filter) from its ``n ≥ 3`` confident
    views; a view's residual ``r`` (px) scaled by ``confidence ** power`` is a sample of a 2D
    error of σ shrunk by the fit (``(2n − 3) / 2n`` of its variance stays in the residual). For
    a 2D Gaussian the median distance is ``σ·√(2 ln 2)``, so σ = median(r·w / √((2n−3)/2n)) /
    1.1774. It holds calibration error too: the noise fusion actually sees.
    """
    c2 = cfg.model_copy(deep=True)
    c2.fusion.filter = "none"
    from livepose.fusion.process import Fuser

    fuser = Fuser(group, c2)
    C = pts.shape[0]
    samples = []
    for t in range(pts.shape[1]):
        f = fuser.step(np.ascontiguousarray(pts[:, t], np.float32), t)
        views = np.asarray(f.views)
        n = np.maximum(np.array([bin(int(v)).count("1") for v in views]), 3)
        uv = project_all(group, np.asarray(f.xyz)[None])[:, 0]  # (C, J, 2)
        for c in range(C):
            use = ((views >> c) & 1).astype(bool) & (n >= 3)
            r = np.linalg.norm(uv[c] - pts[c, t, :, :2], axis=-1)
            w = pts[c, t, :, 2] ** power
            samples.append((r * w / np.sqrt((2 * n - 3) / (2 * n)))[use])
    x = np.concatenate(samples)
    x = x[np.isfinite(x)]
    return {"sigma_px": round(float(np.median(x) / np.sqrt(2 * np.log(2))), 2),
            "confidence_power": power, "samples": len(x)}


def leave_one_out(group: CameraGroup, cfg: Any, pts: np.ndarray,
                  ransac: bool) -> dict[str, Any]:
    """Camera ``c``'s 2D predicted from the others' (livepose's fusion; aniposelib RANSAC)."""
    thr = cfg.fusion.likelihood_threshold
    lp, an = [], []
    agroup = None
    if ransac:
        from livepose.bench.peers import anipose_group, anipose_ransac

        agroup = anipose_group(group)
    C, T, J, _ = pts.shape
    for c in range(C):
        rest = pts.copy()
        rest[c] = np.nan
        xyz = fuse_offline(group, cfg, rest)
        lp.append(_err(project_all(group, xyz)[c], pts[c], thr))
        if agroup is not None:
            uv = np.where((rest[..., 2:3] >= thr), rest[..., :2], np.nan)
            axyz, _ = anipose_ransac(agroup, uv.reshape(C, T * J, 2))
            an.append(_err(project_all(group, axyz.reshape(T, J, 3))[c], pts[c], thr))
    res: dict[str, Any] = {"livepose": _stats(np.concatenate(lp))}
    if an:
        res["aniposelib_ransac"] = _stats(np.concatenate(an))
    return res


def coverage(xyz: np.ndarray, pts: np.ndarray, keypoints: list[str], thr: float,
             skip_first: int = 1) -> dict[str, Any]:
    """Share of frames with every :data:`CORE` keypoint in 3D, and of keypoints seen by ≥ 2
    confident views that have a 3D position (frames from ``skip_first`` on: the filter
    starts a track at its first triangulation and outputs it from the next frame)."""
    idx = [keypoints.index(k) for k in CORE if k in keypoints]
    fin = np.isfinite(xyz).all(-1)[skip_first:]
    seen = ((pts[..., 2] >= thr).sum(0) >= 2)[skip_first:]
    return {"frames_all_core": round(float(fin[:, idx].all(1).mean()), 4),
            "seen2_with_3d": round(float(fin[seen].mean()), 4) if seen.any() else None,
            "frames": int(fin.shape[0])}


def agreement(pts: np.ndarray, oracle: Path) -> dict[str, Any]:
    """Median/p95 px between ``pts`` ``(C, T, J, 3)`` and the oracle's ``lm``."""
    lm = np.load(oracle)["lm"]
    T = min(pts.shape[1], lm.shape[1])
    d = np.linalg.norm(pts[:, :T, :, :2] - lm[:, :T, :, :2], axis=-1)
    per = [round(float(np.nanmedian(d[c])), 3) for c in range(d.shape[0])]
    d = d[np.isfinite(d)]
    return {"median": round(float(np.median(d)), 3), "p95": round(float(np.percentile(d, 95)), 3),
            "per_camera_median": per, "frames": T, "oracle": str(oracle)}


def run_real(data: Path, out: Path, frames: int = 100, oracle: Path | None = None,
             live: bool = True) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); ``data``: the pose2sim-demo folder."""
    from livepose.core.config import Config

    out.mkdir(parents=True, exist_ok=True)
    calib = out / "calibration.toml"
    _livepose("calibration", "import", str(data / "calibration" / "Calib.qca.txt"),
              "--out", str(calib))
    group = read_calibration(calib)
    cams = list(group.names)
    paced = out / "paced"
    t0 = time.monotonic()
    _livepose("track", str(data / "single"), "-c", str(calib), "-o", str(paced), "--paced",
              "--frames", str(frames), "--no-live")
    wall = time.monotonic() - t0
    summ = json.loads((paced / "summary.json").read_text())
    from livepose.formats.anipose3d import read_anipose3d

    table = read_anipose3d(paced / "pose3d.csv")
    kps = list(table.keypoints)
    xyz = np.full((frames, len(kps), 3), np.nan)
    fnum = np.asarray(table.fnum)
    ok = fnum < frames
    xyz[fnum[ok]] = table.xyz[ok]
    pts = load_2d(paced / "pose2d", cams, kps, frames)
    sess = Path(summ["session"]["path"])
    cfg = Config.model_validate(__import__("yaml").safe_load((sess / "config.yaml").read_text()))
    thr = cfg.fusion.likelihood_threshold
    from livepose.bench.peers import missing

    det = summ.get("detector", {})
    no_peer = missing("aniposelib", "cv2")
    res: dict[str, Any] = {
        "footage": str(data / "single"), "frames": frames, "cameras": cams,
        # the 3D against the views fusion used (pose3d.csv's _error: their mean), and against
        # every confident view (a view fusion rejected as an outlier counts here too)
        "reproj_px": _stats(np.asarray(table.error)[np.isfinite(table.error)]),
        "reproj_all_confident_px": _stats(_err(project_all(group, xyz), pts, thr)),
        "loo_px": leave_one_out(group, cfg, pts, ransac=not no_peer),
        "coverage": coverage(xyz, pts, kps, thr),
        "noise": measure_sigma(group, cfg, pts),
        "detector": {**det, "runs_per_set_after_lock": round(
            det.get("redetect_sets", 0) / max(1, det.get("locked_sets", 0)), 4)},
        "paced_fps": summ.get("fused_fps"), "paced_wall_s": round(wall, 1),
        "inference_ms": summ.get("inference_ms"),
        "framesets_fused": summ.get("framesets_fused"),
    }
    if no_peer:  # said in the JSON and printed, never left out silently
        res["unavailable"] = {"aniposelib_ransac": f"not installed: {', '.join(no_peer)} "
                              "(bench extra)"}
    if oracle is not None:
        res["agreement_px"] = agreement(pts, oracle)
    if live:
        lv = out / "live"
        _livepose("track", str(data / "single"), "-c", str(calib), "-o", str(lv),
                  "--frames", str(frames), "--no-live")
        ls = json.loads((lv / "summary.json").read_text())
        res["live"] = {k: ls.get(k) for k in ("fps_target", "framesets_triggered",
                                              "framesets_fused", "framesets_skipped",
                                              "framesets_incomplete", "fused_fps",
                                              "latency_ms")}
    return res
