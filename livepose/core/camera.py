"""Camera model shared by every stage: OpenCV pinhole (with 4, 5, 8 distortion coefficients)
and fisheye, projection, distortion and undistortion of points.

Conventions (those of OpenCV, Anipose and Lightning Pose):

- world → camera: ``X_c = R @ X_w + t`` with ``R`` from the Rodrigues vector ``rvec``;
- normalised coordinates ``x = X_c[0] / X_c[2]``, ``y = X_c[1] / X_c[2]``;
- pixel ``u = fx * x_d + skew * y_d + cx``, ``v = fy * y_d + cy`` with ``(x_d, y_d)`` the
  distorted normalised coordinates.

The compiled kernels (``*_nb``) are numba ``njit`` functions so that fusion and the sim
renderer can call them from their own compiled code.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numba as nb
import numpy as np

UNDISTORT_ITERS = 20


def rodrigues(rvec: np.ndarray) -> np.ndarray:
    """Rotation vector ``(3,)`` → rotation matrix ``(3, 3)``."""
    r = np.asarray(rvec, dtype=np.float64).reshape(3)
    theta = float(np.linalg.norm(r))
    if theta < 1e-12:
        return np.eye(3)
    k = r / theta
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(theta) * kx + (1.0 - np.cos(theta)) * (kx @ kx)


def rodrigues_inv(R: np.ndarray) -> np.ndarray:
    """Rotation matrix ``(3, 3)`` → rotation vector ``(3,)`` (angle in ``[0, π]``), stable at
    every angle (through the quaternion, Shepperd's method)."""
    q = _quaternion(R)  # (w, x, y, z), w >= 0
    v = q[1:]
    s = float(np.linalg.norm(v))
    if s < 1e-15:
        return np.zeros(3)
    return v / s * (2.0 * math.atan2(s, float(q[0])))


def _quaternion(R: np.ndarray) -> np.ndarray:
    """Rotation matrix → unit quaternion ``(w, x, y, z)`` with ``w >= 0`` (Shepperd's method)."""
    m = np.asarray(R, dtype=np.float64)
    tr = float(np.trace(m))
    cands = np.array([tr, m[0, 0], m[1, 1], m[2, 2]])
    i = int(np.argmax(cands))
    if i == 0:
        s = 2.0 * math.sqrt(1.0 + tr)
        q = np.array(
            [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
        )
    elif i == 1:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = np.array(
            [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
        )
    elif i == 2:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = np.array(
            [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
        )
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = np.array(
            [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
        )
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


# --------------------------------------------------------------------------- kernels


@nb.njit(cache=True, nogil=True, fastmath=False)
def distort_nb(x: float, y: float, dist: np.ndarray, fisheye: bool) -> tuple[float, float]:
    """Distort one normalised point. ``dist`` is padded to 8 coefficients."""
    if fisheye:
        r = np.sqrt(x * x + y * y)
        if r < 1e-15:
            return x, y
        th = np.arctan(r)
        th2 = th * th
        thd = th * (1.0 + th2 * (dist[0] + th2 * (dist[1] + th2 * (dist[2] + th2 * dist[3]))))
        s = thd / r
        return x * s, y * s
    k1, k2, p1, p2, k3, k4, k5, k6 = (
        dist[0],
        dist[1],
        dist[2],
        dist[3],
        dist[4],
        dist[5],
        dist[6],
        dist[7],
    )
    r2 = x * x + y * y
    num = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
    den = 1.0 + r2 * (k4 + r2 * (k5 + r2 * k6))
    radial = num / den
    xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
    return xd, yd


@nb.njit(cache=True, nogil=True, fastmath=False)
def _undistort_fisheye_nb(xd: float, yd: float, dist: np.ndarray) -> tuple[float, float]:
    """Fisheye: Newton on ``θ_d = θ (1 + k1 θ² + k2 θ⁴ + k3 θ⁶ + k4 θ⁸)``."""
    thd = np.sqrt(xd * xd + yd * yd)
    if thd < 1e-15:
        return xd, yd
    th = thd
    for _ in range(UNDISTORT_ITERS):
        th2 = th * th
        f = th * (1.0 + th2 * (dist[0] + th2 * (dist[1] + th2 * (dist[2] + th2 * dist[3])))) - thd
        if abs(f) <= 1e-15:
            break
        df = 1.0 + th2 * (
            3.0 * dist[0] + th2 * (5.0 * dist[1] + th2 * (7.0 * dist[2] + th2 * 9.0 * dist[3]))
        )
        if df == 0.0:
            break
        th = th - f / df
    s = np.tan(th) / thd
    return xd * s, yd * s


@nb.njit(cache=True, nogil=True, fastmath=False)
def _newton_pinhole_nb(xd: float, yd: float, dist: np.ndarray, x: float,
                       y: float) -> tuple[float, float, bool]:
    """Newton's method with the analytic Jacobian on ``distort(x, y) = (xd, yd)`` from
    ``(x, y)``; returns the point and whether the residual fell to ≤ 1e-14."""
    k1, k2, p1, p2, k3, k4, k5, k6 = (dist[0], dist[1], dist[2], dist[3], dist[4], dist[5],
                                      dist[6], dist[7])
    rational = k4 != 0.0 or k5 != 0.0 or k6 != 0.0
    for _ in range(8):
        r2 = x * x + y * y
        num = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
        dnum = k1 + r2 * (2.0 * k2 + 3.0 * k3 * r2)
        if rational:
            den = 1.0 + r2 * (k4 + r2 * (k5 + r2 * k6))
            dden = k4 + r2 * (2.0 * k5 + 3.0 * k6 * r2)
            iden = 1.0 / den
            rad = num * iden
            drad = 2.0 * (dnum - rad * dden) * iden  # 2 · d rad / d r2
        else:
            rad = num
            drad = 2.0 * dnum
        ex = x * rad + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x) - xd
        ey = y * rad + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y - yd
        if abs(ex) + abs(ey) <= 1e-14:
            return x, y, True
        j00 = rad + x * x * drad + 2.0 * p1 * y + 6.0 * p2 * x
        j01 = x * y * drad + 2.0 * p1 * x + 2.0 * p2 * y
        j11 = rad + y * y * drad + 6.0 * p1 * y + 2.0 * p2 * x
        det = j00 * j11 - j01 * j01
        if not (abs(det) > 1e-12 and np.isfinite(det)):
            break
        idet = 1.0 / det
        x -= (j11 * ex - j01 * ey) * idet
        y -= (j00 * ey - j01 * ex) * idet
    return x, y, False


@nb.njit(cache=True, nogil=True, fastmath=False)
def undistort_nb(xd: float, yd: float, dist: np.ndarray, fisheye: bool) -> tuple[float, float]:
    """Invert :func:`distort_nb` for one normalised point, to round-off: the one undistortion
    of livepose (fusion, crops and tools all call it).

    Pinhole: Newton's method with the analytic Jacobian from one fixed-point step of the
    radial part (converges in 2–4 steps for lab lenses, to a residual ≤ 1e-14, about 1e-9 px
    at a 100 000 px focal length). Where Newton does not converge (very strong distortion far
    off-axis) OpenCV's fixed-point scheme runs :data:`UNDISTORT_ITERS` steps and Newton
    polishes from there. Fisheye: Newton on the angle.
    """
    if fisheye:
        return _undistort_fisheye_nb(xd, yd, dist)
    k1, k2, k3, k4, k5, k6 = dist[0], dist[1], dist[4], dist[5], dist[6], dist[7]
    p1, p2 = dist[2], dist[3]
    r2 = xd * xd + yd * yd
    num = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
    den = 1.0 + r2 * (k4 + r2 * (k5 + r2 * k6))
    x, y = xd * den / num, yd * den / num
    if not (np.isfinite(x) and np.isfinite(y)):
        x, y = xd, yd
    x, y, ok = _newton_pinhole_nb(xd, yd, dist, x, y)
    if ok:
        return x, y
    x, y = xd, yd  # OpenCV's fixed point, then Newton again
    for _ in range(UNDISTORT_ITERS):
        r2 = x * x + y * y
        icdist = (1.0 + r2 * (k4 + r2 * (k5 + r2 * k6))) / (1.0 + r2 * (k1 + r2 * (k2 + r2 * k3)))
        dx = 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
        dy = p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
        x = (xd - dx) * icdist
        y = (yd - dy) * icdist
    x2, y2, ok = _newton_pinhole_nb(xd, yd, dist, x, y)
    return (x2, y2) if ok else (x, y)


@nb.njit(cache=True, nogil=True)
def project_nb(
    pts: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    K: np.ndarray,
    dist: np.ndarray,
    fisheye: bool,
    out: np.ndarray,
) -> None:
    """Project world points ``pts`` ``(N, 3)`` into pixels ``out`` ``(N, 2)``.

    Points behind the camera (``Z <= 0``) or NaN give NaN.
    """
    for i in range(pts.shape[0]):
        X = R[0, 0] * pts[i, 0] + R[0, 1] * pts[i, 1] + R[0, 2] * pts[i, 2] + t[0]
        Y = R[1, 0] * pts[i, 0] + R[1, 1] * pts[i, 1] + R[1, 2] * pts[i, 2] + t[1]
        Z = R[2, 0] * pts[i, 0] + R[2, 1] * pts[i, 1] + R[2, 2] * pts[i, 2] + t[2]
        if not Z > 0.0:
            out[i, 0] = np.nan
            out[i, 1] = np.nan
            continue
        xd, yd = distort_nb(X / Z, Y / Z, dist, fisheye)
        out[i, 0] = K[0, 0] * xd + K[0, 1] * yd + K[0, 2]
        out[i, 1] = K[1, 1] * yd + K[1, 2]


@nb.njit(cache=True, nogil=True)
def undistort_pixels_nb(
    uv: np.ndarray, K: np.ndarray, dist: np.ndarray, fisheye: bool, out: np.ndarray
) -> None:
    """Pixels ``uv`` ``(N, 2)`` → undistorted normalised coordinates ``out`` ``(N, 2)``."""
    fx, fy, cx, cy, skew = K[0, 0], K[1, 1], K[0, 2], K[1, 2], K[0, 1]
    for i in range(uv.shape[0]):
        yd = (uv[i, 1] - cy) / fy
        xd = (uv[i, 0] - cx - skew * yd) / fx
        x, y = undistort_nb(xd, yd, dist, fisheye)
        out[i, 0] = x
        out[i, 1] = y


# --------------------------------------------------------------------------- model


def _pad8(dist: np.ndarray) -> np.ndarray:
    out = np.zeros(8)
    d = np.asarray(dist, dtype=np.float64).ravel()
    out[: min(8, d.size)] = d[:8]
    return out


@dataclass(frozen=True)
class CameraModel:
    """One calibrated camera.

    Parameters
    ----------
    name
        Camera name (must match the config's camera names).
    size
        Image ``(width, height)`` in pixels.
    matrix
        Intrinsic matrix ``K`` ``(3, 3)``.
    dist
        Distortion coefficients: pinhole ``(4,)``, ``(5,)`` or ``(8,)`` in OpenCV order
        ``k1 k2 p1 p2 [k3 [k4 k5 k6]]``; fisheye ``(4,)`` ``k1 k2 k3 k4``.
    rvec, tvec
        Extrinsics (world → camera), Rodrigues vector and translation ``(3,)``.
    fisheye
        Use the OpenCV fisheye (equidistant) model.
    """

    name: str
    size: tuple[int, int]
    matrix: np.ndarray
    dist: np.ndarray
    rvec: np.ndarray
    tvec: np.ndarray
    fisheye: bool = False
    R: np.ndarray = field(init=False, repr=False)
    dist8: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        K = np.asarray(self.matrix, dtype=np.float64)
        d = np.asarray(self.dist, dtype=np.float64).ravel()
        rv = np.asarray(self.rvec, dtype=np.float64).ravel()
        tv = np.asarray(self.tvec, dtype=np.float64).ravel()
        if K.shape != (3, 3):
            raise ValueError(f"camera {self.name!r}: matrix must be 3x3, got shape {K.shape}")
        if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(f"camera {self.name!r}: matrix needs finite fx, fy > 0")
        allowed = (4,) if self.fisheye else (4, 5, 8)
        if d.size not in allowed and not (self.fisheye is False and d.size == 0):
            raise ValueError(
                f"camera {self.name!r}: {d.size} distortion coefficients; "
                f"allowed {' or '.join(map(str, allowed))} for {'fisheye' if self.fisheye else 'pinhole'}"
            )
        if rv.shape != (3,) or tv.shape != (3,):
            raise ValueError(f"camera {self.name!r}: rotation and translation must have 3 values")
        if not (np.all(np.isfinite(d)) and np.all(np.isfinite(rv)) and np.all(np.isfinite(tv))):
            raise ValueError(f"camera {self.name!r}: non-finite distortion or extrinsics")
        w, h = self.size
        if w <= 0 or h <= 0:
            raise ValueError(f"camera {self.name!r}: size must be positive, got {self.size}")
        object.__setattr__(self, "matrix", K)
        object.__setattr__(self, "dist", d)
        object.__setattr__(self, "rvec", rv)
        object.__setattr__(self, "tvec", tv)
        object.__setattr__(self, "size", (int(w), int(h)))
        object.__setattr__(self, "R", rodrigues(rv))
        object.__setattr__(self, "dist8", _pad8(d))

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates ``(3,)``."""
        return np.asarray(-self.R.T @ self.tvec)

    @property
    def P(self) -> np.ndarray:
        """Projection matrix of the *undistorted normalised* camera, ``[R | t]`` ``(3, 4)``."""
        return np.hstack([self.R, self.tvec[:, None]])

    def project(self, points: np.ndarray) -> np.ndarray:
        """Project world points ``(N, 3)`` (or ``(3,)``) to distorted pixels ``(N, 2)``."""
        pts = np.ascontiguousarray(np.atleast_2d(points), dtype=np.float64)
        out = np.empty((pts.shape[0], 2))
        project_nb(pts, self.R, self.tvec, self.matrix, self.dist8, self.fisheye, out)
        return out

    def undistort(self, uv: np.ndarray) -> np.ndarray:
        """Distorted pixels ``(N, 2)`` → undistorted normalised coordinates ``(N, 2)``."""
        pts = np.ascontiguousarray(np.atleast_2d(uv), dtype=np.float64)
        out = np.empty_like(pts)
        undistort_pixels_nb(pts, self.matrix, self.dist8, self.fisheye, out)
        return out

    def pixel_rays(self) -> np.ndarray:
        """World-frame unit ray directions through every pixel centre, ``(H, W, 3)``."""
        w, h = self.size
        u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
        xy = self.undistort(np.stack([u.ravel(), v.ravel()], axis=1))
        d = np.concatenate([xy, np.ones((xy.shape[0], 1))], axis=1) @ self.R  # R.T @ d_c
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        return d.reshape(h, w, 3)


class CameraGroup:
    """Cameras in the order of the config's camera names.

    Attributes
    ----------
    cameras
        The cameras, ``C`` of them.
    names
        Their names, in order.
    """

    def __init__(self, cameras: Sequence[CameraModel]) -> None:
        self.cameras = list(cameras)
        self.names = [c.name for c in self.cameras]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate camera names in calibration: {self.names}")

    def __len__(self) -> int:
        return len(self.cameras)

    def __getitem__(self, i: int) -> CameraModel:
        return self.cameras[i]

    def __iter__(self) -> Iterator[CameraModel]:
        return iter(self.cameras)

    def subset(self, names: Sequence[str]) -> CameraGroup:
        """The cameras named ``names``, in that order (``KeyError`` names the missing one)."""
        by = {c.name: c for c in self.cameras}
        missing = [n for n in names if n not in by]
        if missing:
            raise KeyError(f"camera(s) {missing} not in calibration (has {self.names})")
        return CameraGroup([by[n] for n in names])

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points ``(N, 3)`` → pixels in every camera ``(C, N, 2)``."""
        return np.stack([c.project(points) for c in self.cameras])
