"""``livepose bench accuracy``: 3D error of online fusion against the offline tools.

Every scenario (:mod:`livepose.bench.scenarios`) is the sim animal seen by a sim rig of 3–6
cameras through an ensemble of noisy 2D detectors with outliers and occlusions. On identical
inputs (the ensemble median and variance, as ``livepose fuse`` uses them):

- ``dlt``: confidence-weighted DLT with every view ≥ the likelihood threshold (no
  exclusion); ``pose2sim``: the same with Pose2Sim's rule (drop the worst view while the
  reprojection error exceeds the threshold) — both our :class:`Triangulator`, no filter;
- ``anipose_ransac``: aniposelib's subset search (:func:`~livepose.bench.peers.anipose_ransac`);
- ``kf``, ``kf_ca``, ``ekf``, ``ekf_ca``: our filters through :class:`Fuser` (the live code),
  frame by frame;
- ``ukf``: filterpy's ``UnscentedKalmanFilter`` on the EKF's measurement model (reference);
- ``eks``: EKS's offline nonlinear multi-camera smoother on the raw ensemble (non-causal),
  with its variance inflation on (as its CLI defaults); its smoothing parameter is fit on
  the first ``eks_fit_frames`` frames (its ``s_frames`` option) and it runs on the outlier
  scenarios only, to keep the run under 5 minutes here.

Metrics over every keypoint and frame with an output: median, p95 and RMSE of the 3D error
(mm), % of errors > 10 mm, coverage (% with an output) and jitter (mean |acceleration| of
the output, m/s²; the truth's is given for reference).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from livepose.bench import peers
from livepose.bench.results import write_json
from livepose.bench.scenarios import Scenario, SimRecording, simulate
from livepose.core.config import Config, FusionConfig, SimCameraConfig

OURS = {  # method → (filter, kalman model, ensemble variance used, reprojection threshold)
    "dlt": ("none", "cv", False, 1e9),
    "pose2sim": ("none", "cv", False, None),
    "kf": ("kf", "cv", True, None),
    "kf_ca": ("kf", "ca", True, None),
    "ekf": ("ekf", "cv", True, None),
    "ekf_ca": ("ekf", "ca", True, None),
}


def default_scenarios(frames: int = 300) -> list[Scenario]:
    """Outlier scenarios (3, 4, 6 cameras × σ 1, 3 px) and one clean one."""
    out = [Scenario(f"{n}cam_{s}px_outliers", n, float(s), n_frames=frames)
           for n in (3, 4, 6) for s in (1, 3)]
    out.append(Scenario("4cam_1px_clean", 4, 1.0, outlier_rate=0.0, occlusion_rate=0.0,
                        n_frames=frames))
    return out


def quick_scenarios() -> list[Scenario]:
    """One tiny scenario (smoke test of the whole benchmark)."""
    return [Scenario("3cam_1px_outliers_quick", 3, 1.0, n_frames=40)]


def metrics(est: np.ndarray, truth: np.ndarray, fps: float) -> dict[str, float]:
    """Error statistics of ``est`` ``(T, J, 3)`` against ``truth`` (see module docstring)."""
    err = np.linalg.norm(est - truth, axis=2)
    ok = np.isfinite(err)
    e = err[ok]
    acc = (est[2:] - 2 * est[1:-1] + est[:-2]) * fps * fps
    an = np.linalg.norm(acc, axis=2)
    an = an[np.isfinite(an)]
    if e.size == 0:
        return {"coverage_pct": 0.0}
    return {
        "median_mm": float(np.median(e)),
        "p95_mm": float(np.percentile(e, 95)),
        "rmse_mm": float(np.sqrt(np.mean(e**2))),
        "over_10mm_pct": float(100.0 * np.mean(e > 10.0)),
        "coverage_pct": float(100.0 * ok.mean()),
        "jitter_m_s2": float(np.mean(an) / 1000.0) if an.size else float("nan"),
    }


def run_ours(rec: SimRecording, fps: float, fusion: FusionConfig) -> np.ndarray:
    """``(T, J, 3)`` output of :class:`~livepose.fusion.process.Fuser`, frame by frame."""
    from livepose.fusion.process import Fuser

    names = rec.cameras.names
    cfg = Config(cameras=[SimCameraConfig(backend="sim", name=n) for n in names], fps=fps,
                 fusion=fusion)
    fuser = Fuser(rec.cameras, cfg)
    med, var = rec.median()
    use_var = fusion.filter != "none"
    T = med.shape[1]
    out = np.empty(rec.truth.shape)
    for t in range(T):
        pts = np.ascontiguousarray(med[:, t])
        zv = np.ascontiguousarray(var[:, t]) if use_var else None
        out[t] = fuser.step(pts, t, zv).xyz
    return out


def run_ukf(rec: SimRecording, fps: float, fusion: FusionConfig, x0: np.ndarray) -> np.ndarray:
    """filterpy's UKF per keypoint (:func:`~livepose.bench.peers.ukf_track`)."""
    med, var = rec.median()
    C, T, J, _ = med.shape
    cams = rec.cameras.cameras
    f2 = np.array([[c.matrix[0, 0] ** 2, c.matrix[1, 1] ** 2] for c in cams])  # (C, 2)
    use = med[..., 2] >= fusion.likelihood_threshold
    xn = np.stack([cams[c].undistort(med[c, :, :, :2].reshape(-1, 2)).reshape(T, J, 2)
                   for c in range(C)])
    xn[~use] = np.nan
    rvar = ((fusion.pixel_noise_px or 1.0) ** 2 / np.maximum(med[..., 2:3], 1e-3) ** 2 + var) / f2[:, None, None]
    P = np.stack([c.P for c in cams])
    K = np.stack([c.matrix for c in cams])
    k = fusion.kalman
    out = np.empty((T, J, 3))
    for j in range(J):
        out[:, j] = peers.ukf_track(
            P, K, xn[:, :, j].transpose(1, 0, 2), rvar[:, :, j].transpose(1, 0, 2), x0[:, j],
            fps, k.accel_noise_mm_s2, k.init_speed_mm_s**2, fusion.ekf.gate_sigma**2,
        )
    return out


def run_scenario(
    sc: Scenario, fusion: FusionConfig, with_peers: dict[str, bool], eks_fit_frames: int = 100,
) -> dict[str, Any]:
    """Every method on one scenario → ``{"scenario", "truth_jitter_m_s2", "methods",
    "seconds", "errors"}`` (``errors``: per-method error arrays, not JSON)."""
    rec = simulate(sc)
    res: dict[str, Any] = {"scenario": sc.to_dict(), "methods": {}, "seconds": {}, "errors": {}}
    res["truth_jitter_m_s2"] = metrics(rec.truth, rec.truth, sc.fps)["jitter_m_s2"]
    outputs: dict[str, np.ndarray] = {}

    def record(name: str, fn: Callable[[], np.ndarray]) -> None:
        t0 = time.perf_counter()
        est = fn()
        res["seconds"][name] = round(time.perf_counter() - t0, 3)
        outputs[name] = est
        res["methods"][name] = metrics(est, rec.truth, sc.fps)
        res["errors"][name] = np.linalg.norm(est - rec.truth, axis=2)

    for name, (flt, model, _, thr) in OURS.items():
        f = fusion.model_copy(deep=True)
        f.filter = flt  # type: ignore[assignment]
        f.kalman.model = model  # type: ignore[assignment]
        if thr is not None:
            f.reproj_threshold_px = thr
        record(name, functools.partial(run_ours, rec, sc.fps, f))
    med, _ = rec.median()
    C, T, J, _ = med.shape
    if with_peers.get("ukf"):
        record("ukf", lambda: run_ukf(rec, sc.fps, fusion, outputs["pose2sim"]))
    if with_peers.get("aniposelib") or with_peers.get("eks"):
        group = peers.anipose_group(rec.cameras)
        if with_peers.get("aniposelib"):
            uv = med[..., :2].copy()
            uv[med[..., 2] < fusion.likelihood_threshold] = np.nan
            record("anipose_ransac",
                   lambda: peers.anipose_ransac(group, uv.reshape(C, T * J, 2))[0].reshape(T, J, 3))
        if with_peers.get("eks") and sc.outlier_rate > 0:  # ~40 s each: outlier scenarios only
            record("eks", lambda: peers.run_eks(rec.ensemble, rec.keypoints, group,
                                                fit_frames=eks_fit_frames)[0])
    return res


def _pooled_p95(results: list[dict[str, Any]], method: str) -> float:
    errs = [r["errors"][method][np.isfinite(r["errors"][method])] for r in results
            if method in r["errors"]]
    return float(np.percentile(np.concatenate(errs), 95)) if errs else float("nan")


def summarise(results: list[dict[str, Any]], unavailable: dict[str, str]) -> dict[str, Any]:
    """The JSON ``summary``: p95 ratios pooled over the outlier scenarios (and the worst
    scenario's ratio)."""
    outl = [r for r in results if r["scenario"]["outlier_rate"] > 0]
    s: dict[str, Any] = {"scenarios_pooled": [r["scenario"]["name"] for r in outl]}
    for m in ("dlt", "pose2sim", "anipose_ransac", "kf", "kf_ca", "ekf", "ekf_ca", "ukf", "eks"):
        s[f"{m}_p95_mm"] = _pooled_p95(outl, m)
    for ref in ("eks", "dlt", "ukf"):
        s[f"ekf_p95_over_{ref}_p95"] = s["ekf_p95_mm"] / s[f"{ref}_p95_mm"]
        per = [r["methods"]["ekf"]["p95_mm"] / r["methods"][ref]["p95_mm"] for r in outl
               if ref in r["methods"] and "p95_mm" in r["methods"][ref]]
        s[f"ekf_p95_over_{ref}_p95_worst_scenario"] = max(per) if per else float("nan")
    s["unavailable"] = unavailable
    return s


def run(json_path: Path | None, frames: int = 300, scenarios: list[Scenario] | None = None,
        fusion: FusionConfig | None = None, eks_fit_frames: int = 100,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark; write the JSON to ``json_path`` when given and return it."""
    fusion = fusion or FusionConfig()
    scs = scenarios if scenarios is not None else default_scenarios(frames)
    unavailable = {}
    for name, mods, extra in (("aniposelib", ["aniposelib", "cv2"], "bench"),
                              ("eks", ["eks", "aniposelib", "cv2"], "bench"),
                              ("ukf", ["filterpy"], "dev")):
        miss = peers.missing(*mods)
        if miss:
            unavailable[name] = f"not installed: {', '.join(miss)} ({extra} extra/group)"
    with_peers = {k: k not in unavailable for k in ("aniposelib", "eks", "ukf")}
    if scenarios is not None and all(sc.n_frames < 100 for sc in scenarios):
        with_peers["eks"] = False  # its fit needs frames, and JAX compiles for a minute
        unavailable.setdefault("eks", "skipped: scenarios shorter than 100 frames (--quick)")
    t0 = time.perf_counter()
    results = []
    for sc in scs:
        if progress:
            progress(sc.name)
        results.append(run_scenario(sc, fusion, with_peers, eks_fit_frames))
    out = {
        "benchmark": "accuracy",
        "summary": summarise(results, unavailable),
        "scenarios": [{k: v for k, v in r.items() if k != "errors"} for r in results],
        "fusion_config": fusion.model_dump(mode="json"),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return write_json(out, json_path)

