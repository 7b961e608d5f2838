"""Constant-acceleration Kalman filter: equality with filterpy on the same model, forward
prediction, and the track life it shares with the constant-velocity filter."""

from __future__ import annotations

import numpy as np
import pytest
from filterpy.kalman import KalmanFilter

from livepose.core.config import KalmanConfig
from livepose.fusion.kalman import KeypointKalman

DT = 0.01


def _F(dt: float) -> np.ndarray:
    return np.array([[1.0, dt, dt * dt / 2], [0.0, 1.0, dt], [0.0, 0.0, 1.0]])


def _Q(dt: float, q: float) -> np.ndarray:
    return q * np.array([
        [dt**5 / 20, dt**4 / 8, dt**3 / 6],
        [dt**4 / 8, dt**3 / 3, dt**2 / 2],
        [dt**3 / 6, dt**2 / 2, dt],
    ])


def _filterpy(z0: np.ndarray, R: np.ndarray, cfg: KalmanConfig) -> KalmanFilter:
    f = KalmanFilter(dim_x=9, dim_z=3)
    f.x = np.zeros((9, 1))
    f.x[0::3, 0] = z0
    f.P = np.diag(np.ravel(np.column_stack(
        [R, np.full(3, cfg.init_speed_mm_s**2), np.full(3, cfg.init_accel_mm_s2**2)])))
    f.H = np.zeros((3, 9))
    f.H[[0, 1, 2], [0, 3, 6]] = 1.0
    return f


@pytest.mark.parametrize("with_zvar", [False, True])
def test_matches_filterpy(with_zvar: bool) -> None:
    J, T = 3, 150
    rng = np.random.default_rng(7)
    t = np.arange(T)[:, None, None] * DT
    truth = rng.uniform(-50, 50, (J, 3)) + rng.uniform(-200, 200, (J, 3)) * t \
        + 0.5 * rng.uniform(-2000, 2000, (J, 3)) * t**2
    z = truth + rng.normal(scale=2.0, size=truth.shape)
    z[rng.random((T, J)) < 0.15] = np.nan
    z[:4, 2] = np.nan
    zvar = rng.uniform(1.0, 20.0, (T, J, 3))
    dts = DT * rng.integers(1, 4, T)
    cfg = KalmanConfig(model="ca", jerk_noise_mm_s3=5e6, meas_noise_mm=2.0, gate_sigma=1e9,
                       max_gap_s=1e9)
    kf = KeypointKalman(J, cfg, 100.0)
    assert kf.state.shape == (J, 3, 3) and kf.cov.shape == (J, 3, 6)
    ref: list[KalmanFilter | None] = [None] * J
    for k in range(T):
        xyz, var = kf.step(z[k], zvar[k] if with_zvar else None, float(dts[k]))
        for j in range(J):
            R = zvar[k, j] if with_zvar else np.full(3, cfg.meas_noise_mm**2)
            have = bool(np.all(np.isfinite(z[k, j])))
            f = ref[j]
            if f is None:
                if have:
                    ref[j] = f = _filterpy(z[k, j], R, cfg)
            else:
                f.F = np.kron(np.eye(3), _F(float(dts[k])))
                f.Q = np.kron(np.eye(3), _Q(float(dts[k]), cfg.jerk_noise_mm_s3))
                f.predict()
                f.update(z[k, j].reshape(3, 1) if have else None, R=np.diag(R))
            if f is None:
                assert np.all(np.isnan(xyz[j]))
                continue
            np.testing.assert_allclose(xyz[j], f.x[0::3, 0], rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(kf.state[j, :, 1], f.x[1::3, 0], rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(kf.state[j, :, 2], f.x[2::3, 0], rtol=1e-9, atol=1e-7)
            np.testing.assert_allclose(var[j], np.diag(f.P)[0::3], rtol=1e-9, atol=1e-9)
            for a in range(3):
                blk = f.P[3 * a : 3 * a + 3, 3 * a : 3 * a + 3]  # this axis: (p, v, a)
                packed = [blk[0, 0], blk[0, 1], blk[0, 2], blk[1, 1], blk[1, 2], blk[2, 2]]
                np.testing.assert_allclose(kf.cov[j, a], packed, rtol=1e-9, atol=1e-7)


def test_forward_prediction_and_accelerating_track() -> None:
    J, T = 2, 300
    a = np.array([[300.0, -200.0, 50.0], [0.0, 100.0, -400.0]])
    v0 = np.array([[10.0, 20.0, -30.0], [50.0, 0.0, 0.0]])
    t = np.arange(T)[:, None, None] * DT
    truth = v0 * t + 0.5 * a * t**2
    kf = KeypointKalman(J, KalmanConfig(model="ca"), 100.0)
    for k in range(T):
        kf.step(truth[k], None, DT)
    np.testing.assert_allclose(kf.state[:, :, 2], a, atol=1e-3)
    lead = 0.05
    xyz, var = kf.predict_ahead(lead)
    tl = (T - 1) * DT + lead
    np.testing.assert_allclose(xyz, v0 * tl + 0.5 * a * tl**2, atol=1e-3)
    assert np.all(var > kf.cov[:, :, 0])
    before = kf.state.copy()
    kf.predict_ahead(1.0)
    np.testing.assert_array_equal(kf.state, before)


def test_gap_reinitialises_like_cv() -> None:
    kf = KeypointKalman(1, KalmanConfig(model="ca", max_gap_s=0.05), 100.0)
    z = np.array([[1.0, 2.0, 3.0]])
    for _ in range(20):
        kf.step(z, None, DT)
    nan = np.full((1, 3), np.nan)
    prev = kf.cov[0, :, 0].copy()
    n = 0
    while True:
        xyz, var = kf.step(nan, None, DT)
        n += 1
        if np.isnan(xyz[0, 0]):
            break
        assert np.all(var[0] > prev)
        prev = var[0]
    assert n == 6  # 5 steps of 10 ms coast within max_gap = 50 ms
    xyz, _ = kf.step(z + 10.0, None, DT)
    np.testing.assert_array_equal(xyz, z + 10.0)
    np.testing.assert_array_equal(kf.state[0, :, 1:], 0.0)
