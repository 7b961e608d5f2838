"""Triangulation: synthetic distorted rigs (ground truth by projection through known
cameras), outlier and missing views, the variance estimate, undistortion against OpenCV,
and the real eks-fly recordings."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from livepose.core.calibration import read_calibration
from livepose.core.camera import CameraGroup, CameraModel, rodrigues_inv
from livepose.core.config import FusionConfig
from livepose.fusion.triangulate import Triangulator

EKS_FLY = Path(__file__).resolve().parents[3] / "shared" / "data" / "eks-fly"
FULL4 = 0b1111


def look_at(center: np.ndarray, target: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rodrigues vector and translation of a camera at ``center`` looking at ``target``."""
    target = np.zeros(3) if target is None else target
    z = target - center
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return rodrigues_inv(R), -R @ center


def make_camera(name: str, center: np.ndarray, kind: str = "pinhole") -> CameraModel:
    rvec, tvec = look_at(np.asarray(center, dtype=np.float64))
    K = np.array([[620.0, 0.0, 322.0], [0.0, 615.0, 238.0], [0.0, 0.0, 1.0]])
    dist = {
        "pinhole": [-0.21, 0.06, 0.0012, -0.0008, 0.01],
        "rational": [0.3, -0.1, 0.0005, 0.0007, 0.02, 0.45, -0.05, 0.03],
        "fisheye": [0.05, -0.02, 0.004, -0.001],
        "skew": [-0.1, 0.01, 0.0, 0.0],
        "none": [],
    }[kind]
    if kind == "skew":
        K[0, 1] = 1.5
    if kind == "fisheye":
        K[0, 0] = K[1, 1] = 330.0
    return CameraModel(name=name, size=(640, 480), matrix=K, dist=np.array(dist), rvec=rvec,
                       tvec=tvec, fisheye=kind == "fisheye")


def make_rig(kinds: list[str], radius: float = 700.0, height: float = 450.0) -> CameraGroup:
    cams = []
    for i, kind in enumerate(kinds):
        a = 2 * np.pi * i / len(kinds) + 0.3
        cams.append(make_camera(f"cam{i}", [radius * np.cos(a), radius * np.sin(a), height], kind))
    return CameraGroup(cams)


def observe(group: CameraGroup, X: np.ndarray, conf: float = 0.9) -> np.ndarray:
    """``(C, J, 3)`` float64 pixels and confidences of world points ``X`` ``(J, 3)``."""
    uv = group.project(X)
    return np.concatenate([uv, np.full((*uv.shape[:2], 1), conf)], axis=2)


@pytest.fixture(scope="module")
def rig() -> CameraGroup:
    return make_rig(["pinhole", "rational", "fisheye", "skew"])


@pytest.fixture(scope="module")
def points() -> np.ndarray:
    return np.random.default_rng(1).uniform(-120.0, 120.0, (21, 3))


def test_noise_free_points_are_recovered(rig: CameraGroup, points: np.ndarray) -> None:
    tri = Triangulator(rig, FusionConfig())
    res = tri.triangulate(observe(rig, points))
    assert res.xyz.dtype == np.float64 and res.xyz.shape == (21, 3)
    assert res.reproj.dtype == np.float32 and res.views.dtype == np.uint16
    np.testing.assert_allclose(res.xyz, points, atol=1e-6, rtol=0)
    assert np.all(res.views == FULL4)
    assert np.all(res.reproj < 1e-5)
    assert np.all(np.isfinite(res.cov)) and res.cov.shape == (21, 3, 3)
    np.testing.assert_allclose(res.cov, np.swapaxes(res.cov, 1, 2))  # symmetric
    assert np.all(np.linalg.eigvalsh(res.cov) > 0)  # positive definite
    np.testing.assert_array_equal(res.var, np.diagonal(res.cov, axis1=1, axis2=2))


def test_float32_wire_format_and_read_only_buffers(rig: CameraGroup, points: np.ndarray) -> None:
    pts32 = observe(rig, points).astype(np.float32)
    ro = np.frombuffer(pts32.tobytes(), dtype=np.float32).reshape(pts32.shape)  # as received
    assert not ro.flags.writeable
    res = Triangulator(rig, FusionConfig()).triangulate(ro)
    np.testing.assert_allclose(res.xyz, points, atol=1e-3, rtol=0)


def test_bad_shape_is_refused(rig: CameraGroup) -> None:
    tri = Triangulator(rig, FusionConfig())
    with pytest.raises(ValueError, match="shape"):
        tri.triangulate(np.zeros((3, 5, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        tri.triangulate(np.zeros((4, 5, 2), dtype=np.float32))


def test_confidence_weighting_helps(rig: CameraGroup) -> None:
    rng = np.random.default_rng(2)
    X = rng.uniform(-100.0, 100.0, (400, 3))
    obs = observe(rig, X)
    conf = np.array([1.0, 1.0, 0.15, 0.15])  # pixel noise σ = 0.5 px / confidence
    obs[..., :2] += rng.normal(size=obs[..., :2].shape) * (0.5 / conf)[:, None, None]
    cfg = FusionConfig(likelihood_threshold=0.1, reproj_threshold_px=1e6)
    tri = Triangulator(rig, cfg)
    obs[..., 2] = conf[:, None]
    weighted = np.linalg.norm(tri.triangulate(obs).xyz - X, axis=1)
    obs[..., 2] = 1.0
    unweighted = np.linalg.norm(tri.triangulate(obs).xyz - X, axis=1)
    assert np.mean(weighted) < 0.6 * np.mean(unweighted)


@pytest.mark.parametrize("n_cams", [3, 4])
@pytest.mark.parametrize("bad", [0, 1, 2])
def test_outlier_view_is_dropped(n_cams: int, bad: int, points: np.ndarray) -> None:
    group = make_rig(["pinhole", "rational", "fisheye", "skew"][:n_cams])
    obs = observe(group, points)
    obs[bad, 5, :2] += [60.0, -45.0]  # a wrong detection in one view of keypoint 5
    res = Triangulator(group, FusionConfig(reproj_threshold_px=5.0)).triangulate(obs)
    full = (1 << n_cams) - 1
    assert res.views[5] == full & ~(1 << bad)
    np.testing.assert_allclose(res.xyz[5], points[5], atol=1e-6)
    assert res.reproj[5] < 1e-5
    others = np.arange(len(points)) != 5
    assert np.all(res.views[others] == full)


def test_inconsistent_pair_is_nan(points: np.ndarray) -> None:
    group = make_rig(["pinhole", "rational"])
    obs = observe(group, points)
    obs[1, 3, :2] += 80.0  # two views that cannot agree, nothing left to drop
    res = Triangulator(group, FusionConfig(reproj_threshold_px=5.0)).triangulate(obs)
    assert np.all(np.isnan(res.xyz[3])) and res.views[3] == 0 and np.isnan(res.reproj[3])
    keep = np.arange(len(points)) != 3
    np.testing.assert_allclose(res.xyz[keep], points[keep], atol=1e-6)


def test_unusable_keypoints_are_nan(rig: CameraGroup, points: np.ndarray) -> None:
    obs = observe(rig, points[:8])
    obs[:, 0] = np.nan  # no view at all
    obs[:, 1, 2] = 0.0  # zero confidence everywhere
    obs[1:, 2, 2] = 0.1  # below likelihood_threshold but one view
    obs[1:, 3, :2] = np.nan  # one usable view
    obs[:, 4, 2] = np.nan  # NaN confidence
    obs[2:, 5, 0] = np.inf  # two views with valid pixels: still fine
    res = Triangulator(rig, FusionConfig(min_views=2)).triangulate(obs)
    for j in range(5):
        assert np.all(np.isnan(res.xyz[j])), j
        assert res.views[j] == 0 and np.isnan(res.reproj[j]) and np.all(np.isnan(res.cov[j]))
    assert res.views[5] == 0b0011
    np.testing.assert_allclose(res.xyz[5:], points[5:8], atol=1e-6)
    # min_views = 3 with two usable views
    res3 = Triangulator(rig, FusionConfig(min_views=3)).triangulate(obs)
    assert np.all(np.isnan(res3.xyz[5])) and res3.views[5] == 0
    assert np.all(res3.views[6:] == FULL4)


def test_parallel_rays_are_nan(points: np.ndarray) -> None:
    cam = make_camera("a", [700.0, 0.0, 400.0])
    twin = CameraModel(name="b", size=cam.size, matrix=cam.matrix, dist=cam.dist,
                       rvec=cam.rvec, tvec=cam.tvec)
    group = CameraGroup([cam, twin])
    res = Triangulator(group, FusionConfig()).triangulate(observe(group, points[:4]))
    assert np.all(np.isnan(res.xyz)) and np.all(res.views == 0)


def test_variance_matches_monte_carlo(rig: CameraGroup) -> None:
    rng = np.random.default_rng(3)
    X = np.array([[30.0, -20.0, 40.0]])
    clean = observe(rig, X, conf=1.0)
    trials = np.repeat(clean, 2000, axis=1)
    sigma = 1.0
    trials[..., :2] += rng.normal(scale=sigma, size=trials[..., :2].shape)
    cfg = FusionConfig(pixel_noise_px=sigma, reproj_threshold_px=1e6)
    res = Triangulator(rig, cfg).triangulate(trials)
    empirical = np.cov(res.xyz.T)  # the full 3×3, cross-axis terms included
    predicted = np.mean(res.cov, axis=0)
    ratio = np.diag(predicted) / np.diag(empirical)
    assert np.all((ratio > 0.7) & (ratio < 1.8)), ratio
    # the shape of the uncertainty (correlations between axes) is predicted too
    corr = lambda m: m / np.sqrt(np.outer(np.diag(m), np.diag(m)))  # noqa: E731
    np.testing.assert_allclose(corr(predicted), corr(empirical), atol=0.15)


def test_variance_grows_with_fewer_views(rig: CameraGroup, points: np.ndarray) -> None:
    tri = Triangulator(rig, FusionConfig())
    obs = observe(rig, points)
    all_views = tri.triangulate(obs).cov
    obs[2:, :, 2] = 0.0
    two_views = tri.triangulate(obs).cov
    tr = lambda c: np.trace(c, axis1=1, axis2=2)  # noqa: E731
    assert np.all(tr(two_views) > tr(all_views))


# --------------------------------------------------------------------------- undistortion


def _cv_undistort(cam: CameraModel, uv: np.ndarray) -> np.ndarray:
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 1000, 1e-15)
    src = uv.reshape(-1, 1, 2).astype(np.float64)
    if cam.fisheye:
        out = cv2.fisheye.undistortPoints(src, cam.matrix, cam.dist, criteria=crit)
    elif hasattr(cv2, "undistortPointsIter"):  # OpenCV 4
        out = cv2.undistortPointsIter(src, cam.matrix, cam.dist, None, None, crit)
    else:  # OpenCV 5 merged the criteria into undistortPoints
        out = cv2.undistortPoints(src, cam.matrix, cam.dist, criteria=crit)
    return np.asarray(out).reshape(-1, 2)


def _test_cameras() -> list[CameraModel]:
    """The eks-fly cameras (strong distortion) and synthetic pinhole, rational and fisheye
    ones. (OpenCV's point functions ignore the skew of K, so no skewed camera here.)"""
    cams = list(read_calibration(EKS_FLY / "calibration.toml").cameras) if EKS_FLY.is_dir() else []
    return cams + [make_camera(k, [700.0, 0.0, 400.0], k) for k in ("pinhole", "rational",
                                                                     "fisheye")]


def _grid(cam: CameraModel, n: int = 25) -> np.ndarray:
    w, h = cam.size
    u, v = np.meshgrid(np.linspace(0, w - 1, n), np.linspace(0, h - 1, n))
    return np.stack([u.ravel(), v.ravel()], axis=1)


@pytest.mark.parametrize("cam", _test_cameras(), ids=lambda c: c.name)
def test_undistortion_matches_opencv(cam: CameraModel) -> None:
    uv = _grid(cam)
    ref = _cv_undistort(cam, uv)
    f = np.array([cam.matrix[0, 0], cam.matrix[1, 1]])
    # the one undistortion (core), which fusion runs too
    assert np.max(np.abs(cam.undistort(uv) - ref) * f) < 1e-3


@pytest.mark.parametrize("cam", [*_test_cameras(), make_camera("skew", [0, 700.0, 400.0], "skew")],
                         ids=lambda c: c.name)
def test_undistortion_inverts_projection(cam: CameraModel) -> None:
    uv = _grid(cam)
    xy = cam.undistort(uv)
    X = (np.concatenate([xy, np.ones((len(uv), 1))], axis=1) * 300.0 - cam.tvec) @ cam.R
    assert np.max(np.abs(cam.project(X) - uv)) < 1e-6


@pytest.mark.parametrize("cam", _test_cameras(), ids=lambda c: c.name)
def test_projection_matches_opencv(cam: CameraModel) -> None:
    uv = _grid(cam, 7)
    xy = (uv - cam.matrix[:2, 2]) / np.diag(cam.matrix)[:2]  # points seen inside the image
    depth = np.random.default_rng(4).uniform(0.5, 2.0, (len(uv), 1)) * np.linalg.norm(cam.tvec)
    X = (np.concatenate([xy, np.ones((len(uv), 1))], axis=1) * depth - cam.tvec) @ cam.R
    if cam.fisheye:
        ref, _ = cv2.fisheye.projectPoints(X.reshape(-1, 1, 3), cam.rvec, cam.tvec, cam.matrix,
                                           cam.dist)
    else:
        ref, _ = cv2.projectPoints(X, cam.rvec, cam.tvec, cam.matrix, cam.dist)
    np.testing.assert_allclose(cam.project(X), ref.reshape(-1, 2), atol=1e-6)


# --------------------------------------------------------------------------- real data


def _read_lp_csv(path: Path) -> np.ndarray:
    data = np.loadtxt(path, delimiter=",", skiprows=3)[:, 1:]
    return data.reshape(len(data), -1, 3)  # (T, J, 3)


@pytest.mark.skipif(not EKS_FLY.is_dir(), reason="../shared/data/eks-fly not present")
def test_eks_fly_recordings_triangulate() -> None:
    group = read_calibration(EKS_FLY / "calibration.toml", ["Cam-A", "Cam-B", "Cam-C"])
    views = [_read_lp_csv(next(EKS_FLY.glob(f"*_{n}_*rng=0.csv"))) for n in group.names]
    obs = np.stack(views).astype(np.float32)  # (C, T, J, 3)
    C, T, J, _ = obs.shape
    tri = Triangulator(group, FusionConfig(reproj_threshold_px=15.0))
    res = tri.triangulate(obs.reshape(C, T * J, 3))
    ok = res.views > 0
    assert ok.mean() > 0.9
    assert np.median(res.reproj[ok]) < 3.0  # the calibration's own error is 2.1 px
