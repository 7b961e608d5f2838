"""A whole calibration from a folder of synchronized videos or images: detect, intrinsics,
bundle adjustment, the Anipose TOML (with the board's unit) and the report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from livepose.calibrate.bundle import BundleResult, bundle_adjust
from livepose.calibrate.detect import Detections, detect_folder, diagnose, read_frames
from livepose.calibrate.intrinsics import Intrinsics, board_poses, calibrate_intrinsics
from livepose.core.board import Board
from livepose.core.calibration import write_calibration
from livepose.core.errors import UserError


def solve_detections(det: Detections, board: Board, fisheye: bool = False,
                     k3: bool = False) -> tuple[list[Intrinsics], BundleResult | None]:
    """Intrinsics per camera and, with two cameras or more, the bundle-adjusted rig."""
    objp = board.object_points()
    intr = [calibrate_intrinsics(det.uv[c], objp, det.sizes[c], fisheye=fisheye, k3=k3,
                                 name=det.names[c]) for c in range(len(det.names))]
    if len(det.names) < 2:
        return intr, None
    rv = np.full((*det.uv.shape[:2], 3), np.nan)
    tv = np.full_like(rv, np.nan)
    for c, i in enumerate(intr):
        rv[c], tv[c] = board_poses(det.uv[c], objp, i)
    inl = np.stack([i.inliers | ~i.views[:, None] for i in intr])
    return intr, bundle_adjust(det.uv, objp, intr, rv, tv, det.names, det.sizes, inliers=inl)


def calibrate_folder(folder: Path, board: Board, out: Path, every: int = 1,
                     fisheye: bool = False, k3: bool = False,
                     say: Callable[[str], None] = print) -> dict[str, Any]:
    """Calibrate from ``folder`` (one video or image sub-folder per camera) into ``out``
    (Anipose TOML) with ``out``'s stem + ``_report.html``/``.png`` beside it."""
    from livepose.calibrate.report import write_report

    debug = out.parent / f"{out.stem}_debug"
    det = detect_folder(folder, board, every=every, debug_dir=debug)
    counts = det.views().sum(1)
    for name, n in zip(det.names, counts, strict=True):
        say(f"{name}: board in {n} of {det.uv.shape[1]} frames")
    empty = [c for c, n in enumerate(counts) if n == 0]
    if empty:
        lines = []
        srcs_folder = folder
        for c in empty:
            name = det.names[c]
            sample = next(iter(_first_frame(srcs_folder, name)), None)
            why = diagnose(sample, board) if sample is not None else "no frames"
            lines.append(f"{name}: 0 boards detected — {why} (what the detector saw: "
                         f"{debug / (name + '_detector.png')})")
        raise UserError("; ".join(lines))
    intr, res = solve_detections(det, board, fisheye=fisheye, k3=k3)
    if res is None:
        raise UserError("one camera: intrinsics only; pass a folder with two cameras or more "
                        "for a rig calibration")
    write_calibration(out, res.cameras, error=res.reproj_px, units=board.unit)
    rep = write_report(out.with_name(out.stem + "_report.html"), det, res, intr, board)
    return {"toml": str(out), "report": str(rep), "reproj_px": res.reproj_px,
            "cameras": det.names, "views": counts.tolist(), "seconds": res.seconds}


def collect_folder(folder: Path, board: Board, out: Path, targets: Any = None,
                   every: int = 1, fisheye: bool = False, k3: bool = False,
                   show: Callable[[str], None] = print, show_every: int = 30) -> dict[str, Any]:
    """Play ``folder``'s synchronized sources through a :class:`Collector` (the feedback a
    live collection gives), stop as soon as it has enough views, then solve as
    :func:`calibrate_folder` does. ``show`` gets the collector's text every ``show_every``
    frame-sets and at the end."""
    from livepose.calibrate.collect import Collector
    from livepose.calibrate.detect import camera_sources

    srcs = camera_sources(folder)
    names = list(srcs)
    readers = [read_frames(srcs[n], every) for n in names]
    first = [next(r, None) for r in readers]
    if any(f is None for f in first):
        raise UserError(f"{folder}: a camera has no frames")
    sizes = [(f[1].shape[1], f[1].shape[0]) for f in first if f is not None]
    col = Collector(board, names, sizes, targets)
    frame: list[tuple[int, np.ndarray] | None] = list(first)
    while all(f is not None for f in frame):
        col.add({n: f[1] for n, f in zip(names, frame, strict=True) if f is not None})
        if col.frames % show_every == 0:
            show(col.text())
        if col.enough():
            break
        frame = [next(r, None) for r in readers]
    show(col.text())
    return {**solve_collected(col, board, out, fisheye, k3), "frames_read": col.frames,
            "enough": col.enough()}


def solve_collected(col: Any, board: Board, out: Path, fisheye: bool = False,
                    k3: bool = False) -> dict[str, Any]:
    """Solve a :class:`~livepose.calibrate.collect.Collector`'s views (a folder played as a
    collection, or the live rig's) and write ``out`` (Anipose TOML) and its report."""
    from livepose.calibrate.report import write_report

    det = col.detections()
    if det.uv.shape[1] == 0:
        raise UserError("; ".join(s.message or f"{s.name}: 0 boards detected"
                                  for s in col.status if s.views == 0))
    intr, res = solve_detections(det, board, fisheye=fisheye, k3=k3)
    if res is None:
        raise UserError("one camera: intrinsics only; a rig calibration needs two or more")
    write_calibration(out, res.cameras, error=res.reproj_px, units=board.unit)
    rep = write_report(out.with_name(out.stem + "_report.html"), det, res, intr, board)
    return {"toml": str(out), "report": str(rep), "reproj_px": res.reproj_px,
            "cameras": det.names, "views": [s.views for s in col.status],
            "seconds": res.seconds}


def _first_frame(folder: Path, name: str) -> list[np.ndarray]:
    from livepose.calibrate.detect import camera_sources

    src = camera_sources(folder)[name]
    for _, img in read_frames(src):
        return [img]
    return []
