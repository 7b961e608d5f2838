"""Intrinsics from the Pose2Sim demo's checkerboard photos (4×7 inner corners, 60 mm)
against the rig's Qualisys calibration (``Calib.qca.txt``), per camera.

The photos are 1088×1920, the size of the Qualisys video window (``fov_video``) and of the
``multi/`` videos, so the two are compared as they are. The ``single/`` videos of cam01 and
cam02 are 1080 wide (the window squeezed): :func:`to_width` gives the intrinsics for them
(focal and principal point scaled by 1080/1088 with pixel centres aligned), and the same
scaling applies to both sides of a comparison, so differences shrink by 0.7 % and no more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from livepose.bench.results import write_json
from livepose.calibrate.detect import IMAGE_EXT, detect_images, read_frames
from livepose.calibrate.intrinsics import calibrate_intrinsics
from livepose.core.board import Board
from livepose.formats.qualisys import read_qualisys

DEMO = Path("/work/shared/data/pose2sim-demo/calibration")


def to_width(K: np.ndarray, w_from: int, w_to: int) -> np.ndarray:
    """``K`` of an image resampled from ``w_from`` to ``w_to`` pixels wide (height kept)."""
    s = w_to / w_from
    out = K.copy()
    out[0, 0] *= s
    out[0, 2] = (K[0, 2] + 0.5) * s - 0.5
    return out


def run(demo: Path = DEMO, json_path: Path | None = None) -> dict[str, Any]:
    """Per camera: photos, boards found, RMS, and fx, fy, cx, cy against Qualisys."""
    board = Board.checkerboard((4, 7), 60.0)
    qcams, _ = read_qualisys(demo / "Calib.qca.txt", viewrotation="ignore")
    by = {c.name: c for c in qcams}
    rows: dict[str, Any] = {}
    for folder in sorted((demo / "intrinsics").iterdir()):
        name = folder.name.split("_")[1]  # int_cam01_img -> cam01
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXT)
        imgs = [img for _, img in read_frames(files)]
        uv = detect_images(imgs, board)
        size = (imgs[0].shape[1], imgs[0].shape[0])
        intr = calibrate_intrinsics(uv, board.object_points(), size, name=name)
        q = by[name]
        Kq = to_width(q.matrix, q.size[0], size[0]) if q.size != size else q.matrix
        K = intr.K
        rows[name] = {
            "photos": len(files), "boards": int(intr.views.sum()), "size": list(size),
            "qualisys_size": list(q.size), "rms_px": intr.rms,
            "fx": K[0, 0], "fy": K[1, 1], "cx": K[0, 2], "cy": K[1, 2],
            "qualisys": {"fx": Kq[0, 0], "fy": Kq[1, 1], "cx": Kq[0, 2], "cy": Kq[1, 2]},
            "focal_diff_pct": 100 * (0.5 * (K[0, 0] + K[1, 1]) / (0.5 * (Kq[0, 0] + Kq[1, 1]))
                                     - 1),
            "pp_diff_px": [K[0, 2] - Kq[0, 2], K[1, 2] - Kq[1, 2]],
            "dist": intr.dist.tolist(), "qualisys_dist": q.dist.tolist(),
        }
    summary = {
        "focal_diff_pct_max": max(abs(r["focal_diff_pct"]) for r in rows.values()),
        "pp_diff_px_max": max(float(np.hypot(*r["pp_diff_px"])) for r in rows.values()),
    }
    return write_json({"summary": summary, "cameras": rows}, json_path)
