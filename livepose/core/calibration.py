"""Anipose calibration TOML: read and write.

The format (written by Anipose/aniposelib, read by Lightning Pose, EKS and Pose2Sim)::

    [cam_0]
    name = "A"
    size = [ 1280, 1024,]
    matrix = [ [ fx, 0.0, cx,], [ 0.0, fy, cy,], [ 0.0, 0.0, 1.0,],]
    distortions = [ k1, k2, p1, p2, k3,]
    rotation = [ rx, ry, rz,]        # Rodrigues, world -> camera
    translation = [ tx, ty, tz,]
    fisheye = false                  # optional

    [metadata]
    adjusted = true
    error = 0.5
    units = "mm"                     # optional (livepose): unit of translation; Anipose
                                     # and aniposelib ignore unknown metadata keys

Cameras are returned in the order of the names you ask for (the config's camera names),
never in the text order of the section keys: aniposelib sorts ``cam_10`` before ``cam_2``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from livepose.core.camera import CameraGroup, CameraModel
from livepose.core.errors import UserError


class CalibrationError(UserError, ValueError):
    """The calibration file is unreadable, malformed, or does not match the config."""


def _section_index(key: str) -> tuple[int, str]:
    tail = key.rsplit("_", 1)[-1]
    return (int(tail), key) if tail.isdigit() else (1 << 30, key)


LENGTH_UNITS: dict[str, float] = {"m": 1.0, "cm": 0.01, "mm": 0.001}
"""Metres per unit, for ``[metadata] units``."""

MM_PER_UNIT: dict[str, float] = {"mm": 1.0, "cm": 10.0, "m": 1000.0}
"""Millimetres per unit: the config's mm settings times ``1 / MM_PER_UNIT[unit]`` are in
the calibration's unit."""


def load_toml(p: Path) -> dict[str, Any]:
    """A calibration file's TOML (CalibrationError naming the file when missing or invalid)."""
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise CalibrationError(f"{p}: calibration file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CalibrationError(
            f"{p}: not valid TOML ({exc}); another tool's calibration (Qualisys .qca.txt, "
            "Pose2Sim, FreeMoCap, caliscope)? convert it: livepose calibration import "
            f"{p.name} --out calibration.toml") from None


def read_calibration_units(path: str | Path) -> str | None:
    """``[metadata] units`` of a calibration TOML (``"m"``, ``"cm"``, ``"mm"``), or ``None``.

    ``None``: the file does not say (plain Anipose files: their unit is that of the
    calibration board's square size).

    Raises
    ------
    CalibrationError
        Unreadable file, or a ``units`` value that is not in ``LENGTH_UNITS``.
    """
    p = Path(path)
    data = load_toml(p)
    meta = data.get("metadata")
    units = meta.get("units") if isinstance(meta, dict) else None
    if units is None:
        return None
    if units not in LENGTH_UNITS:
        raise CalibrationError(
            f"{p}: [metadata].units = {units!r}; expected one of {sorted(LENGTH_UNITS)}"
        )
    return str(units)


def check_unit(unit: str | None, what: str) -> None:
    """``CalibrationError`` naming ``what`` (an option, a field) unless ``unit`` is ``None``
    or one of :data:`LENGTH_UNITS`."""
    if unit is not None and unit not in LENGTH_UNITS:
        raise CalibrationError(f"{what} {unit!r}: one of {', '.join(LENGTH_UNITS)}")


def calibration_units(path: str | Path, configured: str | None) -> str:
    """The length unit of a calibration: its file's ``[metadata] units``, else the config's
    ``calibration_units``.

    Raises
    ------
    CalibrationError
        When neither says, or they disagree (one line naming both).
    """
    check_unit(configured, "units")
    in_file = read_calibration_units(path)
    if in_file is not None and configured is not None and in_file != configured:
        raise CalibrationError(f"{path}: the file says units = {in_file!r} but the config's "
                               f"calibration_units is {configured!r}")
    unit = in_file or configured
    if unit is None:
        raise CalibrationError(
            f"{path}: the calibration does not say its length unit; set calibration_units "
            f"(one of {', '.join(LENGTH_UNITS)}) in the config (livepose fuse: --units), or "
            "write [metadata] units in the file (livepose calibration import FILE --out NEW "
            "--source-units m|cm|mm)")
    return unit


def read_calibration(path: str | Path, names: Sequence[str] | None = None) -> CameraGroup:
    """Read an Anipose calibration TOML.

    Parameters
    ----------
    path
        The ``calibration.toml``.
    names
        Camera names in the order wanted (the config's). ``None`` keeps the file's camera
        sections in numeric order (``cam_2`` before ``cam_10``).

    Returns
    -------
    CameraGroup
        ``C`` cameras, ordered by ``names``.

    Raises
    ------
    CalibrationError
        With the path, the section and the field at fault.
    """
    p = Path(path)
    data = load_toml(p)
    cams: dict[str, CameraModel] = {}
    for key in sorted((k for k in data if k != "metadata"), key=_section_index):
        sec = data[key]
        if not isinstance(sec, dict):
            continue
        cam = _camera_from_section(p, key, sec)
        if cam.name in cams:
            raise CalibrationError(f"{p}: camera name {cam.name!r} appears twice")
        cams[cam.name] = cam
    if not cams:
        raise CalibrationError(f"{p}: no camera sections ([cam_0], [cam_1], …)")
    if names is None:
        return CameraGroup(list(cams.values()))
    missing = [n for n in names if n not in cams]
    if missing:
        raise CalibrationError(
            f"{p}: camera(s) {missing} from the config are not in the calibration, "
            f"which has {list(cams)}"
        )
    return CameraGroup([cams[n] for n in names])


def _camera_from_section(p: Path, key: str, sec: dict[str, Any]) -> CameraModel:
    def arr(field: str, shape: tuple[int, ...] | None) -> np.ndarray:
        if field not in sec:
            raise CalibrationError(f"{p}: [{key}] has no '{field}'")
        try:
            a = np.asarray(sec[field], dtype=np.float64)
        except (TypeError, ValueError):
            raise CalibrationError(f"{p}: [{key}].{field} is not numeric") from None
        if shape is not None and a.shape != shape:
            raise CalibrationError(f"{p}: [{key}].{field} has shape {a.shape}, expected {shape}")
        if not np.all(np.isfinite(a)):
            raise CalibrationError(f"{p}: [{key}].{field} has non-finite values")
        return a

    size = arr("size", (2,))
    try:
        return CameraModel(
            name=str(sec.get("name", key)),
            size=(int(size[0]), int(size[1])),
            matrix=arr("matrix", (3, 3)),
            dist=arr("distortions", None).ravel(),
            rvec=arr("rotation", (3,)),
            tvec=arr("translation", (3,)),
            fisheye=bool(sec.get("fisheye", False)),
        )
    except ValueError as exc:
        raise CalibrationError(f"{p}: [{key}] {exc}") from None


def write_calibration(
    path: str | Path,
    cameras: CameraGroup | Sequence[CameraModel],
    error: float = 0.0,
    units: str | None = None,
) -> Path:
    """Write cameras as an Anipose calibration TOML (sections ``cam_0``… in the given order).

    ``units`` (a key of ``LENGTH_UNITS``) is stored as ``[metadata] units``; ``None`` writes
    no unit, as before.
    """
    p = Path(path)
    if units is not None and units not in LENGTH_UNITS:
        raise CalibrationError(f"{p}: units {units!r} not one of {sorted(LENGTH_UNITS)}")
    doc: dict[str, Any] = {}
    for i, c in enumerate(cameras):
        sec: dict[str, Any] = {
            "name": c.name,
            "size": [int(c.size[0]), int(c.size[1])],
            "matrix": [[float(v) for v in row] for row in c.matrix],
            "distortions": [float(v) for v in c.dist],
            "rotation": [float(v) for v in c.rvec],
            "translation": [float(v) for v in c.tvec],
        }
        if c.fisheye:
            sec["fisheye"] = True
        doc[f"cam_{i}"] = sec
    doc["metadata"] = {"adjusted": False, "error": float(error)}
    if units is not None:
        doc["metadata"]["units"] = units
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(tomli_w.dumps(doc))
    return p
