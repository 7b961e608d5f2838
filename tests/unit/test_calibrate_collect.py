"""Collection feedback (livepose/calibrate/collect.py) on rendered sim boards: views kept only
when the board moves, coverage, shared pairs, running reprojection, a diagnosis for a camera
that sees nothing, and the stop rule."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cv2")

from livepose.acquisition.sim.board import BoardRenderer, scripted_board_poses
from livepose.acquisition.sim.rig import make_rig
from livepose.calibrate.collect import Collector, Targets
from livepose.core.board import Board
from livepose.core.config import SimConfig


def test_collector_feedback_and_stop_rule() -> None:
    board = Board()
    rig = make_rig(SimConfig(width=480, height=384, seed=2), ["a", "b"])
    poses = scripted_board_poses(12, seed=3, board_size=board.size)
    tex = board.image(30, 0.5)
    rs = [BoardRenderer(c, tex, 30 / board.length, (-20.0, -20.0), seed=i)
          for i, c in enumerate(rig)]
    frames = [{c.name: r.render(p) for c, r in zip(rig, rs, strict=True)} for p in poses]
    col = Collector(board, ["a", "b", "dark"], [(480, 384)] * 3,
                    Targets(views=8, coverage=0.2, pair_views=5, quiet_frames=5))
    dark = np.full((384, 480), 5, np.uint8)
    kept = [col.add({**f, "dark": dark}) for f in frames]
    assert all(kept)
    assert not col.add({**frames[-1], "dark": dark})  # the board did not move: not kept
    a, b, d = col.status
    assert a.views >= 10 and b.views >= 10 and d.views == 0
    assert 0.1 < a.coverage <= 1.0 and a.grid.sum() > 100
    assert a.reproj_px is not None and a.reproj_px < 0.5
    assert d.message is not None and "too dark" in d.message
    sh = col.shared()
    assert sh[0, 1] >= 10 and sh[0, 2] == 0
    assert not col.enough()  # "dark" has nothing
    text = col.text()
    assert "dark" in text and "a-b" in text and "too dark" in text
    col2 = Collector(board, ["a", "b"], [(480, 384)] * 2,
                     Targets(views=8, coverage=0.2, pair_views=5))
    for f in frames:
        col2.add(f)
    assert col2.enough() and "enough" in col2.text()
    assert col2.detections().uv.shape == (2, 12, board.n_corners, 2)


def test_collect_folder_stops_when_enough(tmp_path) -> None:
    import cv2

    from livepose.calibrate.pipeline import collect_folder
    from livepose.core.calibration import read_calibration_units

    board = Board()
    rig = make_rig(SimConfig(width=480, height=384, seed=2), ["a", "b", "c"])
    poses = scripted_board_poses(20, seed=4, board_size=board.size)
    tex = board.image(30, 0.5)
    for i, cam in enumerate(rig):
        r = BoardRenderer(cam, tex, 30 / board.length, (-20.0, -20.0), seed=i)
        (tmp_path / "v" / cam.name).mkdir(parents=True)
        for k, p in enumerate(poses):
            cv2.imwrite(str(tmp_path / "v" / cam.name / f"{k:03d}.png"), r.render(p))
    shown: list[str] = []
    res = collect_folder(tmp_path / "v", board, tmp_path / "c.toml",
                         Targets(views=12, coverage=0.2, pair_views=8), show=shown.append,
                         show_every=5)
    assert res["enough"] and res["frames_read"] < 20  # stopped early
    assert min(res["views"]) >= 12 and res["reproj_px"] < 0.3
    assert read_calibration_units(tmp_path / "c.toml") == "mm"
    assert any("shared views" in s for s in shown)
