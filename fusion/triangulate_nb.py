"""Compiled steps of the triangulation (see :mod:`livepose.fusion.triangulate` for the
method): the weighted inhomogeneous DLT, its two passes, the reprojection error and the
leave-one-out view dropping. :func:`livepose.fusion.ekf_nb.fuse_frame_nb` runs them for every
frame-set; nothing else calls them.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from livepose.core.camera import distort_nb

_DEGENERATE = 1e-12  # det(AᵀA) / (tr/3)³ below this: rays (nearly) parallel
#: an unknown symmetric 3×3 matrix, as its 6 unique entries (00, 01, 02, 11, 12, 22)
NAN6 = (np.nan, np.nan, np.nan, np.nan, np.nan, np.nan)


@nb.njit(cache=True, nogil=True, inline="always")
def sym3_cofactors_nb(m00: float, m01: float, m02: float, m11: float, m12: float,
                      m22: float) -> tuple[float, float, float, float, float, float, float]:
    """Cofactors ``(c00, c01, c02, c11, c12, c22)`` and determinant of a symmetric 3×3
    matrix: its inverse is ``c / det``."""
    c00 = m11 * m22 - m12 * m12
    c01 = m02 * m12 - m01 * m22
    c02 = m01 * m12 - m02 * m11
    c11 = m00 * m22 - m02 * m02
    c12 = m01 * m02 - m00 * m12
    c22 = m00 * m11 - m01 * m01
    return c00, c01, c02, c11, c12, c22, m00 * c00 + m01 * c01 + m02 * c02


@nb.njit(cache=True, nogil=True, inline="always")
def _dlt_row(c: int, r: int, xn: np.ndarray, yn: np.ndarray, wx: np.ndarray, wy: np.ndarray,
             P: np.ndarray) -> tuple[float, float, float, float]:
    """Row ``r`` (0: x, 1: y) of view ``c`` of the weighted DLT: ``(a0, a1, a2, b)`` with
    ``a · X = b`` for the world point ``X``."""
    if r == 0:
        w, u, k = wx[c], xn[c], 0
    else:
        w, u, k = wy[c], yn[c], 1
    return (w * (u * P[c, 2, 0] - P[c, k, 0]), w * (u * P[c, 2, 1] - P[c, k, 1]),
            w * (u * P[c, 2, 2] - P[c, k, 2]), -w * (u * P[c, 2, 3] - P[c, k, 3]))


@nb.njit(cache=True, nogil=True)
def _solve(
    mask: int, xn: np.ndarray, yn: np.ndarray, wx: np.ndarray, wy: np.ndarray, P: np.ndarray
) -> tuple[bool, float, float, float, tuple[float, float, float, float, float, float]]:
    """Weighted inhomogeneous DLT over the views in ``mask``.

    Returns ``(ok, X, Y, Z, inv)`` with ``inv`` the 6 unique entries of ``(AᵀA)⁻¹``
    (00, 01, 02, 11, 12, 22).
    """
    m00 = m01 = m02 = m11 = m12 = m22 = 0.0
    v0 = v1 = v2 = 0.0
    for c in range(xn.shape[0]):
        if not (mask >> c) & 1:
            continue
        for r in range(2):
            a0, a1, a2, b = _dlt_row(c, r, xn, yn, wx, wy, P)
            m00 += a0 * a0
            m01 += a0 * a1
            m02 += a0 * a2
            m11 += a1 * a1
            m12 += a1 * a2
            m22 += a2 * a2
            v0 += a0 * b
            v1 += a1 * b
            v2 += a2 * b
    c00, c01, c02, c11, c12, c22, det = sym3_cofactors_nb(m00, m01, m02, m11, m12, m22)
    tr = (m00 + m11 + m22) / 3.0
    if not (det > _DEGENERATE * tr * tr * tr):
        return False, np.nan, np.nan, np.nan, NAN6
    inv = 1.0 / det
    X = (c00 * v0 + c01 * v1 + c02 * v2) * inv
    Y = (c01 * v0 + c11 * v1 + c12 * v2) * inv
    Z = (c02 * v0 + c12 * v1 + c22 * v2) * inv
    return True, X, Y, Z, (c00 * inv, c01 * inv, c02 * inv, c11 * inv, c12 * inv, c22 * inv)


@nb.njit(cache=True, nogil=True)
def _triangulate_subset(
    mask: int, xn: np.ndarray, yn: np.ndarray, conf: np.ndarray, P: np.ndarray,
    K: np.ndarray, wx: np.ndarray, wy: np.ndarray,
) -> tuple[bool, float, float, float, tuple[float, float, float, float, float, float],
           float]:
    """Two-pass triangulation (confidence, then confidence·f/depth weights).

    Returns ``(ok, X, Y, Z, inv, rss)`` (``inv``: see :func:`_solve`); ``rss`` in px²
    (pass-2 rows).
    """
    C = xn.shape[0]
    for c in range(C):
        wx[c] = conf[c]
        wy[c] = conf[c]
    ok, X, Y, Z, inv = _solve(mask, xn, yn, wx, wy, P)
    if not ok:
        return False, X, Y, Z, inv, np.nan
    for c in range(C):
        if not (mask >> c) & 1:
            continue
        depth = P[c, 2, 0] * X + P[c, 2, 1] * Y + P[c, 2, 2] * Z + P[c, 2, 3]
        if not depth > 0.0:  # behind a camera: inconsistent; the reprojection test rejects it
            return True, X, Y, Z, inv, np.inf
        wx[c] = conf[c] * K[c, 0, 0] / depth
        wy[c] = conf[c] * K[c, 1, 1] / depth
    ok, X, Y, Z, inv = _solve(mask, xn, yn, wx, wy, P)
    if not ok:
        return False, X, Y, Z, inv, np.nan
    rss = 0.0
    for c in range(C):
        if not (mask >> c) & 1:
            continue
        for r in range(2):
            a0, a1, a2, b = _dlt_row(c, r, xn, yn, wx, wy, P)
            res = a0 * X + a1 * Y + a2 * Z - b
            rss += res * res
    return True, X, Y, Z, inv, rss


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

    Returns ``(mask, n, err, X, Y, Z, inv, rss)``; ``err`` is ``inf`` if it failed.
    """
    C = P.shape[0]
    err = np.inf
    X = Y = Z = rss = np.nan
    inv = NAN6
    if n >= min_views:
        ok, X, Y, Z, inv, rss = _triangulate_subset(mask, xn, yn, conf, P, K, wx, wy)
        if ok:
            err = _mean_reproj(mask, X, Y, Z, pts, j, P, K, dist, fisheye)
        while not (err <= reproj_threshold) and n > min_views:
            best_err = np.inf
            best_mask = -1
            for c in range(C):
                if not (mask >> c) & 1:
                    continue
                m2 = mask & ~(1 << c)
                ok2, X2, Y2, Z2, inv2, rss2 = _triangulate_subset(
                    m2, xn, yn, conf, P, K, wx, wy
                )
                e2 = np.inf
                if ok2:
                    e2 = _mean_reproj(m2, X2, Y2, Z2, pts, j, P, K, dist, fisheye)
                if best_mask < 0 or e2 < best_err:
                    best_err, best_mask = e2, m2
                    X, Y, Z, inv, rss = X2, Y2, Z2, inv2, rss2
            mask = best_mask
            n -= 1
            err = best_err
    return mask, n, err, X, Y, Z, inv, rss


