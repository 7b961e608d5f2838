"""Re-estimate one camera's extrinsics from the subject's own keypoints: after fusion names a
camera that drifted (fusion/drift.py), its 2D keypoints and the 3D points triangulated from
the *other* cameras give a PnP problem; intrinsics are kept. :func:`refine_session` does it
from a recorded session (``livepose calibrate refine``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from livepose.core.board import cv2_module
from livepose.core.camera import CameraModel, rodrigues, rodrigues_inv
from livepose.core.errors import UserError

MIN_POINTS = 30


def reestimate_extrinsics(cam: CameraModel, uv: np.ndarray, xyz: np.ndarray,
                          max_error_px: float = 8.0) -> tuple[CameraModel, float]:
    """A new pose for ``cam`` from keypoints.

    Parameters
    ----------
    cam
        The camera as calibrated (its intrinsics are kept; its pose is the start).
    uv
        ``(F, J, 2)`` its observed keypoints (distorted px), NaN where missing.
    xyz
        ``(F, J, 3)`` the same keypoints triangulated **without** this camera (world).
    max_error_px
        RANSAC inlier threshold.

    Returns
    -------
    camera, error
        The camera with the new rotation and translation, and the mean reprojection error
        (px) over the inliers.
    """
    cv2 = cv2_module()
    p2 = uv.reshape(-1, 2)
    p3 = xyz.reshape(-1, 3)
    ok = np.isfinite(p2).all(1) & np.isfinite(p3).all(1)
    if ok.sum() < MIN_POINTS:
        raise UserError(f"{cam.name}: {int(ok.sum())} keypoints seen with a 3D point from the "
                        f"other cameras; need {MIN_POINTS} to re-estimate its pose")
    obj, img = p3[ok].astype(np.float64), p2[ok].astype(np.float64)
    if cam.fisheye:
        img = cv2.fisheye.undistortPoints(img.reshape(-1, 1, 2), cam.matrix, cam.dist)
        img = img.reshape(-1, 2) @ cam.matrix[:2, :2].T + cam.matrix[:2, 2]
        dist = np.zeros(5)
    else:
        dist = cam.dist
    found, rv, tv, inl = cv2.solvePnPRansac(
        obj, img, cam.matrix, dist, rvec=cam.rvec.reshape(3, 1).copy(),
        tvec=cam.tvec.reshape(3, 1).copy(), useExtrinsicGuess=True,
        reprojectionError=max_error_px, iterationsCount=200, flags=cv2.SOLVEPNP_ITERATIVE)
    if not found or inl is None or len(inl) < MIN_POINTS:
        raise UserError(f"{cam.name}: no consistent pose from its keypoints")
    idx = inl.ravel()
    rv, tv = cv2.solvePnPRefineLM(obj[idx], img[idx], cam.matrix, dist, rv, tv)
    new = CameraModel(name=cam.name, size=cam.size, matrix=cam.matrix, dist=cam.dist,
                      rvec=rv.ravel(), tvec=tv.ravel(), fisheye=cam.fisheye)
    err = float(np.linalg.norm(new.project(obj[idx]) - p2[ok][idx], axis=1).mean())
    return new, err


def triangulate(cams: list[CameraModel], uv: np.ndarray, min_views: int = 2) -> np.ndarray:
    """Linear (DLT) triangulation of every point, vectorised.

    Parameters
    ----------
    cams
        ``C`` cameras.
    uv
        ``(C, N, 2)`` distorted pixels, NaN where a camera did not see the point.
    min_views
        Points seen by fewer cameras are NaN.

    Returns
    -------
    np.ndarray
        ``(N, 3)`` world points.
    """
    C, N = uv.shape[:2]
    A = np.zeros((N, 2 * C, 4))
    seen = np.isfinite(uv).all(axis=2)  # (C, N)
    for c, cam in enumerate(cams):  # per camera, all points at once
        xy = np.full((N, 2), np.nan)
        if seen[c].any():
            xy[seen[c]] = cam.undistort(uv[c, seen[c]])
        P = np.hstack([cam.R, cam.tvec.reshape(3, 1)])  # normalised coordinates
        rows = np.stack([xy[:, :1] * P[2] - P[0], xy[:, 1:] * P[2] - P[1]], axis=1)
        A[:, 2 * c:2 * c + 2] = np.where(seen[c][:, None, None], rows, 0.0)
    _, _, vt = np.linalg.svd(A)
    X = vt[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        xyz = X[:, :3] / X[:, 3:]
    xyz[seen.sum(0) < min_views] = np.nan
    return xyz


def session_keypoints(session: Path, min_score: float = 0.5
                      ) -> tuple[list[CameraModel], dict[str, np.ndarray], str | None]:
    """A recorded session's calibration and 2D keypoints.

    Returns
    -------
    cameras, uv, units
        The session's calibration (``calibration.toml``), per camera with a
        ``pose2d/<cam>.csv`` its keypoints ``(T·J, 2)`` over the frames every such camera
        has (NaN where missing or below ``min_score``), and the calibration's unit.
    """
    from livepose.core.calibration import read_calibration, read_calibration_units
    from livepose.formats.dlc import read_dlc_csv

    calib = session / "calibration.toml"
    if not calib.exists():
        raise UserError(f"{session}: not a livepose session (no calibration.toml)")
    group = list(read_calibration(calib))
    tables = {c.name: read_dlc_csv(p) for c in group
              if (p := session / "pose2d" / f"{c.name}.csv").exists()}
    if not tables:
        raise UserError(f"{session}: no 2D predictions (pose2d/<camera>.csv)")
    rows = sorted(set.intersection(*(set(t.index) for t in tables.values())),
                  key=lambda s: (len(s), s))
    if not rows:
        raise UserError(f"{session}: the cameras' 2D CSVs share no frame")
    uv = {}
    for n, t in tables.items():
        at = {lab: i for i, lab in enumerate(t.index)}
        pts = t.points[[at[r] for r in rows]]
        u = pts[..., :2].copy()
        u[~(pts[..., 2] >= min_score)] = np.nan
        uv[n] = u.reshape(-1, 2)
    return group, uv, read_calibration_units(calib)


def refine_session(session: Path, camera: str | None, out: Path, min_score: float = 0.5,
                   max_spread_px: float = 6.0) -> dict[str, Any]:
    """Re-estimate one camera's pose, or every camera's, from a recorded session's
    keypoints; ``out`` gets the session's calibration with the new poses (same unit).

    One camera: the session's 2D predictions (``pose2d/<cam>.csv``) are triangulated from
    the *other* cameras with the session's calibration; points those cameras disagree on
    (reprojection > ``max_spread_px``) and keypoints below ``min_score`` are left out;
    :func:`reestimate_extrinsics` gives ``camera`` its new pose. ``camera=None``: the whole
    rig by :func:`refine_rig`.

    Returns
    -------
    dict
        ``camera`` (``"all"`` for the rig), ``points`` used, ``error_before_px`` /
        ``error_after_px`` (mean reprojection), ``rotation_deg`` and ``shift`` (centre, in
        the calibration's unit) of the change (the rig: per camera under ``cameras``),
        ``toml``.
    """
    from livepose.core.calibration import write_calibration

    group, uvs, units = session_keypoints(session, min_score)
    names = [c.name for c in group]
    if camera is None:
        used = [c for c in group if c.name in uvs]
        if len(used) < 2:
            raise UserError(f"{session}: 2D predictions of {len(used)} camera(s); refining "
                            "the rig needs two or more")
        new, st = refine_rig(used, np.stack([uvs[c.name] for c in used]))
        by = {c.name: c for c in new}
        write_calibration(out, [by.get(c.name, c) for c in group], units=units)
        return {"camera": "all", **st, "units": units, "toml": str(out),
                "cameras": {c.name: _change(c, by[c.name]) for c in used}}
    if camera not in names:
        raise UserError(f"--camera {camera!r}: not in the session's calibration {names}")
    if camera not in uvs:
        raise UserError(f"{session}: no 2D predictions of {camera} (pose2d/{camera}.csv)")
    others = [n for n in names if n in uvs and n != camera]
    if len(others) < 2:
        raise UserError(f"{session}: 2D predictions of {len(others)} other camera(s); "
                        "re-estimating a camera needs two others")
    cams = {c.name: c for c in group}
    uv_o = np.stack([uvs[n] for n in others])
    xyz = triangulate([cams[n] for n in others], uv_o)
    spread = np.stack([np.linalg.norm(cams[n].project(xyz) - uv_o[k], axis=1)
                       for k, n in enumerate(others)])
    worst = np.where(np.isfinite(spread), spread, -np.inf).max(axis=0)  # -inf: no point
    xyz[worst > max_spread_px] = np.nan
    uv_c = uvs[camera]
    old = cams[camera]
    new_cam, err = reestimate_extrinsics(old, uv_c[None], xyz[None])
    ok = np.isfinite(uv_c).all(1) & np.isfinite(xyz).all(1)
    before = np.linalg.norm(old.project(xyz[ok]) - uv_c[ok], axis=1)
    after = np.linalg.norm(new_cam.project(xyz[ok]) - uv_c[ok], axis=1)
    keep = after <= np.percentile(after, 90)  # the same points for both numbers
    write_calibration(out, [new_cam if c.name == camera else c for c in group], units=units)
    return {"camera": camera, "points": int(ok.sum()),
            "error_before_px": float(before[keep].mean()),
            "error_after_px": float(after[keep].mean()), "ransac_error_px": err,
            **_change(old, new_cam), "units": units, "toml": str(out)}


def _change(old: CameraModel, new: CameraModel) -> dict[str, float]:
    """How far a camera's pose moved: rotation (°) and centre shift."""
    cosang = (np.trace(new.R @ old.R.T) - 1) / 2
    return {"rotation_deg": float(np.degrees(np.arccos(np.clip(cosang, -1, 1)))),
            "shift": float(np.linalg.norm(new.center - old.center))}


def _pose_cam(c: CameraModel, R: np.ndarray, t: np.ndarray) -> CameraModel:
    return CameraModel(name=c.name, size=c.size, matrix=c.matrix, dist=c.dist,
                       rvec=rodrigues_inv(R), tvec=t, fisheye=c.fisheye)


def refine_rig(cams: list[CameraModel], uv: np.ndarray, iters: int = 40,
               huber_px: float = 2.0) -> tuple[list[CameraModel], dict[str, float]]:
    """Every camera's extrinsics from the subject's keypoints (Anipose / Pose2Sim-style
    keypoint calibration); intrinsics kept.

    Unknowns: each camera's pose but camera 0's (the world frame stays camera 0's) and every
    keypoint seen by two cameras or more. Levenberg–Marquardt with the points eliminated from
    each step (3 × 3 blocks: the linear solve is the size of the cameras), a Huber loss of
    ``huber_px`` (iteratively reweighted), numeric derivatives (each camera's 6 and each
    point's 3 parameters touch only their own residuals). Keypoints fix the rig only up to
    scale: the result is scaled about camera 0 so the mean distance of the others from it is
    the starting rig's.

    Parameters
    ----------
    cams
        ``C`` cameras (the starting rig).
    uv
        ``(C, N, 2)`` observed keypoints (distorted px), NaN where missing.

    Returns
    -------
    cameras, stats
        The refined cameras and ``{"points", "iterations", "error_before_px",
        "error_after_px"}`` (mean reprojection over the observations used).
    """
    C = len(cams)
    uv = uv[:, np.isfinite(uv).all(axis=2).sum(0) >= 2]
    X = triangulate(cams, uv)
    ok = np.isfinite(X).all(1)
    uv, X = uv[:, ok], X[ok]
    N = X.shape[0]
    if N < MIN_POINTS:
        raise UserError(f"{N} keypoints seen by two cameras or more; need {MIN_POINTS} to "
                        "refine the rig")
    ci, pi = np.nonzero(np.isfinite(uv).all(axis=2))
    obs = uv[ci, pi]
    Rs = [c.R.copy() for c in cams]
    ts = [c.tvec.astype(np.float64).copy() for c in cams]
    nc = 6 * (C - 1)
    by_cam = [np.flatnonzero(ci == k) for k in range(C)]

    def resid(Rs: list[np.ndarray], ts: list[np.ndarray], X: np.ndarray) -> np.ndarray:
        r = np.empty((ci.size, 2))
        for k in range(C):
            o = by_cam[k]
            r[o] = _pose_cam(cams[k], Rs[k], ts[k]).project(X[pi[o]]) - obs[o]
        return r

    def cost(r: np.ndarray) -> tuple[float, np.ndarray]:
        n = np.linalg.norm(r, axis=1)
        w = np.where(n <= huber_px, 1.0, huber_px / np.maximum(n, 1e-12))
        rho = np.where(n <= huber_px, n ** 2, 2 * huber_px * n - huber_px ** 2)
        return float(rho.sum()), w

    r = resid(Rs, ts, X)
    before = float(np.linalg.norm(r, axis=1).mean())
    f, w = cost(r)
    lam = 1e-3
    it = 0
    for it in range(1, iters + 1):  # noqa: B007 (reported)
        Jc = np.zeros((ci.size, 2, 6))
        Jp = np.zeros((ci.size, 2, 3))
        for k in range(C):
            o = by_cam[k]
            cam = _pose_cam(cams[k], Rs[k], ts[k])
            for j in range(3):  # d/dX
                dX = np.zeros(3)
                dX[j] = 1e-4
                Jp[o, :, j] = (cam.project(X[pi[o]] + dX) - obs[o] - r[o]) / 1e-4
            if k == 0:
                continue
            for j in range(6):  # d/d(left rotation, translation)
                d = np.zeros(6)
                d[j] = 1e-7 if j < 3 else 1e-4
                c2 = _pose_cam(cams[k], rodrigues(d[:3]) @ Rs[k], ts[k] + d[3:])
                Jc[o, :, j] = (c2.project(X[pi[o]]) - obs[o] - r[o]) / d[j]
        Jw = w[:, None, None]
        Hpp = np.zeros((N, 3, 3))
        np.add.at(Hpp, pi, np.einsum("mai,maj->mij", Jp * Jw, Jp))
        gp = np.zeros((N, 3))
        np.add.at(gp, pi, np.einsum("mai,ma->mi", Jp * Jw, r))
        Hcp = np.zeros((N, max(C - 1, 1), 6, 3))
        m = ci > 0
        np.add.at(Hcp, (pi[m], ci[m] - 1), np.einsum("mai,maj->mij", (Jc * Jw)[m], Jp[m]))
        Hcp = Hcp.reshape(N, -1, 3)[:, :nc]
        Hcc = np.zeros((nc, nc))
        gc = np.zeros(nc)
        for k in range(1, C):
            o = by_cam[k]
            b = slice(6 * (k - 1), 6 * k)
            Hcc[b, b] = np.einsum("mai,maj->ij", Jc[o] * Jw[o], Jc[o])
            gc[b] = np.einsum("mai,ma->i", Jc[o] * Jw[o], r[o])
        for _ in range(10):  # LM: raise the damping until a step lowers the cost
            Hpp_d = Hpp + lam * (np.eye(3) * np.einsum("nii->ni", Hpp)[:, :, None] + 1e-9 * np.eye(3))
            Pinv = np.linalg.inv(Hpp_d)
            HP = np.einsum("nci,nij->ncj", Hcp, Pinv)
            S = Hcc + lam * np.diag(np.diag(Hcc) + 1e-9) - np.einsum("ncj,ndj->cd", HP, Hcp)
            bb = gc - np.einsum("ncj,nj->c", HP, gp)
            dc = np.linalg.solve(S, -bb)
            dp = -np.einsum("nij,nj->ni", Pinv, gp + np.einsum("nci,c->ni", Hcp, dc))
            Rn = [Rs[0]] + [rodrigues(dc[6 * (k - 1):6 * (k - 1) + 3]) @ Rs[k]
                            for k in range(1, C)]
            tn = [ts[0]] + [ts[k] + dc[6 * (k - 1) + 3:6 * k] for k in range(1, C)]
            rn = resid(Rn, tn, X + dp)
            fn, wn = cost(rn)
            if fn < f:
                converged = (f - fn) < 1e-9 * f
                Rs, ts, X, r, f, w = Rn, tn, X + dp, rn, fn, wn
                lam = max(lam / 3, 1e-9)
                break
            lam *= 4
        else:
            break
        if converged:
            break
    c0 = cams[0].center
    centres = [-R.T @ t for R, t in zip(Rs, ts, strict=True)]
    s = float(np.mean([np.linalg.norm(c.center - c0) for c in cams[1:]])
              / np.mean([np.linalg.norm(c - c0) for c in centres[1:]]))
    out = [cams[0]] + [_pose_cam(cams[k], Rs[k], -Rs[k] @ (c0 + s * (centres[k] - c0)))
                       for k in range(1, C)]
    return out, {"points": N, "iterations": it, "error_before_px": before,
                 "error_after_px": float(np.linalg.norm(r, axis=1).mean())}
