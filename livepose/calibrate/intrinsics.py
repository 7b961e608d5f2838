"""Intrinsics per camera: OpenCV ``calibrateCamera`` (pinhole) or ``fisheye.calibrate``, made
robust to false corner detections by dropping corners that reproject far off and solving
again."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from livepose.calibrate.detect import MIN_CORNERS
from livepose.core.board import cv2_module
from livepose.core.errors import UserError

MIN_VIEWS = 4
OUTLIER_PX = 2.0
"""A corner that reprojects farther than this (and than 5 robust sigmas) is dropped."""


@dataclass
class Intrinsics:
    """One camera's intrinsics and its board poses.

    Attributes
    ----------
    K, dist
        ``(3, 3)`` matrix and distortion (pinhole ``(5,)`` ``k1 k2 p1 p2 k3``; fisheye ``(4,)``).
    rms
        Reprojection RMS over the inlier corners (px).
    views
        ``(F,)`` bool: frames used.
    rvecs, tvecs
        ``(F, 3)`` board → camera per frame (NaN where unused).
    inliers
        ``(F, N)`` bool: corners kept.
    """

    K: np.ndarray
    dist: np.ndarray
    fisheye: bool
    rms: float
    views: np.ndarray
    rvecs: np.ndarray
    tvecs: np.ndarray
    inliers: np.ndarray


def calibrate_intrinsics(uv: np.ndarray, objp: np.ndarray, size: tuple[int, int],
                         fisheye: bool = False, k3: bool = False, max_views: int = 80,
                         name: str = "camera") -> Intrinsics:
    """Calibrate one camera from its board corners.

    Parameters
    ----------
    uv
        ``(F, N, 2)`` corners per frame, NaN where not seen.
    objp
        ``(N, 3)`` board corners (board frame, ``z = 0``).
    size
        Image ``(width, height)``.
    fisheye
        OpenCV's fisheye model instead of the pinhole one.
    k3
        Pinhole: also estimate ``k3`` (otherwise fixed at 0).
    max_views
        Use at most this many views (spread evenly), for speed.
    """
    cv2 = cv2_module()
    seen = np.isfinite(uv[..., 0])
    views = seen.sum(1) >= MIN_CORNERS
    idx = np.flatnonzero(views)
    if idx.size > max_views:
        idx = idx[np.linspace(0, idx.size - 1, max_views).round().astype(int)]
    if idx.size < MIN_VIEWS:
        raise UserError(f"{name}: the board was seen in {idx.size} frame(s) with "
                        f"≥ {MIN_CORNERS} corners; intrinsics need at least {MIN_VIEWS}")
    keep = seen.copy()
    K = dist = None
    rms = np.nan
    rv = np.full((uv.shape[0], 3), np.nan)
    tv = np.full((uv.shape[0], 3), np.nan)
    for _ in range(3):
        obj = [objp[keep[f]].astype(np.float32).reshape(-1, 1, 3) for f in idx]
        img = [uv[f][keep[f]].astype(np.float32).reshape(-1, 1, 2) for f in idx]
        if fisheye:
            flags = (cv2.fisheye.CALIB_RECOMPUTE_EXTRINSIC | cv2.fisheye.CALIB_FIX_SKEW)
            rms, K, dist, rvs, tvs = cv2.fisheye.calibrate(
                [o.astype(np.float64) for o in obj], [i.astype(np.float64) for i in img],
                size, np.eye(3), np.zeros(4), flags=flags,
                criteria=(cv2.TERM_CRITERIA_COUNT + cv2.TERM_CRITERIA_EPS, 100, 1e-9))
        else:
            flags = 0 if k3 else cv2.CALIB_FIX_K3
            rms, K, dist, rvs, tvs = cv2.calibrateCamera(obj, img, size, None, None,
                                                         flags=flags)
        res = []
        for j, f in enumerate(idx):
            rv[f], tv[f] = np.ravel(rvs[j]), np.ravel(tvs[j])
            pts = objp[seen[f]].reshape(-1, 1, 3).astype(np.float64)
            if fisheye:
                proj, _ = cv2.fisheye.projectPoints(pts, rvs[j], tvs[j], K, dist)
            else:
                proj, _ = cv2.projectPoints(pts, rvs[j], tvs[j], K, dist)
            e = np.full(uv.shape[1], np.nan)
            e[seen[f]] = np.linalg.norm(proj.reshape(-1, 2) - uv[f][seen[f]], axis=1)
            res.append(e)
        err = np.stack(res)
        med = np.nanmedian(err[keep[idx]])
        thr = max(OUTLIER_PX, 5.0 * 1.4826 * med)
        new = seen[idx] & (err <= thr)
        if np.array_equal(new, keep[idx]):
            break
        keep[idx] = new
    assert K is not None and dist is not None
    inl = np.zeros_like(seen)
    inl[idx] = keep[idx]
    used = np.zeros(uv.shape[0], bool)
    used[idx] = True
    return Intrinsics(K=np.asarray(K), dist=np.ravel(dist).astype(np.float64), fisheye=fisheye,
                      rms=float(rms), views=used, rvecs=rv, tvecs=tv, inliers=inl)


def board_poses(uv: np.ndarray, objp: np.ndarray, intr: Intrinsics) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """Board → camera pose of every frame with enough corners ``(F, 3)``, ``(F, 3)`` (NaN
    elsewhere), by ``solvePnP`` on undistorted corners (IPPE for a plane)."""
    cv2 = cv2_module()
    F = uv.shape[0]
    rv = np.full((F, 3), np.nan)
    tv = np.full((F, 3), np.nan)
    seen = np.isfinite(uv[..., 0])
    for f in np.flatnonzero(seen.sum(1) >= MIN_CORNERS):
        pts = uv[f][seen[f]].reshape(-1, 1, 2).astype(np.float64)
        if intr.fisheye:
            und = cv2.fisheye.undistortPoints(pts, intr.K, intr.dist)
        else:
            und = cv2.undistortPoints(pts, intr.K, intr.dist)
        ok, r, t = cv2.solvePnP(objp[seen[f]].astype(np.float64), und, np.eye(3), None,
                                flags=cv2.SOLVEPNP_IPPE)
        if ok:
            ok, r, t = cv2.solvePnP(objp[seen[f]].astype(np.float64), und, np.eye(3), None,
                                    r, t, useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
        if ok and t[2, 0] > 0:
            rv[f], tv[f] = r.ravel(), t.ravel()
    return rv, tv
