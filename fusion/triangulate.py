"""Multi-view triangulation of 2D keypoints (compiled with numba).

Per keypoint and frame-set (``C`` cameras, ``J`` keypoints, all in one compiled call):

1. **Views.** A view takes part when ``x``, ``y`` and the confidence ``c`` are finite,
   ``c > 0`` and ``c >= likelihood_threshold``. Its pixel is undistorted to normalised
   coordinates ``(x, y)``: a few steps of the core's fixed point
   (:func:`livepose.core.camera.undistort_nb`), then Newton on the core's forward model
   :func:`livepose.core.camera.distort_nb` down to round-off (:func:`undistort_point_nb`).
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
5. **Variance** (``cov``), per axis in mm²: the diagonal of ``σ² (AᵀA)⁻¹`` with ``A`` the
   pass-2 design matrix (rows in px/mm), i.e. the first-order covariance of the estimate when
   each 2D keypoint of confidence ``c`` has an isotropic pixel error of σ/c, where
   ``σ² = max(pixel_noise_px², RSS / max(2n - 3, 1))``: the residual variance per degree of
   freedom (``n`` views), floored by the configured keypoint noise (two views have one
   degree of freedom, so the residual alone is a poor estimate). It carries the geometry (a
   narrow baseline gives a large depth variance), the number of views and their
   confidences, and grows with the inconsistency of the views. Cross-axis covariances are
   not reported.

The kernel holds no state and releases the GIL; every call returns new arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from livepose.core.camera import CameraGroup, distort_nb, undistort_nb
from livepose.core.config import FusionConfig

_DEGENERATE = 1e-12  # det(AᵀA) / (tr/3)³ below this: rays (nearly) parallel


@dataclass(slots=True)
class TriangulationResult:
    """Triangulated keypoints of one frame-set (``J`` keypoints).

    Attributes
    ----------
    xyz
        ``(J, 3)`` float64 world points (mm); NaN where not triangulated.
    reproj
        ``(J,)`` float32 mean reprojection error (px, distorted image) over the views used;
        NaN where not triangulated.
    views
        ``(J,)`` uint16 bitmask of the cameras used (bit ``c`` = camera ``c`` of the group);
        0 where not triangulated.
    cov
        ``(J, 3)`` float64 variance per axis (mm²), see the module docstring; NaN where not
        triangulated.
    """

    xyz: np.ndarray
    reproj: np.ndarray
    views: np.ndarray
    cov: np.ndarray


# --------------------------------------------------------------------------- kernels


@nb.njit(cache=True, nogil=True)
def undistort_point_nb(
    xd: float, yd: float, dist: np.ndarray, fisheye: bool, fp_iters: int, newton_iters: int
) -> tuple[float, float]:
    """Invert :func:`livepose.core.camera.distort_nb` for one normalised point, to round-off.

    ``fp_iters`` steps of the core's fixed point (:func:`livepose.core.camera.undistort_nb`) give
    a start (kept only if it is closer than the distorted point itself), then Newton steps on
    ``distort_nb(x, y) = (xd, yd)`` (forward-difference Jacobian) until the residual is below
    1e-14 (about 1e-9 px for a 100 000 px focal length) or ``newton_iters`` steps. The
    residual is the exact forward model, so the solution is what the core's projection
    inverts, also where the fixed point converges slowly (strong distortion).
    """
    x0, y0 = undistort_nb(xd, yd, dist, fisheye, fp_iters)
    fx, fy = distort_nb(x0, y0, dist, fisheye)
    ex, ey = fx - xd, fy - yd
    gx, gy = distort_nb(xd, yd, dist, fisheye)
    if not (abs(ex) + abs(ey) <= abs(gx - xd) + abs(gy - yd)):
        x0, y0, fx, fy, ex, ey = xd, yd, gx, gy, gx - xd, gy - yd
    x, y = x0, y0
    for _ in range(newton_iters):
        if abs(ex) + abs(ey) <= 1e-14:
            break
        h = 1e-7 * max(abs(x) + abs(y), 1e-6)
        ax, ay = distort_nb(x + h, y, dist, fisheye)
        bx, by = distort_nb(x, y + h, dist, fisheye)
        j00, j10 = (ax - fx) / h, (ay - fy) / h
        j01, j11 = (bx - fx) / h, (by - fy) / h
        det = j00 * j11 - j01 * j10
        if not (abs(det) > 0.0 and np.isfinite(det)):
            break
        x -= (j11 * ex - j01 * ey) / det
        y -= (j00 * ey - j10 * ex) / det
        fx, fy = distort_nb(x, y, dist, fisheye)
        ex, ey = fx - xd, fy - yd
    return x, y


@nb.njit(cache=True, nogil=True)
def _solve(
    mask: int, xn: np.ndarray, yn: np.ndarray, wx: np.ndarray, wy: np.ndarray, P: np.ndarray
) -> tuple[bool, float, float, float, float, float, float]:
    """Weighted inhomogeneous DLT over the views in ``mask``.

    Returns ``(ok, X, Y, Z, inv00, inv11, inv22)`` with ``inv`` the diagonal of ``(AᵀA)⁻¹``.
    """
    m00 = m01 = m02 = m11 = m12 = m22 = 0.0
    v0 = v1 = v2 = 0.0
    for c in range(xn.shape[0]):
        if not (mask >> c) & 1:
            continue
        for r in range(2):
            if r == 0:
                w, u, k = wx[c], xn[c], 0
            else:
                w, u, k = wy[c], yn[c], 1
            a0 = w * (u * P[c, 2, 0] - P[c, k, 0])
            a1 = w * (u * P[c, 2, 1] - P[c, k, 1])
            a2 = w * (u * P[c, 2, 2] - P[c, k, 2])
            b = -w * (u * P[c, 2, 3] - P[c, k, 3])
            m00 += a0 * a0
            m01 += a0 * a1
            m02 += a0 * a2
            m11 += a1 * a1
            m12 += a1 * a2
            m22 += a2 * a2
            v0 += a0 * b
            v1 += a1 * b
            v2 += a2 * b
    c00 = m11 * m22 - m12 * m12
    c01 = m02 * m12 - m01 * m22
    c02 = m01 * m12 - m02 * m11
    c11 = m00 * m22 - m02 * m02
    c12 = m01 * m02 - m00 * m12
    c22 = m00 * m11 - m01 * m01
    det = m00 * c00 + m01 * c01 + m02 * c02
    tr = (m00 + m11 + m22) / 3.0
    if not (det > _DEGENERATE * tr * tr * tr):
        return False, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan
    inv = 1.0 / det
    X = (c00 * v0 + c01 * v1 + c02 * v2) * inv
    Y = (c01 * v0 + c11 * v1 + c12 * v2) * inv
    Z = (c02 * v0 + c12 * v1 + c22 * v2) * inv
    return True, X, Y, Z, c00 * inv, c11 * inv, c22 * inv


@nb.njit(cache=True, nogil=True)
def _triangulate_subset(
    mask: int, xn: np.ndarray, yn: np.ndarray, conf: np.ndarray, P: np.ndarray,
    K: np.ndarray, wx: np.ndarray, wy: np.ndarray,
) -> tuple[bool, float, float, float, float, float, float, float]:
    """Two-pass triangulation (confidence, then confidence·f/depth weights).

    Returns ``(ok, X, Y, Z, inv00, inv11, inv22, rss)``; ``rss`` in px² (pass-2 rows).
    """
    C = xn.shape[0]
    for c in range(C):
        wx[c] = conf[c]
        wy[c] = conf[c]
    ok, X, Y, Z, i0, i1, i2 = _solve(mask, xn, yn, wx, wy, P)
    if not ok:
        return False, X, Y, Z, i0, i1, i2, np.nan
    for c in range(C):
        if not (mask >> c) & 1:
            continue
        depth = P[c, 2, 0] * X + P[c, 2, 1] * Y + P[c, 2, 2] * Z + P[c, 2, 3]
        if not depth > 0.0:  # behind a camera: inconsistent; the reprojection test rejects it
            return True, X, Y, Z, i0, i1, i2, np.inf
        wx[c] = conf[c] * K[c, 0, 0] / depth
        wy[c] = conf[c] * K[c, 1, 1] / depth
    ok, X, Y, Z, i0, i1, i2 = _solve(mask, xn, yn, wx, wy, P)
    if not ok:
        return False, X, Y, Z, i0, i1, i2, np.nan
    rss = 0.0
    for c in range(C):
        if not (mask >> c) & 1:
            continue
        for r in range(2):
            if r == 0:
                w, u, k = wx[c], xn[c], 0
            else:
                w, u, k = wy[c], yn[c], 1
            res = w * (
                (u * P[c, 2, 0] - P[c, k, 0]) * X
                + (u * P[c, 2, 1] - P[c, k, 1]) * Y
                + (u * P[c, 2, 2] - P[c, k, 2]) * Z
                + (u * P[c, 2, 3] - P[c, k, 3])
            )
            rss += res * res
    return True, X, Y, Z, i0, i1, i2, rss


@nb.njit(cache=True, nogil=True)
def _mean_reproj(
    mask: int, X: float, Y: float, Z: float, obs: np.ndarray, j: int,
    P: np.ndarray, K: np.ndarray, dist: np.ndarray, fisheye: np.ndarray,
) -> float:
    """Mean distance (px) between the projections of ``(X, Y, Z)`` and ``obs[c, j, :2]``."""
    total = 0.0
    n = 0
    for c in range(P.shape[0]):
        if not (mask >> c) & 1:
            continue
        Xc = P[c, 0, 0] * X + P[c, 0, 1] * Y + P[c, 0, 2] * Z + P[c, 0, 3]
        Yc = P[c, 1, 0] * X + P[c, 1, 1] * Y + P[c, 1, 2] * Z + P[c, 1, 3]
        Zc = P[c, 2, 0] * X + P[c, 2, 1] * Y + P[c, 2, 2] * Z + P[c, 2, 3]
        if not Zc > 0.0:
            return np.inf
        xd, yd = distort_nb(Xc / Zc, Yc / Zc, dist[c], fisheye[c])
        du = K[c, 0, 0] * xd + K[c, 0, 1] * yd + K[c, 0, 2] - obs[c, j, 0]
        dv = K[c, 1, 1] * yd + K[c, 1, 2] - obs[c, j, 1]
        total += np.sqrt(du * du + dv * dv)
        n += 1
    return total / n if n > 0 else np.inf


@nb.njit(cache=True, nogil=True)
def _triangulate_dropping_views(
    mask, n, min_views, reproj_threshold, xn, yn, conf, P, K, wx, wy, pts, j, dist, fisheye
):
    """Triangulate the views in ``mask``; while the mean reprojection error exceeds the
    threshold and more than ``min_views`` remain, drop the view whose removal gives the lowest
    error (Pose2Sim's rule, with the best rather than the worst-looking view removed).

    Returns ``(mask, n, err, X, Y, Z, i0, i1, i2, rss)``; ``err`` is ``inf`` if it failed.
    """
    C = P.shape[0]
    err = np.inf
    X = Y = Z = i0 = i1 = i2 = rss = np.nan
    if n >= min_views:
        ok, X, Y, Z, i0, i1, i2, rss = _triangulate_subset(mask, xn, yn, conf, P, K, wx, wy)
        if ok:
            err = _mean_reproj(mask, X, Y, Z, pts, j, P, K, dist, fisheye)
        while not (err <= reproj_threshold) and n > min_views:
            best_err = np.inf
            best_mask = -1
            for c in range(C):
                if not (mask >> c) & 1:
                    continue
                m2 = mask & ~(1 << c)
                ok2, X2, Y2, Z2, j0, j1, j2, rss2 = _triangulate_subset(
                    m2, xn, yn, conf, P, K, wx, wy
                )
                e2 = np.inf
                if ok2:
                    e2 = _mean_reproj(m2, X2, Y2, Z2, pts, j, P, K, dist, fisheye)
                if best_mask < 0 or e2 < best_err:
                    best_err, best_mask = e2, m2
                    X, Y, Z, i0, i1, i2, rss = X2, Y2, Z2, j0, j1, j2, rss2
            mask = best_mask
            n -= 1
            err = best_err
    return mask, n, err, X, Y, Z, i0, i1, i2, rss


@nb.njit(cache=True, nogil=True)
def triangulate_nb(
    pts: np.ndarray, P: np.ndarray, K: np.ndarray, dist: np.ndarray, fisheye: np.ndarray,
    likelihood_threshold: float, min_views: int, reproj_threshold: float,
    pixel_noise2: float, fp_iters: int,
    out_xyz: np.ndarray, out_reproj: np.ndarray, out_views: np.ndarray, out_cov: np.ndarray,
) -> None:
    """Triangulate every keypoint of one frame-set (see the module docstring).

    Parameters
    ----------
    pts
        ``(C, J, 3)`` float32 (or float64) x, y (distorted pixels), confidence.
    P, K, dist, fisheye
        ``(C, 3, 4)`` ``[R | t]``, ``(C, 3, 3)`` intrinsics, ``(C, 8)`` distortion,
        ``(C,)`` bool.
    likelihood_threshold, min_views, reproj_threshold, pixel_noise2, iters
        Confidence threshold, minimum views, reprojection threshold (px), σ² floor (px²),
        fixed-point iterations before the Newton polish (:func:`undistort_point_nb`).
    out_xyz, out_reproj, out_views, out_cov
        ``(J, 3)`` float64, ``(J,)`` float32, ``(J,)`` uint16, ``(J, 3)`` float64, written.
    """
    C, J = pts.shape[0], pts.shape[1]
    scratch = np.empty((5, C))
    xn, yn, conf, wx, wy = scratch[0], scratch[1], scratch[2], scratch[3], scratch[4]
    for j in range(J):
        mask = 0
        n = 0
        for c in range(C):
            u, v, cf = pts[c, j, 0], pts[c, j, 1], pts[c, j, 2]
            if not (np.isfinite(u) and np.isfinite(v) and cf > 0.0 and cf >= likelihood_threshold):
                continue  # NaN confidence fails both comparisons
            yd = (v - K[c, 1, 2]) / K[c, 1, 1]
            xd = (u - K[c, 0, 2] - K[c, 0, 1] * yd) / K[c, 0, 0]
            xn[c], yn[c] = undistort_point_nb(xd, yd, dist[c], fisheye[c], fp_iters, 8)
            conf[c] = cf
            mask |= 1 << c
            n += 1
        mask, n, err, X, Y, Z, i0, i1, i2, rss = _triangulate_dropping_views(
            mask, n, min_views, reproj_threshold, xn, yn, conf, P, K, wx, wy, pts, j, dist, fisheye
        )
        if err <= reproj_threshold:
            dof = 2 * n - 3
            s2 = max(pixel_noise2, rss / (dof if dof > 0 else 1))
            out_xyz[j, 0], out_xyz[j, 1], out_xyz[j, 2] = X, Y, Z
            out_cov[j, 0], out_cov[j, 1], out_cov[j, 2] = s2 * i0, s2 * i1, s2 * i2
            out_reproj[j] = err
            out_views[j] = mask
        else:
            for a in range(3):
                out_xyz[j, a] = np.nan
                out_cov[j, a] = np.nan
            out_reproj[j] = np.nan
            out_views[j] = 0


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
    fp_iters
        Fixed-point iterations of the core undistortion before the Newton polish (the result
        is exact to round-off either way; this only trades speed).
    """

    def __init__(
        self, cameras: CameraGroup, cfg: FusionConfig, fp_iters: int = 3
    ) -> None:
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
        self.pixel_noise2 = float(cfg.pixel_noise_px) ** 2
        self.fp_iters = int(fp_iters)

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
        cov = np.empty((J, 3))
        triangulate_nb(
            pts, self.P, self.K, self.dist, self.fisheye, self.likelihood_threshold,
            self.min_views, self.reproj_threshold, self.pixel_noise2, self.fp_iters,
            xyz, reproj, views, cov,
        )
        return TriangulationResult(xyz=xyz, reproj=reproj, views=views, cov=cov)

    def warmup(self, n_keypoints: int = 1) -> None:
        """Compile (or load from the cache) the kernels, so the first frame is not slow."""
        self.triangulate(np.full((self.n_cameras, n_keypoints, 3), np.nan, dtype=np.float32))
