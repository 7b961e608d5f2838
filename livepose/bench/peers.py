"""The offline tools we compare with, each behind a function that says when it is missing.

- :func:`anipose_group`: our cameras as an aniposelib ``CameraGroup`` (``bench`` extra);
- :func:`anipose_ransac`: aniposelib's ``triangulate_ransac`` search (every camera subset
  of ≥ 2 views, keep the lowest mean reprojection error, none above 200 px) vectorised over
  points with aniposelib's own undistortion and projection (OpenCV) and its unweighted
  homogeneous DLT — aniposelib's loop calls JAX per subset and point (≈ 1 s per frame);
  :func:`check_anipose_ransac` compares both on a few points;
- :func:`numpy_dlt`: Pose2Sim's confidence-weighted DLT, one SVD per keypoint (NumPy);
- :func:`run_eks`: EKS's nonlinear multi-camera smoother (``ensemble-kalman-smoother``);
- :func:`ukf_track`: filterpy's ``UnscentedKalmanFilter`` on our EKF's measurement model.
"""

from __future__ import annotations

import importlib.util
import itertools
from typing import Any

import numpy as np

from livepose.core.camera import CameraGroup


def missing(*modules: str) -> list[str]:
    """The modules in ``modules`` that are not installed."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def anipose_group(cameras: CameraGroup) -> Any:
    """An aniposelib ``CameraGroup`` with the same cameras (pinhole only)."""
    from aniposelib.cameras import Camera, FisheyeCamera
    from aniposelib.cameras import CameraGroup as AGroup

    cams = []
    for c in cameras.cameras:
        cls = FisheyeCamera if c.fisheye else Camera
        cams.append(cls(matrix=c.matrix, dist=c.dist, size=list(c.size), rvec=c.rvec,
                        tvec=c.tvec, name=c.name))
    return AGroup(cams)


def _undistort_all(group: Any, uv: np.ndarray) -> np.ndarray:
    """``(C, N, 2)`` pixels → aniposelib's undistorted normalised points (NaN kept)."""
    out = np.full(uv.shape, np.nan)
    for c, cam in enumerate(group.cameras):
        ok = np.isfinite(uv[c]).all(axis=1)
        if ok.any():
            out[c, ok] = cam.undistort_points(np.ascontiguousarray(uv[c, ok], dtype=np.float64))
    return out


def anipose_ransac(group: Any, uv: np.ndarray, min_cams: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """aniposelib's ``triangulate_ransac`` (see the module docstring), vectorised.

    Parameters
    ----------
    group
        aniposelib ``CameraGroup`` (``C`` cameras).
    uv
        ``(C, N, 2)`` pixels; NaN = no view.

    Returns
    -------
    xyz, err
        ``(N, 3)`` (NaN where no subset qualifies) and ``(N,)`` mean reprojection error (px).
    """
    C, N, _ = uv.shape
    und = _undistort_all(group, uv)
    Ms = np.stack([cam.get_extrinsics_mat()[:3] for cam in group.cameras])  # (C, 3, 4)
    valid = np.isfinite(und).all(axis=2)  # (C, N)
    n_valid = valid.sum(axis=0)
    best = np.full(N, 200.0)
    out = np.full((N, 3), np.nan)
    for k in range(2, C + 1):
        for sub in itertools.combinations(range(C), k):
            s = list(sub)
            ok = valid[s].all(axis=0) & ((k >= min_cams) | (k == n_valid))
            if not ok.any():
                continue
            pts = und[s][:, ok]  # (k, n, 2)
            A = pts[..., None] * Ms[s][:, None, 2:3, :] - Ms[s][:, None, 0:2, :]  # (k,n,2,4)
            A = A.transpose(1, 0, 2, 3).reshape(-1, 2 * k, 4)
            _, _, vh = np.linalg.svd(A)
            X = vh[:, -1, :3] / vh[:, -1, 3:4]
            err = np.zeros(len(X))
            for c in s:
                proj = group.cameras[c].project(X).reshape(-1, 2)
                err += np.linalg.norm(proj - uv[c, ok], axis=1)
            err /= k
            idx = np.nonzero(ok)[0]
            better = err < best[idx]
            best[idx[better]] = err[better]
            out[idx[better]] = X[better]
    return out, np.where(np.isfinite(out[:, 0]), best, np.nan)


def check_anipose_ransac(group: Any, uv: np.ndarray) -> float:
    """Largest distance (mm) between :func:`anipose_ransac` and aniposelib's own
    ``triangulate_ransac`` on ``uv`` ``(C, n, 2)`` (keep ``n`` small: ≈ 50 ms per point)."""
    ours, _ = anipose_ransac(group, uv)
    theirs = group.triangulate_ransac(uv, undistort=True, min_cams=2, progress=False)[0]
    d = np.linalg.norm(ours - theirs, axis=1)
    return float(np.nanmax(d)) if np.isfinite(d).any() else 0.0


def numpy_dlt(Kp: np.ndarray, uv_und: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """Pose2Sim's ``weighted_triangulation`` for every keypoint of one frame (a Python loop
    with one SVD per keypoint, as Pose2Sim does).

    Parameters
    ----------
    Kp
        ``(C, 3, 4)`` projection matrices ``K [R | t]``.
    uv_und
        ``(C, J, 2)`` undistorted pixels.
    conf
        ``(C, J)`` confidences (0 = not used).
    """
    J = uv_und.shape[1]
    out = np.full((J, 3), np.nan)
    for j in range(J):
        w = conf[:, j]
        use = w > 0
        if use.sum() < 2:
            continue
        x, y, P, ww = uv_und[use, j, 0], uv_und[use, j, 1], Kp[use], w[use]
        A = np.concatenate([(P[:, 2] * x[:, None] - P[:, 0]) * ww[:, None],
                            (P[:, 2] * y[:, None] - P[:, 1]) * ww[:, None]])
        _, _, vh = np.linalg.svd(A)
        out[j] = vh[3, :3] / vh[3, 3]
    return out


def run_eks(
    ensemble: np.ndarray, keypoints: list[str], group: Any, fit_frames: int | None = None,
    inflate_vars: bool = True,
) -> tuple[np.ndarray, float]:
    """EKS's nonlinear multi-camera smoother over a whole recording (non-causal), with its
    Mahalanobis variance inflation (``inflate_vars``); the smoothing parameter is fit on the
    first ``fit_frames`` frames (``None``: all, EKS's default — slow).

    Parameters
    ----------
    ensemble
        ``(M, C, T, J, 3)`` x, y, likelihood of every ensemble member.
    group
        The aniposelib ``CameraGroup`` (EKS's calibrated projection).

    Returns
    -------
    xyz, seconds
        ``(T, J, 3)`` smoothed 3D positions and the wall time.
    """
    import time

    from eks.marker_array import MarkerArray
    from eks.multicam_smoother import ensemble_kalman_smoother_multicam

    t0 = time.perf_counter()
    ma = MarkerArray(array=np.asarray(ensemble, dtype=np.float32),
                     data_fields=["x", "y", "likelihood"])
    _, _, df3 = ensemble_kalman_smoother_multicam(
        marker_array=ma, keypoint_names=list(keypoints), camera_names=group.get_names(),
        camgroup=group, inflate_vars=inflate_vars,
        s_frames=None if fit_frames is None else [(0, int(fit_frames))],
    )
    arr = df3.to_numpy(dtype=np.float64).reshape(ensemble.shape[2], len(keypoints), 6)
    return arr[..., :3], time.perf_counter() - t0


def _h(P: np.ndarray, c: int, x: np.ndarray) -> np.ndarray:
    Xc = P[c, :, :3] @ x[:3] + P[c, :, 3]
    return np.asarray(Xc[:2] / Xc[2])


def ukf_track(
    P: np.ndarray, K: np.ndarray, xn: np.ndarray, rvar: np.ndarray, x0: np.ndarray,
    fps: float, q: float, v0var: float, gate2: float,
) -> np.ndarray:
    """filterpy's UKF on the EKF's model for one keypoint: constant velocity, measurements
    the undistorted normalised views (each gated at ``gate2`` against the prediction).

    Parameters
    ----------
    P, K
        ``(C, 3, 4)`` ``[R | t]`` and ``(C, 3, 3)`` intrinsics.
    xn
        ``(T, C, 2)`` normalised measurements (NaN = no view).
    rvar
        ``(T, C, 2)`` their variances (normalised units²).
    x0
        ``(T, 3)`` triangulated points: the track starts at the first finite one.
    """
    from filterpy.kalman import MerweScaledSigmaPoints, UnscentedKalmanFilter

    dt = 1.0 / fps
    T, C, _ = xn.shape

    def fx(x: np.ndarray, dt: float) -> np.ndarray:
        return np.concatenate([x[:3] + dt * x[3:], x[3:]])

    F1 = np.array([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]]) * q
    Q = np.zeros((6, 6))
    for a in range(3):
        Q[np.ix_([a, 3 + a], [a, 3 + a])] = F1
    out = np.full((T, 3), np.nan)
    ukf = None
    for t in range(T):
        if ukf is None:
            if not np.isfinite(x0[t]).all():
                continue
            pts = MerweScaledSigmaPoints(6, alpha=0.1, beta=2.0, kappa=0.0)
            ukf = UnscentedKalmanFilter(6, 2, dt, hx=None, fx=fx, points=pts)
            ukf.x = np.concatenate([x0[t], np.zeros(3)])
            ukf.P = np.diag([1.0, 1.0, 1.0, v0var, v0var, v0var])
            ukf.Q = Q
            out[t] = x0[t]
            continue
        ukf.predict()
        acc = []
        for c in range(C):  # gate each view against the prediction (sigma points)
            z = xn[t, c]
            if not np.isfinite(z).all():
                continue
            sig_h = np.array([_h(P, c, s) for s in ukf.sigmas_f])
            zp = ukf.Wm @ sig_h
            S = (sig_h - zp).T @ np.diag(ukf.Wc) @ (sig_h - zp) + np.diag(rvar[t, c])
            nu = z - zp
            if nu @ np.linalg.solve(S, nu) <= gate2:
                acc.append(c)
        if acc:  # one update with every accepted view (filterpy takes any dim_z with R)
            z = np.concatenate([xn[t, c] for c in acc])
            R = np.diag(np.concatenate([rvar[t, c] for c in acc]))

            def hx(x: np.ndarray, acc: list[int] = acc) -> np.ndarray:
                return np.concatenate([_h(P, c, x) for c in acc])

            ukf.update(z, R=R, hx=hx)
        out[t] = ukf.x[:3]
    return out
