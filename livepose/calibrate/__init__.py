"""Camera calibration: ChArUco or checkerboard views → intrinsics, extrinsics, bundle
adjustment → an Anipose TOML with the board's unit (docs/calibration.md).

Modules: :mod:`board` (board description and printing), :mod:`detect` (corners in images and
videos, "0 boards" diagnostics), :mod:`intrinsics` (``cv2.calibrateCamera``, pinhole and
fisheye), :mod:`bundle` (initial extrinsics and sparse bundle adjustment), :mod:`report`
(PNG/HTML report), :mod:`pipeline` (the whole run from a folder). OpenCV (extra
``calibrate``) is imported inside the functions that need it.
"""
