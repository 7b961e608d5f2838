"""The live image geometry against the calibration's: ROI, binning and codec padding.

A calibration is made at one image geometry (its ``size``). A camera may deliver another:

- a *ROI* set after calibrating (``roi.offset_x/offset_y`` in binned pixels) and/or
  *binning* (``binning: b``): ``K`` is scaled by ``1/b`` (pixel centres kept) and shifted by
  the offset, so the 3D stays right — unless the calibration was already made binned (its
  size is the sensor's binned size), when only the offset applies;
- a size within :data:`PAD_TOLERANCE_PX` of the calibration's and nothing to explain it:
  codec alignment padding or cropping (a 1080-wide video stored 1088 wide, or the reverse):
  accepted with a warning, ``K`` unchanged;
- anything else: refused, naming the camera and both sizes. Fusing it would silently give
  wrong 3D.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from livepose.core.calibration import CalibrationError
from livepose.core.camera import CameraModel

#: a size this close to the calibration's (px, each axis) is codec padding, not a new geometry
PAD_TOLERANCE_PX = 16


@dataclass(frozen=True)
class Geometry:
    """How a camera's frames relate to its sensor (from its config).

    Attributes
    ----------
    offset
        ROI offset ``(x, y)`` in binned pixels.
    binning
        Binning factor (1: none).
    """

    offset: tuple[int, int] = (0, 0)
    binning: int = 1


def fit_geometry(cam: CameraModel, size: tuple[int, int],
                 geometry: Geometry = Geometry()) -> tuple[CameraModel, str | None]:
    """The camera model for frames of ``size`` ``(width, height)`` delivered with
    ``geometry``, and a note saying what was done (``None``: nothing).

    Raises
    ------
    CalibrationError
        When the frames cannot come from the calibrated geometry (one line, both sizes).
    """
    w, h = int(size[0]), int(size[1])
    W0, H0 = cam.size
    ox, oy = geometry.offset
    b = int(geometry.binning)
    if (w, h) == (W0, H0) and (ox, oy) == (0, 0):
        return cam, None
    if (ox, oy) != (0, 0) or b != 1:
        scale = 1 if b == 1 or _calibrated_binned(cam, (w, h), geometry) else b
        full_w, full_h = W0 / scale, H0 / scale
        if w + ox > full_w + PAD_TOLERANCE_PX or h + oy > full_h + PAD_TOLERANCE_PX:
            raise CalibrationError(
                f"camera {cam.name!r}: a {w}x{h} ROI at offset ({ox}, {oy}) with binning {b} "
                f"does not fit the calibrated {W0}x{H0} sensor; recalibrate at this geometry")
        K = cam.matrix.astype(np.float64).copy()
        K[:2, :] /= scale
        K[0, 2] += 0.5 / scale - 0.5  # pixel centres: u' = (u + 0.5) / s - 0.5
        K[1, 2] += 0.5 / scale - 0.5
        K[0, 2] -= ox
        K[1, 2] -= oy
        adj = CameraModel(name=cam.name, size=(w, h), matrix=K, dist=cam.dist, rvec=cam.rvec,
                          tvec=cam.tvec, fisheye=cam.fisheye)
        return adj, (f"camera {cam.name!r}: K adjusted for ROI offset ({ox}, {oy}) and "
                     f"binning {scale} ({W0}x{H0} calibrated, {w}x{h} frames)")
    if abs(w - W0) <= PAD_TOLERANCE_PX and abs(h - H0) <= PAD_TOLERANCE_PX:
        return cam, (f"camera {cam.name!r}: frames are {w}x{h}, the calibration {W0}x{H0}; "
                     "taken as codec alignment padding, K unchanged")
    raise CalibrationError(
        f"camera {cam.name!r}: frames are {w}x{h} but the calibration is {W0}x{H0} and no "
        "ROI or binning in the config explains it; recalibrate, or set the camera's roi/"
        "binning to what was changed after calibrating")


def _calibrated_binned(cam: CameraModel, size: tuple[int, int], g: Geometry) -> bool:
    """Whether the calibration was made with the binning already applied: the frames
    (plus their offset) then fit its size without scaling, and would not fit a sensor
    ``binning`` times smaller."""
    w, h = size
    W0, H0 = cam.size
    fits_as_is = (w + g.offset[0] <= W0 + PAD_TOLERANCE_PX
                  and h + g.offset[1] <= H0 + PAD_TOLERANCE_PX)
    fits_scaled = (w + g.offset[0] <= W0 / g.binning + PAD_TOLERANCE_PX
                   and h + g.offset[1] <= H0 / g.binning + PAD_TOLERANCE_PX)
    return fits_as_is and not fits_scaled
