"""Compiled pieces of the EKF (see :mod:`livepose.fusion.ekf`): the motion model (predict,
process noise, forward prediction), the pinhole measurement model and its information-form
update, and a fast exact undistortion. :func:`livepose.fusion.ekf_nb.fuse_frame_nb` puts them
together; every function here is inlined into it.

State per keypoint (``D = 3·n``, ``n`` = 2 for the constant-velocity model, 3 for constant
acceleration): ``x = [p(3), v(3), a(3)]`` (mm, mm/s, mm/s²), full ``D×D`` covariance.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from livepose.fusion.triangulate_nb import sym3_cofactors_nb


@nb.njit(cache=True, nogil=True, inline="always")
def _q1(i: int, k: int, n: int, dt: float) -> float:
    """Entry ``(i, k)`` of the per-axis process noise (white acceleration for ``n = 2``,
    white jerk for ``n = 3``) divided by the spectral density."""
    e = 2 * n - 1 - i - k  # power of dt
    den = (3.0, 2.0, 1.0)[i + k] if n == 2 else (20.0, 8.0, 3.0 if i == 1 else 6.0, 2.0, 1.0)[i + k]
    return dt**e / den


@nb.njit(cache=True, nogil=True)
def process_noise_nb(n: int, dt: float, q: float, Q1: np.ndarray) -> None:
    """``Q1[i, k]`` (``n × n``) = the per-axis process noise over ``dt`` for spectral
    density ``q``."""
    for i in range(n):
        for k in range(n):
            Q1[i, k] = q * _q1(i, k, n, dt)


@nb.njit(cache=True, nogil=True, inline="always")
def predict_state_nb(x: np.ndarray, Pc: np.ndarray, j: int, n: int, dt: float,
                     Q1: np.ndarray) -> None:
    """``x ← F x``, ``P ← F P Fᵀ + Q`` in place for keypoint ``j`` (``x`` ``(J, 9)``, ``P``
    ``(J, 9, 9)``; the first ``D = 3·n`` entries; ``Q1`` from :func:`process_noise_nb`)."""
    D = 3 * n
    h = 0.5 * dt * dt
    # rows, then columns: block i gets Σ_{m>i} F[i, m]·block m; ascending i reads the old
    # blocks m > i, so this is in place
    for a in range(3):
        x[j, a] += dt * x[j, 3 + a]
        if n == 3:
            x[j, a] += h * x[j, 6 + a]
            x[j, 3 + a] += dt * x[j, 6 + a]
    for a in range(3):
        for col in range(D):
            Pc[j, a, col] += dt * Pc[j, 3 + a, col]
            if n == 3:
                Pc[j, a, col] += h * Pc[j, 6 + a, col]
                Pc[j, 3 + a, col] += dt * Pc[j, 6 + a, col]
    for row in range(D):
        for a in range(3):
            Pc[j, row, a] += dt * Pc[j, row, 3 + a]
            if n == 3:
                Pc[j, row, a] += h * Pc[j, row, 6 + a]
                Pc[j, row, 3 + a] += dt * Pc[j, row, 6 + a]
    for i in range(n):
        for k in range(n):
            for a in range(3):
                Pc[j, 3 * i + a, 3 * k + a] += Q1[i, k]


@nb.njit(cache=True, nogil=True, inline="always")
def _project(
    x: np.ndarray, j: int, P: np.ndarray, c: int
) -> tuple[float, float, float, float, float, float, float, float, float]:
    """Normalised projection ``(hx, hy)`` of ``x[j, :3]`` in camera ``c``, ``1 / Z`` and the
    rows of ``∂h/∂p = (1/Z) [R₀ - hx R₂; R₁ - hy R₂]`` (``Z <= 0`` → ``iz = NaN``)."""
    x0, x1, x2 = x[j, 0], x[j, 1], x[j, 2]
    Xc = P[c, 0, 0] * x0 + P[c, 0, 1] * x1 + P[c, 0, 2] * x2 + P[c, 0, 3]
    Yc = P[c, 1, 0] * x0 + P[c, 1, 1] * x1 + P[c, 1, 2] * x2 + P[c, 1, 3]
    Zc = P[c, 2, 0] * x0 + P[c, 2, 1] * x1 + P[c, 2, 2] * x2 + P[c, 2, 3]
    if not Zc > 0.0:
        return np.nan, np.nan, np.nan, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    iz = 1.0 / Zc
    hx, hy = Xc * iz, Yc * iz
    return (
        hx, hy, iz,
        iz * (P[c, 0, 0] - hx * P[c, 2, 0]), iz * (P[c, 0, 1] - hx * P[c, 2, 1]),
        iz * (P[c, 0, 2] - hx * P[c, 2, 2]),
        iz * (P[c, 1, 0] - hy * P[c, 2, 0]), iz * (P[c, 1, 1] - hy * P[c, 2, 1]),
        iz * (P[c, 1, 2] - hy * P[c, 2, 2]),
    )


@nb.njit(cache=True, nogil=True, inline="always")
def _view_terms(
    x: np.ndarray, Pc: np.ndarray, j: int, P: np.ndarray, c: int, zx: float, zy: float,
    rx: float, ry: float, terms: np.ndarray,
) -> float:
    """Innovation and Jacobian rows of view ``c`` (normalised measurement ``zx, zy``, noise
    variances ``rx, ry``) at keypoint ``j``'s state into ``terms[c] = (νx, νy, a, b)``;
    returns the squared Mahalanobis distance ``νᵀ S⁻¹ ν`` (``inf``: state behind the
    camera)."""
    hx, hy, iz, a0, a1, a2, b0, b1, b2 = _project(x, j, P, c)
    if not iz > 0.0:
        return np.inf
    nx, ny = zx - hx, zy - hy
    terms[c, 0], terms[c, 1] = nx, ny
    terms[c, 2], terms[c, 3], terms[c, 4] = a0, a1, a2
    terms[c, 5], terms[c, 6], terms[c, 7] = b0, b1, b2
    p00, p01, p02 = Pc[j, 0, 0], Pc[j, 0, 1], Pc[j, 0, 2]
    p11, p12, p22 = Pc[j, 1, 1], Pc[j, 1, 2], Pc[j, 2, 2]
    h0 = a0 * p00 + a1 * p01 + a2 * p02
    h1 = a0 * p01 + a1 * p11 + a2 * p12
    h2 = a0 * p02 + a1 * p12 + a2 * p22
    g0 = b0 * p00 + b1 * p01 + b2 * p02
    g1 = b0 * p01 + b1 * p11 + b2 * p12
    g2 = b0 * p02 + b1 * p12 + b2 * p22
    s00 = h0 * a0 + h1 * a1 + h2 * a2 + rx
    s01 = h0 * b0 + h1 * b1 + h2 * b2
    s11 = g0 * b0 + g1 * b1 + g2 * b2 + ry
    det = s00 * s11 - s01 * s01
    if not det > 0.0:
        return np.inf
    return (nx * (s11 * nx - s01 * ny) + ny * (s00 * ny - s01 * nx)) / det


@nb.njit(cache=True, nogil=True, inline="always")
def _accumulate(info: np.ndarray, terms: np.ndarray, c: int, wx: float, wy: float) -> None:
    """``Λ += Hᵀ W H`` (``info[0:6]``: Λ00 Λ01 Λ02 Λ11 Λ12 Λ22) and ``β += Hᵀ W ν``
    (``info[6:9]``) for view ``c`` with weights ``W = diag(wx, wy)``."""
    nx, ny = terms[c, 0], terms[c, 1]
    a0, a1, a2 = terms[c, 2], terms[c, 3], terms[c, 4]
    b0, b1, b2 = terms[c, 5], terms[c, 6], terms[c, 7]
    info[0] += wx * a0 * a0 + wy * b0 * b0
    info[1] += wx * a0 * a1 + wy * b0 * b1
    info[2] += wx * a0 * a2 + wy * b0 * b2
    info[3] += wx * a1 * a1 + wy * b1 * b1
    info[4] += wx * a1 * a2 + wy * b1 * b2
    info[5] += wx * a2 * a2 + wy * b2 * b2
    info[6] += wx * nx * a0 + wy * ny * b0
    info[7] += wx * nx * a1 + wy * ny * b1
    info[8] += wx * nx * a2 + wy * ny * b2


@nb.njit(cache=True, nogil=True, inline="always")
def _batch_update(x: np.ndarray, Pc: np.ndarray, j: int, D: int, info: np.ndarray,
                  Kp: np.ndarray, sc: np.ndarray) -> None:
    """The Kalman update with every accepted view at once, in information form: with
    ``Λ = Σ Hᵀ R⁻¹ H`` and ``β = Σ Hᵀ R⁻¹ ν`` (position block), ``G = (I + Λ P_pp)⁻¹``::

        x ← x + P[:, p] G β          P ← P - P[:, p] (G Λ) P[p, :]

    (the same as the stacked-measurement update, by the Woodbury identity; ``G Λ`` is
    symmetric, and symmetrised against round-off). ``Kp`` ``(9, 3)`` and ``sc``
    ``(4, 3, 9)`` are scratch."""
    L = ((info[0], info[1], info[2]), (info[1], info[3], info[4]), (info[2], info[4], info[5]))
    M, G, W, Pp = sc[0], sc[1], sc[2], sc[3]
    for r in range(3):
        for c in range(3):
            M[r, c] = (1.0 if r == c else 0.0) + (L[r][0] * Pc[j, 0, c] + L[r][1] * Pc[j, 1, c]
                                                 + L[r][2] * Pc[j, 2, c])
    c00 = M[1, 1] * M[2, 2] - M[1, 2] * M[2, 1]
    c01 = M[0, 2] * M[2, 1] - M[0, 1] * M[2, 2]
    c02 = M[0, 1] * M[1, 2] - M[0, 2] * M[1, 1]
    det = M[0, 0] * c00 + M[1, 0] * c01 + M[2, 0] * c02
    if not abs(det) > 0.0:
        return
    G[0, 0], G[0, 1], G[0, 2] = c00 / det, c01 / det, c02 / det
    G[1, 0] = (M[1, 2] * M[2, 0] - M[1, 0] * M[2, 2]) / det
    G[1, 1] = (M[0, 0] * M[2, 2] - M[0, 2] * M[2, 0]) / det
    G[1, 2] = (M[0, 2] * M[1, 0] - M[0, 0] * M[1, 2]) / det
    G[2, 0] = (M[1, 0] * M[2, 1] - M[1, 1] * M[2, 0]) / det
    G[2, 1] = (M[0, 1] * M[2, 0] - M[0, 0] * M[2, 1]) / det
    G[2, 2] = (M[0, 0] * M[1, 1] - M[0, 1] * M[1, 0]) / det
    for r in range(3):
        for c in range(3):
            W[r, c] = G[r, 0] * L[0][c] + G[r, 1] * L[1][c] + G[r, 2] * L[2][c]
    for r in range(3):
        for c in range(r + 1, 3):
            W[r, c] = W[c, r] = 0.5 * (W[r, c] + W[c, r])
    g0 = G[0, 0] * info[6] + G[0, 1] * info[7] + G[0, 2] * info[8]
    g1 = G[1, 0] * info[6] + G[1, 1] * info[7] + G[1, 2] * info[8]
    g2 = G[2, 0] * info[6] + G[2, 1] * info[7] + G[2, 2] * info[8]
    for r in range(D):
        x[j, r] += Pc[j, r, 0] * g0 + Pc[j, r, 1] * g1 + Pc[j, r, 2] * g2
        for c in range(3):  # Kp = P[:, p] W
            Kp[r, c] = Pc[j, r, 0] * W[0, c] + Pc[j, r, 1] * W[1, c] + Pc[j, r, 2] * W[2, c]
    for r in range(3):
        for col in range(D):
            Pp[r, col] = Pc[j, r, col]
    for r in range(D):
        k0, k1, k2 = Kp[r, 0], Kp[r, 1], Kp[r, 2]
        for col in range(r, D):
            Pc[j, r, col] -= k0 * Pp[0, col] + k1 * Pp[1, col] + k2 * Pp[2, col]
    for r in range(D):
        for col in range(r):
            Pc[j, r, col] = Pc[j, col, r]


@nb.njit(cache=True, nogil=True, inline="always")
def _tri_distance2(
    x: np.ndarray, Pc: np.ndarray, tri_xyz: np.ndarray, tri_cov: np.ndarray, j: int
) -> float:
    """Squared Mahalanobis distance between keypoint ``j``'s predicted position and its
    triangulation, ``dᵀ (P_pp + cov_tri)⁻¹ d`` (``cov_tri`` the full 3×3)."""
    d0, d1, d2 = tri_xyz[j, 0] - x[j, 0], tri_xyz[j, 1] - x[j, 1], tri_xyz[j, 2] - x[j, 2]
    m00 = Pc[j, 0, 0] + tri_cov[j, 0, 0]
    m01 = Pc[j, 0, 1] + tri_cov[j, 0, 1]
    m02 = Pc[j, 0, 2] + tri_cov[j, 0, 2]
    m11 = Pc[j, 1, 1] + tri_cov[j, 1, 1]
    m12 = Pc[j, 1, 2] + tri_cov[j, 1, 2]
    m22 = Pc[j, 2, 2] + tri_cov[j, 2, 2]
    c00, c01, c02, c11, c12, c22, det = sym3_cofactors_nb(m00, m01, m02, m11, m12, m22)
    if not det > 0.0:
        return 0.0
    q = (d0 * (c00 * d0 + c01 * d1 + c02 * d2) + d1 * (c01 * d0 + c11 * d1 + c12 * d2)
         + d2 * (c02 * d0 + c12 * d1 + c22 * d2))
    return q / det


@nb.njit(cache=True, nogil=True, inline="always")
def _popcount(m: int) -> int:
    k = 0
    while m:
        m &= m - 1
        k += 1
    return k


@nb.njit(cache=True, nogil=True)
def ekf_predict_nb(
    x: np.ndarray, Pc: np.ndarray, init: np.ndarray, n: int, lead: float, q: float,
    out_xyz: np.ndarray, out_var: np.ndarray,
) -> None:
    """Positions and variances ``lead`` s ahead, ``(J, 3)`` each; the state is unchanged."""
    f = (1.0, lead, 0.5 * lead * lead)
    q00 = q * _q1(0, 0, n, lead)
    for j in range(x.shape[0]):
        for a in range(3):
            if not init[j]:
                out_xyz[j, a] = np.nan
                out_var[j, a] = np.nan
                continue
            p = 0.0
            var = q00
            for m in range(n):
                p += f[m] * x[j, 3 * m + a]
                for m2 in range(n):
                    var += f[m] * f[m2] * Pc[j, 3 * m + a, 3 * m2 + a]
            out_xyz[j, a] = p
            out_var[j, a] = var
