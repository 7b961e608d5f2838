"""Sessions as a lifter's training data (livepose/lift/sessions.py) and ``livepose lift
train`` end to end (torch: skipped without it)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from livepose.acquisition.sim.animal import KEYPOINTS, Rodent
from livepose.acquisition.sim.rig import make_camera
from livepose.core.calibration import write_calibration
from livepose.formats.anipose3d import status_header, status_path, status_row, write_anipose3d
from livepose.formats.dlc import write_dlc_csv
from livepose.kit.session import pose2d_path, pose3d_path
from livepose.lift.sessions import read_session

T = 240


def _session(folder: Path, units: str = "mm") -> tuple[Path, np.ndarray]:
    """A recorded session of the sim animal in 3 cameras: 3D, status and 2D; keypoint 3
    is ``predicted`` in every frame-set, frame-set 5 is late, and frame-sets 0-9 have no
    measured root."""
    s = {"mm": 1.0, "m": 1e-3}[units]
    a = Rodent(seed=1, arena_radius_mm=200.0, speed_mm_s=120.0)
    poses = np.stack([a.keypoints(0.04 * k) for k in range(T)])
    cams = [make_camera(f"c{i}", (320, 256), 45 + 120 * i, 45.0, 520.0 * s, 300.0,
                        [-0.1, 0, 0, 0, 0], target=np.array([0.0, 0.0, 20.0 * s]))
            for i in range(3)]
    write_calibration(folder / "calibration.toml", cams, units=units)
    cams_mm = [make_camera(f"c{i}", (320, 256), 45 + 120 * i, 45.0, 520.0, 300.0,
                           [-0.1, 0, 0, 0, 0]) for i in range(3)]
    fnum = np.arange(100, 100 + T)
    write_anipose3d(pose3d_path(folder), poses * s, KEYPOINTS, fnum=fnum)
    J = len(KEYPOINTS)
    with status_path(pose3d_path(folder)).open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(status_header(KEYPOINTS))
        for t in range(T):
            st = ["measured"] * J
            st[3] = "predicted"
            if t < 10:
                st[5] = "missing"
            w.writerow(status_row(int(fnum[t]), st, np.full(J, 7), t == 5, J))
    rng = np.random.default_rng(0)
    for c in cams_mm:
        uv = c.project(poses.reshape(-1, 3)).reshape(T, J, 2) + rng.normal(0, 1.0, (T, J, 2))
        write_dlc_csv(pose2d_path(folder, c.name),
                      np.concatenate([uv, np.full((T, J, 1), 0.9)], axis=2), KEYPOINTS,
                      index=list(fnum))
    return folder, poses


def test_read_session_keeps_measured_keypoints_only(tmp_path: Path) -> None:
    folder, poses = _session(tmp_path, units="m")
    d = read_session(folder)
    assert d.poses.shape == (T, len(KEYPOINTS), 3)
    assert np.isnan(d.poses[:, 3]).all()  # predicted: never a target
    assert np.isnan(d.poses[5]).all()  # late frame-set
    assert np.isnan(d.poses[:10, 5]).all()
    ok = np.isfinite(d.poses).all(axis=2)
    assert np.allclose(d.poses[ok], poses[ok], atol=1e-6)  # metres → mm
    assert np.allclose(d.cameras[0].center, [
        520 * np.cos(np.radians(45)) * np.cos(np.radians(45)),
        520 * np.cos(np.radians(45)) * np.sin(np.radians(45)),
        20 + 520 * np.sin(np.radians(45))], atol=1e-6)
    assert np.isfinite(d.pose2d).all() and d.pose2d.shape == (T, 3, len(KEYPOINTS), 3)


def test_read_session_refuses_a_session_without_status(tmp_path: Path) -> None:
    from livepose.core.errors import UserError

    folder, _ = _session(tmp_path)
    status_path(pose3d_path(folder)).unlink()
    with pytest.raises(UserError, match=r"pose3d_status\.csv"):
        read_session(folder)


def test_lift_train_cli(tmp_path: Path) -> None:
    """``livepose lift train`` on a session: ONNX + manifest that the live lifter loads,
    with the session's measured 2D error and the training/held-out errors."""
    pytest.importorskip("torch")
    from typer.testing import CliRunner

    from livepose.cli.app import app
    from livepose.fusion.lift import Lifter

    folder, _ = _session(tmp_path / "s")
    out = tmp_path / "lifter"
    r = CliRunner().invoke(app, ["lift", "train", str(folder), "--out", str(out), "--root",
                                 "spine_mid", "--epochs", "2", "--width", "32", "--views", "2"])
    assert r.exit_code == 0, r.output
    assert "held-out median" in r.output
    lifter = Lifter(out)
    extra = lifter.spec.extra
    assert lifter.spec.root == "spine_mid"
    assert extra["held_out_error"]["median_mm"] > 0
    assert 0.7 < extra["noise"]["snout"]["sigma_px"] < 1.4  # the 2D's σ of 1 px
    assert extra["augmentation"]["elevation_deg"] == [20.0, 70.0]
    bad = CliRunner().invoke(app, ["lift", "train", str(folder), "--out", str(out),
                                   "--elevation", "70:20"])
    assert bad.exit_code == 2 and "LO must be <= HI" in bad.output


def test_on_grid_puts_rows_at_their_frame_ids(tmp_path: Path) -> None:
    """For a lifter with history, consecutive rows must be consecutive frames: a session's
    missing frame ids become NaN rows."""
    folder, _ = _session(tmp_path)
    d = read_session(folder)
    assert d.frame_ids is not None and d.frame_ids[0] == 100 and d.fps is None
    keep = np.r_[0:50, 53:T]  # frames 150-152 never reached pose3d.csv
    gapped = type(d)(d.poses[keep], d.keypoints, d.cameras, d.pose2d[keep], d.frame_ids[keep])
    g = gapped.on_grid()
    assert g.poses.shape[0] == T and np.isnan(g.poses[50:53]).all()
    assert np.array_equal(g.poses[60], d.poses[60], equal_nan=True)
    assert np.array_equal(g.frame_ids, np.arange(100, 100 + T))


def test_lift_train_cli_with_history(tmp_path: Path) -> None:
    """``--history``: previous frames in the input, their step in the manifest in seconds
    (the live path converts it to its own frames); the frame rate must be known."""
    pytest.importorskip("torch")
    from typer.testing import CliRunner

    from livepose.cli.app import app
    from livepose.fusion.lift import Lifter

    folder, _ = _session(tmp_path / "s")
    out = tmp_path / "lifter"
    args = ["lift", "train", str(folder), "--out", str(out), "--root", "spine_mid",
            "--epochs", "1", "--width", "32", "--views", "1", "--history", "2",
            "--history-step", "0.04"]
    bad = CliRunner().invoke(app, args)
    assert bad.exit_code == 2 and "give --fps" in bad.output
    r = CliRunner().invoke(app, [*args, "--fps", "25", "--noise", "gaussian"])
    assert r.exit_code == 0, r.output
    lifter = Lifter(out)
    assert lifter.spec.history == 2 and lifter.spec.history_step_s == pytest.approx(0.04)
    assert lifter.spec.step_frames(100.0) == 4
    assert lifter.spec.extra["noise_model"] == "gaussian"
