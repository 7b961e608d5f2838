"""Calibration from the running rig, end to end: the sim rig's cameras render a ChArUco board
(``sim.scene: board``: lens distortion, motion blur, uneven light, false corners), the
supervisor runs them with the collector stage (full frames from the frame rings), the
collector publishes its status in its health, stops when its targets are met, solves and
writes the Anipose TOML — checked against the sim rig's true cameras."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("cv2")
pytest.importorskip("scipy")

from livepose.acquisition.sim.rig import make_rig
from livepose.cli.calibrate import collect_live
from livepose.core.board import Board
from livepose.core.calibration import read_calibration, read_calibration_units
from livepose.core.config import load_default_config

pytestmark = pytest.mark.integration


def _in_cam0(group: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each camera's rotation and centre in camera 0's frame (the solver's world)."""
    c0 = group[0]
    return [(c.R @ c0.R.T, c0.R @ c.center + c0.tvec) for c in group]


def test_sim_rig_with_a_board_is_calibrated_live(tmp_path: Path) -> None:
    cfg = load_default_config()
    cfg.cameras = cfg.cameras[:2]  # two camera processes: a short test on 2 cores
    cfg.fps = 10.0
    cfg.realtime = False
    s = cfg.sim
    s.width, s.height, s.scene = 480, 384, "board"
    s.board.poses, s.board.hold_frames, s.board.false_corners = 40, 1, 0.02
    out = tmp_path / "calib.toml"
    shown: list[str] = []
    st = collect_live(cfg, Board(), out, {"views": 20, "coverage": 0.2, "pair_views": 12},
                      timeout_s=90, show=shown.append, show_every_s=0.5)
    assert st["state"] == "done", st
    # the status went out while collecting: per camera views and coverage grids, pairs
    assert shown and "shared views:" in shown[-1]
    cams = st["cameras"]
    assert [c["name"] for c in cams] == cfg.camera_names
    assert all(c["views"] >= 20 and np.asarray(c["grid"]).shape == (6, 8) for c in cams)
    assert all(n >= 12 for _a, _b, n in st["pairs"]) and st["enough"]
    # against the rig's truth (a short collection: looser than the benchmark's bars)
    est = read_calibration(out, cfg.camera_names)
    truth = make_rig(cfg.sim, cfg.camera_names)
    for e, t in zip(est, truth, strict=True):
        assert abs(e.matrix[0, 0] / t.matrix[0, 0] - 1) < 0.01, (e.matrix, t.matrix)
        assert np.hypot(*(e.matrix[:2, 2] - t.matrix[:2, 2])) < 6.0, (e.matrix, t.matrix)
    (_, _), (r_est, c_est) = _in_cam0(est)
    (_, _), (r_true, c_true) = _in_cam0(truth)
    # twenty views of small images: the relative pose to ~0.5 % of the 700 mm baseline
    # (the same views solved offline: 2.1 mm / 0.28°; the benchmark's 60 views at
    # 1280x1024: 0.14 mm / 0.05°); a wiring error (cameras or frames mixed up, a wrong
    # board) is off by degrees and tens of mm
    shift = float(np.linalg.norm(c_est - c_true))
    ang = np.degrees(np.arccos(np.clip((np.trace(r_est @ r_true.T) - 1) / 2, -1, 1)))
    print(f"live calibration: cam1 centre off by {shift:.1f} mm, rotation by {ang:.2f}°, "
          f"reprojection {st['result']['reproj_px']:.3f} px, {st['frames']} frame-sets, "
          f"{st['elapsed_s']} s")
    assert shift < 0.01 * np.linalg.norm(c_true), (c_est, c_true)
    assert ang < 0.5, ang
    assert st["result"]["reproj_px"] < 0.3
    assert read_calibration_units(out) == "mm"
    assert Path(st["result"]["report"]).exists()
