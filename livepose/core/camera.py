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
    """Rotation matrix ``(3, 3)`` → rotation vector ``(3,)``."""
    R = np.asarray(R, dtype=np.float64)
    cos = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    theta = float(np.arccos(cos))
    if theta < 1e-12:
        return np.zeros(3)
    if np.pi - theta < 1e-6:
        # near 180°: axis from the diagonal
        axis = np.sqrt(np.maximum((np.diag(R) + 1.0) / 2.0, 0.0))
        i = int(np.argmax(axis))
        axis[(i + 1) % 3] = np.copysign(axis[(i + 1) % 3], R[i, (i + 1) % 3])
        axis[(i + 2) % 3] = np.copysign(axis[(i + 2) % 3], R[i, (i + 2) % 3])
        return axis / np.linalg.norm(axis) * theta
    w = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    return w / (2.0 * np.sin(theta)) * theta


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
def undistort_nb(
    xd: float, yd: float, dist: np.ndarray, fisheye: bool, iters: int
) -> tuple[float, float]:
    """Invert :func:`distort_nb` for one normalised point (OpenCV's fixed-point scheme)."""
    if fisheye:
        thd = np.sqrt(xd * xd + yd * yd)
        if thd < 1e-15:
            return xd, yd
        th = thd
        for _ in range(iters):
            th2 = th * th
            f = (
                th * (1.0 + th2 * (dist[0] + th2 * (dist[1] + th2 * (dist[2] + th2 * dist[3]))))
                - thd
            )
            df = 1.0 + th2 * (
                3.0 * dist[0] + th2 * (5.0 * dist[1] + th2 * (7.0 * dist[2] + th2 * 9.0 * dist[3]))
            )
            if df == 0.0:
                break
            th = th - f / df
        s = np.tan(th) / thd
        return xd * s, yd * s
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
    x, y = xd, yd
    for _ in range(iters):
        r2 = x * x + y * y
        icdist = (1.0 + r2 * (k4 + r2 * (k5 + r2 * k6))) / (1.0 + r2 * (k1 + r2 * (k2 + r2 * k3)))
        dx = 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
        dy = p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
        x = (xd - dx) * icdist
        y = (yd - dy) * icdist
    return x, y


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
    uv: np.ndarray, K: np.ndarray, dist: np.ndarray, fisheye: bool, iters: int, out: np.ndarray
) -> None:
    """Pixels ``uv`` ``(N, 2)`` → undistorted normalised coordinates ``out`` ``(N, 2)``."""
    fx, fy, cx, cy, skew = K[0, 0], K[1, 1], K[0, 2], K[1, 2], K[0, 1]
    for i in range(uv.shape[0]):
        yd = (uv[i, 1] - cy) / fy
        xd = (uv[i, 0] - cx - skew * yd) / fx
        x, y = undistort_nb(xd, yd, dist, fisheye, iters)
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

    def undistort(self, uv: np.ndarray, iters: int = UNDISTORT_ITERS) -> np.ndarray:
        """Distorted pixels ``(N, 2)`` → undistorted normalised coordinates ``(N, 2)``."""
        pts = np.ascontiguousarray(np.atleast_2d(uv), dtype=np.float64)
        out = np.empty_like(pts)
        undistort_pixels_nb(pts, self.matrix, self.dist8, self.fisheye, iters, out)
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
