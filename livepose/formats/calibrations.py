"""Import camera calibrations from other tools into livepose's camera model.

Supported formats (``detect_format`` names):

``"qualisys"``
    Qualisys Track Manager export ``*.qca.txt`` (XML, distances in mm).
``"pose2sim"``
    Pose2Sim's calibration TOML (Anipose layout, sections named after the cameras, metres).
``"anipose"``
    Anipose / aniposelib TOML (livepose's own format); unit from ``[metadata] units`` if
    present, otherwise unknown (``None``): Anipose's unit is that of the board square size.
``"freemocap"``
    FreeMoCap's ``*_camera_calibration.toml`` (aniposelib layout, ``[metadata]
    charuco_square_size`` in mm, so the world unit is mm).
``"caliscope"``
    caliscope ``camera_array.toml`` (``[cameras."N"]`` tables) or the older ``config.toml``
    (``[cam_N]`` tables with ``port``); metres.

Not supported (``detect_format`` names them, ``import_calibration`` refuses with the reason):
``"vicon"`` (``*.xcp``) and ``"optitrack"`` (``*.cal``): see ``UNSUPPORTED``.

Conventions of the result: OpenCV pinhole, world → camera ``X_c = R X_w + t`` with ``R`` as
a Rodrigues vector, pixel coordinates with the origin at the centre of the top-left pixel,
translation in the unit returned next to the cameras (nothing is rescaled on import).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from livepose.core.calibration import (
    LENGTH_UNITS,
    CalibrationError,
    load_toml,
    read_calibration,
    read_calibration_units,
)
from livepose.core.camera import CameraModel, rodrigues_inv
from livepose.formats.qualisys import check_rotation, parse_xml, read_qualisys

Cameras = list[CameraModel]

UNSUPPORTED: dict[str, str] = {
    "vicon": (
        "Vicon .xcp import is not implemented: the meaning of ORIENTATION (camera→world or "
        "world→camera quaternion) and the mapping of VICON_RADIAL/VICON_RADIAL2 (a model that "
        "undistorts, in its own normalisation) to OpenCV coefficients could not be verified "
        "against Vicon documentation or a sample file"
    ),
    "optitrack": (
        "OptiTrack/Motive .cal import is not implemented: the file layout and its camera "
        "conventions are not publicly documented (Pose2Sim's own converter only raises and "
        "points to manual export)"
    ),
}

Format = Literal["auto", "qualisys", "pose2sim", "anipose", "freemocap", "caliscope"]


# --------------------------------------------------------------------------- TOML formats


def read_anipose_toml(path: str | Path) -> tuple[Cameras, str | None]:
    """Anipose / aniposelib TOML (livepose's reader); unit from ``[metadata] units`` or ``None``."""
    return list(read_calibration(path)), read_calibration_units(path)


def read_pose2sim_toml(path: str | Path) -> tuple[Cameras, str]:
    """Pose2Sim calibration TOML: Anipose layout, sections keyed by camera name, metres.

    ``[metadata] units`` wins if present (Pose2Sim does not write it).
    """
    return list(read_calibration(path)), read_calibration_units(path) or "m"


def read_freemocap_toml(path: str | Path) -> tuple[Cameras, str]:
    """FreeMoCap camera calibration TOML (aniposelib layout).

    The world unit is that of ``[metadata] charuco_square_size``, which FreeMoCap asks for
    in millimetres; ``[metadata] units`` wins if present.
    """
    p = Path(path)
    meta = load_toml(p).get("metadata", {})
    if not isinstance(meta, dict) or "charuco_square_size" not in meta:
        raise CalibrationError(
            f"{p}: [metadata] has no charuco_square_size: not a FreeMoCap calibration"
        )
    return list(read_calibration(p)), read_calibration_units(p) or "mm"


def read_caliscope_toml(path: str | Path) -> tuple[Cameras, str]:
    """caliscope calibration: ``camera_array.toml`` or the older ``config.toml``; metres.

    Cameras without extrinsics (not posed) are left out; names are ``cam_<id>`` as in
    caliscope's own aniposelib export. ``rotation`` may be a Rodrigues vector or a 3×3
    matrix (older files); both are world → camera.
    """
    p = Path(path)
    data = load_toml(p)
    if isinstance(data.get("cameras"), dict):
        secs = {f"cameras.{k}": (k, v) for k, v in data["cameras"].items()}
    else:
        secs = {
            k: (k.removeprefix("cam_"), v)
            for k, v in data.items()
            if re.fullmatch(r"cam_\d+", k) and isinstance(v, dict)
        }
    cams: Cameras = []
    for key, (cid, sec) in sorted(
        secs.items(), key=lambda kv: int(kv[1][0]) if kv[1][0].isdigit() else 1 << 30
    ):
        if not isinstance(sec, dict):
            raise CalibrationError(f"{p}: [{key}] is not a table")
        if any(sec.get(f) is None for f in ("matrix", "distortions", "rotation", "translation")):
            continue
        cams.append(_caliscope_camera(p, key, str(sec.get("cam_id", sec.get("port", cid))), sec))
    if not cams:
        raise CalibrationError(f"{p}: no caliscope camera with intrinsics and extrinsics")
    return cams, "m"


def _caliscope_camera(p: Path, key: str, cid: str, sec: dict[str, Any]) -> CameraModel:
    def arr(field: str) -> np.ndarray:
        try:
            return np.asarray(sec[field], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise CalibrationError(f"{p}: [{key}].{field} is missing or not numeric") from None

    rot = arr("rotation")
    if rot.shape == (3, 3):
        check_rotation(rot, f"{p}: [{key}].rotation")
        rvec = rodrigues_inv(rot)
    elif rot.size == 3:
        rvec = rot.ravel()
    else:
        raise CalibrationError(
            f"{p}: [{key}].rotation has shape {rot.shape}, expected (3,) or (3, 3)"
        )
    size = arr("size").ravel()
    if size.shape != (2,):
        raise CalibrationError(f"{p}: [{key}].size has shape {size.shape}, expected (2,)")
    try:
        return CameraModel(
            name=f"cam_{cid}",
            size=(int(size[0]), int(size[1])),
            matrix=arr("matrix"),
            dist=arr("distortions").ravel(),
            rvec=rvec,
            tvec=arr("translation").ravel(),
            fisheye=bool(sec.get("fisheye", False)),
        )
    except ValueError as exc:
        raise CalibrationError(f"{p}: [{key}] {exc}") from None


# --------------------------------------------------------------------------- dispatch


def detect_format(path: str | Path) -> str:
    """Guess a calibration file's format from its name and content.

    Returns
    -------
    str
        One of ``"qualisys"``, ``"pose2sim"``, ``"anipose"``, ``"freemocap"``,
        ``"caliscope"``, ``"vicon"``, ``"optitrack"``.

    Raises
    ------
    CalibrationError
        When the file is missing or matches none of them.
    """
    p = Path(path)
    if not p.is_file():
        raise CalibrationError(f"{p}: calibration file not found")
    name = p.name.lower()
    if name.endswith(".xcp"):
        return "vicon"
    if name.endswith(".cal"):
        return "optitrack"
    if name.endswith(".qca.txt") or name.endswith(".xml"):
        root = parse_xml(p)
        if root.tag == "calibration" and root.find("cameras/camera/intrinsic") is not None:
            return "qualisys"
        if root.tag == "Cameras" or root.find("Camera") is not None:
            return "vicon"
        raise CalibrationError(f"{p}: XML root <{root.tag}> is not a known calibration format")
    if name.endswith(".toml"):
        return _detect_toml(p, load_toml(p))
    raise CalibrationError(
        f"{p}: unknown calibration file type (expected .qca.txt, .toml, .xcp, .cal)"
    )


def _detect_toml(p: Path, data: dict[str, Any]) -> str:
    if isinstance(data.get("cameras"), dict):
        return "caliscope"
    secs = {k: v for k, v in data.items() if k != "metadata" and isinstance(v, dict)}
    if not secs:
        raise CalibrationError(f"{p}: no camera tables in this TOML")
    if any("port" in v and "name" not in v for v in secs.values()):
        return "caliscope"
    meta = data.get("metadata", {})
    meta = meta if isinstance(meta, dict) else {}
    if "charuco_square_size" in meta:
        return "freemocap"
    if "units" in meta:
        return "anipose"
    # Pose2Sim's writer keys each section by the camera name and writes sizes as floats.
    keyed_by_name = all(v.get("name") == k for k, v in secs.items())
    float_sizes = all(any(isinstance(s, float) for s in v.get("size", [])) for v in secs.values())
    return "pose2sim" if keyed_by_name and float_sizes else "anipose"


def import_calibration(
    path: str | Path, fmt: Format | str = "auto", **kwargs: Any
) -> tuple[Cameras, str | None]:
    """Read any supported calibration into livepose cameras.

    Parameters
    ----------
    path
        The calibration file.
    fmt
        ``"auto"`` (see :func:`detect_format`) or a format name.
    **kwargs
        Passed to the format's reader (e.g. ``video_size=`` for Qualisys).

    Returns
    -------
    cameras, unit
        The cameras and the unit of their translations (``None`` when the file does not say).
    """
    p = Path(path)
    kind = detect_format(p) if fmt == "auto" else fmt
    if kind in UNSUPPORTED:
        raise CalibrationError(f"{p}: {UNSUPPORTED[kind]}")
    readers = {
        "qualisys": read_qualisys,
        "pose2sim": read_pose2sim_toml,
        "anipose": read_anipose_toml,
        "freemocap": read_freemocap_toml,
        "caliscope": read_caliscope_toml,
    }
    if kind not in readers:
        raise CalibrationError(f"{p}: unknown format {kind!r}; known: {sorted(readers)}")
    if kwargs and kind != "qualisys":
        raise CalibrationError(f"{p}: options {sorted(kwargs)} only apply to Qualisys files")
    return readers[kind](p, **kwargs)


# --------------------------------------------------------------------------- units


def convert_units(cameras: Sequence[CameraModel], unit: str, to: str) -> Cameras:
    """The same cameras with translations expressed in ``to`` instead of ``unit``."""
    for u in (unit, to):
        if u not in LENGTH_UNITS:
            raise CalibrationError(f"unknown length unit {u!r}; known: {sorted(LENGTH_UNITS)}")
    s = LENGTH_UNITS[unit] / LENGTH_UNITS[to]
    return [
        CameraModel(
            name=c.name,
            size=c.size,
            matrix=c.matrix,
            dist=c.dist,
            rvec=c.rvec,
            tvec=c.tvec * s,
            fisheye=c.fisheye,
        )
        for c in cameras
    ]
