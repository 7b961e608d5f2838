"""Re-estimate one camera's extrinsics from the subject's own keypoints: after fusion names a
camera that drifted (fusion/drift.py), its 2D keypoints and the 3D points triangulated from
the *other* cameras give a PnP problem; intrinsics are kept."""

from __future__ import annotations

import numpy as np

from livepose.core.board import cv2_module
from livepose.core.camera import CameraModel
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
