"""The camera backend contract and the registry that picks a backend by name.

Every backend (``sim``, and later ``pylon``, ``spinnaker``, ``genicam``, ``video``) obeys
:class:`CameraBackend`; the camera process (:mod:`livepose.acquisition.camera`) drives them all
the same way::

    cam = make_backend(cam_cfg, ctx)   # nothing opened yet
    cam.open()                         # device handle, born in this process
    cam.arm()                          # waiting for trigger pulses
    while running:
        cam.software_trigger(frame_id, t_ns)   # only for software-triggered sources
        grab = cam.grab(timeout_s)             # Grab | None
    cam.close()

Machine-vision backends (``overlapped_trigger = True``) are fired from a trigger thread while
the main thread grabs (:class:`OverlappedTrigger`, :mod:`livepose.acquisition.swtrigger`).
Backends are imported lazily by name, so a missing SDK only matters to the backend that needs
it, and the error names the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from livepose.core.errors import UserError

# name -> (module, class, SDK module or None, pip extra)
BACKENDS: dict[str, tuple[str, str, str | None, str | None]] = {
    "sim": ("livepose.acquisition.sim.backend", "SimCamera", None, None),
    "pylon": ("livepose.acquisition.pylon", "PylonCamera", "pypylon", "basler"),
    "genicam": ("livepose.acquisition.genicam", "GenICamCamera", "harvesters", "genicam"),
    "spinnaker": ("livepose.acquisition.spinnaker", "SpinnakerCamera", "PySpin", None),
    "video": ("livepose.acquisition.video", "VideoCamera", None, None),  # PyAV: a dependency
    "webcam": ("livepose.acquisition.webcam", "WebcamCamera", "cv2", "webcam"),
}


class BackendUnavailable(UserError):
    """The backend's SDK is not installed."""


class GrabFailed(RuntimeError):
    """The camera delivered a buffer that is not a usable image (incomplete, corrupt).

    ``counter`` is the buffer's frame counter when the driver still knows it (the frame is
    then numbered and counted as dropped), else ``None`` (the gap shows at the next frame).
    """

    def __init__(self, camera: str, counter: int | None, reason: str) -> None:
        super().__init__(f"{camera}: failed buffer (counter {counter}): {reason}")
        self.counter = counter
        self.reason = reason


class DeviceLost(RuntimeError):
    """The camera was removed or stopped answering (the loop may call ``reconnect``)."""


@dataclass(slots=True)
class Grab:
    """One grabbed image.

    Attributes
    ----------
    image
        ``(H, W)`` mono or ``(H, W, 3)`` colour, uint8 or uint16, owned by the caller.
    counter
        The camera's own frame counter (may wrap; see ``counter_bits``).
    t_grab_ns
        Host ``time.time_ns()`` when the image was handed to us.
    t_device_ns
        Device timestamp, if the camera has a clock.
    t_trigger_ns
        Host time of the trigger pulse, when known (software trigger).
    t_exposure_ns
        Host time of the exposure, mapped from ``t_device_ns`` by the camera loop's clock fit.
    """

    image: np.ndarray
    counter: int
    t_grab_ns: int
    t_device_ns: int | None = None
    t_trigger_ns: int | None = None
    t_exposure_ns: int | None = None


ImageSink = Callable[[tuple[int, ...], np.dtype[Any]], np.ndarray]
"""Where a backend puts the next image: ``sink(shape, dtype)`` → a writable array (a slot of
the camera's same-host frame ring, so the one copy out of the SDK's buffer is the transport)."""


def copy_out(src: np.ndarray, sink: ImageSink | None) -> np.ndarray:
    """Copy an image out of a driver buffer we must release: into ``sink``'s array when the
    camera loop gave one, else into a new array."""
    dst = np.empty(src.shape, src.dtype) if sink is None else sink(src.shape, src.dtype)
    np.copyto(dst, src)
    return dst


def reopen(cam: Any, timeout_s: float, pause_s: float) -> UserError | None:
    """Open and arm ``cam`` again (after a device loss) until it works or ``timeout_s`` has
    passed, ``pause_s`` between tries; on success count ``reconnects`` and return ``None``,
    else return the last error (the backend words the final message)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            cam.open()
            cam.arm()
            cam.counters["reconnects"] += 1
            return None
        except UserError as exc:
            if time.monotonic() + pause_s > deadline:
                return exc
        time.sleep(pause_s)


class CameraBackend(Protocol):
    """What every camera backend implements."""

    name: str
    pixel_format: str
    counter_bits: int
    counter_origin: int | None
    software_triggered: bool

    def open(self) -> None:
        """Open and configure the device (raises ``UserError`` naming camera and setting)."""

    def arm(self) -> None:
        """Start acquisition, waiting for trigger pulses."""

    def software_trigger(self, frame_id: int, t_trigger_ns: int) -> None:
        """Fire one exposure (software-triggered sources only)."""

    def grab(self, timeout_s: float) -> Grab | None:
        """Wait for the next image; ``None`` on timeout."""

    def close(self) -> None:
        """Stop acquisition and release the device (idempotent)."""


class OverlappedTrigger(CameraBackend, Protocol):
    """A software-triggered camera that may be fired while earlier frames are still being
    read out (``overlapped_trigger = True``: ``pylon``, ``genicam``, ``spinnaker``). The
    camera process then fires it from a trigger thread and grabs in its main thread
    (:mod:`livepose.acquisition.swtrigger`); its grabs carry the camera's own frame counter,
    which says which exposure since arming an image is.

    ``exposure_origin`` is that counter's value for the first exposure after ``arm()``
    (``None``: the camera does not say; the first image is then taken as the first exposure).
    """

    overlapped_trigger: bool
    exposure_origin: int | None

    def wait_trigger_ready(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until a trigger would start an exposure (a trigger fired
        before that is lost by the camera); ``True`` when ready."""

    def fire(self, frame_id: int) -> None:
        """Execute one software trigger now (for pulse ``frame_id``; no ready check)."""


def make_backend(cam_cfg: Any, **kwargs: Any) -> CameraBackend:
    """Instantiate the backend named by ``cam_cfg.backend`` (imports its module now)."""
    try:
        module, cls, _, _ = BACKENDS[cam_cfg.backend]
    except KeyError:
        raise UserError(
            f"camera {cam_cfg.name!r}: unknown backend {cam_cfg.backend!r}; "
            f"allowed: {', '.join(BACKENDS)}"
        ) from None
    require_sdk(cam_cfg)
    backend: CameraBackend = getattr(importlib.import_module(module), cls)(cam_cfg, **kwargs)
    return backend


def require_sdk(cam_cfg: Any) -> None:
    """Raise :class:`BackendUnavailable` (naming camera and install) if the SDK is missing."""
    _, _, sdk, extra = BACKENDS[cam_cfg.backend]
    if sdk is not None and importlib.util.find_spec(sdk) is None:
        raise BackendUnavailable(
            f"camera {cam_cfg.name!r}: backend {cam_cfg.backend!r} needs {sdk}; "
            + (
                f"install it with: pip install 'livepose[{extra}]'"
                if extra
                else "install the vendor's SDK and its Python wheel (see docs/acquisition.md)"
            )
        )


def available_backends() -> dict[str, bool]:
    """Backend name → whether its SDK can be imported (for ``livepose doctor``)."""
    return {
        name: sdk is None or importlib.util.find_spec(sdk) is not None
        for name, (_, _, sdk, _) in BACKENDS.items()
    }
