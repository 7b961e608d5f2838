"""Linear Kalman filter per keypoint (compiled with numba): constant velocity here,
constant acceleration in :mod:`livepose.fusion.kalman_ca` (``KalmanConfig.model``).

Every keypoint ``j`` and axis ``a`` (x, y, z in mm) has its own two-state filter; the axes
are independent because the model and the (diagonal) measurement noise are.

State ``s = [p, v]`` (position mm, velocity mm/s), covariance ``P`` (2×2, stored as
``p00, p01, p11``), measurement ``z`` = the triangulated position, ``H = [1, 0]``.

Predict over ``dt`` (white-acceleration model, spectral density ``q = accel_noise_mm_s2``)::

    F = [[1, dt], [0, 1]]            Q = q · [[dt³/3, dt²/2], [dt²/2, dt]]
    s⁻ = F s                         P⁻ = F P Fᵀ + Q

Update with ``z`` and ``R`` (``meas_noise_mm²``, or the triangulation's variance when the
caller passes ``zvar``)::

    y = z - p⁻                       S = p00⁻ + R
    K = [p00⁻, p01⁻] / S             s = s⁻ + K y
    P = (I - K H) P⁻

Gate (per keypoint, over its three axes): the squared Mahalanobis distance
``d² = Σ_a y_a² / S_a``; a measurement with ``d² > gate_sigma²`` is rejected (the filter
only predicts) and counted.

Life of a keypoint: it is *uninitialised* (output NaN) until its first finite measurement,
which sets ``p = z``, ``v = 0``, ``P = diag(R, init_speed_mm_s²)``. A NaN measurement (any
axis NaN) means "predict only", so the variance grows while the keypoint coasts. When the
time since the last *accepted* measurement exceeds ``max_gap_s`` the keypoint becomes
uninitialised again (output NaN) and the next measurement re-initialises it without a gate.
That one rule covers both a gap in the data and a run of gated measurements, so the filter
cannot lock onto a wrong track for longer than ``max_gap_s``. (``max_gap_s`` should exceed
the frame interval, otherwise every frame re-initialises and nothing is filtered.)

Forward prediction by ``lead`` (no state change)::

    p + v·lead,    p00 + 2·lead·p01 + lead²·p11 + q·lead³/3

The kernels allocate nothing; :meth:`KeypointKalman.step` allocates only its two result
arrays unless ``out`` is given.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from livepose.core.config import KalmanConfig
from livepose.fusion.kalman_ca import ca_predict_nb, ca_step_nb


@nb.njit(cache=True, nogil=True)
def kf_step_nb(
    s: np.ndarray, P: np.ndarray, init: np.ndarray, since: np.ndarray,
    z: np.ndarray, zvar: np.ndarray, use_zvar: bool, dt: float,
    q: float, r0: float, max_gap: float, gate2: float, v0var: float,
    out_xyz: np.ndarray, out_var: np.ndarray, out_gated: np.ndarray,
) -> int:
    """One predict/update step for ``J`` keypoints (see the module docstring).

    Parameters
    ----------
    s, P
        ``(J, 3, 2)`` state (position, velocity) and ``(J, 3, 3)`` covariance
        (``p00, p01, p11``) per axis, updated in place.
    init, since
        ``(J,)`` bool initialised flags and float64 seconds since the last accepted
        measurement, updated in place.
    z, zvar
        ``(J, 3)`` measurements (NaN = none) and their variances (read when ``use_zvar``;
        a non-finite or non-positive variance falls back to ``r0``).
    dt, q, r0, max_gap, gate2, v0var
        Step (s), process noise density, default measurement variance, longest gap (s),
        squared gate, initial velocity variance.
    out_xyz, out_var, out_gated
        ``(J, 3)`` positions, ``(J, 3)`` position variances (NaN when uninitialised) and
        ``(J,)`` bool "measurement gated", written.

    Returns
    -------
    int
        Number of keypoint measurements gated in this step.
    """
    n_gated = 0
    Q00 = q * dt * dt * dt / 3.0
    Q01 = q * dt * dt / 2.0
    Q11 = q * dt
    for j in range(s.shape[0]):
        out_gated[j] = False
        if init[j]:
            since[j] += dt
            if since[j] > max_gap + 1e-9:  # tolerate the round-off of summed dt
                init[j] = False
            else:
                for a in range(3):
                    p00, p01, p11 = P[j, a, 0], P[j, a, 1], P[j, a, 2]
                    s[j, a, 0] += dt * s[j, a, 1]
                    P[j, a, 0] = p00 + dt * (2.0 * p01 + dt * p11) + Q00
                    P[j, a, 1] = p01 + dt * p11 + Q01
                    P[j, a, 2] = p11 + Q11
        if np.isfinite(z[j, 0]) and np.isfinite(z[j, 1]) and np.isfinite(z[j, 2]):
            if not init[j]:
                for a in range(3):
                    r = r0
                    if use_zvar and np.isfinite(zvar[j, a]) and zvar[j, a] > 0.0:
                        r = zvar[j, a]
                    s[j, a, 0] = z[j, a]
                    s[j, a, 1] = 0.0
                    P[j, a, 0] = r
                    P[j, a, 1] = 0.0
                    P[j, a, 2] = v0var
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
                        p00, p01, p11 = P[j, a, 0], P[j, a, 1], P[j, a, 2]
                        S = p00 + r
                        k0, k1 = p00 / S, p01 / S
                        y = z[j, a] - s[j, a, 0]
                        s[j, a, 0] += k0 * y
                        s[j, a, 1] += k1 * y
                        P[j, a, 0] = p00 - k0 * p00
                        P[j, a, 1] = p01 - k0 * p01
                        P[j, a, 2] = p11 - k1 * p01
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
def kf_predict_nb(
    s: np.ndarray, P: np.ndarray, init: np.ndarray, lead: float, q: float,
    out_xyz: np.ndarray, out_var: np.ndarray,
) -> None:
    """Position and variance ``lead`` seconds ahead, ``(J, 3)`` each; state unchanged."""
    Q00 = q * lead * lead * lead / 3.0
    for j in range(s.shape[0]):
        for a in range(3):
            if init[j]:
                out_xyz[j, a] = s[j, a, 0] + lead * s[j, a, 1]
                out_var[j, a] = (
                    P[j, a, 0] + lead * (2.0 * P[j, a, 1] + lead * P[j, a, 2]) + Q00
                )
            else:
                out_xyz[j, a] = np.nan
                out_var[j, a] = np.nan


class KeypointKalman:
    """Linear Kalman filters for ``J`` keypoints: ``cfg.model`` ``cv`` (see the module
    docstring) or ``ca`` (:mod:`livepose.fusion.kalman_ca`).

    Parameters
    ----------
    n_keypoints
        ``J``.
    cfg
        ``model``, ``accel_noise_mm_s2`` (cv) or ``jerk_noise_mm_s3`` (ca), ``meas_noise_mm``,
        ``max_gap_s``, ``gate_sigma``, ``init_speed_mm_s``, ``init_accel_mm_s2`` (ca).

    Attributes
    ----------
    state
        cv: ``(J, 3, 2)`` position (mm) and velocity (mm/s) per axis; ca: ``(J, 3, 3)`` with
        the acceleration (mm/s²).
    cov
        cv: ``(J, 3, 3)`` covariance per axis as ``p00, p01, p11``; ca: ``(J, 3, 6)`` as
        ``p00, p01, p02, p11, p12, p22``.
    initialised
        ``(J,)`` bool.
    gated
        ``(J,)`` bool: the last step rejected this keypoint's measurement.
    n_gated
        Measurements rejected by the gate since construction.
    """

    def __init__(self, n_keypoints: int, cfg: KalmanConfig, fps: float,
                 length_scale: float = 1.0) -> None:
        J = int(n_keypoints)
        if J < 0:
            raise ValueError(f"n_keypoints must be >= 0, got {n_keypoints}")
        if not fps > 0 or not length_scale > 0:
            raise ValueError(f"fps and length_scale must be > 0, got {fps}, {length_scale}")
        self.n_keypoints = J
        self.cfg = cfg
        self.ca = cfg.model == "ca"
        s2 = float(length_scale) ** 2  # the config's mm² → the calibration's unit²
        self.q = float(cfg.jerk_noise_mm_s3 if self.ca else cfg.accel_noise_mm_s2) * s2
        self.a0var = float(cfg.init_accel_mm_s2) ** 2 * s2
        self.r0 = float(cfg.meas_noise_mm) ** 2 * s2
        self.max_gap = float(cfg.max_gap_s)
        self.gate2 = float(cfg.gate_sigma) ** 2
        self.v0var = float(cfg.init_speed_mm_s) ** 2 * s2
        self.state = np.zeros((J, 3, 3 if self.ca else 2))
        self.cov = np.zeros((J, 3, 6 if self.ca else 3))
        self.initialised = np.zeros(J, dtype=np.bool_)
        self.since = np.zeros(J)
        self.gated = np.zeros(J, dtype=np.bool_)
        self.n_gated = 0
        self.reinit_after = (None if cfg.reinit_after_frames is None
                             else float(cfg.reinit_after_frames) / float(fps))
        self.rejected = np.zeros(J)
        self._novar = np.empty((1, 3))

    def reset(self) -> None:
        """Forget every keypoint (all uninitialised)."""
        self.initialised[:] = False
        self.since[:] = 0.0
        self.gated[:] = False
        self.rejected[:] = 0.0

    def step(
        self, z: np.ndarray, zvar: np.ndarray | None, dt: float,
        out: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Predict by ``dt`` and update with the measurements.

        Parameters
        ----------
        z
            ``(J, 3)`` triangulated positions (mm); a row with a NaN = no measurement.
        zvar
            ``(J, 3)`` measurement variances (mm²), or ``None`` for ``meas_noise_mm²``.
        dt
            Seconds since the previous step (>= 0).
        out
            Optional ``(xyz, var)`` arrays ``(J, 3)`` float64 to write into.

        Returns
        -------
        xyz, var
            ``(J, 3)`` filtered positions and their variances; NaN where uninitialised.
        """
        J = self.n_keypoints
        zz = np.ascontiguousarray(z, dtype=np.float64)
        if zz.shape != (J, 3):
            raise ValueError(f"z must have shape ({J}, 3), got {zz.shape}")
        if not dt >= 0.0:
            raise ValueError(f"dt must be >= 0, got {dt}")
        if zvar is None:
            zv, use = self._novar, False
        else:
            zv, use = np.ascontiguousarray(zvar, dtype=np.float64), True
            if zv.shape != (J, 3):
                raise ValueError(f"zvar must have shape ({J}, 3), got {zv.shape}")
        xyz, var = out if out is not None else (np.empty((J, 3)), np.empty((J, 3)))
        n = self._kernel(zz, zv, use, float(dt), xyz, var)
        self.n_gated += n
        if self.reinit_after is not None and J:
            self.rejected = np.where(self.gated, self.rejected + dt, 0.0)
            again = self.rejected >= self.reinit_after - 1e-9
            if n and again.any():  # the track is wrong: restart on the measurement
                self.initialised[again] = False
                self.rejected[again] = 0.0
                z2 = np.where(again[:, None], zz, np.nan)
                self._kernel(z2, zv, use, 0.0, xyz, var)  # dt = 0: the others are unchanged
                self.gated[again] = True
        return xyz, var

    def _kernel(self, zz: np.ndarray, zv: np.ndarray, use: bool, dt: float, xyz: np.ndarray,
                var: np.ndarray) -> int:
        if self.ca:
            return int(ca_step_nb(
                self.state, self.cov, self.initialised, self.since, zz, zv, use, dt,
                self.q, self.r0, self.max_gap, self.gate2, self.v0var, self.a0var, xyz, var,
                self.gated,
            ))
        return int(kf_step_nb(
            self.state, self.cov, self.initialised, self.since, zz, zv, use, dt,
            self.q, self.r0, self.max_gap, self.gate2, self.v0var, xyz, var, self.gated,
        ))

    def predict_ahead(self, lead_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Positions and variances ``lead_s`` seconds after the last step, ``(J, 3)`` each
        (NaN where uninitialised); the filter state is unchanged."""
        J = self.n_keypoints
        xyz, var = np.empty((J, 3)), np.empty((J, 3))
        predict = ca_predict_nb if self.ca else kf_predict_nb
        predict(self.state, self.cov, self.initialised, float(lead_s), self.q, xyz, var)
        return xyz, var

    def warmup(self) -> None:
        """Compile (or load from the cache) the kernels on a throw-away filter state."""
        probe = KeypointKalman(max(self.n_keypoints, 1), self.cfg, 100.0)
        z = np.zeros((probe.n_keypoints, 3))
        probe.step(z, None, 0.0)
        probe.step(z, z + 1.0, 0.01)
        probe.predict_ahead(0.01)
