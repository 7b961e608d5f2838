"""EKF on the 2D observations: single-view updates along the ray, the per-view gate,
coasting, re-initialisation, forward prediction, and the Fuser wiring of every filter.
The filter's behaviour is tested at 30 fps (a lab camera's rate) and at 100 fps: delays are
counted in frame-sets, so they must not depend on the rate."""

from __future__ import annotations

import numpy as np
import pytest

from livepose.acquisition.sim.rig import make_rig
from livepose.core import protocol
from livepose.core.camera import CameraGroup, CameraModel
from livepose.core.config import Config, FusionConfig, KalmanConfig, SimCameraConfig, SimConfig
from livepose.fusion.ekf import KeypointEKF
from livepose.fusion.process import Fuser
from livepose.fusion.triangulate import Triangulator


@pytest.fixture(scope="module")
def rig() -> CameraGroup:
    return make_rig(SimConfig(), [f"cam{i}" for i in range(4)])


@pytest.fixture(params=[30.0, 100.0], ids=["30fps", "100fps"])
def fps(request: pytest.FixtureRequest) -> float:
    return float(request.param)


def observe(rig: CameraGroup, X: np.ndarray, conf: float = 1.0) -> np.ndarray:
    """``(C, J, 3)`` float64 pixels + confidence of ``X`` ``(J, 3)``."""
    uv = rig.project(np.atleast_2d(X))
    return np.concatenate([uv, np.full((*uv.shape[:2], 1), conf)], axis=2)


def track(t: np.ndarray) -> np.ndarray:
    """A smooth 2-keypoint track ``(T, 2, 3)`` (mm)."""
    t = np.asarray(t, dtype=float)[:, None]
    a = np.concatenate([40 * np.sin(2 * t), 30 * np.cos(1.5 * t), 20 + 5 * np.sin(3 * t)], 1)
    return np.stack([a, a + np.array([15.0, -10.0, 5.0])], axis=1)


def converged(rig: CameraGroup, fps: float, cfg: FusionConfig | None = None, T: int = 60,
              noise: float = 0.0) -> tuple[KeypointEKF, np.ndarray]:
    ekf = KeypointEKF(rig, 2, cfg or FusionConfig(), fps)
    truth = track(np.arange(T + 50) / fps)
    rng = np.random.default_rng(0)
    for k in range(T):
        obs = observe(rig, truth[k])
        obs[..., :2] += rng.normal(scale=noise, size=obs[..., :2].shape) if noise else 0.0
        ekf.step(obs, 1.0 / fps)
    return ekf, truth


def test_first_frame_is_the_triangulation(rig: CameraGroup) -> None:
    ekf = KeypointEKF(rig, 2, FusionConfig(), 30.0)
    X = track(np.zeros(1))[0]
    obs = observe(rig, X)
    obs[1:, 1] = np.nan  # keypoint 1 seen by one camera: no track yet
    out = ekf.step(obs, 0.0)
    np.testing.assert_allclose(out.xyz[0], X[0], atol=1e-6)
    np.testing.assert_allclose(out.raw.xyz[0], X[0], atol=1e-6)
    assert out.views[0] == 0b1111 and out.gated[0] == 0
    assert np.all(np.isnan(out.xyz[1])) and out.views[1] == 0
    ref = Triangulator(rig, FusionConfig()).triangulate(obs)
    np.testing.assert_allclose(out.raw.xyz, ref.xyz, atol=1e-9, equal_nan=True)
    np.testing.assert_array_equal(out.raw.views, ref.views)


def test_single_view_moves_onto_its_ray_keeping_depth(rig: CameraGroup) -> None:
    cfg = FusionConfig(pixel_noise_px=0.01)
    ekf = KeypointEKF(rig, 1, cfg, 30.0)
    X0 = np.array([10.0, -5.0, 20.0])
    ekf.step(observe(rig, X0[None]), 0.0)  # initialise at X0
    s2 = 25.0
    ekf.state[0] = 0.0
    ekf.state[0, :3] = X0
    ekf.cov[0] = np.diag([s2] * 3 + [1.0] * 6)  # isotropic position uncertainty
    X1 = X0 + np.array([3.0, 2.0, -1.0])
    obs = np.full((4, 1, 3), np.nan)
    obs[0] = observe(rig, X1[None])[0]
    out = ekf.step(obs, 0.0)
    assert out.views[0] == 0b0001
    cam = rig.cameras[0]
    d = X1 - cam.center
    d /= np.linalg.norm(d)  # the observed ray
    est = out.xyz[0]
    off_ray = (est - cam.center) - np.dot(est - cam.center, d) * d
    assert np.linalg.norm(off_ray) < 0.01  # pulled onto the ray
    depth0 = np.dot(X0 - cam.center, d)
    assert abs(np.dot(est - cam.center, d) - depth0) < 0.05  # depth kept
    var_along = d @ ekf.cov[0, :3, :3] @ d
    assert var_along > 0.99 * s2 and np.all(np.linalg.eigvalsh(ekf.cov[0, :3, :3])[:2] < 0.01)


def test_a_20_sigma_view_is_gated_while_the_others_update(rig: CameraGroup, fps: float) -> None:
    DT = 1.0 / fps
    ekf, truth = converged(rig, fps)
    k = 60
    obs = observe(rig, truth[k])
    obs[2, 0, :2] += [40.0, -20.0]  # a confident misdetection in camera 2 (≈ 45 px ≫ 20 σ)
    n0 = ekf.n_gated
    out = ekf.step(obs, DT)
    assert out.gated[0] == 0b0100 and out.views[0] == 0b1011
    assert out.gated[1] == 0 and out.views[1] == 0b1111
    assert ekf.n_gated == n0 + 1
    np.testing.assert_allclose(out.xyz, truth[k], atol=0.2)
    # a view 1 px off passes
    obs = observe(rig, truth[k + 1])
    obs[2, 0, :2] += [1.0, 0.0]
    out = ekf.step(obs, DT)
    assert out.gated[0] == 0 and out.views[0] == 0b1111


def test_coasting_variance_grows_then_the_track_is_dropped(rig: CameraGroup, fps: float) -> None:
    DT = 1.0 / fps
    cfg = FusionConfig(kalman=KalmanConfig(max_gap_s=0.1))
    ekf, truth = converged(rig, fps, cfg)
    v = ekf.state[:, 3:6].copy()
    x = ekf.state[:, :3].copy()
    prev = ekf.cov[:, [0, 1, 2], [0, 1, 2]].copy()
    nan = np.full((4, 2, 3), np.nan)
    n = 0
    while True:
        out = ekf.step(nan, DT)
        n += 1
        if np.isnan(out.xyz[0, 0]):
            break
        np.testing.assert_allclose(out.xyz, x + v * n * DT, atol=1e-9)
        assert np.all(out.var > prev) and np.all(out.views == 0)
        prev = out.var
    assert n == int(0.1 * fps + 1e-9) + 1 and not ekf.initialised.any()
    # a single view cannot start a track; two views do, at their triangulation
    one = np.full((4, 2, 3), np.nan)
    one[0] = observe(rig, truth[80])[0]
    assert np.all(np.isnan(ekf.step(one, DT).xyz))
    out = ekf.step(observe(rig, truth[81]), DT)
    np.testing.assert_allclose(out.xyz, truth[81], atol=1e-6)
    np.testing.assert_array_equal(ekf.state[:, 3:6], 0.0)


def test_a_jump_seen_by_every_view_is_followed(rig: CameraGroup, fps: float) -> None:
    DT = 1.0 / fps
    ekf, truth = converged(rig, fps)
    moved = truth[60] + [60.0, 0.0, 0.0]  # every view agrees on a place far from the track
    errs = []
    for k in range(20):
        out = ekf.step(observe(rig, moved), DT)
        errs.append(np.abs(out.xyz - moved).max())
        # first frame: a one-frame disagreement is gated (it could be outliers); from the
        # second (consensus_after_frames) the views' consensus is used, at the third the
        # track restarts there (reinit_after_frames) — at any frame rate
        assert np.all(out.views == (0 if k == 0 else 0b1111)), k
    assert max(errs[2:]) < 1e-6, errs


def test_a_jump_reinitialises_after_reinit_after_frames(rig: CameraGroup, fps: float) -> None:
    ekf, truth = converged(rig, fps, FusionConfig(kalman=KalmanConfig(reinit_after_frames=0)))
    moved = truth[60] + [60.0, 0.0, 0.0]
    out = ekf.step(observe(rig, moved), 1.0 / fps)
    np.testing.assert_allclose(out.xyz, moved, atol=1e-6)  # restarted at the triangulation
    np.testing.assert_array_equal(ekf.state[:, 3:6], 0.0)


def test_noisy_track_is_smoother_than_triangulation(rig: CameraGroup, fps: float) -> None:
    DT = 1.0 / fps
    ekf = KeypointEKF(rig, 2, FusionConfig(kalman=KalmanConfig(accel_noise_mm_s2=2e4)), fps)
    T = 300
    truth = track(np.arange(T) * DT)
    rng = np.random.default_rng(1)
    raw, filt = [], []
    for k in range(T):
        obs = observe(rig, truth[k], conf=0.9)
        obs[..., :2] += rng.normal(scale=1.5, size=obs[..., :2].shape)
        out = ekf.step(obs, DT)
        raw.append(out.raw.xyz)
        filt.append(out.xyz)
    e_raw = np.linalg.norm(np.array(raw)[30:] - truth[30:], axis=2)
    e_f = np.linalg.norm(np.array(filt)[30:] - truth[30:], axis=2)
    # steady state of a white-acceleration filter: its error relative to the measurement's
    # grows about as (q dt³ / r)^(1/4), so 3.3× the frame period allows ~1.35× the ratio
    assert np.mean(e_f) < (0.6 if fps >= 100 else 0.85) * np.mean(e_raw)


def test_forward_prediction(rig: CameraGroup, fps: float) -> None:
    ekf, _ = converged(rig, fps)
    x, v = ekf.state[:, :3].copy(), ekf.state[:, 3:6].copy()
    xyz, var = ekf.predict_ahead(0.02)
    np.testing.assert_allclose(xyz, x + 0.02 * v)
    assert np.all(var > ekf.cov[:, [0, 1, 2], [0, 1, 2]])
    np.testing.assert_array_equal(ekf.state[:, :3], x)


def test_bad_input_is_refused(rig: CameraGroup) -> None:
    DT = 0.01
    ekf = KeypointEKF(rig, 2, FusionConfig(), 100.0)
    with pytest.raises(ValueError, match="shape"):
        ekf.step(np.zeros((3, 2, 3)), DT)
    with pytest.raises(ValueError, match="zvar"):
        ekf.step(np.zeros((4, 2, 3)), DT, np.zeros((4, 2, 3)))
    with pytest.raises(ValueError, match="dt"):
        ekf.step(np.zeros((4, 2, 3)), -DT)


@pytest.mark.parametrize("flt", ["none", "kf", "ekf"])
@pytest.mark.parametrize("model", ["cv", "ca"])
def test_fuser_runs_every_filter(rig: CameraGroup, flt: str, model: str) -> None:
    fusion = FusionConfig(filter=flt, lead_ms=10.0, kalman=KalmanConfig(model=model))
    cfg = Config(cameras=[SimCameraConfig(backend="sim", name=n) for n in rig.names], fps=100.0,
                 fusion=fusion)
    fuser = Fuser(rig, cfg)
    fuser.warmup()
    DT = 0.01
    truth = track(np.arange(40) * DT)
    for k in range(40):
        f = fuser.step(observe(rig, truth[k]).astype(np.float32), k)
    assert f.xyz.shape == (2, 3) and f.views.dtype == np.uint16 and f.gated.dtype == np.uint16
    np.testing.assert_allclose(f.raw_xyz, truth[39], atol=1e-3)
    assert (f.status == protocol.MEASURED).all()
    np.testing.assert_allclose(f.xyz, truth[39], atol=1.5)  # the estimate at the frame's time
    if flt == "none":
        assert f.lead_ns == 0 and f.xyz_lead is None
        np.testing.assert_array_equal(f.xyz, f.raw_xyz)
    else:
        assert f.lead_ns == 10_000_000 and f.xyz_lead is not None
        ahead = track(np.array([0.39 + 0.01]))[0]
        np.testing.assert_allclose(f.xyz_lead, ahead, atol=1.5)  # the lead, apart
        coast = fuser.step(np.full((4, 2, 3), np.nan, np.float32), 40)
        assert (coast.status == protocol.PREDICTED).all() and np.isfinite(coast.xyz).all()
    late = fuser.step(observe(rig, truth[20]).astype(np.float32), 20)
    assert late.late == (flt != "none")
    np.testing.assert_allclose(late.xyz, truth[20], atol=1e-3)


@pytest.mark.parametrize("flt", ["none", "kf", "ekf"])
def test_metres_and_millimetres_give_the_same_poses(rig: CameraGroup, flt: str) -> None:
    """The same rig calibrated in metres: every pose is the mm pose ×0.001 and the filters
    behave identically (gates, coasting, re-initialisation: the mm settings are converted)."""
    rig_m = CameraGroup([CameraModel(name=c.name, size=c.size, matrix=c.matrix, dist=c.dist,
                                     rvec=c.rvec, tvec=c.tvec / 1000.0, fisheye=c.fisheye)
                         for c in rig.cameras])
    cfg = Config(cameras=[SimCameraConfig(backend="sim", name=n) for n in rig.names], fps=30.0,
                 fusion=FusionConfig(filter=flt, lead_ms=20.0))
    mm, m = Fuser(rig, cfg, "mm"), Fuser(rig_m, cfg, "m")
    rng = np.random.default_rng(3)
    truth = track(np.arange(90) / 30.0)
    for k in range(90):
        obs = observe(rig, truth[k], conf=0.9).astype(np.float32)
        obs[..., :2] += rng.normal(scale=1.0, size=obs[..., :2].shape).astype(np.float32)
        if k % 17 == 5:
            obs[2, 0, :2] += 60.0  # an outlier view: gated alike
        if 40 <= k < 46:
            obs[:] = np.nan  # coasting alike
        a, b = mm.step(obs, k), m.step(obs, k)
        np.testing.assert_allclose(b.xyz * 1000.0, a.xyz, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(b.var * 1e6, a.var, rtol=1e-5, atol=1e-9)
        np.testing.assert_array_equal(b.views, a.views)
        np.testing.assert_array_equal(b.gated, a.gated)
        np.testing.assert_array_equal(b.status, a.status)
        if a.xyz_lead is not None:
            np.testing.assert_allclose(b.xyz_lead * 1000.0, a.xyz_lead, rtol=1e-6, atol=1e-6)


def test_kalman_disabled_means_no_filter(rig: CameraGroup) -> None:
    fusion = FusionConfig(filter="ekf", kalman=KalmanConfig(enabled=False))
    cfg = Config(cameras=[SimCameraConfig(backend="sim", name=n) for n in rig.names],
                 fusion=fusion)
    assert Fuser(rig, cfg).filter == "none"
