"""Multi-view triangulation of 2D keypoints (compiled with numba).

Per keypoint and frame-set (``C`` cameras, ``J`` keypoints, all in one compiled call):

1. **Views.** A view takes part when ``x``, ``y`` and the confidence ``c`` are finite,
   ``c > 0`` and ``c >= likelihood_threshold``. Its pixel is undistorted to normalised
   coordinates ``(x, y)`` to round-off by the core's one undistortion
   (:func:`livepose.core.camera.undistort_nb`).
2. **Confidence-weighted linear triangulation (DLT).** With ``P = [R | t]`` each view gives
   the two equations ``(x P₃ - P₁)·X̃ = 0`` and ``(y P₃ - P₂)·X̃ = 0`` in the homogeneous
   world point ``X̃ = (X, 1)``. Because observed points lie in front of the cameras we fix
   ``X̃₄ = 1`` (the inhomogeneous DLT, Hartley & Zisserman §12.2) and solve the weighted least
   squares ``min Σ w² r²`` through its 3×3 normal equations ``(AᵀA) X = Aᵀb`` in closed form
   (no LAPACK call, no allocation). Pass 1 weighs each row by ``c`` (Pose2Sim's weighting).
   Pass 2 re-weighs the rows by ``c·f/Z`` (``f`` = ``fx`` or ``fy``, ``Z`` = the view's
   depth of the pass-1 point), so that each residual is the confidence-scaled *pixel* error of
   the (undistorted) image: the algebraic error of pass 1 grows with depth and favours far
   cameras; pass 2 removes that bias (one step of Hartley-Sturm's iterative linear method).
3. **Reprojection error** in the *distorted* image, through the camera model, averaged
   (unweighted) over the views used.
4. **Outlier views (Pose2Sim's rule).** While the mean reprojection error exceeds
   ``reproj_threshold_px`` and more than ``min_views`` views remain, drop one view and
   re-triangulate. The view dropped is the one whose removal gives the smallest error
   (leave-one-out), which is robust where "the view with the largest residual" is not: one
   wrong view drags the point so that a good view can show the largest residual. If the
   error still exceeds the threshold with ``min_views`` views, the keypoint is NaN (as in
   Pose2Sim). Fewer than ``min_views`` usable views, or a degenerate geometry (parallel
   rays), also give NaN.
5. **Covariance** (``cov``, ``3×3`` in the calibration's unit²): ``σ² (AᵀA)⁻¹`` with ``A``
   the pass-2 design matrix (rows in px per unit), i.e. the first-order covariance of the
   estimate when
   each 2D keypoint of confidence ``c`` has an isotropic pixel error of σ/c, where
   ``σ² = max(pixel_noise_px², RSS / max(2n - 3, 1))``: the residual variance per degree of
   freedom (``n`` views), floored by the configured keypoint noise (two views have one
   degree of freedom, so the residual alone is a poor estimate). It carries the geometry (a
   narrow baseline gives a large depth variance), the number of views and their
   confidences, and grows with the inconsistency of the views. The full matrix is kept: a
   narrow baseline makes the depth axis, not an axis of the world, uncertain, and the EKF
   starts tracks and gates maneuvers with it (``var`` is its diagonal).

The compiled steps are in :mod:`livepose.fusion.triangulate_nb`; they run inside the one
fusion kernel, :func:`livepose.fusion.ekf_nb.fuse_frame_nb` (``run_filter=False`` here), so
:class:`Triangulator` gives exactly what the live filters triangulate. The kernel holds no
state and releases the GIL; every call returns new arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from livepose.core.camera import CameraGroup
from livepose.core.config import FusionConfig
from livepose.fusion.ekf_nb import fuse_frame_nb


@dataclass(slots=True)
class TriangulationResult:
    """Triangulated keypoints of one frame-set (``J`` keypoints).

    Attributes
    ----------
    xyz
        ``(J, 3)`` float64 world points (calibration units); NaN where not triangulated.
    reproj
        ``(J,)`` float32 mean reprojection error (px, distorted image) over the views used;
        NaN where not triangulated.
    views
        ``(J,)`` uint16 bitmask of the cameras used (bit ``c`` = camera ``c`` of the group);
        0 where not triangulated.
    cov
        ``(J, 3, 3)`` float64 covariance (see the module docstring); NaN where not
        triangulated.
    """

    xyz: np.ndarray
    reproj: np.ndarray
    views: np.ndarray
    cov: np.ndarray

    @property
    def var(self) -> np.ndarray:
        """``(J, 3)`` per-axis variance: the diagonal of :attr:`cov`."""
        return np.diagonal(self.cov, axis1=1, axis2=2).copy()


# --------------------------------------------------------------------------- class


class Triangulator:
    """Triangulates frame-sets of 2D keypoints seen by a calibrated camera group.

    Parameters
    ----------
    cameras
        The ``C`` cameras (``C <= 16``), in the order of the rows of the points passed to
        :meth:`triangulate` (the config's camera order).
    cfg
        ``min_views``, ``likelihood_threshold``, ``reproj_threshold_px``, ``pixel_noise_px``.
    pixel_noise_px
        The model's 2D noise at confidence 1 (its manifest's ``noise.sigma_px``); overrides
        ``cfg.pixel_noise_px`` when given.
    """

    def __init__(self, cameras: CameraGroup, cfg: FusionConfig,
                 pixel_noise_px: float | None = None) -> None:
        C = len(cameras)
        if not 1 <= C <= 16:
            raise ValueError(f"need 1 to 16 cameras for a uint16 view mask, got {C}")
        self.names = list(cameras.names)
        cams = cameras.cameras
        self.K = np.ascontiguousarray(np.stack([c.matrix for c in cams]), dtype=np.float64)
        self.P = np.ascontiguousarray(np.stack([c.P for c in cams]), dtype=np.float64)
        self.dist = np.ascontiguousarray(np.stack([c.dist8 for c in cams]), dtype=np.float64)
        self.fisheye = np.array([c.fisheye for c in cams], dtype=np.bool_)
        self.min_views = int(cfg.min_views)
        self.likelihood_threshold = float(cfg.likelihood_threshold)
        self.reproj_threshold = float(cfg.reproj_threshold_px)
        #: σ of a 2D keypoint at confidence 1 (px): the argument, else ``cfg.pixel_noise_px``,
        #: else 1 px (the run passes the model manifest's ``noise.sigma_px``)
        self.pixel_noise = float(pixel_noise_px or cfg.pixel_noise_px or 1.0)
        self.pixel_noise2 = self.pixel_noise ** 2
        self._state = np.zeros((0, 9))  # the kernel's filter arguments, unused here
        self._cov = np.zeros((0, 9, 9))
        self._flags = np.zeros(0, dtype=np.bool_)
        self._times = np.zeros(0)
        self._novar = np.zeros((1, 1, 2))

    @property
    def n_cameras(self) -> int:
        """Number of cameras ``C``."""
        return int(self.K.shape[0])

    def triangulate(self, points: np.ndarray) -> TriangulationResult:
        """Triangulate one frame-set.

        Parameters
        ----------
        points
            ``(C, J, 3)`` x, y (distorted pixels), confidence; NaN = no view. float32 (the
            wire format) or float64; other dtypes are converted to float32.

        Returns
        -------
        TriangulationResult
            New arrays (safe to send without copying).
        """
        pts = np.asarray(points)
        if pts.ndim != 3 or pts.shape[0] != self.n_cameras or pts.shape[2] != 3:
            raise ValueError(
                f"points must have shape (C={self.n_cameras}, J, 3), got {pts.shape}"
            )
        if pts.dtype not in (np.float32, np.float64):
            pts = pts.astype(np.float32)
        if not (pts.flags.c_contiguous and pts.flags.writeable):
            pts = np.array(pts, order="C")  # read-only arrays would compile another signature
        J = pts.shape[1]
        xyz = np.empty((J, 3))
        reproj = np.empty(J, dtype=np.float32)
        views = np.empty(J, dtype=np.uint16)
        cov = np.empty((J, 3, 3))
        unused3, unused1 = np.empty((0, 3)), np.empty(0, dtype=np.uint16)
        fuse_frame_nb(
            pts, self._novar, False, self.P, self.K, self.dist, self.fisheye,
            self.likelihood_threshold, self.min_views, self.reproj_threshold, self.pixel_noise2,
            False, self._state, self._cov, self._flags, self._times, self._times, 2, 0.0, 0.0,
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, False,
            xyz, reproj, views, cov, unused3, unused3, unused1.astype(np.float32), unused1,
            unused1,
        )
        return TriangulationResult(xyz=xyz, reproj=reproj, views=views, cov=cov)

    def warmup(self, n_keypoints: int = 1) -> None:
        """Compile (or load from the cache) the kernels, so the first frame is not slow."""
        self.triangulate(np.full((self.n_cameras, n_keypoints, 3), np.nan, dtype=np.float32))
