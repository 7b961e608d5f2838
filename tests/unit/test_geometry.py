"""Live image geometry against the calibration: ROI and binning adjust K so the same 3D
point lands on the same scene pixel; codec padding is accepted; anything else is refused."""

from __future__ import annotations

import numpy as np
import pytest

from livepose.core.calibration import CalibrationError
from livepose.core.camera import CameraModel
from livepose.core.geometry import Geometry, fit_geometry

CAM = CameraModel(name="c", size=(1280, 1024),
                  matrix=np.array([[1000.0, 0, 640.3], [0, 1001.0, 511.7], [0, 0, 1]]),
                  dist=np.array([-0.1, 0.05, 0.001, -0.001, 0.0]), rvec=np.array([0.1, -0.2, 0.05]),
                  tvec=np.array([10.0, -20.0, 800.0]))
PTS = np.random.default_rng(0).uniform([-150, -120, -50], [150, 120, 50], (200, 3))


def test_same_size_is_unchanged() -> None:
    cam, note = fit_geometry(CAM, (1280, 1024))
    assert cam is CAM and note is None


def test_roi_offset_shifts_the_principal_point() -> None:
    cam, note = fit_geometry(CAM, (640, 480), Geometry(offset=(300, 200)))
    assert note is not None and "ROI" in note and cam.size == (640, 480)
    np.testing.assert_allclose(cam.project(PTS), CAM.project(PTS) - [300, 200], atol=1e-9)


def test_binning_scales_about_pixel_centres() -> None:
    cam, _ = fit_geometry(CAM, (640, 512), Geometry(binning=2))
    full = CAM.project(PTS)
    np.testing.assert_allclose(cam.project(PTS), (full + 0.5) / 2 - 0.5, atol=1e-9)
    roi, _ = fit_geometry(CAM, (200, 100), Geometry(offset=(50, 60), binning=2))
    np.testing.assert_allclose(roi.project(PTS), (full + 0.5) / 2 - 0.5 - [50, 60], atol=1e-9)


def test_calibration_made_binned_only_shifts() -> None:
    binned = CameraModel(name="c", size=(640, 512), matrix=CAM.matrix / [[2], [2], [1]],
                         dist=CAM.dist, rvec=CAM.rvec, tvec=CAM.tvec)
    cam, _ = fit_geometry(binned, (600, 500), Geometry(offset=(20, 10), binning=2))
    np.testing.assert_allclose(cam.project(PTS), binned.project(PTS) - [20, 10], atol=1e-9)


def test_codec_padding_is_accepted_with_k_unchanged() -> None:
    cam, note = fit_geometry(CAM, (1272, 1024))  # 8 px narrower, like 1080 vs 1088 video
    assert cam is CAM and note is not None and "padding" in note


def test_unexplained_sizes_and_roi_outside_the_sensor_are_refused() -> None:
    with pytest.raises(CalibrationError, match=r"camera 'c': frames are 640x480 .*1280x1024"):
        fit_geometry(CAM, (640, 480))
    with pytest.raises(CalibrationError, match="does not fit"):
        fit_geometry(CAM, (1000, 800), Geometry(offset=(400, 300)))
