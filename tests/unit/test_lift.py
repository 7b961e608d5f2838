"""Single-camera lifting (fusion/lift.py, livepose/lift/): geometry, pairs, noise model,
sessions, the live ``fusion.mode: lift`` path — with a real ONNX Runtime lifter (a linear
least-squares lifter fitted here with NumPy and written as an ONNX graph: no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lifters import fit_linear_lifter

from livepose.acquisition.sim.animal import KEYPOINTS, Rodent
from livepose.acquisition.sim.rig import make_camera
from livepose.core import protocol
from livepose.core.camera import CameraGroup
from livepose.core.config import Config, FusionConfig, LiftConfig
from livepose.fusion.lift import Lifter, LiftError, read_manifest
from livepose.fusion.process import Fuser
from livepose.lift.pairs import Augment, NoiseModel, make_pairs, measure_noise

ROOT = KEYPOINTS.index("spine_mid")


def _cam(name: str = "c0", el: float = 40.0, dist: float = 550.0, az: float = 30.0):  # type: ignore[no-untyped-def]
    return make_camera(name, (320, 256), az, el, dist, 300.0, [-0.1, 0.01, 0, 0, 0])


def _poses(t0: float, n: int, step: float = 0.05) -> np.ndarray:
    a = Rodent(seed=0, arena_radius_mm=200.0, speed_mm_s=120.0)
    return np.stack([a.keypoints(t0 + k * step) for k in range(n)])


@pytest.fixture(scope="module")
def linear_lifter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lifter fitted by least squares on sim poses through virtual cameras, as ONNX."""
    return fit_linear_lifter(tmp_path_factory.mktemp("lifter"))


def test_plane_placement_is_exact_for_a_root_on_the_plane(linear_lifter: Path) -> None:
    """A root that lies on the plane is placed exactly (ray ∩ plane), and the placed pose is
    the root plus the lifted offsets rotated into the world."""
    lifter = Lifter(linear_lifter)
    cam = _cam()
    poses = _poses(30.0, 20)
    h = 12.5
    poses[:, ROOT, 2] = h
    px = np.concatenate([cam.project(poses.reshape(-1, 3)).reshape(20, -1, 2),
                         np.ones((20, len(KEYPOINTS), 1))], axis=2)
    out = lifter.lift(px, cam, height=h)
    assert np.abs(out.xyz[:, ROOT] - poses[:, ROOT]).max() < 1e-6
    back = (out.xyz - out.xyz[:, ROOT : ROOT + 1]) @ cam.R.T
    assert np.allclose(back, out.rel, atol=1e-6)


def test_point_placement_uses_the_fixed_point(linear_lifter: Path) -> None:
    lifter = Lifter(linear_lifter)
    cam = _cam()
    pose = _poses(40.0, 1)
    px = np.concatenate([cam.project(pose[0]), np.ones((len(KEYPOINTS), 1))], axis=1)[None]
    fixed = np.array([10.0, -20.0, 30.0])
    out = lifter.lift(px, cam, point=fixed)
    assert np.allclose(out.xyz[0, ROOT], fixed, atol=1e-9)


def test_linear_lifter_beats_the_mean_pose_on_held_out_poses(linear_lifter: Path) -> None:
    """The real ORT lifter on held-out poses in an unseen camera: its root-relative error is
    well below the error of always answering the mean training pose."""
    lifter = Lifter(linear_lifter)
    cam = _cam(el=35.0, dist=600.0, az=200.0)
    poses = _poses(200.0, 200)
    n = len(poses)
    px = np.concatenate([cam.project(poses.reshape(-1, 3)).reshape(n, -1, 2),
                         np.ones((n, len(KEYPOINTS), 1))], axis=2)
    out = lifter.lift(px, cam)
    pc = poses @ cam.R.T + cam.tvec
    rel = pc - pc[:, ROOT : ROOT + 1]
    err = np.linalg.norm(out.rel - rel, axis=2).mean()
    base = np.linalg.norm(rel - rel.mean(axis=0), axis=2).mean()
    assert err < 0.6 * base, (err, base)


def test_pairs_only_from_measured_keypoints() -> None:
    poses = _poses(0.0, 50)
    poses[:, 3] = np.nan  # "head" never measured
    poses[10:, ROOT] = np.nan  # no root: no pairs from those poses
    noise = NoiseModel(np.ones(len(KEYPOINTS)), np.zeros(len(KEYPOINTS)))
    p = make_pairs(poses, ROOT, 14.0, noise, 300.0, np.random.default_rng(0), Augment(views=3),
                   [_cam()])
    assert len(p) == 10 * 4
    J = len(KEYPOINTS)
    assert (p.w.reshape(-1, J, 3)[:, 3] == 0).all() and (p.w.reshape(-1, J, 3)[:, 0] == 1).all()
    assert (p.x[:, 2 * J + 3] == 0).all()  # head's visibility flag
    assert np.isfinite(p.x).all()


def test_measure_noise_recovers_sigma_and_drop_rate() -> None:
    rng = np.random.default_rng(1)
    proj = rng.uniform(0, 300, (4000, 3, 2))
    pred = np.concatenate([proj + rng.normal(0, [1.0, 2.0, 4.0], (4000, 3))[:, :, None],
                           np.ones((4000, 3, 1))], axis=2)
    pred[:400, 1, 2] = 0.1  # 10 % of keypoint 1 below the threshold
    nm = measure_noise(pred, proj, 0.3)
    assert np.allclose(nm.sigma_px, [1.0, 2.0, 4.0], rtol=0.08)
    assert abs(nm.drop[1] - 0.1) < 0.01 and nm.drop[0] < 0.01


def test_fuser_lift_mode_publishes_lifted_poses(linear_lifter: Path) -> None:
    """``fusion.mode: lift`` on a 2-camera calibration: camera c1's 2D only, filtered, status
    per keypoint, ``lifted`` in the pose3d message; a missing root gives no measurement."""
    cams = CameraGroup([_cam("c0"), _cam("c1", el=45.0, az=140.0)])
    cfg = Config(cameras=[{"name": "c0", "backend": "sim"}, {"name": "c1", "backend": "sim"}],
                 fps=100, fusion={"mode": "lift", "filter": "kf",
                                  "lift": {"path": str(linear_lifter), "camera": "c1"}})
    fuser = Fuser(cams, cfg, "mm")
    poses = _poses(70.0, 40, 0.01)
    errs = []
    for k, pose in enumerate(poses):
        pts = np.full((2, len(KEYPOINTS), 3), np.nan, np.float32)
        pts[1, :, :2] = cams[1].project(pose)
        pts[1, :, 2] = 0.9
        pts[1, 0] = np.nan  # the snout is not seen
        f = fuser.step(pts, k)
        assert f.lifted
        assert f.status[0] == protocol.PREDICTED and (f.status[1:] == protocol.MEASURED).all()
        assert (f.views[1:] == 2).all()
        errs.append(np.linalg.norm(f.xyz - pose, axis=1)[1:].mean())
    assert np.median(errs) < 25.0
    msg = protocol.Pose3d(frame_id=1, xyz=f.xyz, variance=f.var, reproj=f.reproj,
                          views=f.views, status=f.status, lifted=f.lifted)
    back = protocol.decode_strict(protocol.encode(msg))
    assert isinstance(back, protocol.Pose3d) and back.lifted
    pts[1, ROOT] = np.nan
    f = fuser.step(pts, 40)
    assert (f.status != protocol.MEASURED).all()


def test_config_and_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"fusion.lift.path is required"):
        FusionConfig(mode="lift")
    with pytest.raises(ValueError, match=r"point_mm is required"):
        LiftConfig(path=tmp_path, plane="point")
    with pytest.raises(LiftError, match=r"no lifter\.yaml"):
        read_manifest(tmp_path)
    (tmp_path / "lifter.yaml").write_text("keypoints: [a, b]\nroots: [c]\nplane_height_mm: 1\n")
    with pytest.raises(LiftError, match="root 'c' is not one of its keypoints"):
        read_manifest(tmp_path)


def test_virtual_cameras_look_at_the_centre_or_aim_beside_it() -> None:
    from livepose.lift.pairs import Augment, virtual_views

    centre = np.array([100.0, -50.0, 800.0])
    for aim in (0.0, 15.0):
        aug = Augment(elevation_deg=(0.0, 30.0), distance_mm=(2000.0, 4000.0), views=1,
                      aim_deg=aim)
        R, t = virtual_views(np.random.default_rng(3), 500, aug, centre)
        pc = np.einsum("nij,j->ni", R, centre) + t  # the centre in each camera's frame
        off = np.degrees(np.arctan2(np.linalg.norm(pc[:, :2], axis=1), pc[:, 2]))
        assert (pc[:, 2] > 0).all()  # always in front
        assert off.max() <= aim + 1e-6
        if aim:
            assert np.median(off) > aim / 3  # spread over the cone, not at its axis
        # cameras stay level: the world's up axis projects straight up in every image
        assert np.abs(R[:, 0, 2]).max() < 1e-9
