"""Constant-velocity Kalman filter: accuracy on a known track, equality with filterpy, the
gate, gaps, re-initialisation and forward prediction."""

from __future__ import annotations

import numpy as np
import pytest
from filterpy.kalman import KalmanFilter

from livepose.core.config import KalmanConfig
from livepose.fusion.kalman import KeypointKalman

FPS = 100.0
DT = 1.0 / FPS


def track(J: int, T: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Constant-velocity truth ``(T, J, 3)`` and the velocities ``(J, 3)`` (mm/s)."""
    rng = np.random.default_rng(seed)
    p0 = rng.uniform(-100.0, 100.0, (J, 3))
    v = rng.uniform(-300.0, 300.0, (J, 3))
    t = np.arange(T)[:, None, None] * DT
    return p0[None] + v[None] * t, v


def test_uninitialised_keypoints_are_nan() -> None:
    kf = KeypointKalman(3, KalmanConfig(), FPS)
    z = np.full((3, 3), np.nan)
    z[1] = [1.0, 2.0, 3.0]
    xyz, var = kf.step(z, None, DT)
    assert np.all(np.isnan(xyz[[0, 2]])) and np.all(np.isnan(var[[0, 2]]))
    np.testing.assert_array_equal(xyz[1], z[1])
    np.testing.assert_allclose(var[1], 2.5**2)
    assert kf.initialised.tolist() == [False, True, False]
    z[2, 1] = 5.0  # a partial NaN row is no measurement
    xyz, _ = kf.step(z, None, DT)
    assert np.all(np.isnan(xyz[2]))


def test_bad_input_is_refused() -> None:
    kf = KeypointKalman(2, KalmanConfig(), FPS)
    with pytest.raises(ValueError, match="shape"):
        kf.step(np.zeros((3, 3)), None, DT)
    with pytest.raises(ValueError, match="shape"):
        kf.step(np.zeros((2, 3)), np.ones((2, 2)), DT)
    with pytest.raises(ValueError, match="dt"):
        kf.step(np.zeros((2, 3)), None, -DT)


def test_filter_beats_raw_measurements() -> None:
    truth, _ = track(6, 400)
    rng = np.random.default_rng(1)
    sigma = 2.5
    z = truth + rng.normal(scale=sigma, size=truth.shape)
    kf = KeypointKalman(6, KalmanConfig(accel_noise_mm_s2=500.0, meas_noise_mm=sigma), FPS)
    out = np.stack([kf.step(z[t], None, DT)[0] for t in range(len(z))])
    burn = 50
    raw_err = np.sqrt(np.mean((z[burn:] - truth[burn:]) ** 2))
    kf_err = np.sqrt(np.mean((out[burn:] - truth[burn:]) ** 2))
    assert kf_err < 0.4 * raw_err, (kf_err, raw_err)
    assert kf.n_gated == 0


def _filterpy(z0: np.ndarray, R: np.ndarray, cfg: KalmanConfig) -> KalmanFilter:
    f = KalmanFilter(dim_x=6, dim_z=3)
    f.x = np.zeros((6, 1))
    f.x[0::2, 0] = z0
    f.P = np.diag(np.ravel(np.column_stack([R, np.full(3, cfg.init_speed_mm_s**2)])))
    f.H = np.zeros((3, 6))
    f.H[[0, 1, 2], [0, 2, 4]] = 1.0
    return f


def _set_dt(f: KalmanFilter, dt: float, q: float) -> None:
    F1 = np.array([[1.0, dt], [0.0, 1.0]])
    Q1 = q * np.array([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]])
    f.F = np.kron(np.eye(3), F1)
    f.Q = np.kron(np.eye(3), Q1)


@pytest.mark.parametrize("with_zvar", [False, True])
def test_matches_filterpy(with_zvar: bool) -> None:
    J, T = 4, 120
    truth, _ = track(J, T, seed=2)
    rng = np.random.default_rng(3)
    z = truth + rng.normal(scale=3.0, size=truth.shape)
    z[rng.random((T, J)) < 0.15] = np.nan  # missing measurements
    z[:5, 3] = np.nan  # a keypoint that starts late
    zvar = rng.uniform(1.0, 30.0, (T, J, 3))
    dts = DT * rng.integers(1, 4, T)  # skipped frame-sets
    cfg = KalmanConfig(accel_noise_mm_s2=3000.0, meas_noise_mm=2.0, gate_sigma=1e9, max_gap_s=1e9)
    kf = KeypointKalman(J, cfg, FPS)
    ref: list[KalmanFilter | None] = [None] * J
    for t in range(T):
        xyz, var = kf.step(z[t], zvar[t] if with_zvar else None, float(dts[t]))
        for j in range(J):
            R = zvar[t, j] if with_zvar else np.full(3, cfg.meas_noise_mm**2)
            have = bool(np.all(np.isfinite(z[t, j])))
            f = ref[j]
            if f is None:
                if have:
                    ref[j] = f = _filterpy(z[t, j], R, cfg)
            else:
                _set_dt(f, float(dts[t]), cfg.accel_noise_mm_s2)
                f.predict()
                f.update(z[t, j].reshape(3, 1) if have else None, R=np.diag(R))
            if f is None:
                assert np.all(np.isnan(xyz[j]))
                continue
            np.testing.assert_allclose(xyz[j], f.x[0::2, 0], rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(kf.state[j, :, 1], f.x[1::2, 0], rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(var[j], np.diag(f.P)[0::2], rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(kf.cov[j, :, 1], np.diag(f.P, 1)[0::2], rtol=1e-9,
                                       atol=1e-9)


def _converged(
    J: int = 2, T: int = 100, reinit_after_frames: float | None = None
) -> tuple[KeypointKalman, np.ndarray, np.ndarray]:
    truth, v = track(J, T + 1, seed=4)
    kf = KeypointKalman(
        J, KalmanConfig(gate_sigma=6.0, max_gap_s=0.2, reinit_after_frames=reinit_after_frames),
        FPS,
    )
    for t in range(T):
        kf.step(truth[t], None, DT)
    return kf, truth, v


def test_gate_rejects_a_20_sigma_outlier() -> None:
    kf, truth, _ = _converged()
    T = len(truth) - 1
    pred, pvar = kf.predict_ahead(DT)
    S = pvar + kf.r0
    z = truth[T].copy()
    z[0, 1] += 20.0 * np.sqrt(S[0, 1])  # 20σ on one axis of keypoint 0
    xyz, var = kf.step(z, None, DT)
    assert kf.gated.tolist() == [True, False] and kf.n_gated == 1
    np.testing.assert_allclose(xyz[0], pred[0], rtol=0, atol=1e-9)  # prediction only
    np.testing.assert_allclose(var[0], pvar[0], rtol=1e-12)
    assert np.linalg.norm(xyz[1] - truth[T, 1]) < 1.0
    # a 3σ measurement passes
    kf2, _, _ = _converged()
    pred2, pvar2 = kf2.predict_ahead(DT)
    z2 = pred2 + 3.0 * np.sqrt(pvar2 + kf2.r0) * np.array([1.0, 0.0, 0.0])
    kf2.step(z2, None, DT)
    assert not kf2.gated.any()


def test_persistent_rejection_reinitialises() -> None:
    kf, truth, _ = _converged()
    jumped = truth[-1] + [500.0, 0.0, 0.0]  # the keypoint is now elsewhere (and stays)
    gated_steps = 0
    for _ in range(100):
        xyz, var = kf.step(jumped, None, DT)
        if kf.gated[0]:
            gated_steps += 1
        else:
            break
    assert gated_steps > 0 and (gated_steps + 1) * DT > kf.max_gap
    assert gated_steps * DT <= kf.max_gap + DT
    np.testing.assert_array_equal(xyz[0], jumped[0])  # re-initialised on the new track
    np.testing.assert_allclose(var[0], kf.r0)


def test_rejection_for_reinit_after_frames_reinitialises() -> None:
    kf, truth, _ = _converged(reinit_after_frames=3)
    jumped = truth[-1].copy()
    jumped[0] += [500.0, 0.0, 0.0]  # keypoint 0 is now elsewhere (and stays)
    outs = [kf.step(jumped, None, DT)[0] for _ in range(4)]
    assert kf.n_gated == 3  # gated at 10, 20 and 30 ms, then restarted on the measurement
    np.testing.assert_array_equal(outs[2][0], jumped[0])
    np.testing.assert_array_equal(kf.state[0, :, 1], 0.0)
    assert not np.allclose(outs[1][0], jumped[0])
    assert not kf.gated[1] and np.any(kf.state[1, :, 1] != 0.0)  # the other one is untouched


def test_nan_gap_coasts_then_reinitialises() -> None:
    kf, _, _ = _converged()
    last = kf.state[:, :, 0].copy()
    missing = np.full((2, 3), np.nan)
    prev_var = kf.cov[:, :, 0].copy()
    n = 0
    while True:
        xyz, var = kf.step(missing, None, DT)
        n += 1
        if np.isnan(xyz[0, 0]):
            break
        np.testing.assert_allclose(xyz, last + kf.state[:, :, 1] * n * DT, rtol=1e-12)
        assert np.all(var > prev_var)  # variance grows while coasting
        prev_var = var
    assert n * DT > kf.max_gap and (n - 1) * DT <= kf.max_gap + 1e-12
    assert not kf.initialised.any() and np.all(np.isnan(var))
    z = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    xyz, var = kf.step(z, None, DT)
    np.testing.assert_array_equal(xyz, z)
    np.testing.assert_array_equal(kf.state[:, :, 1], 0.0)
    np.testing.assert_allclose(var, kf.r0)


def test_forward_prediction_on_a_constant_velocity_track() -> None:
    J, T = 3, 400
    truth, v = track(J, T, seed=5)
    kf = KeypointKalman(J, KalmanConfig(accel_noise_mm_s2=20000.0), FPS)
    for t in range(T):
        kf.step(truth[t], None, DT)
    np.testing.assert_allclose(kf.state[:, :, 1], v, rtol=0, atol=1e-6)
    for lead in (0.0, 0.005, 0.05):
        xyz, var = kf.predict_ahead(lead)
        np.testing.assert_allclose(xyz, truth[-1] + v * lead, rtol=0, atol=1e-6)
        # exactly the state extrapolated, with the predicted covariance of filterpy's model
        np.testing.assert_array_equal(xyz, kf.state[:, :, 0] + lead * kf.state[:, :, 1])
        q = kf.q
        P = kf.cov
        expect = P[..., 0] + 2 * lead * P[..., 1] + lead**2 * P[..., 2] + q * lead**3 / 3
        np.testing.assert_allclose(var, expect, rtol=1e-12)
    # prediction does not change the state
    before = kf.state.copy()
    kf.predict_ahead(1.0)
    np.testing.assert_array_equal(kf.state, before)


def test_empty_and_warmup() -> None:
    kf = KeypointKalman(0, KalmanConfig(), FPS)
    xyz, var = kf.step(np.zeros((0, 3)), None, DT)
    assert xyz.shape == (0, 3) and var.shape == (0, 3)
    kf.warmup()
