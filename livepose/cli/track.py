"""``livepose track VIDEO_DIR``: the live pipeline fed by a folder of synchronized videos.

One video per camera of the calibration, named after it (``cam01.mp4``…; the ``video``
camera backend). Same processes, same fusion as a rig; the software trigger clock runs at the
videos' rate, or ``--paced``: each pulse waits until fusion has accounted for the frame-sets
before it (``trigger.paced``), so every frame-set is processed. The session (frame tables,
2D and 3D predictions, config, calibration) is recorded under ``OUT`` (``recording.codec:
none``: no video is written, the source videos are the video), and ``OUT/pose3d.csv``
(Anipose 3D, ``fnum`` = video frame index, the calibration's units) and
``OUT/pose2d/<cam>.csv`` are copied out of it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from livepose.core.config import Config
from livepose.core.errors import UserError


def video_config(
    video_dir: Path, calibration: Path, model: str, out: Path, paced: bool,
    frames: int | None = None, fps: float | None = None, name: str = "track",
) -> tuple[Config, int]:
    """The run config for a folder of videos, and the number of frame-sets to trigger.

    Raises
    ------
    UserError
        Missing folder, calibration, or a camera without its video.
    """
    from livepose.acquisition.video import find_video, probe_rate
    from livepose.core.calibration import read_calibration
    from livepose.core.config import Config

    if not video_dir.is_dir():
        raise UserError(f"{video_dir}: no such folder of videos")
    if not calibration.is_file():
        raise UserError(f"{calibration}: calibration file not found (--calibration)")
    names = [c.name for c in read_calibration(calibration).cameras]
    videos = {n: find_video(video_dir, n) for n in names}
    rate = fps or probe_rate(videos[names[0]])
    if not rate:
        raise UserError(f"{videos[names[0]]}: no frame rate in the file; pass --fps")
    n_frames = min(_count(v) for v in videos.values())
    count = n_frames if frames is None else min(frames, n_frames)
    cfg = Config.model_validate({
        "name": name, "fps": rate, "calibration": str(calibration.resolve()),
        "cameras": [{"name": n, "backend": "video", "path": str(video_dir.resolve())}
                    for n in names],
        "model": {"path": model},
        "trigger": {"paced": paced},
        # replayed frames are of their index by construction: no timing verdicts
        "desync_tolerance_ms": 10_000.0,
        "recording": {"enabled": True, "dir": str(out.resolve()), "name": name,
                      "codec": "none"},
        "dashboard": {"enabled": False},
    })
    return cfg, count


def _count(video: Path) -> int:
    """Frames in a video (the container's count, else by decoding)."""
    import av

    with av.open(str(video)) as c:
        s = c.streams.video[0]
        if s.frames:
            return int(s.frames)
        return sum(1 for _ in c.demux(s) if _.size)


def collect(summary: dict[str, Any], out: Path) -> dict[str, Any]:
    """Copy the session's predictions to ``out`` (``pose3d.csv`` and its sidecars,
    ``pose2d/``); return what was written."""
    sess = summary.get("session") or {}
    path = Path(sess["path"]) if sess.get("path") else None
    if path is None or not path.is_dir():
        raise UserError("the run recorded no session (see the log above)")
    written = {"session": str(path)}
    for f in sorted(path.glob("pose3d*")):
        shutil.copy2(f, out / f.name)
        written[f.name] = str(out / f.name)
    if (path / "pose2d").is_dir():
        shutil.copytree(path / "pose2d", out / "pose2d", dirs_exist_ok=True)
        written["pose2d"] = str(out / "pose2d")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return written
