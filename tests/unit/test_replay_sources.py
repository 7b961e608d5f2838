"""``livepose replay`` of a session that recorded no video (``livepose track`` writes codec
``none``): the cameras replay the source videos its config names, numbered as in the run; a
moved video or a live camera's session is refused naming the camera."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from session_files import frame_table, session_skeleton, write_video

from livepose.core.config import parse_config
from livepose.kit.session import SessionError, video_dir
from livepose.recording.tools import replay_config

CAMS, T = ["cam0", "cam1"], 6


def _session(root: Path, backend: str) -> tuple[Path, Path]:
    videos = root / "videos"
    videos.mkdir()
    rng = np.random.default_rng(0)
    for c in CAMS:
        write_video(videos / f"{c}.mkv", [rng.integers(0, 255, (32, 48), np.uint8)
                                          for _ in range(T)])
    cams = [{"name": c, "backend": "video", "path": str(videos)} if backend == "video"
            else {"name": c, "backend": backend} for c in CAMS]
    cfg = parse_config({"name": "t", "fps": 25, "calibration": "calibration.toml",
                        "cameras": cams, "recording": {"codec": "none"}})
    s = session_skeleton(root, "20260101-000000_track", cfg, CAMS)
    video_dir(s).mkdir(parents=True, exist_ok=True)
    for c in CAMS:  # codec none: the frame table, nothing recorded
        frame_table(video_dir(s) / f"{c}_frames.csv", [(k, 0, 0) for k in range(T - 1)])
    return s, videos


def test_a_track_session_replays_its_source_videos(tmp_path: Path) -> None:
    s, videos = _session(tmp_path, "video")
    cfg, frames = replay_config(s)
    assert frames == T - 1  # the frame-sets the run triggered
    assert [(c.name, c.backend, Path(str(c.path))) for c in cfg.cameras] == \
        [(c, "video", videos) for c in CAMS]
    assert not cfg.recording.enabled
    (videos / "cam1.mkv").rename(videos / "moved.mkv")
    with pytest.raises(SessionError, match=r"camera 'cam1' recorded no video, and its source"):
        replay_config(s)


def test_a_live_session_without_video_is_refused_naming_the_camera(tmp_path: Path) -> None:
    s, _ = _session(tmp_path, "sim")
    with pytest.raises(SessionError, match=r"camera 'cam0' has no replayable video .*'sim'"):
        replay_config(s)
