"""Overlapped software triggering: fire pulse k+1 while frame k is still on its way.

A machine-vision camera overlaps the exposure of one frame with the read-out and transfer of
the previous one. A loop that fires, then waits for that image, then fires again caps the
rate far below the camera's, and once it falls behind it fires pulses long after they were
sent: ``frame_id`` no longer means the same instant in every camera. So a software-triggered
camera whose backend declares ``overlapped_trigger = True`` (``pylon``, ``genicam``,
``spinnaker``) runs two threads in its process:

- the **trigger thread** (:class:`TriggerThread`) owns the camera's SUB socket on the trigger
  clock. For each pulse it fires the camera only if that can happen within the desync budget
  (``desync_tolerance_ms``) of the pulse's ``t_trigger_ns``: a pulse already later than that
  is skipped (``trigger_late``); otherwise it waits for the camera to be trigger-ready for
  the rest of the budget (a trigger fired before that is silently lost by the camera) and
  skips the pulse if it does not get ready (``trigger_not_ready``). A fired pulse is recorded
  in a :class:`PulseFifo`.
- the **main thread** grabs like a hardware-triggered camera and numbers each image by its
  pulse: the n-th trigger fired since arming is the camera's n-th exposure, and the image's
  frame counter says which exposure it is. A skipped pulse has no image, so it is a gap in
  ``frame_id`` (``dropped``, ``dropped_before``), never a shift.

No SDK is imported here; the backends give :class:`~livepose.acquisition.base.OverlappedTrigger`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq

from livepose.acquisition.base import DeviceLost, GrabFailed, OverlappedTrigger
from livepose.core import protocol
from livepose.transport import codec

if TYPE_CHECKING:
    from livepose.acquisition.camera import CameraLoop
    from livepose.acquisition.genapi import Nodes

COUNTERS = ("triggers_fired", "trigger_late", "trigger_not_ready", "trigger_failed",
            "exposures_lost", "images_without_pulse")
"""Published in the camera's health (all from the start, at 0)."""


MAX_PENDING = 4096
SKIP_WINDOW_S = 2.0  # how often the share of skipped pulses is checked
SKIP_WARN = 0.1  # above this share the camera is reported as not keeping up
SKIP_REPEAT_S = 30.0  # and again at most this often while it lasts


@dataclass(frozen=True, slots=True)
class Pulse:
    """A fired trigger: the ``exposure``-th since arming, for pulse ``frame_id``."""

    exposure: int
    frame_id: int
    t_trigger_ns: int


class PulseFifo:
    """Fired pulses whose images have not come yet (thread-safe).

    Parameters
    ----------
    origin
        The camera's frame counter for the first exposure after arming (pylon: 0); ``None``
        when the camera does not say: the first image is then taken to be the oldest
        pending exposure (a lost first exposure would go unnoticed).
    """

    def __init__(self, origin: int | None) -> None:
        self.origin = origin
        self._base = origin
        self._lock = threading.Lock()
        # bounded: a camera that exposes but never delivers must not grow it without end (a
        # pulse pushed out is a gap, or its late image counts as images_without_pulse)
        self._pending: deque[Pulse] = deque(maxlen=MAX_PENDING)
        self.fired = 0

    def __len__(self) -> int:
        return len(self._pending)

    def push(self, frame_id: int, t_trigger_ns: int) -> Pulse:
        """Record the next trigger (before firing it: its image may come before the fire
        call returns)."""
        with self._lock:
            pulse = Pulse(self.fired, frame_id, t_trigger_ns)
            self._pending.append(pulse)
            self.fired += 1
            return pulse

    def unpush(self, pulse: Pulse) -> None:
        """Forget ``pulse``, the last one pushed, whose trigger failed to fire."""
        with self._lock:
            if self._pending and self._pending[-1] is pulse:
                self._pending.pop()
                self.fired -= 1

    def clear(self) -> None:
        """The camera was armed again: its exposures count from the origin again."""
        with self._lock:
            self._pending.clear()
            self.fired = 0
            self._base = self.origin

    def match(self, counter: int | None) -> tuple[Pulse | None, int]:
        """Take the pulse of an image (or failed buffer) from the FIFO.

        Parameters
        ----------
        counter
            The image's frame counter; ``None`` for a failed buffer the driver could not
            number: it is taken to be the oldest pending exposure.

        Returns
        -------
        tuple
            The pulse (``None`` if no pending pulse has this exposure), and how many older
            pending pulses were removed because the counter jumped past them (their
            exposures were lost).
        """
        with self._lock:
            if counter is None:
                return (self._pending.popleft() if self._pending else None), 0
            if self._base is None:
                if not self._pending:
                    return None, 0
                self._base = counter - self._pending[0].exposure
            exposure = counter - self._base
            lost = 0
            while self._pending and self._pending[0].exposure < exposure:
                self._pending.popleft()
                lost += 1
            if self._pending and self._pending[0].exposure == exposure:
                return self._pending.popleft(), lost
            return None, lost


def poll_until(check: Callable[[], bool], timeout_s: float, step_s: float = 0.0002) -> bool:
    """Call ``check`` every ``step_s`` until it is true (``True``) or ``timeout_s`` passed
    (``False``). Sleeping between checks leaves the CPU to the camera's driver: pylon's own
    ``WaitForFrameTriggerReady(ms)`` spins (3 ms of waiting cost 3 ms of CPU, polling 0.5)."""
    deadline = time.perf_counter() + timeout_s
    while not check():
        if time.perf_counter() >= deadline:
            return False
        time.sleep(step_s)
    return True


class FrameTriggerWait:
    """Trigger readiness through the SFNC status ``AcquisitionStatus`` with
    ``AcquisitionStatusSelector=FrameTriggerWait`` (GenICam cameras through harvesters or
    PySpin), polled every 0.2 ms. A camera without that status is always taken as ready
    (``available`` is False): a pulse fired too early is then lost by the camera, and shows
    as a lost exposure (a gap at the next image)."""

    def __init__(self, nodes: Nodes) -> None:
        self.nodes = nodes
        selector = "AcquisitionStatusSelector"
        self.available = (
            nodes.has(selector) and nodes.has("AcquisitionStatus")
            and "FrameTriggerWait" in (nodes.choices(selector) or [])
        )
        if self.available:
            try:
                nodes.set(selector, "FrameTriggerWait")
            except Exception:  # the SDK's own error type: a selector not writable now
                self.available = False

    def wait(self, timeout_s: float) -> bool:
        """Whether the camera waits for a frame trigger, within ``timeout_s``."""
        if not self.available:
            return True
        return poll_until(lambda: bool(self.nodes.get("AcquisitionStatus")), timeout_s)


class TriggerThread:
    """Fires an overlapped camera on the clock's pulses; numbers its images by pulse.

    Parameters
    ----------
    cam
        The backend.
    sock
        The camera's SUB socket on the trigger clock, handed over: from :meth:`start` on
        only this thread uses it (ZeroMQ sockets are not thread-safe).
    decoder
        Decodes (and counts malformed) messages on ``sock``.
    budget_ns
        A pulse is fired no later than this after its ``t_trigger_ns`` or not at all.
    """

    def __init__(self, cam: OverlappedTrigger, sock: zmq.Socket[Any], decoder: codec.Decoder,
                 budget_ns: int) -> None:
        self.cam = cam
        self.sock = sock
        self.decoder = decoder
        self.budget_ns = budget_ns
        self.fifo = PulseFifo(cam.exposure_origin)
        self.counters: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        self.errors: deque[str] = deque(maxlen=64)  # from the thread, reported by the main one
        self._cam_lock = threading.Lock()  # held while the thread touches the camera
        self._paused = False
        self._failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._window = (time.monotonic(), 0, 0)  # start, skipped, fired
        self._warned_at = -SKIP_REPEAT_S

    # ------------------------------------------------------------------ trigger thread
    def start(self) -> None:
        """Start listening to the clock."""
        self._thread = threading.Thread(target=self._run, name=f"{self.cam.name}-trigger",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            while True:
                try:
                    parts = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                msg = self.decoder.decode(parts)
                if isinstance(msg, protocol.Trigger):
                    self.pulse(msg.frame_id, msg.t_trigger_ns)

    def pulse(self, frame_id: int, t_trigger_ns: int) -> bool:
        """Fire the camera for one pulse if it can be done within the budget; count why
        not. Returns whether it fired."""
        c = self.counters
        with self._cam_lock:
            if self._paused:  # the camera is being re-opened
                c["trigger_not_ready"] += 1
                return False
            left_ns = self.budget_ns - (time.time_ns() - t_trigger_ns)
            if left_ns < 0:
                c["trigger_late"] += 1
                return False
            pulse: Pulse | None = None
            try:
                if not self.cam.wait_trigger_ready(left_ns / 1e9):
                    c["trigger_not_ready"] += 1
                    return False
                pulse = self.fifo.push(frame_id, t_trigger_ns)
                self.cam.fire(frame_id)
            except Exception as exc:  # any SDK error or DeviceLost: counted; the grab side recovers
                if pulse is not None:
                    self.fifo.unpush(pulse)
                c["trigger_failed"] += 1
                if not self._failing:  # the first of a run of failures is reported
                    self.errors.append(f"{self.cam.name}: pulse {frame_id} not fired: {exc}")
                self._failing = True
                return False
        self._failing = False
        c["triggers_fired"] += 1
        return True

    # ------------------------------------------------------------------ main thread
    def pause(self) -> None:
        """Stop firing (returns once a fire in progress is done); pulses meanwhile are
        counted ``trigger_not_ready``."""
        with self._cam_lock:
            self._paused = True

    def resume(self) -> None:
        """Fire again, on a camera just (re-)armed: its exposures count from the start."""
        with self._cam_lock:
            self.counters["exposures_lost"] += len(self.fifo)  # fired before the loss
            self.fifo.clear()
            self._paused = False

    def close(self) -> None:
        """End the thread (within ~50 ms)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def sync(self, counters: Counter[str], error: Callable[[str], None]) -> None:
        """Copy the counters into the camera's health and report the thread's errors."""
        for key in COUNTERS:
            counters[key] = self.counters[key]
        while self.errors:
            error(self.errors.popleft())
        self._check_keeping_up(error)

    def _check_keeping_up(self, error: Callable[[str], None]) -> None:
        """Every ``SKIP_WINDOW_S``: if more than ``SKIP_WARN`` of the pulses were skipped,
        say so (at most every ``SKIP_REPEAT_S``) — the camera cannot take this rate (or its
        pulses arrive late), and frame-sets will be incomplete."""
        now = time.monotonic()
        t0, skipped0, fired0 = self._window
        if now - t0 < SKIP_WINDOW_S:
            return
        c = self.counters
        skipped = c["trigger_late"] + c["trigger_not_ready"]
        fired = c["triggers_fired"]
        self._window = (now, skipped, fired)
        ds, total = skipped - skipped0, skipped - skipped0 + fired - fired0
        if total >= 20 and ds > SKIP_WARN * total and now - self._warned_at >= SKIP_REPEAT_S:
            self._warned_at = now
            error(f"{self.cam.name}: {100 * ds / total:.0f}% of trigger pulses skipped in the "
                  f"last {now - t0:.0f} s (late or camera not ready): it cannot keep up — "
                  "lower fps or exposure, or raise desync_tolerance_ms")

    def grab(self, loop: CameraLoop, recover: Callable[[DeviceLost], None]) -> None:
        """One turn of the grab side: wait for an image (no longer than the next preview is
        due), number it by its pulse and publish it. A failed buffer consumes its pulse (a
        counted drop); a lost device is re-opened (``recover``) with the trigger paused."""
        try:
            grab = self.cam.grab(loop.preview_wait_ms(100) / 1000)
        except GrabFailed as exc:
            pulse, lost = self.fifo.match(exc.counter)
            self.counters["exposures_lost"] += lost
            exc.counter = None if pulse is None else pulse.frame_id
            loop.failed(exc)
            return
        except DeviceLost as exc:
            self.pause()
            recover(exc)  # raises if it does not come back: the trigger stays paused
            self.resume()
            return
        if grab is None:
            return
        pulse, lost = self.fifo.match(grab.counter)
        self.counters["exposures_lost"] += lost
        if pulse is None:
            self.counters["images_without_pulse"] += 1
            loop.ctx.error(f"{self.cam.name}: image with counter {grab.counter} matches no "
                           "fired trigger; dropped")
            return
        grab.counter, grab.t_trigger_ns = pulse.frame_id, pulse.t_trigger_ns
        loop.publish(None, grab)
