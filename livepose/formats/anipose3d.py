"""Anipose 3D CSV: write and read (the layout ``movement``'s ``load_poses.from_anipose_file``
reads).

One row per frame; per keypoint ``<kp>_x, <kp>_y, <kp>_z`` (world units, mm), ``<kp>_error``
(mean reprojection error, px), ``<kp>_ncams`` (cameras used, int; 0 = not measured) and
``<kp>_score`` (mean 2D confidence of the cameras used); then Anipose's alignment columns
``M_00 … M_22`` (identity) and ``center_0 … center_2`` (zero), and ``fnum`` (frame number).
A keypoint that is not known in a frame has empty ``x, y, z, error``, ``ncams`` 0 and
``score`` 0.

The per-axis variance (mm²) goes to a *sidecar* file ``<stem>_var.csv`` with columns
``fnum, <kp>_var_x, <kp>_var_y, <kp>_var_z``: ``movement``'s reader refuses any column of the
main file that is not one of Anipose's (its validator requires every column to end in
``_x/_y/_z/_error/_ncams/_score`` with all six present per base name), so extra columns there
would make the file unreadable by it. :func:`read_anipose3d` reads the sidecar when present
(and also accepts ``<kp>_var_*`` columns inside the main file).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from livepose.formats import FormatError

_FIELDS = ("x", "y", "z", "error", "ncams", "score")
_EXTRA = [f"M_{i}{j}" for i in range(3) for j in range(3)] + [f"center_{i}" for i in range(3)]


@dataclass(slots=True)
class Pose3DTable:
    """3D keypoints of a recording.

    Attributes
    ----------
    xyz
        ``(T, J, 3)`` float64 positions; NaN where unknown.
    error
        ``(T, J)`` float64 mean reprojection error (px); NaN where unknown.
    ncams
        ``(T, J)`` int64 cameras used (0 = not measured).
    score
        ``(T, J)`` float64 mean confidence of the cameras used.
    keypoints
        ``J`` names.
    fnum
        ``(T,)`` int64 frame numbers.
    var
        ``(T, J, 3)`` float64 per-axis variance (mm²), or ``None`` without a sidecar.
    """

    xyz: np.ndarray
    error: np.ndarray
    ncams: np.ndarray
    score: np.ndarray
    keypoints: list[str]
    fnum: np.ndarray
    var: np.ndarray | None = None


def var_path(path: str | Path) -> Path:
    """The variance sidecar of an Anipose 3D CSV (``pose3d.csv`` → ``pose3d_var.csv``)."""
    p = Path(path)
    return p.with_name(f"{p.stem}_var.csv")


_EYE = ["1", "0", "0", "0", "1", "0", "0", "0", "1", "0", "0", "0"]  # M (identity), center (0)


def _cell(v: float) -> str:
    return f"{v:.10g}" if np.isfinite(v) else ""


def header(keypoints: Sequence[str]) -> list[str]:
    """The header row for keypoint names ``keypoints`` (no ``,`` in a name)."""
    names = list(keypoints)
    if any("," in n for n in names):
        raise ValueError("keypoint names must not contain ','")
    return [f"{n}_{k}" for n in names for k in _FIELDS] + _EXTRA + ["fnum"]


def row(fnum: int, xyz: np.ndarray, error: np.ndarray, ncams: np.ndarray,
        score: np.ndarray) -> list[str]:
    """One frame's row: ``xyz`` ``(J, 3)``, ``error``/``ncams``/``score`` ``(J,)``.

    A keypoint with a non-finite coordinate is unknown: empty ``x, y, z, error``, ``ncams``
    and ``score`` 0."""
    out: list[str] = []
    for j in range(xyz.shape[0]):
        if np.isfinite(xyz[j]).all():
            out += [_cell(float(v)) for v in xyz[j]]
            out += [_cell(float(error[j])), str(int(ncams[j]))]
            out.append(_cell(float(score[j])) if np.isfinite(score[j]) else "0")
        else:
            out += ["", "", "", "", "0", "0"]
    return out + _EYE + [str(int(fnum))]


def empty_row(fnum: int, n_keypoints: int) -> list[str]:
    """The row of a frame with no estimate."""
    return ["", "", "", "", "0", "0"] * n_keypoints + _EYE + [str(int(fnum))]


def status_path(path: str | Path) -> Path:
    """The status sidecar of an Anipose 3D CSV (``pose3d.csv`` → ``pose3d_status.csv``):
    per frame ``fnum, late`` and per keypoint ``<kp>_status`` (``measured``, ``predicted``,
    ``missing``) and ``<kp>_views`` (bitmask of the cameras used, calibration order)."""
    p = Path(path)
    return p.with_name(f"{p.stem}_status.csv")


def status_header(keypoints: Sequence[str]) -> list[str]:
    """The header row of the status sidecar."""
    return (["fnum", "late"] + [f"{n}_status" for n in keypoints]
            + [f"{n}_views" for n in keypoints])


def status_row(fnum: int, status: Sequence[str] | None, views: np.ndarray | None,
               late: bool, n_keypoints: int) -> list[str]:
    """One row of the status sidecar (``status`` names and ``views`` ``(J,)``; ``None``:
    nothing fused for this frame)."""
    if status is None or views is None:
        return [str(int(fnum)), ""] + ["missing"] * n_keypoints + ["0"] * n_keypoints
    return ([str(int(fnum)), "1" if late else "0"] + list(status)
            + [str(int(v)) for v in np.asarray(views)])


def var_header(keypoints: Sequence[str]) -> list[str]:
    """The header row of the variance sidecar."""
    return ["fnum"] + [f"{n}_var_{a}" for n in keypoints for a in "xyz"]


def var_row(fnum: int, var: np.ndarray | None, n_keypoints: int) -> list[str]:
    """One row of the variance sidecar (``var`` ``(J, 3)``; ``None``: empty)."""
    if var is None:
        return [str(int(fnum))] + [""] * (3 * n_keypoints)
    return [str(int(fnum))] + [_cell(float(v)) for v in np.asarray(var).ravel()]


def write_anipose3d(
    path: str | Path,
    xyz: np.ndarray,
    keypoints: Sequence[str],
    error: np.ndarray | None = None,
    ncams: np.ndarray | None = None,
    score: np.ndarray | None = None,
    var: np.ndarray | None = None,
    fnum: np.ndarray | None = None,
) -> Path:
    """Write an Anipose 3D CSV (and the variance sidecar when ``var`` is given).

    Parameters
    ----------
    path
        Output ``.csv`` (parent folders are created).
    xyz
        ``(T, J, 3)`` positions; NaN = unknown.
    keypoints
        ``J`` names (must not contain ``,``).
    error, ncams, score
        ``(T, J)`` each; defaults NaN, 3 (finite rows) and 1.
    var
        ``(T, J, 3)`` per-axis variances, written to :func:`var_path`.
    fnum
        ``(T,)`` frame numbers; default ``0 … T-1``.

    Returns
    -------
    Path
        ``path``.
    """
    X = np.asarray(xyz, dtype=np.float64)
    names = list(keypoints)
    if X.ndim != 3 or X.shape[2] != 3 or X.shape[1] != len(names):
        raise ValueError(f"xyz must have shape (T, {len(names)}, 3), got {X.shape}")
    T, J = X.shape[:2]
    known = np.asarray(np.isfinite(X).all(axis=2))
    err = np.full((T, J), np.nan) if error is None else np.asarray(error, dtype=np.float64)
    nc = np.where(known, 3, 0) if ncams is None else np.asarray(ncams)
    sc = np.where(known, 1.0, 0.0) if score is None else np.asarray(score, dtype=np.float64)
    fn = np.arange(T) if fnum is None else np.asarray(fnum)
    for name, a, shape in (("error", err, (T, J)), ("ncams", nc, (T, J)), ("score", sc, (T, J)),
                           ("fnum", fn, (T,))):
        if a.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header(names))
        for t in range(T):
            w.writerow(row(int(fn[t]), X[t], err[t], np.where(known[t], nc[t], 0), sc[t]))
    if var is not None:
        V = np.asarray(var, dtype=np.float64)
        if V.shape != X.shape:
            raise ValueError(f"var must have shape {X.shape}, got {V.shape}")
        with var_path(p).open("w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(var_header(names))
            for t in range(T):
                w.writerow(var_row(int(fn[t]), V[t], J))
    return p


def _read_table(p: Path) -> tuple[list[str], np.ndarray]:
    try:
        with p.open(newline="") as f:
            rows = [r for r in csv.reader(f) if r]
    except FileNotFoundError:
        raise FormatError(f"{p}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"{p}: cannot read ({exc})") from None
    if not rows:
        raise FormatError(f"{p}: empty file")
    head = [h.strip() for h in rows[0]]
    data = np.full((len(rows) - 1, len(head)), np.nan)
    for t, r in enumerate(rows[1:]):
        if len(r) != len(head):
            raise FormatError(f"{p}: row {t + 2} has {len(r)} columns, expected {len(head)}")
        for k, c in enumerate(r):
            s = c.strip()
            if s:
                try:
                    data[t, k] = float(s)
                except ValueError:
                    raise FormatError(f"{p}: row {t + 2}, column {head[k]!r} is not a number") from None
    return head, data


def read_anipose3d(path: str | Path) -> Pose3DTable:
    """Read an Anipose 3D CSV (and its variance sidecar, if any).

    Raises
    ------
    FormatError
        Missing file or columns, or non-numeric cells.
    """
    p = Path(path)
    head, data = _read_table(p)
    col = {h: i for i, h in enumerate(head)}
    names = [h[:-2] for h in head if h.endswith("_x") and not h.endswith("_var_x")]
    missing = [f"{n}_{k}" for n in names for k in _FIELDS if f"{n}_{k}" not in col]
    if not names or missing:
        raise FormatError(f"{p}: not an Anipose 3D CSV (missing columns {missing[:4] or 'x/y/z'})")
    T, J = data.shape[0], len(names)

    def get(n: str, k: str) -> np.ndarray:
        return data[:, col[f"{n}_{k}"]]

    xyz = np.stack([np.stack([get(n, a) for a in "xyz"], axis=1) for n in names], axis=1)
    error = np.stack([get(n, "error") for n in names], axis=1)
    ncams = np.nan_to_num(np.stack([get(n, "ncams") for n in names], axis=1)).astype(np.int64)
    score = np.stack([get(n, "score") for n in names], axis=1)
    fnum = data[:, col["fnum"]].astype(np.int64) if "fnum" in col else np.arange(T)
    var = None
    if all(f"{n}_var_{a}" in col for n in names for a in "xyz"):
        var = np.stack([np.stack([get(n, f"var_{a}") for a in "xyz"], axis=1) for n in names], 1)
    elif var_path(p).exists():
        vh, vd = _read_table(var_path(p))
        vc = {h: i for i, h in enumerate(vh)}
        need = [f"{n}_var_{a}" for n in names for a in "xyz"]
        if any(k not in vc for k in need) or len(vd) != T:
            raise FormatError(f"{var_path(p)}: does not match {p.name} (keypoints or frames)")
        var = np.stack([vd[:, vc[k]] for k in need], axis=1).reshape(T, J, 3)
    return Pose3DTable(xyz=xyz, error=error, ncams=ncams, score=score, keypoints=names,
                       fnum=fnum, var=var)
