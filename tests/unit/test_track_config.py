"""``livepose track``'s config: ``--individuals`` and ``--config`` name what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from livepose.cli.track import _merge, video_config
from livepose.core.errors import UserError


@pytest.mark.parametrize(("individuals", "text", "message"), [
    ("two", None, "--individuals: 'two': a number ≥ 1, or 'free'"),
    ("0", None, "--individuals: '0'"),
    (None, "cameras: []\nrecording: {}\n", "--config cannot set cameras, recording"),
    (None, "- a list\n", "--config must be a mapping"),
])
def test_bad_track_options_name_the_option(tmp_path: Path, individuals: str | None,
                                           text: str | None, message: str) -> None:
    extra = None
    if text is not None:
        extra = tmp_path / "extra.yaml"
        extra.write_text(text)
    with pytest.raises(UserError, match=message.replace("[", r"\[")):
        video_config(tmp_path, tmp_path / "c.toml", "default", tmp_path / "out", True,
                     individuals=individuals, extra=extra)


def test_sections_merge_recursively() -> None:
    base = {"fusion": {"min_views": 2, "multi": {"enabled": False, "gate_mm": 30}}, "fps": 60}
    over = {"fusion": {"multi": {"enabled": True}}}
    assert _merge(base, over) == {"fusion": {"min_views": 2, "multi": {
        "enabled": True, "gate_mm": 30}}, "fps": 60}


def _rig(folder: Path, lengths: dict[str, int]) -> Path:
    """Videos ``<cam>.mkv`` of the given lengths and a calibration naming their cameras."""
    import numpy as np
    from session_files import write_video

    from livepose.acquisition.sim.rig import make_camera
    from livepose.core.calibration import write_calibration

    folder.mkdir(parents=True, exist_ok=True)
    for cam, n in lengths.items():
        write_video(folder / f"{cam}.mkv", [np.full((16, 16), 10 * k, np.uint8)
                                            for k in range(n)])
    calib = folder.parent / "calibration.toml"
    write_calibration(calib, [make_camera(c, (16, 16), 90.0 * i, 40.0, 500.0, 20.0,
                                          [0, 0, 0, 0, 0]) for i, c in enumerate(lengths)],
                      units="mm")
    return calib


def test_videos_of_different_lengths_are_said_and_the_shortest_decides(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    calib = _rig(tmp_path / "v", {"camA": 6, "camB": 4})
    with caplog.at_level("WARNING"):
        _, count = video_config(tmp_path / "v", calib, "default", tmp_path / "out", True,
                                frames=10)
    assert count == 4
    said = caplog.text
    assert "differ in length (camA 6, camB 4)" in said and "after 4 frame-sets" in said
    assert "--frames 10: the videos hold 4 frame-sets" in said


def test_cameras_without_a_video_are_named_together_with_what_is_there(tmp_path: Path) -> None:
    calib = _rig(tmp_path / "v", {"camA": 2, "camB": 2})
    (tmp_path / "v" / "camA.mkv").rename(tmp_path / "v" / "left.mkv")
    (tmp_path / "v" / "camB.mkv").rename(tmp_path / "v" / "right.mkv")
    with pytest.raises(UserError) as ei:
        video_config(tmp_path / "v", calib, "default", tmp_path / "out", True)
    msg = str(ei.value)
    assert "camera 'camA'" in msg and "camera 'camB'" in msg
    assert "videos there: left.mkv, right.mkv" in msg
    assert "the calibration's cameras are camA, camB" in msg


def test_another_tools_calibration_is_pointed_to_the_importer(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    qca = tmp_path / "Calib.qca.txt"
    qca.write_text("<?xml version='1.0'?><calibration/>")
    with pytest.raises(UserError, match=r"livepose calibration import Calib\.qca\.txt"):
        video_config(tmp_path / "v", qca, "default", tmp_path / "out", True)
