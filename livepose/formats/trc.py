"""TRC marker files (OpenSim, Pose2Sim): write and read.

Tab-separated (shown here with ``→`` for a tab); five header lines, a blank line, then one
row per frame::

    PathFileType→4→(X/Y/Z)→pose3d.trc
    DataRate→CameraRate→NumFrames→NumMarkers→Units→OrigDataRate→OrigDataStartFrame→OrigNumFrames
    100.00→100.00→500→12→mm→100.00→1→500
    Frame#→Time→snout→→→ear→→→...
    →→X1→Y1→Z1→X2→Y2→Z2→...

    1→0.000000→12.3→45.6→7.8→...

Frames are numbered from 1. A missing marker is an empty cell (OpenSim's convention). Our
world is ``z`` up; OpenSim's is ``y`` up, so by default the axes are written as Pose2Sim does
(``X, Y, Z`` ← ``y, z, x``); pass ``y_up=False`` to keep the world axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from livepose.formats import FormatError


def write_trc(
    path: str | Path,
    xyz: np.ndarray,
    keypoints: Sequence[str],
    fps: float,
    units: str = "mm",
    y_up: bool = True,
    first_frame: int = 1,
) -> Path:
    """Write a TRC file.

    Parameters
    ----------
    path
        Output ``.trc`` (parent folders are created).
    xyz
        ``(T, J, 3)`` world positions (``z`` up); NaN = missing.
    keypoints
        ``J`` marker names (no tabs).
    fps
        Frame rate (> 0); ``Time = (frame - first_frame) / fps``.
    units
        ``mm``, ``cm`` or ``m`` (the data are written as given; no conversion): nanometre
        resolution in each (6, 7 or 9 decimals), so a fly's micrometre steps survive in
        metres.
    y_up
        Write OpenSim's ``y``-up axes (``X, Y, Z`` ← ``y, z, x``).
    first_frame
        Number of the first frame.
    """
    X = np.asarray(xyz, dtype=np.float64)
    names = list(keypoints)
    if X.ndim != 3 or X.shape[2] != 3 or X.shape[1] != len(names):
        raise ValueError(f"xyz must have shape (T, {len(names)}, 3), got {X.shape}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if any("\t" in n for n in names):
        raise ValueError("marker names must not contain tabs")
    if y_up:
        X = X[..., [1, 2, 0]]
    T, J = X.shape[:2]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"PathFileType\t4\t(X/Y/Z)\t{p.name}",
        "DataRate\tCameraRate\tNumFrames\tNumMarkers\tUnits\tOrigDataRate\tOrigDataStartFrame"
        "\tOrigNumFrames",
        f"{fps:.2f}\t{fps:.2f}\t{T}\t{J}\t{units}\t{fps:.2f}\t{first_frame}\t{T}",
        "Frame#\tTime\t" + "\t".join(f"{n}\t\t" for n in names),
        "\t\t" + "\t".join(f"X{j + 1}\tY{j + 1}\tZ{j + 1}" for j in range(J)),
        "",
    ]
    decimals = {"m": 9, "cm": 7}.get(units, 6)
    for t in range(T):
        cells = ["" if not np.isfinite(v) else f"{v:.{decimals}f}" for v in X[t].ravel()]
        lines.append(f"{t + first_frame}\t{t / fps:.6f}\t" + "\t".join(cells))
    p.write_text("\n".join(lines) + "\n")
    return p


def read_trc(path: str | Path, y_up: bool = True) -> tuple[np.ndarray, list[str], float]:
    """Read a TRC file written by :func:`write_trc` (or OpenSim / Pose2Sim).

    Returns
    -------
    xyz, names, fps
        ``(T, J, 3)`` positions in world axes (undoing ``y_up``), marker names, frame rate.
    """
    p = Path(path)
    try:
        lines = p.read_text().splitlines()
    except FileNotFoundError:
        raise FormatError(f"{p}: file not found") from None
    if len(lines) < 5 or not lines[0].startswith("PathFileType"):
        raise FormatError(f"{p}: not a TRC file")
    meta = dict(zip(lines[1].split("\t"), lines[2].split("\t"), strict=False))
    try:
        fps = float(meta["DataRate"])
        J = int(meta["NumMarkers"])
    except (KeyError, ValueError):
        raise FormatError(f"{p}: bad TRC header") from None
    names = [n for n in lines[3].split("\t")[2:] if n.strip()][:J]
    rows = []
    for ln in lines[5:]:
        if not ln.strip():
            continue
        cells = ln.split("\t")[2 : 2 + 3 * J]
        cells += [""] * (3 * J - len(cells))
        rows.append([float(c) if c.strip() else np.nan for c in cells])
    X = np.asarray(rows, dtype=np.float64).reshape(len(rows), J, 3)
    if y_up:
        X = X[..., [2, 0, 1]]
    return X, names, fps
