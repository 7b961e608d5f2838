"""Constant-acceleration Kalman filter per keypoint and axis (compiled with numba).

The same filter as :mod:`livepose.fusion.kalman` (same gate, gaps, re-initialisation and
forward prediction) with a three-state model per axis: ``s = [p, v, a]`` (mm, mm/s, mm/s²),
covariance stored as ``p00, p01, p02, p11, p12, p22``, ``H = [1, 0, 0]``.

Predict over ``dt`` with a white-jerk model of spectral density ``q`` (mm²/s⁵)::

    F = [[1, dt, dt²/2], [0, 1, dt], [0, 0, 1]]
    Q = q · [[dt⁵/20, dt⁴/8, dt³/6], [dt⁴/8, dt³/3, dt²/2], [dt³/6, dt²/2, dt]]

A keypoint (re-)initialises with ``p = z, v = 0, a = 0`` and ``P = diag(R, σ_v², σ_a²)``.
Forward prediction by ``lead``: ``p + v·lead + a·lead²/2`` with the predicted variance.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True, inline="always")
def _ca_predict_axis(P: np.ndarray, j: int, a: int, dt: float, q: float) -> None:
    """``P ← F P Fᵀ + Q`` for one axis (packed ``p00 p01 p02 p11 p12 p22``)."""
    h = 0.5 * dt * dt
    a0, b0, c0, d0, e0, f0 = P[j, a, 0], P[j, a, 1], P[j, a, 2], P[j, a, 3], P[j, a, 4], P[j, a, 5]
    fp00 = a0 + dt * b0 + h * c0
    fp01 = b0 + dt * d0 + h * e0
    fp02 = c0 + dt * e0 + h * f0
    fp11 = d0 + dt * e0
    fp12 = e0 + dt * f0
    dt2 = dt * dt
    dt3 = dt2 * dt
    P[j, a, 0] = fp00 + dt * fp01 + h * fp02 + q * dt3 * dt2 / 20.0
    P[j, a, 1] = fp01 + dt * fp02 + q * dt2 * dt2 / 8.0
    P[j, a, 2] = fp02 + q * dt3 / 6.0
    P[j, a, 3] = fp11 + dt * fp12 + q * dt3 / 3.0
    P[j, a, 4] = fp12 + q * dt2 / 2.0
    P[j, a, 5] = f0 + q * dt


@nb.njit(cache=True, nogil=True)
def ca_step_nb(
    s: np.ndarray, P: np.ndarray, init: np.ndarray, since: np.ndarray,
    z: np.ndarray, zvar: np.ndarray, use_zvar: bool, dt: float,
    q: float, r0: float, max_gap: float, gate2: float, v0var: float, a0var: float,
    out_xyz: np.ndarray, out_var: np.ndarray, out_gated: np.ndarray,
) -> int:
    """One predict/update step for ``J`` keypoints.

    Parameters
    ----------
    s, P
        ``(J, 3, 3)`` state (p, v, a per axis) and ``(J, 3, 6)`` packed covariance, updated
        in place.
    init, since
        ``(J,)`` bool and float64 (seconds since the last accepted measurement), in place.
    z, zvar
        ``(J, 3)`` measurements (a NaN in a row = none) and their variances (read when
        ``use_zvar``; non-finite or non-positive → ``r0``).
    dt, q, r0, max_gap, gate2, v0var, a0var
        Step (s), jerk spectral density, default measurement variance, longest gap (s),
        squared gate, initial velocity and acceleration variances.
    out_xyz, out_var, out_gated
        ``(J, 3)``, ``(J, 3)`` (NaN when uninitialised) and ``(J,)`` bool, written.

    Returns
    -------
    int
        Number of keypoint measurements gated in this step.
    """
    n_gated = 0
    for j in range(s.shape[0]):
        out_gated[j] = False
        if init[j]:
            since[j] += dt
            if since[j] > max_gap + 1e-9:
                init[j] = False
            else:
                for a in range(3):
                    s[j, a, 0] += dt * s[j, a, 1] + 0.5 * dt * dt * s[j, a, 2]
                    s[j, a, 1] += dt * s[j, a, 2]
                    _ca_predict_axis(P, j, a, dt, q)
        if np.isfinite(z[j, 0]) and np.isfinite(z[j, 1]) and np.isfinite(z[j, 2]):
            if not init[j]:
                for a in range(3):
                    r = r0
                    if use_zvar and np.isfinite(zvar[j, a]) and zvar[j, a] > 0.0:
                        r = zvar[j, a]
                    s[j, a, 0] = z[j, a]
                    s[j, a, 1] = 0.0
                    s[j, a, 2] = 0.0
                    P[j, a, 0] = r
                    P[j, a, 1] = 0.0
                    P[j, a, 2] = 0.0
                    P[j, a, 3] = v0var
                    P[j, a, 4] = 0.0
                    P[j, a, 5] = a0var
                init[j] = True
                since[j] = 0.0
            else:
                d2 = 0.0
                for a in range(3):
                    r = r0
                    if use_zvar and np.isfinite(zvar[j, a]) and zvar[j, a] > 0.0:
                        r = zvar[j, a]
                    y = z[j, a] - s[j, a, 0]
                    d2 += y * y / (P[j, a, 0] + r)
                if d2 > gate2:
                    out_gated[j] = True
                    n_gated += 1
                else:
                    for a in range(3):
                        r = r0
                        if use_zvar and np.isfinite(zvar[j, a]) and zvar[j, a] > 0.0:
                            r = zvar[j, a]
                        p00, p01, p02 = P[j, a, 0], P[j, a, 1], P[j, a, 2]
                        S = p00 + r
                        k0, k1, k2 = p00 / S, p01 / S, p02 / S
                        y = z[j, a] - s[j, a, 0]
                        s[j, a, 0] += k0 * y
                        s[j, a, 1] += k1 * y
                        s[j, a, 2] += k2 * y
                        P[j, a, 0] = p00 - k0 * p00
                        P[j, a, 1] = p01 - k0 * p01
                        P[j, a, 2] = p02 - k0 * p02
                        P[j, a, 3] = P[j, a, 3] - k1 * p01
                        P[j, a, 4] = P[j, a, 4] - k1 * p02
                        P[j, a, 5] = P[j, a, 5] - k2 * p02
                    since[j] = 0.0
        for a in range(3):
            if init[j]:
                out_xyz[j, a] = s[j, a, 0]
                out_var[j, a] = P[j, a, 0]
            else:
                out_xyz[j, a] = np.nan
                out_var[j, a] = np.nan
    return n_gated


@nb.njit(cache=True, nogil=True)
def ca_predict_nb(
    s: np.ndarray, P: np.ndarray, init: np.ndarray, lead: float, q: float,
    out_xyz: np.ndarray, out_var: np.ndarray,
) -> None:
    """Position and variance ``lead`` seconds ahead, ``(J, 3)`` each; state unchanged."""
    L, h = lead, 0.5 * lead * lead
    for j in range(s.shape[0]):
        for a in range(3):
            if not init[j]:
                out_xyz[j, a] = np.nan
                out_var[j, a] = np.nan
                continue
            out_xyz[j, a] = s[j, a, 0] + L * s[j, a, 1] + h * s[j, a, 2]
            a0, b0, c0, d0, e0, f0 = (P[j, a, 0], P[j, a, 1], P[j, a, 2], P[j, a, 3],
                                      P[j, a, 4], P[j, a, 5])
            fp00 = a0 + L * b0 + h * c0
            fp01 = b0 + L * d0 + h * e0
            fp02 = c0 + L * e0 + h * f0
            out_var[j, a] = fp00 + L * fp01 + h * fp02 + q * L**5 / 20.0
