"""The collector stage of ``livepose calibrate live`` (livepose/calibrate/live.py) without its
processes and sockets: frames in, status out, the diagnosis and picture of a camera that sees
nothing; and the config a calibration run accepts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cv2")

from livepose.acquisition.sim.backend import board_scene
from livepose.calibrate.live import board_args
from livepose.core import protocol
from livepose.core.board import Board
from livepose.core.config import load_default_config


def _cfg():  # type: ignore[no-untyped-def]
    cfg = load_default_config()
    cfg.cameras = cfg.cameras[:2]
    s = cfg.sim
    s.width, s.height, s.scene = 480, 384, "board"
    s.board.poses, s.board.hold_frames, s.board.false_corners = 6, 1, 0.0
    return cfg


def test_collector_stage_logic_diagnoses_a_dark_camera_and_keeps_its_picture(tmp_path: Path) -> None:
    """The collector stage's state (livepose/calibrate/live.py) without its sockets: frames
    in, status out (what its health carries), the detector's picture of a camera that sees
    nothing written beside the output."""
    from livepose.calibrate.live import _Collect
    from livepose.core.config import to_dict
    from livepose.kit.process import StageContext

    cfg = _cfg()
    out = tmp_path / "calib.toml"
    ctx = StageContext(name="calib", cfg=cfg, endpoints={}, args={
        "board": board_args(Board()), "out": str(out),
        "targets": {"views": 50, "quiet_frames": 3}})
    st = _Collect(ctx)
    scene = board_scene(cfg)
    dark = np.full((384, 480), 8, np.uint8)
    for i in range(6):
        imgs = {"cam0": scene.render(0, i), "cam1": dark}
        st.take({c: protocol.Frame(cam=c, frame_id=i, t_grab_ns=0, pixel_format="Mono8",
                                   image=im) for c, im in imgs.items()})
    status = st.status()
    assert status["state"] == "collecting" and status["frames"] == 6
    c0, c1 = status["cameras"]
    assert c0["views"] == 6 and c1["views"] == 0
    assert c1["message"] is not None and "dark" in c1["message"]
    pic = status["pictures"]["cam1"]
    assert pic.endswith("calib_debug/cam1_detector.png") and (tmp_path / "calib_debug").is_dir()
    assert ctx.counters["sets_used"] == 6
    to_dict(cfg)  # the config still serialises (the stage's spawn path)


def test_live_config_stands_in_the_output_for_a_missing_calibration(tmp_path: Path) -> None:
    """`calibrate live` on real cameras: their config must name a calibration, and there is
    none yet; the one the run makes stands in. Other config mistakes still fail, in one line."""
    from livepose.cli.calibrate import live_config
    from livepose.core.config import ConfigError

    cfg_path = tmp_path / "rig.yaml"
    cfg_path.write_text("cameras:\n  - {name: a, backend: video, path: a.mkv}\n"
                        "  - {name: b, backend: video, path: b.mkv}\n")
    out = tmp_path / "out" / "calib.toml"
    cfg = live_config(cfg_path, out)
    assert cfg.calibration == out.resolve() and cfg.camera_names == ["a", "b"]
    cfg_path.write_text("cameras:\n  - {name: a, backend: video, path: a.mkv, fps: -1}\n")
    with pytest.raises(ConfigError, match="fps"):
        live_config(cfg_path, out)


def test_calibrate_live_command_fails_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from livepose.cli.app import app

    r = CliRunner().invoke(app, ["calibrate", "live", str(tmp_path / "nope.yaml"), "--out",
                                 str(tmp_path / "c.toml")])
    assert r.exit_code == 2 and "nope.yaml" in r.output and "not found" in r.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[board]\nsquares = [5, 7]\ncolour = 'red'\n")
    cfg = tmp_path / "sim.yaml"
    cfg.write_text("sim: {scene: board}\ncameras:\n  - {name: a, backend: sim}\n"
                   "  - {name: b, backend: sim}\n")
    r = CliRunner().invoke(app, ["calibrate", "live", str(cfg), "--out", str(tmp_path / "c.toml"),
                                 "--board", str(bad)])
    assert r.exit_code == 2 and "colour" in r.output
