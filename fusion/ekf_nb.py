"""Compiled kernels of the EKF on 2D observations (see :mod:`livepose.fusion.ekf`).

One call per frame-set does, per keypoint: undistort every usable view once; triangulate
(the same steps as :func:`livepose.fusion.triangulate.triangulate_nb`, from the same
undistorted points); then the filter's predict, per-view gate and sequential update.

State per keypoint (``D = 3·n``, ``n`` = 2 for the constant-velocity model, 3 for constant
acceleration): ``x = [p(3), v(3), a(3)]`` (mm, mm/s, mm/s²), full ``D×D`` covariance.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from livepose.fusion.triangulate import _mean_reproj, _triangulate_subset, undistort_point_nb


@nb.njit(cache=True, nogil=True, inline="always")
def _q1(i: int, k: int, n: int, dt: float) -> float:
    """Entry ``(i, k)`` of the per-axis process noise (white acceleration for ``n = 2``,
    white jerk for ``n = 3``) divided by the spectral density."""
    e = 2 * n - 1 - i - k  # power of dt
    if n == 2:
        den = (3.0, 2.0, 1.0)[i + k]
    else:
        den = (20.0, 8.0, 3.0 if i == 1 else 6.0, 2.0, 1.0)[i + k]
    return dt**e / den


@nb.njit(cache=True, nogil=True)
def predict_state_nb(x: np.ndarray, Pc: np.ndarray, n: int, dt: float, q: float) -> None:
    """``x ← F x``, ``P ← F P Fᵀ + Q`` in place (``x`` ``(D,)``, ``P`` ``(D, D)``)."""
    D = 3 * n
    for i in range(n):  # rows of block i use the old blocks m > i: ascending i is in place
        for m in range(i + 1, n):
            c = dt if m - i == 1 else 0.5 * dt * dt
            for a in range(3):
                x[3 * i + a] += c * x[3 * m + a]
                for col in range(D):
                    Pc[3 * i + a, col] += c * Pc[3 * m + a, col]
    for i in range(n):
        for m in range(i + 1, n):
            c = dt if m - i == 1 else 0.5 * dt * dt
            for a in range(3):
                for row in range(D):
                    Pc[row, 3 * i + a] += c * Pc[row, 3 * m + a]
    for i in range(n):
        for k in range(n):
            qik = q * _q1(i, k, n, dt)
            for a in range(3):
                Pc[3 * i + a, 3 * k + a] += qik


@nb.njit(cache=True, nogil=True, inline="always")
def _project(
    x: np.ndarray, P: np.ndarray, c: int
) -> tuple[float, float, float, float, float, float, float, float, float]:
    """Normalised projection ``(hx, hy)`` of ``x[:3]`` in camera ``c``, ``1 / Z`` and the
    rows of ``∂h/∂p = (1/Z) [R₀ - hx R₂; R₁ - hy R₂]`` (``Z <= 0`` → ``iz = NaN``)."""
    Xc = P[c, 0, 0] * x[0] + P[c, 0, 1] * x[1] + P[c, 0, 2] * x[2] + P[c, 0, 3]
    Yc = P[c, 1, 0] * x[0] + P[c, 1, 1] * x[1] + P[c, 1, 2] * x[2] + P[c, 1, 3]
    Zc = P[c, 2, 0] * x[0] + P[c, 2, 1] * x[1] + P[c, 2, 2] * x[2] + P[c, 2, 3]
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


@nb.njit(cache=True, nogil=True)
def view_update_nb(
    x: np.ndarray, Pc: np.ndarray, D: int, P: np.ndarray, c: int, zx: float, zy: float,
    rx: float, ry: float, apply: bool, PHt: np.ndarray,
) -> float:
    """Squared Mahalanobis distance of view ``c`` (normalised measurement ``zx, zy`` with
    variances ``rx, ry``) against the state; when ``apply``, also the EKF update with it.

    Returns ``inf`` when the state lies behind the camera (the view is then unusable).
    """
    hx, hy, iz, a0, a1, a2, b0, b1, b2 = _project(x, P, c)
    if not iz > 0.0:
        return np.inf
    for r in range(D):
        PHt[r, 0] = Pc[r, 0] * a0 + Pc[r, 1] * a1 + Pc[r, 2] * a2
        PHt[r, 1] = Pc[r, 0] * b0 + Pc[r, 1] * b1 + Pc[r, 2] * b2
    s00 = a0 * PHt[0, 0] + a1 * PHt[1, 0] + a2 * PHt[2, 0] + rx
    s01 = a0 * PHt[0, 1] + a1 * PHt[1, 1] + a2 * PHt[2, 1]
    s11 = b0 * PHt[0, 1] + b1 * PHt[1, 1] + b2 * PHt[2, 1] + ry
    det = s00 * s11 - s01 * s01
    if not det > 0.0:
        return np.inf
    i00, i01, i11 = s11 / det, -s01 / det, s00 / det
    nx, ny = zx - hx, zy - hy
    d2 = nx * (i00 * nx + i01 * ny) + ny * (i01 * nx + i11 * ny)
    if apply:
        wx = i00 * nx + i01 * ny
        wy = i01 * nx + i11 * ny
        for r in range(D):
            x[r] += PHt[r, 0] * wx + PHt[r, 1] * wy
        for r in range(D):
            k0 = PHt[r, 0] * i00 + PHt[r, 1] * i01
            k1 = PHt[r, 0] * i01 + PHt[r, 1] * i11
            for col in range(D):
                Pc[r, col] -= k0 * PHt[col, 0] + k1 * PHt[col, 1]
    return d2


@nb.njit(cache=True, nogil=True)
def fuse_frame_nb(
    pts: np.ndarray, zvar: np.ndarray, use_zvar: bool,
    P: np.ndarray, K: np.ndarray, dist: np.ndarray, fisheye: np.ndarray,
    lth: float, min_views: int, reproj_thr: float, pixel_noise2: float, fp_iters: int,
    run_filter: bool, x: np.ndarray, Pc: np.ndarray, init: np.ndarray, since: np.ndarray,
    lost: np.ndarray, n: int, dt: float, q: float, max_gap: float, gate2: float,
    infl2: float, reinit_after: float, v0var: float, a0var: float,
    tri_xyz: np.ndarray, tri_reproj: np.ndarray, tri_views: np.ndarray, tri_cov: np.ndarray,
    out_xyz: np.ndarray, out_var: np.ndarray, out_reproj: np.ndarray,
    out_views: np.ndarray, out_gated: np.ndarray,
) -> int:
    """Triangulate and (when ``run_filter``) filter one frame-set; returns views gated.

    Parameters
    ----------
    pts, zvar
        ``(C, J, 3)`` x, y (distorted px), confidence; ``(C, J, 2)`` extra 2D variance (px²,
        e.g. an ensemble's; read when ``use_zvar``).
    P, K, dist, fisheye
        Cameras: ``(C, 3, 4)``, ``(C, 3, 3)``, ``(C, 8)``, ``(C,)``.
    lth, min_views, reproj_thr, pixel_noise2, fp_iters
        Triangulation settings (see :mod:`livepose.fusion.triangulate`).
    x, Pc, init, since, lost
        Filter state ``(J, 9)``, ``(J, 9, 9)``, ``(J,)`` bool, ``(J,)`` s since the last
        accepted view, ``(J,)`` s with every view gated while the triangulation was valid.
    n, dt, q, max_gap, gate2, infl2, reinit_after, v0var, a0var
        Model order, step (s), spectral density, longest gap (s), squared gate, squared
        inflation threshold, re-initialisation delay (s), initial velocity and
        acceleration variances.
    tri_xyz, tri_reproj, tri_views, tri_cov
        ``(J, 3)``, ``(J,)``, ``(J,)`` uint16, ``(J, 3)``: the triangulation, written.
    out_xyz, out_var, out_reproj, out_views, out_gated
        ``(J, 3)``, ``(J, 3)``, ``(J,)``, ``(J,)`` uint16, ``(J,)`` uint16: the filter's
        output (position, variance, reprojection error of the posterior in the views used,
        views used, views gated), written when ``run_filter``.
    """
    C, J = pts.shape[0], pts.shape[1]
    D = 3 * n
    scratch = np.empty((7, C))
    xn, yn, conf, wx, wy, rxs, rys = (scratch[0], scratch[1], scratch[2], scratch[3],
                                      scratch[4], scratch[5], scratch[6])
    d2s = np.empty(C)
    PHt = np.empty((9, 2))
    n_gated = 0
    for j in range(J):
        # ---- usable views, undistorted once
        mask = 0
        nv = 0
        for c in range(C):
            u, v, cf = pts[c, j, 0], pts[c, j, 1], pts[c, j, 2]
            if not (np.isfinite(u) and np.isfinite(v) and cf > 0.0 and cf >= lth):
                continue
            yd = (v - K[c, 1, 2]) / K[c, 1, 1]
            xd = (u - K[c, 0, 2] - K[c, 0, 1] * yd) / K[c, 0, 0]
            xn[c], yn[c] = undistort_point_nb(xd, yd, dist[c], fisheye[c], fp_iters, 8)
            vx = pixel_noise2 / (cf * cf)
            vy = vx
            if use_zvar:
                ex, ey = zvar[c, j, 0], zvar[c, j, 1]
                if np.isfinite(ex) and ex > 0.0:
                    vx += ex
                if np.isfinite(ey) and ey > 0.0:
                    vy += ey
                # DLT weight ∝ 1/σ (the confidence is σ_pixel_noise / σ)
                conf[c] = max(np.sqrt(2.0 * pixel_noise2 / (vx + vy)), 1e-6)
            else:
                conf[c] = cf
            rxs[c] = vx / (K[c, 0, 0] * K[c, 0, 0])
            rys[c] = vy / (K[c, 1, 1] * K[c, 1, 1])
            mask |= 1 << c
            nv += 1
        # ---- triangulation (triangulate_nb's steps 2-5)
        err = np.inf
        tmask, tn = mask, nv
        X = Y = Z = i0 = i1 = i2 = rss = np.nan
        if tn >= min_views:
            ok, X, Y, Z, i0, i1, i2, rss = _triangulate_subset(tmask, xn, yn, conf, P, K, wx, wy)
            if ok:
                err = _mean_reproj(tmask, X, Y, Z, pts, j, P, K, dist, fisheye)
            while not (err <= reproj_thr) and tn > min_views:
                best_err = np.inf
                best_mask = -1
                for c in range(C):
                    if not (tmask >> c) & 1:
                        continue
                    m2 = tmask & ~(1 << c)
                    ok2, X2, Y2, Z2, j0, j1, j2, rss2 = _triangulate_subset(
                        m2, xn, yn, conf, P, K, wx, wy
                    )
                    e2 = np.inf
                    if ok2:
                        e2 = _mean_reproj(m2, X2, Y2, Z2, pts, j, P, K, dist, fisheye)
                    if best_mask < 0 or e2 < best_err:
                        best_err, best_mask = e2, m2
                        X, Y, Z, i0, i1, i2, rss = X2, Y2, Z2, j0, j1, j2, rss2
                tmask = best_mask
                tn -= 1
                err = best_err
        tri_ok = err <= reproj_thr
        if tri_ok:
            dof = 2 * tn - 3
            s2 = max(pixel_noise2, rss / (dof if dof > 0 else 1))
            tri_xyz[j, 0], tri_xyz[j, 1], tri_xyz[j, 2] = X, Y, Z
            tri_cov[j, 0], tri_cov[j, 1], tri_cov[j, 2] = s2 * i0, s2 * i1, s2 * i2
            tri_reproj[j] = err
            tri_views[j] = tmask
        else:
            for a in range(3):
                tri_xyz[j, a] = np.nan
                tri_cov[j, a] = np.nan
            tri_reproj[j] = np.nan
            tri_views[j] = 0
        if not run_filter:
            continue
        # ---- filter: predict
        xj, Pj = x[j], Pc[j]
        if init[j]:
            since[j] += dt
            if since[j] > max_gap + 1e-9:
                init[j] = False
            else:
                predict_state_nb(xj, Pj, n, dt, q)
        used = 0
        gated = 0
        reinit = not init[j]
        if init[j] and mask != 0:
            # ---- does the multi-view consensus (the triangulation) agree with the track?
            maneuver = False
            if tri_ok:
                maneuver = _tri_distance2(xj, Pj, tri_xyz, tri_cov, j) > gate2
            if maneuver:
                lost[j] += dt
                reinit = lost[j] >= reinit_after - 1e-9
                used = tmask  # the views agree among themselves, not with the track
                gated = mask & ~tmask
            else:
                lost[j] = 0.0
                # ---- per-view gate against the prediction
                for c in range(C):
                    if (mask >> c) & 1:
                        d2s[c] = view_update_nb(xj, Pj, D, P, c, xn[c], yn[c], rxs[c],
                                                rys[c], False, PHt)
                        if d2s[c] <= gate2:
                            used |= 1 << c
                        else:
                            gated |= 1 << c
            if used != 0 and not reinit:
                # ---- sequential update, inflating views beyond the inflation threshold
                for c in range(C):
                    if (used >> c) & 1:
                        s = 1.0
                        if not maneuver and d2s[c] > infl2:
                            s = d2s[c] / infl2
                        view_update_nb(xj, Pj, D, P, c, xn[c], yn[c], s * rxs[c],
                                       s * rys[c], True, PHt)
                since[j] = 0.0
        if reinit:
            if tri_ok:
                for r in range(D):
                    xj[r] = 0.0
                    for col in range(D):
                        Pj[r, col] = 0.0
                for a in range(3):
                    xj[a] = tri_xyz[j, a]
                    Pj[a, a] = max(tri_cov[j, a], 1e-12)
                    Pj[3 + a, 3 + a] = v0var
                    if n == 3:
                        Pj[6 + a, 6 + a] = a0var
                init[j] = True
                since[j] = 0.0
                lost[j] = 0.0
                used = tmask
                gated = 0
            elif not init[j]:
                gated = 0
        n_gated += _popcount(gated)
        out_views[j] = used
        out_gated[j] = gated
        if init[j]:
            for a in range(3):
                out_xyz[j, a] = xj[a]
                out_var[j, a] = Pj[a, a]
            out_reproj[j] = np.nan
            if used != 0:
                e = _mean_reproj(used, xj[0], xj[1], xj[2], pts, j, P, K, dist, fisheye)
                out_reproj[j] = e if np.isfinite(e) else np.nan
        else:
            for a in range(3):
                out_xyz[j, a] = np.nan
                out_var[j, a] = np.nan
            out_reproj[j] = np.nan
    return n_gated


@nb.njit(cache=True, nogil=True, inline="always")
def _tri_distance2(
    x: np.ndarray, Pc: np.ndarray, tri_xyz: np.ndarray, tri_cov: np.ndarray, j: int
) -> float:
    """Squared Mahalanobis distance between the predicted position and the triangulation,
    ``dᵀ (P_pp + diag(cov_tri))⁻¹ d``."""
    d0, d1, d2 = tri_xyz[j, 0] - x[0], tri_xyz[j, 1] - x[1], tri_xyz[j, 2] - x[2]
    m00, m01, m02 = Pc[0, 0] + tri_cov[j, 0], Pc[0, 1], Pc[0, 2]
    m11, m12, m22 = Pc[1, 1] + tri_cov[j, 1], Pc[1, 2], Pc[2, 2] + tri_cov[j, 2]
    c00 = m11 * m22 - m12 * m12
    c01 = m02 * m12 - m01 * m22
    c02 = m01 * m12 - m02 * m11
    c11 = m00 * m22 - m02 * m02
    c12 = m01 * m02 - m00 * m12
    c22 = m00 * m11 - m01 * m01
    det = m00 * c00 + m01 * c01 + m02 * c02
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
