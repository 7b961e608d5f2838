"""DeepLabCut / Lightning Pose 2D prediction CSV: read and write.

The layout (one file per camera and model)::

    scorer,   net,  net,  net,        net,  net,  net, ...
    bodyparts,snout,snout,snout,      ear,  ear,  ear, ...
    coords,   x,    y,    likelihood, x,    y,    likelihood, ...
    0,        194.7,161.3,0.99,       215.0,199.4,0.99, ...

Three header rows (``scorer``, ``bodyparts``, ``coords``), then one row per frame: an index
(frame number or image path; DeepLabCut's labelled data uses up to three index columns) and
``x, y, likelihood`` per keypoint. An empty or ``nan`` cell is a missing value. Labelled data
without ``likelihood`` (``x, y`` pairs) reads with likelihood 1 where ``x`` and ``y`` are
finite. Multi-animal files (an ``individuals`` header row) are refused.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from livepose.formats import FormatError

_COORDS = {"x", "y", "likelihood"}


@dataclass(slots=True)
class Pose2D:
    """2D keypoints of one camera (one model).

    Attributes
    ----------
    points
        ``(T, J, 3)`` float64 ``x, y`` (pixels) and likelihood; NaN = missing.
    keypoints
        ``J`` keypoint names, in column order.
    scorer
        The ``scorer`` header (model name).
    index
        ``T`` row labels (frame numbers or image paths), as written.
    """

    points: np.ndarray
    keypoints: list[str]
    scorer: str
    index: list[str]


def _float(cell: str) -> float:
    s = cell.strip()
    if not s:
        return np.nan
    return float(s)


def read_dlc_csv(path: str | Path) -> Pose2D:
    """Read a DeepLabCut / Lightning Pose 2D CSV.

    Parameters
    ----------
    path
        The CSV file.

    Returns
    -------
    Pose2D
        ``points`` ``(T, J, 3)``.

    Raises
    ------
    FormatError
        The file is missing, not in the layout above, or has a non-numeric cell (the message
        names the file, and the row or column).
    """
    p = Path(path)
    try:
        with p.open(newline="") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise FormatError(f"{p}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"{p}: cannot read ({exc})") from None
    if len(rows) < 3 or not rows[0] or rows[0][0].strip().lower() != "scorer":
        raise FormatError(f"{p}: not a DeepLabCut/Lightning Pose CSV (no 'scorer' header row)")
    if rows[1] and rows[1][0].strip().lower() == "individuals":
        raise FormatError(f"{p}: multi-animal CSVs (an 'individuals' row) are not supported")
    if not rows[1] or rows[1][0].strip().lower() != "bodyparts":
        raise FormatError(f"{p}: second header row must be 'bodyparts'")
    if not rows[2] or rows[2][0].strip().lower() != "coords":
        raise FormatError(f"{p}: third header row must be 'coords'")
    coords = [c.strip() for c in rows[2]]
    n_idx = next((i for i, c in enumerate(coords) if c in _COORDS), len(coords))
    cols = coords[n_idx:]
    if not cols:
        raise FormatError(f"{p}: no keypoint columns")
    width = 3 if len(cols) >= 3 and cols[2] == "likelihood" else 2
    pattern = ["x", "y", "likelihood"][:width]
    if len(cols) % width or any(c != pattern[i % width] for i, c in enumerate(cols)):
        raise FormatError(
            f"{p}: coords row must repeat {','.join(pattern)} per keypoint, got {','.join(cols[:6])}…"
        )
    parts = [b.strip() for b in rows[1][n_idx:]]
    if len(parts) != len(cols):
        raise FormatError(f"{p}: bodyparts row has {len(parts)} columns, coords row {len(cols)}")
    J = len(cols) // width
    names = [parts[width * j] for j in range(J)]
    for j, n in enumerate(names):
        if any(parts[width * j + k] != n for k in range(width)) or not n:
            raise FormatError(f"{p}: bodyparts row is not one name per {width} columns at {n!r}")
    if len(set(names)) != J:
        raise FormatError(f"{p}: repeated keypoint names {sorted({n for n in names if names.count(n) > 1})}")
    body = [r for r in rows[3:] if any(c.strip() for c in r)]
    ncol = n_idx + len(cols)
    data = np.empty((len(body), J, 3))
    index = []
    for t, r in enumerate(body):
        if len(r) != ncol:
            raise FormatError(f"{p}: data row {t + 4} has {len(r)} columns, expected {ncol}")
        try:
            vals = np.array([_float(c) for c in r[n_idx:]])
        except ValueError:
            raise FormatError(f"{p}: data row {t + 4} has a non-numeric value") from None
        vals = vals.reshape(J, width)
        data[t, :, :2] = vals[:, :2]
        if width == 3:
            data[t, :, 2] = vals[:, 2]
        else:
            data[t, :, 2] = np.where(np.isfinite(vals).all(axis=1), 1.0, np.nan)
        index.append("/".join(c for c in r[:n_idx] if c))
    scorer = rows[0][n_idx].strip() if len(rows[0]) > n_idx else ""
    return Pose2D(points=data, keypoints=names, scorer=scorer, index=index)


def header(keypoints: Sequence[str], scorer: str = "livepose") -> list[list[str]]:
    """The three header rows (``scorer``, ``bodyparts``, ``coords``)."""
    names = list(keypoints)
    return [["scorer"] + [scorer] * (3 * len(names)),
            ["bodyparts"] + [n for n in names for _ in range(3)],
            ["coords"] + ["x", "y", "likelihood"] * len(names)]


def row(label: str | int, points: np.ndarray | None, n_keypoints: int) -> list[str]:
    """One frame's row: ``points`` ``(J, 3)`` x, y, likelihood (NaN → empty; ``None``: all
    empty)."""
    if points is None:
        return [str(label)] + [""] * (3 * n_keypoints)
    return [str(label)] + ["" if not np.isfinite(v) else f"{v:.10g}"
                           for v in np.asarray(points, dtype=np.float64).ravel()]


def write_dlc_csv(
    path: str | Path,
    points: np.ndarray,
    keypoints: Sequence[str],
    scorer: str = "livepose",
    index: Sequence[str | int] | None = None,
) -> Path:
    """Write 2D keypoints as a DeepLabCut / Lightning Pose CSV (NaN → empty cell).

    Parameters
    ----------
    path
        Output file (parent folders are created).
    points
        ``(T, J, 3)`` x, y, likelihood.
    keypoints
        ``J`` names.
    scorer
        Value of the ``scorer`` header row.
    index
        ``T`` row labels; default ``0 … T-1``.
    """
    pts = np.asarray(points, dtype=np.float64)
    names = list(keypoints)
    if pts.ndim != 3 or pts.shape[2] != 3 or pts.shape[1] != len(names):
        raise ValueError(f"points must have shape (T, {len(names)}, 3), got {pts.shape}")
    return write_table(path, header(names, scorer), index, pts.shape[0],
                       lambda label, t: row(label, pts[t], len(names)))


def write_table(path: str | Path, head: list[list[str]], index: Sequence[str | int] | None,
                frames: int, row_of: Callable[[str | int, int], list[str]]) -> Path:
    """Write a DeepLabCut-style CSV: the header rows, then ``row_of(label, t)`` for each of
    ``frames`` rows (labels from ``index``, default ``0 … frames-1``)."""
    idx = list(range(frames)) if index is None else list(index)
    if len(idx) != frames:
        raise ValueError(f"index has {len(idx)} labels for {frames} frames")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerows(head)
        for t in range(frames):
            w.writerow(row_of(idx[t], t))
    return p
