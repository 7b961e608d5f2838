"""The ``webcam`` camera backend: USB webcams, and anything else OpenCV's ``VideoCapture``
opens (a device path, a video file, a stream URL), through OpenCV (extra ``webcam``).

Webcams cannot be triggered: they free-run on their own clock. Each frame is therefore
either matched to the trigger clock's pulses by its timestamp (``match: clock``, the default;
see :mod:`livepose.acquisition.timematch`) or numbered by its own count (``counter``).

Settings are applied in this order: ``fourcc``, ``width``/``height``, ``fps``, ``buffers``
(``CAP_PROP_BUFFERSIZE``, 1 by default so a late reader gets a fresh frame, not a queued old
one), then ``properties`` (``cv2.CAP_PROP_<NAME>``). A refused resolution or fourcc, an
unknown or refused property, and a device that cannot be opened or delivers nothing are
``UserError`` s naming the camera and the device; a frame rate the device does not confirm is
logged and published in ``info``, not refused (webcams report it unreliably).

Timestamps: ``t_grab_ns`` is host ``time.time_ns()`` taken the moment ``VideoCapture.grab()``
returns. A reader thread (created in :meth:`WebcamCamera.arm`, in the camera process) waits
in ``grab()`` all the time, so that is when the frame reached the host, whatever the camera
loop is doing; the frame is handed over through a queue of two (an older frame is dropped
and counted ``overwritten`` when the loop falls behind). It is later than the exposure by the
camera's readout and USB transfer (tens of ms on webcams, constant per camera model and
mode): set ``match_latency_ms`` to subtract it before matching. ``CAP_PROP_POS_MSEC`` is not
used: its meaning depends on OpenCV's backend (V4L2: the kernel's buffer timestamp on
``CLOCK_MONOTONIC``; files: the media position; MSMF/DirectShow: their own), which could not
be checked on a real webcam here.

Pixel formats: OpenCV delivers BGR; ``Mono8`` frames are ``(H, W)`` (``COLOR_BGR2GRAY``),
``RGB8`` ``(H, W, 3)`` (``COLOR_BGR2RGB``), converted in the reader thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import numpy as np

from livepose.acquisition.base import DeviceLost, Grab, reopen
from livepose.core.errors import UserError

log = logging.getLogger(__name__)

APIS = {
    "any": "CAP_ANY",
    "v4l2": "CAP_V4L2",
    "dshow": "CAP_DSHOW",
    "msmf": "CAP_MSMF",
    "avfoundation": "CAP_AVFOUNDATION",
    "ffmpeg": "CAP_FFMPEG",
    "gstreamer": "CAP_GSTREAMER",
}
QUEUE = 2  # frames handed from the reader thread to the camera loop


def parse_device(device: int | str) -> int | str:
    """A camera index (an int, or a string of digits) or a path/URL string."""
    if isinstance(device, str) and device.strip().isdigit():
        return int(device.strip())
    return device


def describe(device: int | str) -> str:
    """How a device is named in messages."""
    return f"webcam index {device}" if isinstance(device, int) else repr(device)


def fourcc_str(code: float) -> str:
    """``CAP_PROP_FOURCC`` value → four characters."""
    c = int(code)
    return "".join(chr((c >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00")


class WebcamCamera:
    """One webcam (or other ``VideoCapture`` source), free-running.

    Parameters
    ----------
    cam_cfg
        A :class:`~livepose.core.config.WebcamCameraConfig`.
    cfg, index
        Unused (uniform backend signature).

    Attributes
    ----------
    info
        What the device gave: size, frame rate, fourcc, OpenCV backend (published in health).
    counters
        ``read_failures``, ``overwritten``, ``bad_images``, ``reconnects``.
    """

    counter_bits = 64
    counter_origin: int | None = None
    software_triggered = False

    def __init__(self, cam_cfg: Any, cfg: Any = None, index: int = 0) -> None:
        self.cc = cam_cfg
        self.name: str = cam_cfg.name
        self.pixel_format: str = cam_cfg.pixel_format
        self.device = parse_device(cam_cfg.device)
        # every key exists from the start: the camera loop reads them from another thread
        self.counters: Counter[str] = Counter(
            read_failures=0, overwritten=0, bad_images=0, reconnects=0
        )
        self.info: dict[str, Any] = {}
        self._cap: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._frames: deque[Grab] = deque(maxlen=QUEUE)
        self._count = 0  # frames read (the counter; it keeps counting across reconnects)
        self._lost: str | None = None

    def _fail(self, setting: str, why: str) -> UserError:
        return UserError(f"camera {self.name!r}: {setting}: {why}")

    # ------------------------------------------------------------------ open / configure
    def open(self) -> None:
        """Open the device, apply the settings, and check it delivers a frame."""
        import cv2

        dev = self.device
        if (isinstance(dev, str) and self.cc.api != "gstreamer" and "://" not in dev
                and not Path(dev).exists()):
            raise self._fail("device", f"{dev} does not exist")
        api = getattr(cv2, APIS[self.cc.api], None)
        if self.cc.api != "any" and (
            api is None or not cv2.videoio_registry.hasBackend(api)
        ):
            reg = cv2.videoio_registry
            have = ", ".join(sorted({reg.getBackendName(b) for b in reg.getBackends()
                                     if reg.hasBackend(b)}))
            raise self._fail("api", f"this OpenCV has no {self.cc.api!r} capture backend; "
                             f"it has: {have}")
        self.close()
        cap = cv2.VideoCapture(dev, api if api is not None else cv2.CAP_ANY)
        if not cap.isOpened():
            cap.release()
            hint = (" (no such camera, in use by another program, or no permission; "
                    "on Linux `v4l2-ctl --list-devices` lists them)" if isinstance(dev, int)
                    else "")
            raise self._fail("device", f"cannot open {describe(dev)}{hint}")
        self._cap = cap
        try:
            self._configure(cv2, cap)
        except BaseException:
            self.close()
            raise
        self._stop.clear()
        self._lost = None

    def _configure(self, cv2: Any, cap: Any) -> None:
        cc = self.cc
        if cc.fourcc is not None:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*cc.fourcc))
            got = fourcc_str(cap.get(cv2.CAP_PROP_FOURCC))
            if got.upper() != cc.fourcc.strip().upper():
                raise self._fail("fourcc", f"requested {cc.fourcc}, {describe(self.device)} "
                                 f"gave {got or 'none'}")
        if cc.width is not None and cc.height is not None:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, cc.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cc.height)
        if cc.fps is not None:
            cap.set(cv2.CAP_PROP_FPS, cc.fps)
        if not cap.set(cv2.CAP_PROP_BUFFERSIZE, cc.buffers):
            log.info("%s: %s does not take CAP_PROP_BUFFERSIZE", self.name, cap.getBackendName())
        for key, value in cc.properties.items():
            prop = getattr(cv2, f"CAP_PROP_{key.upper()}", None)
            if prop is None:
                raise self._fail(f"properties.{key}", f"OpenCV has no CAP_PROP_{key.upper()} "
                                 "(e.g. EXPOSURE, AUTO_EXPOSURE, GAIN, FOCUS, AUTOFOCUS, "
                                 "AUTO_WB, BRIGHTNESS)")
            if not cap.set(prop, value):
                raise self._fail(f"properties.{key}", f"{describe(self.device)} refused "
                                 f"{value:g} (through OpenCV's {cap.getBackendName()} backend)")
        ok, img = cap.read()
        if not ok or img is None:
            raise self._fail("device", f"{describe(self.device)} opened but delivered no frame")
        if img.dtype != np.uint8 or img.ndim not in (2, 3):
            raise self._fail("device", f"{describe(self.device)} delivers {img.dtype} images "
                             f"of shape {img.shape}; only 8-bit mono/colour is supported")
        h, w = img.shape[:2]
        if cc.width is not None and (w, h) != (cc.width, cc.height):
            raise self._fail("width/height", f"requested {cc.width}x{cc.height}, "
                             f"{describe(self.device)} gave {w}x{h}")
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        if cc.fps is not None and abs(fps - cc.fps) > 0.01 * cc.fps:
            log.warning("%s: requested %g fps, %s reports %g", self.name, cc.fps,
                        describe(self.device), fps)
        self.info = {
            "device": str(self.device), "opencv_backend": cap.getBackendName(), "width": w,
            "height": h, "fps_reported": fps,
            "fourcc": fourcc_str(cap.get(cv2.CAP_PROP_FOURCC)),
        }

    def _convert(self, cv2: Any, img: np.ndarray) -> np.ndarray:
        """OpenCV's BGR (or grey, or BGRA) image → ``Mono8`` ``(H, W)`` / ``RGB8`` ``(H, W, 3)``."""
        mono = self.pixel_format == "Mono8"
        if img.ndim == 2:
            return img if mono else cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        if img.shape[2] == 4:
            code = cv2.COLOR_BGRA2GRAY if mono else cv2.COLOR_BGRA2RGB
        else:
            code = cv2.COLOR_BGR2GRAY if mono else cv2.COLOR_BGR2RGB
        return cv2.cvtColor(img, code)

    # ------------------------------------------------------------------ acquisition
    def arm(self) -> None:
        """Start the reader thread (frames flow from now on)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._read_loop, name=f"webcam-{self.name}",
                                        daemon=True)
        self._thread.start()

    def software_trigger(self, frame_id: int, t_trigger_ns: int) -> None:
        """Webcams free-run; there is nothing to trigger."""

    def _read_loop(self) -> None:
        import cv2

        cap = self._cap
        last_ok = time.monotonic()
        while not self._stop.is_set():
            ok = cap.grab()
            t_ns = time.time_ns()
            img = cap.retrieve()[1] if ok else None
            if img is None:
                self.counters["read_failures"] += 1
                if time.monotonic() - last_ok > self.cc.lost_after_s:
                    with self._cond:
                        self._lost = (f"no frame from {describe(self.device)} for "
                                      f"{self.cc.lost_after_s:g} s")
                        self._cond.notify_all()
                    return
                self._stop.wait(0.01)
                continue
            last_ok = time.monotonic()
            try:
                image = self._convert(cv2, img)
            except cv2.error:
                self.counters["bad_images"] += 1
                continue
            grab = Grab(image=image, counter=self._count, t_grab_ns=t_ns)
            self._count += 1
            with self._cond:
                if len(self._frames) == QUEUE:
                    self.counters["overwritten"] += 1
                self._frames.append(grab)
                self._cond.notify_all()

    def grab(self, timeout_s: float) -> Grab | None:
        """The oldest frame not yet taken; ``None`` if none comes within ``timeout_s``.

        Raises
        ------
        DeviceLost
            The device delivered nothing for ``lost_after_s`` (unplugged, or a file ended).
        """
        with self._cond:
            if not self._frames and self._lost is None:
                self._cond.wait(max(0.0, timeout_s))
            if self._frames:
                return self._frames.popleft()
            if self._lost is not None:
                raise DeviceLost(f"camera {self.name!r}: {self._lost}")
        return None

    def reconnect(self) -> None:
        """Re-open the same device until ``reconnect_timeout_s`` (``UserError`` if it never
        comes back); frames keep counting from where they were."""
        timeout = self.cc.reconnect_timeout_s
        if timeout <= 0:
            raise self._fail("device", f"{describe(self.device)} was lost "
                             "(reconnect_timeout_s is 0)")
        last = reopen(self, timeout, 0.5)
        if last is not None:
            raise self._fail("device", f"{describe(self.device)} did not come back "
                             f"within {timeout:g} s ({last})")

    def close(self) -> None:
        """Stop the reader thread and release the device (idempotent)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=2.0 + self.cc.lost_after_s)
            if thread.is_alive():  # stuck in the driver: leave the handle to process exit
                log.warning("%s: reader thread did not stop; not releasing the device",
                            self.name)
                self._cap = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        with self._cond:
            self._frames.clear()
