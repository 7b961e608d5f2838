"""Actions a closed-loop rule can call (see :mod:`livepose.closedloop.rules`).

Every action is a callable taking an :class:`ActionEvent`; it must
return quickly (it runs in the loop that handles the next pose). An action with an
``open()`` is opened when the :class:`~livepose.closedloop.rules.RuleEngine` is built, so an absent
device is a clear :class:`ActionDeviceError` before the experiment starts, not at the first
firing.

- :class:`TTLPulse`: a TTL pulse from a trigger box (``firmware/triggerbox``) over its serial
  protocol, through its driver (``livepose.acquisition.triggerbox``) — a second box: one
  process owns a serial port, and the trigger process owns the box that fires the cameras.
- :class:`CameraOutput`: a camera output line (``UserOutput`` on Basler) through the camera
  processes' ``camctl`` channel, pulsed by the camera's
  :class:`~livepose.acquisition.outputs.OutputPulser` (see docs/closed-loop.md).
- :class:`Callback`: any function, wrapped with a name for the log.

:class:`ActionLog` writes every firing (JSON lines) into the recording session's event log or a
file.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from livepose.core.control import encode_camera_command
from livepose.core.errors import UserError
from livepose.transport import security

log = logging.getLogger(__name__)

#: how long the first firing waits for the supervisor's recording status (later ones never wait)
FIRST_ANSWER_S = 0.5
#: a status request unanswered this long: the session is no longer assumed
STATUS_LOST_S = 10.0

@dataclass
class ActionEvent:
    """What caused an action: the rule, the pose and every timestamp (host ns)."""

    rule: str
    action: str
    keypoint: str
    frame_id: int
    xyz: list[float]
    speed_mm_s: float | None
    t_trigger_ns: int | None
    t_fused_ns: int
    t_recv_ns: int
    t_decided_ns: int
    t_action_ns: int = 0
    result: str = "ok"

    def record(self) -> dict[str, Any]:
        """JSON-able form (what the log gets)."""
        return dict(self.__dict__)


class ActionDeviceError(UserError):
    """The device an action needs is absent or cannot be opened."""


class TTLPulse:
    """One TTL pulse from a trigger box (``firmware/triggerbox``) per firing.

    Opening identifies the box and configures it for single pulses (``WIDTH width_us``,
    ``COUNT 1``, a rate whose period exceeds the width) through the box's driver
    (:class:`livepose.acquisition.triggerbox.TriggerBox`); each firing then writes ``START``
    (the box emits one pulse of ``width_us`` on its pulse pin, timed by the box) and returns at
    once: the reply (``OK START``) is read at the next firing, and an ``ERR`` reply is logged.

    Parameters
    ----------
    port
        Serial device of the box (``/dev/ttyACM1``, ``COM4``).
    width_us
        Pulse width in microseconds (1 … 100 000).
    baud
        Serial speed (the sketch uses 115200).
    """

    def __init__(self, port: str, width_us: int = 1000, baud: int = 115200) -> None:
        if not 1 <= width_us <= 100_000:
            raise ActionDeviceError(f"TTLPulse: width_us must be 1 … 100000, got {width_us}")
        self.port, self.width_us, self.baud = port, int(width_us), baud
        self.name = f"ttl:{port}"
        self._box: Any = None
        self.sent = 0
        self.errors = 0

    def open(self) -> None:
        """Identify and configure the box (raises :class:`ActionDeviceError` naming the port)."""
        if self._box is not None:
            return
        if self.port.startswith("/dev/") and not Path(self.port).exists():
            raise ActionDeviceError(f"TTLPulse: serial port {self.port} not found (is the "
                                    "trigger box plugged in? `ls /dev/ttyACM* /dev/ttyUSB*`)")
        from livepose.acquisition.triggerbox import TriggerBox

        try:
            box = TriggerBox(self.port, self.baud, timeout_s=1.0, identify_wait_s=3.0)
        except UserError as exc:
            raise ActionDeviceError(f"TTLPulse: {exc}") from None
        try:
            rate = min(10_000.0, max(0.1, 0.5e6 / self.width_us))  # period = 2 × width
            box.configure(rate, self.width_us, 1)
        except UserError as exc:
            box.close()
            raise ActionDeviceError(f"TTLPulse: {exc}") from None
        self._box = box

    def _drain_replies(self) -> None:
        ser = self._box._ser
        while ser.in_waiting:
            line = ser.readline().decode("ascii", "replace").strip()
            if line.startswith("ERR"):
                self.errors += 1
                log.error("TTLPulse on %s: the box refused a pulse: %s", self.port, line)

    def __call__(self, event: ActionEvent) -> None:
        """Fire one pulse (writes ``START``; does not wait for the reply)."""
        self.open()
        self._drain_replies()
        self._box._ser.write(b"START\n")
        self.sent += 1

    def close(self) -> None:
        """Close the port."""
        if self._box is not None:
            self._box.close()
            self._box = None


class CameraOutput:
    """Drive a camera's output line through the camera process's control channel.

    The message (topic ``camctl``, msgpack ``{"v": 1, "cmd": "user_output", "cam", "line",
    "width_us", "frame_id", "t_ns"}``) goes out on a PUB bound at ``endpoint`` that camera
    processes subscribe to. Sending never blocks; a message no camera receives is lost
    (PUB semantics) — check the camera's health counters.

    Parameters
    ----------
    endpoint
        Where to bind the control PUB (e.g. ``ipc:///tmp/livepose-camctl.sock``).
    cam
        Camera name.
    line
        Output line (``Line2``…), set high for ``width_us`` by the camera process.
    keys
        CURVE keys when ``endpoint`` is ``tcp://`` in a run with ``transport.keys_dir``.
    """

    def __init__(self, endpoint: str, cam: str, line: str = "Line2", width_us: int = 1000,
                 context: zmq.Context[Any] | None = None,
                 keys: security.CurveKeys | None = None) -> None:
        self.endpoint, self.cam, self.line, self.width_us = endpoint, cam, line, width_us
        self.keys = keys
        self.name = f"camera-output:{cam}:{line}"
        self._ctx = context
        self._sock: zmq.Socket[Any] | None = None
        self.sent = 0

    def open(self) -> None:
        """Bind the control socket (raises :class:`ActionDeviceError` when it cannot)."""
        if self._sock is not None:
            return
        ctx = self._ctx or zmq.Context.instance()
        s = ctx.socket(zmq.PUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 100)
        try:
            security.bind(s, self.endpoint, self.keys)
        except zmq.ZMQError as exc:
            s.close(0)
            raise ActionDeviceError(f"CameraOutput: cannot bind {self.endpoint}: {exc}") from None
        self._sock = s

    def __call__(self, event: ActionEvent) -> None:
        """Publish the output command (never blocks)."""
        self.open()
        assert self._sock is not None
        self._sock.send_multipart(
            encode_camera_command(self.cam, self.line, self.width_us, event.frame_id),
            zmq.NOBLOCK)
        self.sent += 1

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None


class Callback:
    """A user function as an action (with a name for the log)."""

    def __init__(self, fn: Callable[[ActionEvent], Any], name: str | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"Callback needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "callback")

    def __call__(self, event: ActionEvent) -> Any:
        """Call the function."""
        return self.fn(event)


class ActionLog:
    """Where firings are written: one JSON object per line (``kind: "action"``, source
    ``closedloop``).

    Parameters
    ----------
    path
        A session folder (its ``events.jsonl``, next to the supervisor's and cameras' events)
        or a ``.jsonl`` file; ``None``: :mod:`logging` only (unless recording, see below).
    control
        The supervisor's ``control`` endpoint: while it reports a recording, firings go to
        that session's ``events.jsonl`` (asked at most once a second, after the action,
        and never waited for but by the first firing).
    keys
        CURVE keys when ``control`` is ``tcp://`` in a run with ``transport.keys_dir``.
    """

    def __init__(self, path: str | Path | None = None, control: str | None = None,
                 keys: security.CurveKeys | None = None) -> None:
        self.keys = keys
        self.path: Path | None = None
        if path is not None:
            p = Path(path)
            self.path = p / "events.jsonl" if p.is_dir() else p
        self.control = control
        self._session: Path | None = None
        self._asked = 0.0
        self._req: zmq.Socket[Any] | None = None  # the status request awaiting its answer
        self._waited = False
        self.written = 0

    def _ask(self, now: float) -> None:
        ctx: zmq.Context[Any] = zmq.Context.instance()
        s = ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        try:
            security.connect(s, self.control or "", self.keys)
            s.send(b'{"cmd": "status"}')
        except zmq.ZMQError as exc:
            log.warning("action log: no recording status from %s (%s)", self.control, exc)
            s.close(0)
            return
        self._req, self._asked = s, now

    def _take_answer(self) -> None:
        """Read the pending status answer if it has come (never waits)."""
        req = self._req
        if req is None or not req.poll(0):
            return
        self._req = None
        try:
            reply = json.loads(req.recv())
            rec = isinstance(reply, dict) and reply.get("recording") and reply.get("session")
            self._session = Path(reply["session"]) / "events.jsonl" if rec else None
        except (zmq.ZMQError, ValueError) as exc:
            log.warning("action log: unreadable recording status from %s (%s)",
                        self.control, exc)
        finally:
            req.close(0)

    def _session_log(self) -> Path | None:
        """The recording session's ``events.jsonl`` (``None``: not recording, or unknown).

        The supervisor is asked at most once a second and never waited for, except by the
        first firing (up to :data:`FIRST_ANSWER_S`): an answer that comes late keeps the
        last known session, so a busy supervisor never sends firings out of the session it
        is recording; one that does not come within :data:`STATUS_LOST_S` forgets it."""
        if self.control is None:
            return None
        if not self._waited:  # the first firing: ask now (a run may start recording after
            self._waited = True  # this log was made) and wait a little for the answer
            self._ask(time.monotonic())
            if self._req is not None:
                self._req.poll(int(FIRST_ANSWER_S * 1000))
        self._take_answer()
        now = time.monotonic()
        if self._req is not None and now - self._asked > STATUS_LOST_S:
            log.warning("action log: no recording status from %s in %.0f s", self.control,
                        STATUS_LOST_S)
            self._req.close(0)
            self._req, self._session = None, None
        if self._req is None and now - self._asked >= 1.0:
            self._ask(now)
        return self._session

    def write(self, event: ActionEvent) -> None:
        """Append one firing (never raises: a full disk must not stop the loop)."""
        rec = {"t_ns": time.time_ns(), "source": "closedloop", "kind": "action",
               **event.record()}
        log.info("action %s", rec)
        target = self._session_log() or self.path
        if target is None:
            return
        try:
            with open(target, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")  # one write per line: safe with O_APPEND
            self.written += 1
        except OSError as exc:
            log.error("cannot write the action log %s: %s", target, exc)
