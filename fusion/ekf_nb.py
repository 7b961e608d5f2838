"""Compiled kernel of the EKF on 2D observations (see :mod:`livepose.fusion.ekf`).

One call per frame-set does, per keypoint: undistort every usable view once
(:func:`livepose.core.camera.undistort_nb`); triangulate (:mod:`livepose.fusion.triangulate`'s
steps, from the same undistorted points); then — unless ``run_filter`` is false — the
filter's predict, per-view gate and one batched update (:mod:`livepose.fusion.ekf_model_nb`).
This is the only triangulation kernel: :class:`~livepose.fusion.triangulate.Triangulator`,
the ``none``/``kf`` filters, the benchmarks and the tests all run it.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from livepose.core.camera import undistort_nb
from livepose.fusion.ekf_model_nb import (
    _accumulate,
    _batch_update,
    _popcount,
    _tri_distance2,
    _view_terms,
    predict_state_nb,
    process_noise_nb,
)
from livepose.fusion.triangulate_nb import _mean_reproj, _triangulate_dropping_views

#: index into the 6 unique entries of a symmetric 3×3 matrix (00, 01, 02, 11, 12, 22)
_SYM6 = ((0, 1, 2), (1, 3, 4), (2, 4, 5))


@nb.njit(cache=True, nogil=True)
def fuse_frame_nb(
    pts: np.ndarray, zvar: np.ndarray, use_zvar: bool,
    P: np.ndarray, K: np.ndarray, dist: np.ndarray, fisheye: np.ndarray,
    lth: float, min_views: int, reproj_thr: float, pixel_noise2: float,
    run_filter: bool, x: np.ndarray, Pc: np.ndarray, init: np.ndarray, since: np.ndarray,
    lost: np.ndarray, n: int, dt: float, q: float, max_gap: float, gate2: float,
    infl2: float, reinit_after: float, consensus_after: float, v0var: float, a0var: float,
    want_reproj: bool,
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
    lth, min_views, reproj_thr, pixel_noise2
        Triangulation settings (see :mod:`livepose.fusion.triangulate`).
    x, Pc, init, since, lost
        Filter state ``(J, 9)``, ``(J, 9, 9)``, ``(J,)`` bool, ``(J,)`` s since the last
        accepted view, ``(J,)`` s with every view gated while the triangulation was valid.
    n, dt, q, max_gap, gate2, infl2, reinit_after, consensus_after, v0var, a0var
        Model order, step (s), spectral density, longest gap (s), squared gate, squared
        inflation threshold, re-initialisation and consensus delays (s), initial velocity
        and acceleration variances.
    want_reproj
        Compute ``out_reproj`` (else NaN; it costs about a fifth of the filter).
    tri_xyz, tri_reproj, tri_views, tri_cov
        ``(J, 3)``, ``(J,)``, ``(J,)`` uint16, ``(J, 3, 3)`` (full covariance): the
        triangulation, written.
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
    terms = np.empty((C, 8))
    info = np.empty(9)
    Kp = np.empty((9, 3))
    bsc = np.empty((4, 3, 9))
    Q1 = np.empty((3, 3))
    process_noise_nb(n, dt, q, Q1)
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
            xn[c], yn[c] = undistort_nb(xd, yd, dist[c], fisheye[c])
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
        # ---- triangulation (livepose.fusion.triangulate, steps 2-5)
        tmask, tn, err, X, Y, Z, inv, rss = _triangulate_dropping_views(
            mask, nv, min_views, reproj_thr, xn, yn, conf, P, K, wx, wy, pts, j, dist, fisheye
        )
        tri_ok = err <= reproj_thr
        if tri_ok:
            dof = 2 * tn - 3
            s2 = max(pixel_noise2, rss / (dof if dof > 0 else 1))
            tri_xyz[j, 0], tri_xyz[j, 1], tri_xyz[j, 2] = X, Y, Z
            for r in range(3):
                for col in range(3):
                    tri_cov[j, r, col] = s2 * inv[_SYM6[r][col]]
            tri_reproj[j] = err
            tri_views[j] = tmask
        else:
            for a in range(3):
                tri_xyz[j, a] = np.nan
                for col in range(3):
                    tri_cov[j, a, col] = np.nan
            tri_reproj[j] = np.nan
            tri_views[j] = 0
        if not run_filter:
            continue
        # ---- filter: predict
        if init[j]:
            since[j] += dt
            if since[j] > max_gap + 1e-9:
                init[j] = False
            else:
                predict_state_nb(x, Pc, j, n, dt, Q1)
        used = 0
        gated = 0
        reinit = not init[j]
        if init[j] and mask != 0:
            # ---- does the multi-view consensus (the triangulation) agree with the track?
            maneuver = False
            if tri_ok:
                maneuver = _tri_distance2(x, Pc, tri_xyz, tri_cov, j) > gate2
            for c in range(C):  # innovations and Jacobians at the prediction
                if (mask >> c) & 1:
                    d2s[c] = _view_terms(x, Pc, j, P, c, xn[c], yn[c], rxs[c], rys[c], terms)
            trust = False
            if maneuver:
                lost[j] += dt
                reinit = lost[j] >= reinit_after - 1e-9
                trust = lost[j] >= consensus_after - 1e-9
            else:
                lost[j] = 0.0
            if trust:
                used = tmask  # the views agree among themselves, not with the track
                gated = mask & ~tmask
            else:
                for c in range(C):  # per-view gate against the prediction
                    if (mask >> c) & 1:
                        if d2s[c] <= gate2:
                            used |= 1 << c
                        else:
                            gated |= 1 << c
            if used != 0 and not reinit:
                # ---- one update with every accepted view (information form), views
                # beyond the inflation threshold down-weighted
                for r in range(9):
                    info[r] = 0.0
                for c in range(C):
                    if (used >> c) & 1 and np.isfinite(d2s[c]):
                        s = 1.0
                        if not trust and d2s[c] > infl2:
                            s = d2s[c] / infl2
                        _accumulate(info, terms, c, 1.0 / (s * rxs[c]), 1.0 / (s * rys[c]))
                _batch_update(x, Pc, j, D, info, Kp, bsc)
                since[j] = 0.0
        if reinit:
            if tri_ok:
                for r in range(D):
                    x[j, r] = 0.0
                    for col in range(D):
                        Pc[j, r, col] = 0.0
                for a in range(3):
                    x[j, a] = tri_xyz[j, a]
                    for col in range(3):  # the triangulation's full covariance
                        Pc[j, a, col] = tri_cov[j, a, col]
                    Pc[j, a, a] = max(tri_cov[j, a, a], 1e-12)
                    Pc[j, 3 + a, 3 + a] = v0var
                    if n == 3:
                        Pc[j, 6 + a, 6 + a] = a0var
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
                out_xyz[j, a] = x[j, a]
                out_var[j, a] = Pc[j, a, a]
            out_reproj[j] = np.nan
            if used != 0 and want_reproj:
                e = _mean_reproj(used, x[j, 0], x[j, 1], x[j, 2], pts, j, P, K, dist, fisheye)
                out_reproj[j] = e if np.isfinite(e) else np.nan
        else:
            for a in range(3):
                out_xyz[j, a] = np.nan
                out_var[j, a] = np.nan
            out_reproj[j] = np.nan
    return n_gated
