"""Session files for tests: small lossless videos and frame tables, written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_video(path: Path, frames: list[np.ndarray], fps: int = 25) -> None:
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("ffv1", rate=fps)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "gray"
        for im in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(im, format="gray")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)


def frame_table(path: Path, rows: list[tuple[int, int, int]]) -> None:
    """A frame table of ``(frame_id, video_index, recorded)`` rows (trigger time
    ``1000 + frame_id`` ns)."""
    from livepose.acquisition.recorder import COLUMNS

    lines = [",".join(COLUMNS)]
    for fid, index, rec in rows:
        cells = [str(fid), str(index if rec else -1), str(rec), str(1000 + fid), "", "", "",
                 "", "0", "0", "0", ""]
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")


def session_skeleton(root: Path, name: str, cfg: object, cams: list[str]) -> Path:
    """``root/name`` with ``pose2d/``, ``config.yaml`` (``cfg``, a livepose ``Config``) and a
    calibration of ``cams`` (320×256, 500 mm away, turned 0.1 rad apart; units mm)."""
    import yaml

    from livepose.core.calibration import write_calibration
    from livepose.core.camera import CameraModel
    from livepose.core.config import to_dict

    s = root / name
    (s / "pose2d").mkdir(parents=True)
    (s / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))  # type: ignore[arg-type]
    models = [CameraModel(c, (320, 256), np.array([[300, 0, 160], [0, 300, 128], [0, 0, 1.0]]),
                          np.zeros(5), np.array([0.0, 0.1 * i, 0]), np.array([0, 0, 500.0]))
              for i, c in enumerate(cams)]
    write_calibration(s / "calibration.toml", models, units="mm")
    return s
