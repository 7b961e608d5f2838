"""``livepose calibrate refine SESSION --camera CAM``: a camera panned 0.5° during a session is
re-estimated from the session's recorded 2D keypoints (the other cameras triangulate them).

The session folder is made with the recorder's own writers (``write_calibration`` for the
calibration it copies, ``write_dlc_csv`` for ``pose2d/<cam>.csv``) from the sim animal's true
keypoints projected through the sim rig — with ``cam2`` turned, 1 px noise, a few missing
and low-confidence keypoints — rather than by running the whole pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("cv2")

from livepose.acquisition.sim.animal import KEYPOINTS, Rodent
from livepose.acquisition.sim.rig import make_rig
from livepose.bench.drift import turned
from livepose.calibrate.refine import refine_rig, refine_session, triangulate
from livepose.cli.app import app
from livepose.core.calibration import read_calibration, write_calibration
from livepose.core.camera import CameraGroup
from livepose.core.config import SimConfig
from livepose.formats.dlc import write_dlc_csv

NAMES = ["cam0", "cam1", "cam2", "cam3"]


def _session(tmp: Path, frames: int = 120, fps: float = 30.0
             ) -> tuple[Path, CameraGroup, CameraGroup]:
    rig = make_rig(SimConfig(width=640, height=512, seed=1), NAMES)
    moved = CameraGroup([turned(c, 0.5) if c.name == "cam2" else c for c in rig])
    animal = Rodent(0, 200.0, 120.0)
    kp = np.stack([animal.keypoints(f / fps) for f in range(frames)])  # (F, J, 3)
    rng = np.random.default_rng(4)
    s = tmp / "session"
    write_calibration(s / "calibration.toml", rig, units="mm")  # as calibrated: before
    for cam in moved:
        uv = cam.project(kp.reshape(-1, 3)).reshape(frames, -1, 2)
        uv += rng.normal(0, 1.0, uv.shape)
        score = rng.uniform(0.6, 1.0, uv.shape[:2])
        score[rng.random(score.shape) < 0.05] = 0.1  # low confidence: left out
        pts = np.concatenate([uv, score[..., None]], axis=2)
        pts[rng.random(score.shape) < 0.05] = np.nan  # missing
        write_dlc_csv(s / "pose2d" / f"{cam.name}.csv", pts, KEYPOINTS,
                      index=list(range(1000, 1000 + frames)))
    return s, rig, moved


def test_triangulate_matches_the_truth() -> None:
    rig = make_rig(SimConfig(width=640, height=512, seed=1), NAMES)
    X = np.random.default_rng(0).uniform(-80, 80, (50, 3)) + np.array([0.0, 0.0, 40.0])
    uv = rig.project(X)
    uv[0, :10] = np.nan  # seen by three cameras
    uv[1:, -3:] = np.nan  # seen by one: no point
    xyz = triangulate(list(rig), uv)
    assert np.abs(xyz[:-3] - X[:-3]).max() < 1e-6
    assert np.isnan(xyz[-3:]).all()


def test_refine_a_drifted_camera_from_a_session(tmp_path: Path) -> None:
    s, rig, moved = _session(tmp_path)
    out = tmp_path / "new.toml"
    res = refine_session(s, "cam2", out)
    new = read_calibration(out, NAMES)
    truth = moved[2]
    cosang = (np.trace(new[2].R @ truth.R.T) - 1) / 2
    assert np.degrees(np.arccos(np.clip(cosang, -1, 1))) < 0.1
    assert np.linalg.norm(new[2].center - truth.center) < 2.0  # mm
    assert 0.4 < res["rotation_deg"] < 0.6  # the 0.5° pan, found
    assert res["error_before_px"] > 3 * res["error_after_px"] and res["error_after_px"] < 1.6
    for k in (0, 1, 3):  # the other cameras are kept as they were
        assert np.allclose(new[k].matrix, rig[k].matrix) and np.allclose(new[k].tvec, rig[k].tvec)
    # the command; bad camera names are one clear line
    r = CliRunner().invoke(app, ["calibrate", "refine", str(s), "--camera", "cam2", "--out",
                                 str(tmp_path / "cli.toml")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["camera"] == "cam2"
    r = CliRunner().invoke(app, ["calibrate", "refine", str(s), "--camera", "camX", "--out",
                                 str(tmp_path / "x.toml")])
    assert r.exit_code == 2 and "camX" in r.output and "cam0" in r.output



def _angle(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(a @ b.T) - 1) / 2, -1, 1))))


def test_refine_the_whole_rig_from_keypoints(tmp_path: Path) -> None:
    """Two cameras turned (0.5°, -0.3°); the rodent's keypoints over 50 s (every 0.5 s: it
    covers the arena). A few seconds of keypoints in one corner leave the rig nearly
    undetermined (docs/calibration.md): the keypoints must cover the volume."""
    rig = make_rig(SimConfig(width=640, height=512, seed=1), NAMES)
    moved = CameraGroup([turned(c, {"cam2": 0.5, "cam3": -0.3}.get(c.name, 0.0)) for c in rig])
    kp = np.stack([Rodent(0, 200.0, 120.0).keypoints(f / 2.0) for f in range(100)])
    rng = np.random.default_rng(4)
    uv = moved.project(kp.reshape(-1, 3)) + rng.normal(0, 1.0, (4, kp.size // 3, 2))
    uv[rng.random(uv.shape[:2]) < 0.05] = np.nan
    new, st = refine_rig(list(rig), uv)
    assert st["error_before_px"] > 2.0 and st["error_after_px"] < 1.1, st
    for n, m in zip(new, moved, strict=True):
        assert _angle(n.R, m.R) < 0.15, n.name  # cam2 and cam3 were off by 0.5° and 0.3°
        assert np.linalg.norm(n.center - m.center) < 1.5, n.name  # mm
    # from a session, by the command without --camera
    s, _, _ = _session(tmp_path, frames=100, fps=2.0)
    r = CliRunner().invoke(app, ["calibrate", "refine", str(s), "--out",
                                 str(tmp_path / "rig.toml")])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["camera"] == "all" and res["error_after_px"] < res["error_before_px"] / 2
    got = read_calibration(tmp_path / "rig.toml", NAMES)
    assert _angle(got[2].R, turned(rig[2], 0.5).R) < 0.15

