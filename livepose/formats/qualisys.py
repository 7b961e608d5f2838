"""Qualisys Track Manager calibrations (``*.qca.txt``, XML, mm) → livepose cameras.

Conventions, checked against Pose2Sim's converter (``calib_qca_fun``) and the files' own
fields:

- Qualisys stores focal lengths and principal points in sub-pixels (64 per pixel) of the
  sensor; the camera's *video* window (``fov_video``) is the image the calibration applies
  to, so the principal point is shifted by the window's ``left``/``top`` and the size is the
  window's. A video recorded at another resolution is rescaled with ``video_size``.
- ``transform`` is the camera's orientation and position in the world; Qualisys camera axes
  have y and z opposite to OpenCV's, so ``R = diag(1, -1, -1) · M`` and ``t = -R · pos``.
- Distortion coefficients apply to normalised coordinates and are taken as they are
  (``radialDistortion1..3`` → k1, k2, k3; ``tangentalDistortion1/2`` → p1, p2). Pose2Sim
  divides them by 64 as well; ``distortion_scale=1/64`` reproduces that (docs/fusion.md says
  which one the real footage supports).
- Translations stay in mm (the file's unit); the unit travels with the cameras.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np

from livepose.core.calibration import CalibrationError
from livepose.core.camera import CameraModel, rodrigues, rodrigues_inv

Cameras = list[CameraModel]

#: Qualisys stores focal lengths and principal points in sub-pixels: 64 per pixel.
QUALISYS_SUBPIXELS = 64.0
#: Qualisys camera axes → OpenCV camera axes (x kept, y and z flipped: a rotation by π about x).
QUALISYS_TO_OPENCV = np.diag([1.0, -1.0, -1.0])


def check_rotation(R: np.ndarray, where: str, tol: float = 1e-4) -> None:
    """Raise ``CalibrationError`` unless ``R`` is orthonormal with determinant +1."""
    err = float(np.max(np.abs(R @ R.T - np.eye(3))))
    if err > tol or float(np.linalg.det(R)) < 0:
        raise CalibrationError(
            f"{where}: not a rotation matrix (|R Rᵀ - I| = {err:.2g}, det = {np.linalg.det(R):.4f})"
        )


# --------------------------------------------------------------------------- image rotation


def rotate_camera_image(cam: CameraModel, quarter_turns_cw: int) -> CameraModel:
    """The same camera seen through its image rotated by ``90° × quarter_turns_cw`` clockwise.

    For one clockwise quarter turn of a ``W × H`` image the pixel ``(u, v)`` moves to
    ``(H - 1 - v, u)``; the returned model projects every world point there.

    Parameters
    ----------
    cam
        A pinhole or fisheye camera with zero skew.
    quarter_turns_cw
        Any integer; negative turns are counter-clockwise.

    Returns
    -------
    CameraModel
        Size ``(H, W)`` for an odd number of turns.
    """
    if abs(float(cam.matrix[0, 1])) > 0.0:
        raise CalibrationError(
            f"camera {cam.name!r}: cannot rotate the image of a camera with skew"
        )
    out = cam
    for _ in range(quarter_turns_cw % 4):
        out = _rotate_cw_once(out)
    return out


def _rotate_cw_once(cam: CameraModel) -> CameraModel:
    w, h = cam.size
    K = cam.matrix
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    Kn = np.array([[fy, 0.0, (h - 1) - cy], [0.0, fx, cx], [0.0, 0.0, 1.0]])
    # new camera axes: x' = -y, y' = x, z' = z
    Rz = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    R = Rz @ rodrigues(cam.rvec)
    d = np.array(cam.dist, dtype=np.float64).copy()
    if not cam.fisheye and d.size >= 4:
        p1, p2 = d[2], d[3]
        d[2], d[3] = p2, -p1  # tangential terms follow the axes; radial ones are invariant
    return CameraModel(
        name=cam.name,
        size=(h, w),
        matrix=Kn,
        dist=d,
        rvec=rodrigues_inv(R),
        tvec=Rz @ cam.tvec,
        fisheye=cam.fisheye,
    )


# --------------------------------------------------------------------------- Qualisys


def read_qualisys(
    path: str | Path,
    *,
    video_size: tuple[int, int] | Mapping[str, tuple[int, int]] | None = None,
    viewrotation: Literal["error", "ignore", "cw", "ccw"] = "error",
    distortion_scale: float = 1.0,
) -> tuple[Cameras, str]:
    """Read a Qualisys Track Manager calibration export (``*.qca.txt``).

    Parameters
    ----------
    path
        The XML file.
    video_size
        ``(width, height)`` of the videos the cameras will be used with, for every camera or
        as ``{serial: (width, height)}``, when the videos are the ``fov_video`` window
        resampled to another size (binning, downscaled export, or the Pose2Sim demo's
        cam01/cam02 whose 1088-wide images were squeezed to 1080). Intrinsics are scaled per
        axis, pixel centres aligned; distortion is unchanged. ``None``: the window size.
    viewrotation
        What to do with a camera whose ``viewrotation`` attribute is not 0: ``"error"``
        (default; the direction QTM applies is not documented here), ``"ignore"``, or rotate
        the image model by the attribute's angle clockwise (``"cw"``) or counter-clockwise
        (``"ccw"``), see :func:`rotate_camera_image`.
    distortion_scale
        Factor applied to the distortion coefficients. ``1.0`` (the file's values are
        OpenCV's normalised-coordinate coefficients; confirmed on the Pose2Sim demo by an
        independent checkerboard calibration). ``1/64`` reproduces Pose2Sim ≤ 0.10.49.

    Returns
    -------
    cameras, unit
        One :class:`CameraModel` per ``<camera>`` in file order, named by ``serial``;
        ``unit`` is ``"mm"`` (translations are kept in the file's millimetres).

    Raises
    ------
    CalibrationError
        With the file, the camera and the element or attribute at fault.

    Notes
    -----
    - ``intrinsic`` focal lengths and principal point are in sub-pixels (64 per pixel) of the
      full sensor; the video image is the ``fov_video`` window of the sensor (inclusive
      pixel bounds), so ``c = c_subpx / 64 - fov_video.left|top`` and the image size is
      ``right - left + 1`` by ``bottom - top + 1``.
    - ``transform`` gives the camera's position (``x y z``, mm) and orientation in the world:
      ``X_c,qtm = M (X_w - pos)`` with ``M[i, j] = r{i+1}{j+1}``; Qualisys camera axes have
      y and z opposite to OpenCV's, hence ``R = diag(1, -1, -1) M`` and ``t = -R pos``.
    - Distortion maps to OpenCV ``k1 k2 p1 p2 k3`` =
      ``radialDistortion1 radialDistortion2 tangentalDistortion1 tangentalDistortion2
      radialDistortion3``.
    """
    p = Path(path)
    root = parse_xml(p)
    if root.tag != "calibration":
        raise CalibrationError(f"{p}: root element is <{root.tag}>, expected <calibration>")
    elems = root.findall("cameras/camera")
    if not elems:
        raise CalibrationError(f"{p}: no <cameras>/<camera> elements")
    cams: Cameras = []
    for i, el in enumerate(elems):
        vs = video_size.get(el.get("serial", "")) if isinstance(video_size, Mapping) else video_size
        cam = _qualisys_camera(p, i, el, vs, distortion_scale)
        cam = _apply_viewrotation(p, el, cam, viewrotation)
        if any(c.name == cam.name for c in cams):
            raise CalibrationError(f"{p}: camera serial {cam.name!r} appears twice")
        cams.append(cam)
    return cams, "mm"


def parse_xml(p: Path) -> ET.Element:
    try:
        return ET.parse(p).getroot()
    except FileNotFoundError:
        raise CalibrationError(f"{p}: calibration file not found") from None
    except ET.ParseError as exc:
        raise CalibrationError(f"{p}: not valid XML ({exc})") from None


def _child(p: Path, where: str, el: ET.Element, tag: str) -> ET.Element:
    c = el.find(tag)
    if c is None:
        raise CalibrationError(f"{p}: {where} has no <{tag}> element")
    return c


def _num(p: Path, where: str, el: ET.Element, attr: str, default: float | None = None) -> float:
    raw = el.get(attr)
    if raw is None:
        if default is not None:
            return default
        raise CalibrationError(f"{p}: {where} <{el.tag}> has no '{attr}' attribute")
    try:
        val = float(raw)
    except ValueError:
        raise CalibrationError(f"{p}: {where} <{el.tag}> {attr}={raw!r} is not a number") from None
    if not math.isfinite(val):
        raise CalibrationError(f"{p}: {where} <{el.tag}> {attr}={raw!r} is not finite")
    return val


def _qualisys_camera(
    p: Path, i: int, el: ET.Element, video_size: tuple[int, int] | None, dscale: float
) -> CameraModel:
    name = el.get("serial")
    if not name:
        raise CalibrationError(f"{p}: <camera> #{i} has no 'serial' attribute")
    where = f"camera {name!r}"
    left, top, width, height = _qualisys_video_window(p, where, el)
    intr = _child(p, where, el, "intrinsic")
    f = lambda a, d=None: _num(p, where, intr, a, d)  # noqa: E731
    skew = f("skew", 0.0)
    if skew != 0.0:
        raise CalibrationError(
            f"{p}: {where} <intrinsic> skew={skew} is not supported (its unit is undocumented)"
        )
    _check_window_in_sensor(p, where, intr, left, top, width, height)
    fx, fy = f("focalLengthU") / QUALISYS_SUBPIXELS, f("focalLengthV") / QUALISYS_SUBPIXELS
    cx = f("centerPointU") / QUALISYS_SUBPIXELS - left
    cy = f("centerPointV") / QUALISYS_SUBPIXELS - top
    size = (width, height)
    if video_size is not None and tuple(video_size) != size:
        fx, fy, cx, cy, size = _rescale_intrinsics(p, where, (fx, fy, cx, cy), size, video_size)
    dist = dscale * np.array(
        [
            f("radialDistortion1"),
            f("radialDistortion2"),
            f("tangentalDistortion1"),
            f("tangentalDistortion2"),
            f("radialDistortion3", 0.0),
        ]
    )
    R, t = _qualisys_extrinsics(p, where, _child(p, where, el, "transform"))
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    try:
        return CameraModel(
            name=name, size=size, matrix=K, dist=dist, rvec=rodrigues_inv(R), tvec=t
        )
    except ValueError as exc:
        raise CalibrationError(f"{p}: {exc}") from None


def _qualisys_video_window(p: Path, where: str, el: ET.Element) -> tuple[float, float, int, int]:
    """``(left, top, width, height)`` of ``<fov_video>`` (inclusive pixel bounds)."""
    fov = _child(p, where, el, "fov_video")
    left, top = _num(p, where, fov, "left"), _num(p, where, fov, "top")
    right, bottom = _num(p, where, fov, "right"), _num(p, where, fov, "bottom")
    width, height = right - left + 1, bottom - top + 1
    if width < 1 or height < 1 or width != int(width) or height != int(height):
        raise CalibrationError(
            f"{p}: {where} <fov_video> left={left} top={top} right={right} bottom={bottom} "
            "is not a valid pixel window"
        )
    return left, top, int(width), int(height)


def _check_window_in_sensor(
    p: Path, where: str, intr: ET.Element, left: float, top: float, width: int, height: int
) -> None:
    """The video window must lie on the sensor described by ``sensorMin/Max`` (sub-pixels)."""
    umin = _num(p, where, intr, "sensorMinU", 0.0) / QUALISYS_SUBPIXELS
    vmin = _num(p, where, intr, "sensorMinV", 0.0) / QUALISYS_SUBPIXELS
    umax = intr.get("sensorMaxU")
    vmax = intr.get("sensorMaxV")
    if umax is None or vmax is None:
        return
    umax_px = _num(p, where, intr, "sensorMaxU") / QUALISYS_SUBPIXELS
    vmax_px = _num(p, where, intr, "sensorMaxV") / QUALISYS_SUBPIXELS
    eps = 0.5
    if (
        left < umin - eps
        or top < vmin - eps
        or left + width - 1 > umax_px + eps
        or top + height - 1 > vmax_px + eps
    ):
        raise CalibrationError(
            f"{p}: {where} <fov_video> window ({left}, {top}) {width}x{height} px lies outside the "
            f"sensor [{umin:g}, {umax_px:g}] x [{vmin:g}, {vmax_px:g}] px given by <intrinsic> sensorMin/Max "
            "(U and V swapped by a manual rotation of the file?)"
        )


def _rescale_intrinsics(
    p: Path,
    where: str,
    k: tuple[float, float, float, float],
    size: tuple[int, int],
    video_size: tuple[int, int],
) -> tuple[float, float, float, float, tuple[int, int]]:
    """Scale intrinsics from the ``fov_video`` window to ``video_size`` (per axis).

    Pixel centres are kept aligned: ``u' = (u + 0.5) s - 0.5`` (as for binning and
    ``cv2.resize``). A resampled image keeps its normalised coordinates, so the distortion
    coefficients do not change.
    """
    if len(video_size) != 2 or min(video_size) < 1:
        raise CalibrationError(f"{p}: {where} video_size {video_size!r} is not (width, height)")
    sx, sy = video_size[0] / size[0], video_size[1] / size[1]
    if max(sx, sy) / min(sx, sy) > 1.1:
        raise CalibrationError(
            f"{p}: {where} video_size {tuple(video_size)} changes the aspect ratio of the "
            f"<fov_video> window {size} by more than 10%: not a resampled video of that window?"
        )
    fx, fy, cx, cy = k
    return (
        fx * sx,
        fy * sy,
        (cx + 0.5) * sx - 0.5,
        (cy + 0.5) * sy - 0.5,
        (int(video_size[0]), int(video_size[1])),
    )


def _qualisys_extrinsics(p: Path, where: str, tr: ET.Element) -> tuple[np.ndarray, np.ndarray]:
    """``<transform>`` (camera pose in the world) → OpenCV world→camera ``(R, t)``, mm."""
    M = np.array([[_num(p, where, tr, f"r{i}{j}") for j in (1, 2, 3)] for i in (1, 2, 3)])
    check_rotation(M, f"{p}: {where} <transform> r11…r33")
    pos = np.array([_num(p, where, tr, a) for a in ("x", "y", "z")])
    R = QUALISYS_TO_OPENCV @ M
    return R, -R @ pos


def _apply_viewrotation(p: Path, el: ET.Element, cam: CameraModel, mode: str) -> CameraModel:
    where = f"camera {cam.name!r}"
    angle = _num(p, where, el, "viewrotation", 0.0)
    if angle % 90 != 0:
        raise CalibrationError(f"{p}: {where} viewrotation={angle} is not a multiple of 90")
    turns = int(angle // 90) % 4
    if turns == 0 or mode == "ignore":
        return cam
    if mode == "cw":
        return rotate_camera_image(cam, turns)
    if mode == "ccw":
        return rotate_camera_image(cam, -turns)
    raise CalibrationError(
        f"{p}: {where} has viewrotation={angle:g}; pass viewrotation='cw', 'ccw' or 'ignore' "
        "to say how the videos you use are rotated relative to the sensor"
    )
