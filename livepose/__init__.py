"""livepose: real-time multi-camera 3D pose estimation.

Hardware-triggered cameras → ONNX Runtime 2D keypoints → online triangulation and Kalman
filtering → a live 3D pose stream. The stages live in ``livepose.acquisition``,
``livepose.inference``, ``livepose.fusion`` and ``livepose.dashboard``; this package is the
core they share (message protocol, config, camera model, process runner, client, CLI).
Importing it does nothing but define names.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("livepose")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
