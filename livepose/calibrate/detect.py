"""Board corners in images: OpenCV's ``CharucoDetector`` or ``findChessboardCornersSB``, over
a folder of synchronized videos or images, with a diagnosis when a camera sees no board.

A view's detection is the corner ids and their pixels; a whole collection is a
:class:`Detections`: ``uv`` ``(C, F, N, 2)`` with NaN where a corner was not seen (``C``
cameras, ``F`` synchronized frames, ``N`` board corners).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from livepose.core.board import Board, cv2_module
from livepose.core.errors import UserError

IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VIDEO_EXT = (".mp4", ".avi", ".mov", ".mkv")
MIN_CORNERS = 6
"""A view with fewer corners is dropped (a pose needs at least 4 non-collinear ones)."""
COMMON_DICTS = ("DICT_4X4_50", "DICT_4X4_250", "DICT_5X5_50", "DICT_5X5_250", "DICT_6X6_50",
                "DICT_6X6_250", "DICT_7X7_50", "DICT_ARUCO_ORIGINAL")


@dataclass
class Detections:
    """Corners of one board seen by ``C`` cameras over ``F`` synchronized frames.

    Attributes
    ----------
    names
        Camera names ``(C,)``.
    sizes
        Image ``(width, height)`` per camera.
    uv
        ``(C, F, N, 2)`` pixels, NaN where not detected.
    frames
        ``(F,)`` frame index in the source of each synchronized frame.
    """

    names: list[str]
    sizes: list[tuple[int, int]]
    uv: np.ndarray
    frames: np.ndarray = field(default_factory=lambda: np.zeros(0, int))

    def counts(self) -> np.ndarray:
        """Corners seen per camera and frame ``(C, F)``."""
        return np.isfinite(self.uv[..., 0]).sum(axis=2)

    def views(self, min_corners: int = MIN_CORNERS) -> np.ndarray:
        """Usable views ``(C, F)`` bool."""
        return self.counts() >= min_corners

    def shared(self, min_corners: int = MIN_CORNERS) -> np.ndarray:
        """Frames seen together by each pair of cameras ``(C, C)``."""
        v = self.views(min_corners).astype(int)
        return v @ v.T


def detect_view(img: np.ndarray, board: Board, detector: Any = None) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """Corners of ``board`` in one image.

    Parameters
    ----------
    img
        ``(H, W)`` grey or ``(H, W, 3)`` BGR uint8.
    detector
        A reusable ``cv2.aruco.CharucoDetector`` (ChArUco), from :func:`make_detector`.

    Returns
    -------
    ids, uv
        ``(M,)`` corner ids and ``(M, 2)`` pixels (``M = 0`` when nothing was found).
    """
    cv2 = cv2_module()
    grey = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if board.kind == "charuco":
        det = detector if detector is not None else make_detector(board)
        cc, ids, _, _ = det.detectBoard(grey)
        if ids is None or len(ids) == 0:
            return np.zeros(0, int), np.zeros((0, 2))
        return ids.ravel().astype(int), cc.reshape(-1, 2).astype(np.float64)
    flags = cv2.CALIB_CB_NORMALIZE_IMAGE | cv2.CALIB_CB_EXHAUSTIVE | cv2.CALIB_CB_ACCURACY
    ok, corners = cv2.findChessboardCornersSB(grey, board.inner, flags=flags)
    if not ok:
        return np.zeros(0, int), np.zeros((0, 2))
    return np.arange(board.n_corners), corners.reshape(-1, 2).astype(np.float64)


PLANE_TOL = 0.03
"""A view whose corners stray from a plane's homography by more than this fraction of their
spread is dropped (a checkerboard found in the wrong order, a misread grid); lens distortion
alone stays well under it."""


def plausible(ids: np.ndarray, uv: np.ndarray, objp: np.ndarray) -> bool:
    """Whether corners ``uv`` ``(M, 2)`` with ``ids`` ``(M,)`` are the image of a plane."""
    if ids.size < MIN_CORNERS:
        return False
    cv2 = cv2_module()
    src = objp[ids, :2].astype(np.float64)
    H, _ = cv2.findHomography(src, uv.astype(np.float64), 0)
    if H is None:
        return False
    p = cv2.perspectiveTransform(src[None], H)[0]
    spread = float(np.linalg.norm(uv.max(0) - uv.min(0)))
    return float(np.abs(p - uv).max()) <= PLANE_TOL * max(spread, 1.0)


def make_detector(board: Board) -> Any:
    """A ``cv2.aruco.CharucoDetector`` for ``board`` (sub-pixel corner refinement on)."""
    cv2 = cv2_module()
    params = cv2.aruco.DetectorParameters()
    params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_NONE  # charuco refines corners
    return cv2.aruco.CharucoDetector(board.cv_board(), cv2.aruco.CharucoParameters(), params)


def detect_images(images: Iterator[np.ndarray] | Sequence[np.ndarray], board: Board,
                  n_corners: int | None = None) -> np.ndarray:
    """Corners of ``board`` in a sequence of images of one camera ``(F, N, 2)`` (NaN = unseen)."""
    n = n_corners or board.n_corners
    det = make_detector(board) if board.kind == "charuco" else None
    objp = board.object_points()
    rows = []
    for img in images:
        row = np.full((n, 2), np.nan)
        ids, uv = detect_view(img, board, det)
        if plausible(ids, uv, objp):
            row[ids] = uv
        rows.append(row)
    return np.stack(rows) if rows else np.zeros((0, n, 2))


# ---------------------------------------------------------------------- sources


def camera_sources(folder: Path) -> dict[str, list[Path] | Path]:
    """One source per camera in ``folder``: a video file (name = camera) or a sub-folder of
    images (name = camera, images in name order = frame order)."""
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder of videos or image folders")
    out: dict[str, list[Path] | Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in VIDEO_EXT:
            out[p.stem] = p
        elif p.is_dir():
            imgs = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXT)
            if imgs:
                out[p.name] = imgs
    if not out:
        raise UserError(f"{folder}: no videos ({', '.join(VIDEO_EXT)}) and no sub-folders of "
                        "images, one per camera")
    return out


def read_frames(src: list[Path] | Path, every: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """``(frame index, grey image)`` from a video or a list of images, every ``every``-th."""
    cv2 = cv2_module()
    if isinstance(src, list):
        for i, p in enumerate(src):
            if i % every == 0:
                img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
                if img is None:
                    raise UserError(f"{p}: not an image OpenCV can read")
                yield i, img
        return
    cap = cv2.VideoCapture(str(src))
    if not cap.isOpened():
        raise UserError(f"{src}: OpenCV cannot open this video")
    try:
        i = 0
        while True:
            ok = cap.grab()
            if not ok:
                break
            if i % every == 0:
                ok, img = cap.retrieve()
                if ok:
                    yield i, cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            i += 1
    finally:
        cap.release()


def detect_folder(folder: Path, board: Board, every: int = 1,
                  debug_dir: Path | None = None) -> Detections:
    """Detect the board in every camera's video or images under ``folder``.

    Frames are matched by index (the sources are synchronized). A camera with no board in
    any frame gets a diagnosis (:func:`diagnose`) written to ``debug_dir``, if given, as
    ``<camera>_detector.png`` with the line printed in the error's place by the caller.
    """
    srcs = camera_sources(folder)
    objp = board.object_points()
    names, sizes, per_cam, frames_all = [], [], [], []
    for name, src in srcs.items():
        det = make_detector(board) if board.kind == "charuco" else None
        rows, idx, size, sample = [], [], (0, 0), None
        for i, img in read_frames(src, every):
            size = (img.shape[1], img.shape[0])
            row = np.full((board.n_corners, 2), np.nan)
            ids, uv = detect_view(img, board, det)
            if plausible(ids, uv, objp):
                row[ids] = uv
            elif sample is None:
                sample = img
            rows.append(row)
            idx.append(i)
        if not rows:
            raise UserError(f"{name}: no frames read")
        names.append(name)
        sizes.append(size)
        per_cam.append(np.stack(rows))
        frames_all.append(np.asarray(idx))
        if debug_dir is not None and sample is not None and np.isfinite(
                per_cam[-1][..., 0]).sum() == 0:
            save_detector_view(sample, board, debug_dir / f"{name}_detector.png")
    F = min(len(f) for f in frames_all)
    uv = np.stack([u[:F] for u in per_cam])
    return Detections(names=names, sizes=sizes, uv=uv, frames=frames_all[0][:F])


# ---------------------------------------------------------------------- diagnosis


def diagnose(img: np.ndarray, board: Board) -> str:
    """The likely reason ``board`` is not found in ``img`` (grey), in one line."""
    cv2 = cv2_module()
    grey = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    mean = float(grey.mean())
    sat = float((grey >= 250).mean())
    if mean < 30:
        return f"image too dark (mean grey {mean:.0f}/255): raise exposure or gain"
    if sat > 0.2:
        return f"{sat:.0%} of the image saturated: lower exposure or gain"
    sharp = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    if board.kind == "charuco":
        mine = _markers(grey, board.dictionary)
        if mine == 0:
            for d in COMMON_DICTS:
                if d != board.dictionary and _markers(grey, d) >= 4:
                    return (f"no {board.dictionary} markers, but {_markers(grey, d)} {d} "
                            f"markers: wrong dictionary (use --dictionary {d})")
        elif mine >= 4:
            return (f"{mine} markers found but no corners: check squares "
                    f"{board.squares[0]}x{board.squares[1]}, the marker/square ratio and "
                    f"--legacy (OpenCV < 4.6 / calib.io boards)")
    if sharp < 30:
        return f"image blurred (Laplacian variance {sharp:.0f}): shorter exposure, focus"
    return ("no board found: board too small or too oblique in the image, or wrong size "
            f"({board.describe()})")


def _markers(grey: np.ndarray, dictionary: str) -> int:
    cv2 = cv2_module()
    d = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, dictionary))
    _, ids, _ = cv2.aruco.ArucoDetector(d, cv2.aruco.DetectorParameters()).detectMarkers(
        grey)
    return 0 if ids is None else len(ids)


def save_detector_view(img: np.ndarray, board: Board, path: Path) -> Path:
    """What the detector saw: ``img`` with found markers (green), rejected candidates (red)
    and the diagnosis written on it."""
    cv2 = cv2_module()
    grey = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    vis = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    if board.kind == "charuco":
        det = cv2.aruco.ArucoDetector(board.cv_dictionary(), cv2.aruco.DetectorParameters())
        corners, ids, rejected = det.detectMarkers(grey)
        if rejected:
            cv2.polylines(vis, [r.astype(np.int32) for r in rejected], True, (0, 0, 255), 1)
        if ids is not None:
            cv2.aruco.drawDetectedMarkers(vis, corners, ids, (0, 255, 0))
    reason = diagnose(grey, board)
    cv2.putText(vis, reason[:110], (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 255, 255), 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), vis)
    return path
