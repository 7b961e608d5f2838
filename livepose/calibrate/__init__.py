"""Camera calibration: ChArUco or checkerboard views → intrinsics, extrinsics, bundle
adjustment → an Anipose TOML with the board's unit (docs/calibration.md).

Modules: :mod:`board` (board description and printing), :mod:`detect` (corners in images and
videos, "0 boards" diagnostics), :mod:`intrinsics` (``cv2.calibrateCamera``, pinhole and
fisheye), :mod:`bundle` (initial extrinsics and bundle adjustment) with :mod:`residuals`
(its analytic sparse Jacobian), :mod:`report` (HTML/PNG report), :mod:`collect` (feedback
while collecting), :mod:`pipeline` (whole runs from a folder). OpenCV and SciPy (extra
``calibrate``) are imported inside the functions that need them.
"""
