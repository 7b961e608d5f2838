"""The sim rig's board scene (``sim.scene: board``): the sim camera backend renders the board
through its lens at scripted poses (the same scene the calibration benchmark renders), the
detected corners land on the projected truth, false corners are injected as configured, and
the collector's status is plain data the terminal draws."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cv2")

from livepose.acquisition.sim.backend import SimCamera, board_pose_index, board_scene
from livepose.acquisition.sim.rig import make_rig
from livepose.calibrate.collect import Collector, Targets, status_text
from livepose.calibrate.detect import detect_images
from livepose.calibrate.live import FrameSets, board_args, board_of
from livepose.core import protocol
from livepose.core.board import Board
from livepose.core.config import load_default_config


def _cfg(false_corners: float = 0.0):  # type: ignore[no-untyped-def]
    cfg = load_default_config()
    cfg.cameras = cfg.cameras[:2]
    s = cfg.sim
    s.width, s.height, s.scene = 480, 384, "board"
    s.board.poses, s.board.hold_frames, s.board.false_corners = 6, 2, false_corners
    return cfg


def test_sim_camera_renders_the_board_where_the_rig_projects_it() -> None:
    cfg = _cfg()
    cam = SimCamera(cfg.cameras[1], cfg, 1)
    cam.open()
    cam.arm()
    imgs = []
    for k in range(6):
        cam.software_trigger(k, 1000 + k)
        g = cam.grab(1.0)
        assert g is not None and g.counter == k and g.image.shape == (384, 480)
        imgs.append(g.image)
    cam.close()
    assert [board_pose_index(cfg, k) for k in range(6)] == [0, 0, 1, 1, 2, 2]
    assert not np.array_equal(imgs[1], imgs[2])  # a new pose every hold_frames pulses
    board = Board()
    uv = detect_images(imgs[::2], board)
    rig = make_rig(cfg.sim, cfg.camera_names)
    scene = board_scene(cfg)
    truth = np.stack([rig[1].project(scene.truth(i)) for i in range(3)])
    err = np.linalg.norm(uv - truth, axis=-1)
    assert np.isfinite(err).sum() >= 40
    assert np.nanmedian(err) < 0.2 and np.nanmax(err) < 1.0


def test_false_corners_pull_some_detections_off() -> None:
    cfg = _cfg(false_corners=0.2)
    scene = board_scene(cfg)
    rig = make_rig(cfg.sim, cfg.camera_names)
    board = Board()
    imgs = [scene.render(0, i) for i in range(6)]
    uv = detect_images(imgs, board)
    truth = np.stack([rig[0].project(scene.truth(i)) for i in range(6)])
    err = np.linalg.norm(uv - truth, axis=-1)
    seen = np.isfinite(err)
    off = (err[seen] > 1.5).mean()
    assert 0.02 < off < 0.3, off  # ~half the saddles move their corner
    assert np.median(err[seen]) < 0.2


def test_frame_sets_and_status_as_data() -> None:
    sets = FrameSets(["a", "b"])
    img = np.zeros((4, 4), np.uint8)

    def frame(cam: str, k: int) -> protocol.Frame:
        return protocol.Frame(cam=cam, frame_id=k, t_grab_ns=0, pixel_format="Mono8",
                              image=img)

    for k in range(3):
        sets.add(frame("a", k))
    sets.add(frame("b", 0))
    sets.add(frame("b", 1))
    got = sets.newest()
    assert got is not None and got["a"].frame_id == 1 and sets.skipped == 1
    assert sets.newest() is None  # frame 2 waits for b; 0 and 1 are gone
    assert board_of(board_args(Board(squares=(4, 6)))) == Board(squares=(4, 6))
    col = Collector(Board(), ["a", "b"], [(480, 384)] * 2, Targets(views=3))
    st = col.summary()
    assert st["cameras"][0]["grid"] == [[0] * 8] * 6 and st["pairs"] == [["a", "b", 0]]
    assert status_text(st) == col.text() and "a-b 0" in col.text()

