"""A lifter with previous frames in its input (``history``, fusion/lift.py): the causal
window, training pairs with history, the live path's history across calls (dropped frames
included), and the 2D model's measured residuals as training noise. A real ONNX Runtime
lifter (least squares fitted with NumPy, written as an ONNX graph: no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lifters import fit_linear_lifter

from livepose.acquisition.sim.animal import KEYPOINTS, Rodent
from livepose.acquisition.sim.rig import make_camera
from livepose.core.camera import CameraGroup
from livepose.core.config import Config
from livepose.fusion.lift import (
    Lifter,
    LiftError,
    LiftSpec,
    read_manifest,
    stack_history,
    write_manifest,
)
from livepose.fusion.process import Fuser
from livepose.lift.pairs import Augment, NoiseModel, make_pairs, measure_noise

ROOT = KEYPOINTS.index("spine_mid")
J = len(KEYPOINTS)


def _cam(name: str = "c0", el: float = 40.0, az: float = 30.0):  # type: ignore[no-untyped-def]
    return make_camera(name, (320, 256), az, el, 550.0, 300.0, [-0.1, 0.01, 0, 0, 0])


def _poses(t0: float, n: int, step: float = 0.01) -> np.ndarray:
    a = Rodent(seed=0, arena_radius_mm=200.0, speed_mm_s=120.0)
    return np.stack([a.keypoints(t0 + k * step) for k in range(n)])


def test_stack_history_is_causal_and_zero_for_dropped_frames() -> None:
    rows = np.arange(6, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32) + 1
    fids = np.array([10, 12, 14, 16, 18, 20])
    fids_gap = np.array([10, 12, 16, 18, 20, 22])  # 14 was dropped
    h = stack_history(rows, fids, 2, 2)
    assert h.shape == (6, 4)
    assert (h[0] == 0).all()  # nothing before the first frame
    assert (h[1] == [1, 1, 0, 0]).all() and (h[5] == [5, 5, 4, 4]).all()  # newest first
    hg = stack_history(rows, fids_gap, 2, 2)
    assert (hg[2] == [0, 0, 2, 2]).all()  # 16: 14 missing, 12 present
    # order of the rows does not matter
    perm = np.array([3, 0, 5, 1, 4, 2])
    assert np.array_equal(stack_history(rows[perm], fids[perm], 2, 2), h[perm])


def test_pairs_with_history_see_the_previous_frames_through_the_same_camera() -> None:
    poses = _poses(0.0, 40)
    zero = NoiseModel(np.full(J, 1e-9), np.zeros(J))
    cam = _cam()
    p = make_pairs(poses, ROOT, 14.0, zero, 300.0, np.random.default_rng(0), None, [cam],
                   history=2, step=2, every=2)
    base = make_pairs(poses, ROOT, 14.0, zero, 300.0, np.random.default_rng(0), None, [cam])
    assert len(p) == 20 and p.x.shape[1] == 3 * J * 3 + 5
    f0 = 3 * J + 5
    # anchor rows 0, 2, 4, …: the first frame has no history, the others the rows before
    assert np.allclose(p.x[:, :f0], base.x[::2, :f0], atol=1e-5)
    assert (p.x[0, f0:] == 0).all()
    assert np.allclose(p.x[1:, f0 : f0 + 3 * J], base.x[:-2:2, : 3 * J], atol=1e-5)
    assert np.allclose(p.x[2:, f0 + 3 * J :], base.x[:-4:2, : 3 * J], atol=1e-5)
    dropped = make_pairs(poses, ROOT, 14.0, zero, 300.0, np.random.default_rng(0), Augment(views=2),
                         [cam], history=2, step=2, frame_drop=1.0)
    assert (dropped.x[:, f0:] == 0).all()


@pytest.fixture(scope="module")
def history_lifter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_linear_lifter(tmp_path_factory.mktemp("hist"), history=2, step_s=0.02,
                             poses_n=3000, poses_dt=0.02, views=3, frame_drop=0.1)


def test_live_history_matches_the_batch_lift_with_a_dropped_frame(history_lifter: Path) -> None:
    """``fusion.mode: lift`` keeps the previous frames across calls: its raw pose equals the
    batch lift of the same frames (frame ids with a gap where a frame was dropped), and a
    frame whose previous frames were dropped is lifted from zeros, as in training."""
    lifter = Lifter(history_lifter)
    assert lifter.spec.history == 2 and lifter.spec.step_frames(100) == 2
    cams = CameraGroup([_cam("c0"), _cam("c1", az=150.0)])
    cfg = Config(cameras=[{"name": "c0", "backend": "sim"}, {"name": "c1", "backend": "sim"}],
                 fps=100, fusion={"mode": "lift", "filter": "none",
                                  "lift": {"path": str(history_lifter), "camera": "c0"}})
    fuser = Fuser(cams, cfg, "mm")
    poses = _poses(50.0, 30)
    fids = np.array([f for f in range(30) if f not in (7, 8, 9)])  # three frames dropped
    px = np.concatenate([cams[0].project(poses.reshape(-1, 3)).reshape(30, J, 2),
                         np.full((30, J, 1), 0.9)], axis=2)[fids]
    batch = lifter.lift(px, cams[0], frame_ids=fids, step=2)
    two = np.full((len(fids), 2, J, 3), np.nan, np.float32)
    two[:, 0] = px
    live = np.stack([fuser.step(two[i], int(f)).raw_xyz for i, f in enumerate(fids)])
    assert np.allclose(live, batch.xyz, atol=1e-3)
    alone = lifter.lift(px[8:9], cams[0], frame_ids=fids[8:9], step=2)  # frame 11: 9, 7 dropped
    assert np.allclose(alone.xyz, batch.xyz[8:9], atol=1e-3)
    consecutive = lifter.lift(px, cams[0], step=2)  # wrong ids: a different history
    assert not np.allclose(consecutive.xyz[7:9], batch.xyz[7:9], atol=1e-3)
    # the history helps this linear lifter on noisy 2D: sanity of the whole path
    pc = poses[fids] @ cams[0].R.T + cams[0].tvec
    err = np.linalg.norm(batch.rel - (pc - pc[:, ROOT : ROOT + 1]), axis=2)
    assert np.nanmedian(err) < 15.0


def test_history_manifest_errors(tmp_path: Path) -> None:
    write_manifest(tmp_path, LiftSpec(["a", "b"], "a", 1.0, 0.3, {}, 2, 0.0))
    with pytest.raises(LiftError, match="history_step_s > 0"):
        read_manifest(tmp_path)
    write_manifest(tmp_path, LiftSpec(["a", "b"], "a", 1.0, 0.3, {}, 2, 0.02))
    assert read_manifest(tmp_path).n_features == 3 * 2 * 3 + 5


def test_measured_residuals_are_resampled_with_their_tail() -> None:
    rng = np.random.default_rng(2)
    proj = rng.uniform(0, 300, (5000, 2, 2))
    err = rng.normal(0, 1.0, (5000, 2, 2))
    err[:250, 0] += 20.0  # 5 % gross errors on keypoint 0, still confident
    pred = np.concatenate([proj + err, np.ones((5000, 2, 1))], axis=2)
    pred[:500, 1, 2] = 0.1  # 10 % of keypoint 1 unusable
    nm = measure_noise(pred, proj, 0.3)
    assert nm.drop[0] > 0.04  # the Gaussian model drops the gross errors
    assert nm.missing is not None and abs(nm.missing[1] - 0.1) < 0.005 and nm.missing[0] == 0
    e, kept = nm.sample(np.random.default_rng(0), (20000, 2), 100.0)
    big = np.linalg.norm(e[:, 0], axis=1) * 100.0 > 15.0
    assert 0.04 < big.mean() < 0.06  # …the resampled residuals keep them as errors
    assert abs(1.0 - kept[:, 1].mean() - 0.1) < 0.01 and kept[:, 0].all()
    g, gk = nm.gaussian().sample(np.random.default_rng(0), (20000, 2), 100.0)
    assert (np.linalg.norm(g[:, 0], axis=1) * 100.0 > 15.0).mean() < 1e-3
    assert abs(1.0 - gk[:, 0].mean() - nm.drop[0]) < 0.01
