"""DeepLabCut's multi-animal CSV layout (an ``individuals`` header level): write and read.

::

    scorer,      livepose,livepose,livepose,  livepose, ...
    individuals, id0,     id0,     id0,       id0,      ...
    bodyparts,   snout,   snout,   snout,     ear,      ...
    coords,      x,       y,       likelihood,x,        ...
    0,           194.7,   161.3,   0.99,      215.0,    ...

Four header rows, then one row per frame: an index and, per individual and keypoint, the
coordinates named in the ``coords`` row — ``x, y, likelihood`` for 2D (as maDLC writes), or
``x, y, z`` for 3D poses. An empty cell is a missing value (an individual not tracked in
that frame).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from livepose.formats import FormatError
from livepose.formats.dlc import write_table


def write_dlc_multi_csv(path: str | Path, points: np.ndarray, individuals: Sequence[str],
                        keypoints: Sequence[str], coords: Sequence[str] = ("x", "y", "likelihood"),
                        scorer: str = "livepose",
                        index: Sequence[str | int] | None = None) -> Path:
    """Write ``points`` ``(T, N, J, D)`` (``D = len(coords)``; NaN → empty cell).

    Parameters
    ----------
    path
        Output file (parent folders are created).
    points
        Per frame, individual, keypoint: the ``coords`` values.
    individuals, keypoints
        ``N`` and ``J`` names.
    coords
        Column names per keypoint: ``x, y, likelihood`` (2D) or ``x, y, z`` (3D).
    """
    pts = np.asarray(points, dtype=np.float64)
    ind, kps, co = list(individuals), list(keypoints), list(coords)
    if pts.ndim != 4 or pts.shape[1:] != (len(ind), len(kps), len(co)):
        raise ValueError(f"points must have shape (T, {len(ind)}, {len(kps)}, {len(co)}), "
                         f"got {pts.shape}")
    return write_table(path, multi_header(ind, kps, co, scorer), index, pts.shape[0],
                       lambda label, t: multi_row(label, pts[t]))


def multi_header(individuals: Sequence[str], keypoints: Sequence[str],
                 coords: Sequence[str] = ("x", "y", "likelihood"),
                 scorer: str = "livepose") -> list[list[str]]:
    """The four header rows (``scorer``, ``individuals``, ``bodyparts``, ``coords``)."""
    ind, kps, co = list(individuals), list(keypoints), list(coords)
    n = len(ind) * len(kps) * len(co)
    return [["scorer"] + [scorer] * n,
            ["individuals"] + [i for i in ind for _ in range(len(kps) * len(co))],
            ["bodyparts"] + [k for _ in ind for k in kps for _ in co],
            ["coords"] + co * (len(ind) * len(kps))]


def multi_row(label: str | int, points: np.ndarray) -> list[str]:
    """One frame's row: ``points`` ``(N, J, D)`` (NaN → empty cell)."""
    return [str(label)] + ["" if not np.isfinite(v) else f"{v:.10g}"
                           for v in np.asarray(points, dtype=np.float64).ravel()]


def read_dlc_multi_csv(path: str | Path) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """Read a multi-animal CSV.

    Returns
    -------
    points, individuals, keypoints, coords
        ``(T, N, J, D)`` float64 (NaN: empty) and the names, in column order.

    Raises
    ------
    FormatError
        Not the four-row layout, ragged columns or a non-numeric cell.
    """
    p = Path(path)
    try:
        with p.open(newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"{p}: cannot read ({exc})") from None
    heads = ["scorer", "individuals", "bodyparts", "coords"]
    if len(rows) < 4 or any(not rows[i] or rows[i][0].strip().lower() != h
                            for i, h in enumerate(heads)):
        raise FormatError(f"{p}: not a multi-animal CSV (header rows {', '.join(heads)})")
    ind_row, kp_row, co_row = rows[1][1:], rows[2][1:], rows[3][1:]
    if not (len(ind_row) == len(kp_row) == len(co_row)) or not co_row:
        raise FormatError(f"{p}: header rows have different lengths")
    individuals = list(dict.fromkeys(ind_row))
    keypoints = list(dict.fromkeys(kp_row))
    coords = list(dict.fromkeys(co_row))
    N, J, D = len(individuals), len(keypoints), len(coords)
    if len(co_row) != N * J * D:
        raise FormatError(f"{p}: {len(co_row)} columns are not {N} individuals × {J} "
                          f"keypoints × {D} coords")
    body = _data_rows(rows)
    out = np.empty((len(body), N, J, D))
    for t, r in enumerate(body):
        if len(r) != len(co_row) + 1:
            raise FormatError(f"{p}: data row {t + 5} has {len(r)} columns")
        try:
            out[t] = np.array([float(c) if c.strip() else np.nan for c in r[1:]]).reshape(
                N, J, D)
        except ValueError:
            raise FormatError(f"{p}: data row {t + 5} has a non-numeric value") from None
    return out, individuals, keypoints, coords


def read_dlc_multi_labels(path: str | Path) -> list[str]:
    """The row labels (first column: frame indices) of a multi-animal CSV's data rows, in
    the order :func:`read_dlc_multi_csv` returns them."""
    with Path(path).open(newline="") as f:
        return [r[0] for r in _data_rows(list(csv.reader(f)))]


def _data_rows(rows: list[list[str]]) -> list[list[str]]:
    """The rows after the four header rows, blank lines left out."""
    return [r for r in rows[4:] if any(c.strip() for c in r)]
