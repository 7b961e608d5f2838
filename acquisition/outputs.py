"""Camera output lines pulsed by closed-loop actions (:class:`~livepose.closedloop.actions.CameraOutput`).

A camera process whose backend has output lines (``outputs`` in a pylon / genicam /
spinnaker camera's config; the sim's virtual ``Line1``…``Line3``) runs an
:class:`OutputPulser`: a thread subscribed to the ``camctl`` endpoint that, for each command
naming this camera, sets the line high, waits ``width_us`` and sets it low — off the camera
loop, so grabbing never waits for it. Counters in the camera's health: ``outputs_fired``,
``outputs_refused`` (a line that is not configured, or a camera that refused the write),
``outputs_bad`` (malformed commands); rate ``output_latency_ms`` (command sent → line
high, last one).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

import zmq

from livepose.core.control import CAMERA_CONTROL_TOPIC, decode_camera_command
from livepose.kit.realtime import leave_realtime
from livepose.transport import security

log = logging.getLogger(__name__)

POLL_MS = 100
MAX_WIDTH_US = 1_000_000


class HasOutputs(Protocol):
    """A backend with output lines."""

    @property
    def output_lines(self) -> Sequence[str]:
        """Lines :meth:`set_output` may drive."""
        ...

    def set_output(self, line: str, high: bool) -> None:
        """Drive a line."""


class OutputPulser:
    """The thread that pulses a camera's output lines on command.

    Parameters
    ----------
    ctx
        The camera's :class:`~livepose.kit.process.StageContext` (socket factory, counters).
    cam
        The camera's name: only commands for it are carried out.
    backend
        Its backend (:class:`HasOutputs`).
    endpoint
        The ``camctl`` endpoint (the closed-loop client binds it; cameras connect).
    """

    def __init__(self, ctx: Any, cam: str, backend: HasOutputs, endpoint: str) -> None:
        self.ctx, self.cam, self.backend, self.endpoint = ctx, cam, backend, endpoint
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{cam}-outputs", daemon=True)
        for key in ("outputs_fired", "outputs_refused", "outputs_bad"):
            ctx.counters[key] = 0

    def start(self) -> None:
        """Start the thread (subscribes at once)."""
        self._thread.start()

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the thread."""
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        leave_realtime()  # a pulse is not on the frame path
        sock = self.ctx.zmq_ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, CAMERA_CONTROL_TOPIC)
        security.connect(sock, self.endpoint, self.ctx.keys)
        try:
            while not self._stop.is_set():
                if sock.poll(POLL_MS):
                    self.handle(sock.recv_multipart())
        finally:
            sock.close(0)

    def handle(self, parts: list[bytes]) -> bool:
        """Carry out one command; True if a pulse was sent."""
        c = self.ctx.counters
        cmd = decode_camera_command(parts)
        if cmd is None:
            c["outputs_bad"] += 1
            return False
        if cmd["cam"] != self.cam:
            return False
        line, width = cmd["line"], min(int(cmd["width_us"]), MAX_WIDTH_US)
        if line not in self.backend.output_lines:
            c["outputs_refused"] += 1
            self.ctx.last_error = (f"{self.cam}: output {line!r} is not configured "
                                   f"(outputs: {self.backend.output_lines})")
            return False
        try:
            self.backend.set_output(line, True)
            t_high = time.time_ns()
            time.sleep(width / 1e6)
            self.backend.set_output(line, False)
        except Exception as exc:  # each SDK raises its own family; never ends the thread
            c["outputs_refused"] += 1
            self.ctx.last_error = f"{self.cam}: output {line} failed: {exc}"
            log.warning("%s", self.ctx.last_error)
            return False
        c["outputs_fired"] += 1
        self.ctx.rates["output_latency_ms"] = (t_high - int(cmd["t_ns"])) / 1e6
        return True
