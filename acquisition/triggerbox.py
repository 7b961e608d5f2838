"""The serial trigger box: driver for ``firmware/triggerbox/triggerbox.ino`` (pyserial).

With ``trigger.source: serial`` the trigger process drives the box instead of publishing
software pulses: the cameras are hardware-triggered from the box's pin. The box (protocol 2)
reports the board time of every pulse; the process maps it to host time through a clock fit
from ping round trips (:mod:`livepose.acquisition.boardclock`: the USB-serial latency never
enters a pulse time) and publishes each pulse as a ``trigger`` message with its uncertainty,
so a hardware-triggered run has the same latency accounting as a software one. It also
publishes the box's pulse count in ``health`` (``pulses``) so every triggered frame-set can
be accounted for. The box is told ``STOP`` whenever the process ends (``finally``), and its
watchdog stops the pulses if the host goes silent. The line protocol is documented in the
sketch and in docs/acquisition.md; every command gets exactly one reply line, and lines
starting with ``P `` or ``W `` are events in between.
"""

from __future__ import annotations

import logging
import select
import time
from collections import deque
from typing import Any

import zmq

from livepose.acquisition.boardclock import BoardClock
from livepose.core import protocol
from livepose.core.errors import UserError
from livepose.kit.process import StageContext

log = logging.getLogger(__name__)

IDENT = "LIVEPOSE-TRIGGERBOX"
#: the box stops pulsing when no line came from the host for this long
WATCHDOG_MS = 1000
#: pings before the first pulse (the clock fit needs a few short round trips)
PRIME_PINGS = 24


class TriggerBox:
    """A connected trigger box.

    Parameters
    ----------
    port
        Serial device (``/dev/ttyACM0``, ``COM3``…).
    baud
        Baud rate (the sketch uses 115200).
    timeout_s
        How long to wait for each reply.
    identify_wait_s
        How long to retry the first ``ID?`` (an Arduino resets when its port opens).
    """

    def __init__(
        self, port: str, baud: int = 115200, timeout_s: float = 2.0, identify_wait_s: float = 3.0
    ) -> None:
        self.port = port
        self.timeout_s = timeout_s
        try:
            import serial
        except ImportError:
            raise UserError(
                "trigger.source=serial needs pyserial: pip install 'livepose[triggerbox]'"
            ) from None
        try:
            self._ser: Any = serial.Serial(port, baud, timeout=timeout_s)
        except (serial.SerialException, OSError) as exc:
            raise UserError(f"trigger.port: cannot open {port} ({exc})") from None
        #: pulse events ``(k, board_us)`` read between replies
        self.events: deque[tuple[int, int]] = deque(maxlen=100_000)
        self.watchdog_fired = False
        self.clock = BoardClock()
        reply = self.identify(identify_wait_s)
        tail = reply.split()[-1]
        self.version = int(tail) if tail.isdigit() else 1

    def _fail(self, why: str) -> UserError:
        return UserError(f"trigger.port: trigger box on {self.port}: {why}")

    def command(self, line: str) -> str:
        """Send one command line; return its reply (``UserError`` on ``ERR`` or silence).
        Event lines that arrive first are kept (:attr:`events`)."""
        self._ser.write((line + "\n").encode("ascii"))
        self._ser.flush()
        while True:
            reply = self._ser.readline().decode("ascii", "replace").strip()
            if not self._event(reply):
                break
        if not reply:
            raise self._fail(f"no reply to {line!r} within {self.timeout_s:g} s")
        if reply.startswith("ERR"):
            raise self._fail(f"{line!r} refused: {reply[3:].strip()}")
        return str(reply)

    def _event(self, line: str) -> bool:
        """Take an event line (``P k t_us``, ``W pulses``); False for anything else."""
        parts = line.split()
        if len(parts) == 3 and parts[0] == "P" and parts[1].isdigit() and parts[2].isdigit():
            self.events.append((int(parts[1]), int(parts[2])))
            return True
        if len(parts) == 2 and parts[0] == "W":
            self.watchdog_fired = True
            return True
        return False

    def wait_readable(self, timeout_s: float) -> None:
        """Sleep until the box has sent something or ``timeout_s`` passed."""
        if self._ser.in_waiting:
            return
        try:
            select.select([self._ser.fileno()], [], [], max(0.0, timeout_s))
        except (AttributeError, OSError, ValueError):  # no file descriptor (another OS)
            time.sleep(max(0.0, timeout_s))

    def poll_events(self) -> None:
        """Read the event lines already waiting, without blocking."""
        while self._ser.in_waiting:
            line = self._ser.readline().decode("ascii", "replace").strip()
            if line and not self._event(line):
                log.warning("trigger box: unexpected line %r", line)

    def ping(self) -> None:
        """One round trip for the clock fit (protocol 2)."""
        t_send = time.time_ns()
        reply = self.command("PING").split()
        t_recv = time.time_ns()
        if len(reply) != 2 or reply[0] != "PONG" or not reply[1].isdigit():
            raise self._fail(f"bad PING reply {' '.join(reply)!r}")
        self.clock.add(t_send, int(reply[1]), t_recv)

    def identify(self, wait_s: float = 3.0) -> str:
        """Check that a trigger box answers, retrying for ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                reply = self.command("ID?")
                if reply.startswith(IDENT):
                    return reply
                why = f"unexpected reply {reply!r} (not a livepose trigger box?)"
            except UserError as exc:
                why = str(exc)
            if time.monotonic() > deadline:
                self.close()
                raise UserError(why) if why.startswith("trigger.port") else self._fail(why)
            self._ser.reset_input_buffer()

    def configure(self, rate_hz: float, width_us: int, count: int | None,
                  watchdog_ms: int = 0) -> None:
        """Set rate, pulse width, count (``None``/0: until stopped) and, on a protocol-2 box,
        the watchdog (0: off) with pulse reports on."""
        self.command(f"RATE {rate_hz:.6g}")
        self.command(f"WIDTH {int(width_us)}")
        self.command(f"COUNT {int(count or 0)}")
        if self.version >= 2:
            self.command(f"WATCHDOG {int(watchdog_ms)}")
            self.command("REPORT 1")

    def start(self) -> None:
        """Start pulsing (the pulse counter restarts at 0)."""
        self.command("START")

    def status(self) -> tuple[int, bool]:
        """``(pulses sent, running)``."""
        reply = self.command("PULSES?").split()
        if len(reply) != 3 or reply[0] != "PULSES":
            raise self._fail(f"bad status reply {' '.join(reply)!r}")
        return int(reply[1]), reply[2] == "1"

    def stop(self) -> int:
        """Stop pulsing; return the pulses sent."""
        reply = self.command("STOP").split()
        return int(reply[-1])

    def close(self) -> None:
        """Close the port (idempotent)."""
        if self._ser is not None and self._ser.is_open:
            self._ser.close()


def _publish_pulses(box: TriggerBox, pub: zmq.Socket[Any] | None, ctx: StageContext) -> None:
    """Each reported pulse → a ``trigger`` message with its host time and uncertainty."""
    while box.events and box.clock.ready:
        k, board_us = box.events.popleft()
        t_ns, sigma_ns = box.clock.to_host(board_us)
        ctx.counters["pulses_reported"] += 1
        ctx.rates["trigger_sigma_us"] = sigma_ns / 1000.0
        if pub is not None:
            pub.send_multipart(protocol.encode(protocol.Trigger(
                frame_id=k, t_trigger_ns=t_ns, t_trigger_sigma_ns=sigma_ns)))


def run_serial_trigger(ctx: StageContext, poll_s: float = 0.1,
                       pub: zmq.Socket[Any] | None = None) -> None:
    """The trigger process with a trigger box: configure, prime the clock fit, start once
    every camera is armed (the supervisor starts this process last), publish each pulse's
    time and the box's pulse count, keep the watchdog fed, and stop the box on the way out,
    whatever happens. ``pub``: where the pulses' ``trigger`` messages go (the trigger
    process's socket; ``None``: health counters only)."""
    t = ctx.cfg.trigger
    assert t.port is not None  # the config model requires it for source=serial
    count = ctx.args.get("count")
    box = TriggerBox(t.port, t.baud, t.timeout_s)
    try:
        box.configure(ctx.cfg.fps, t.pulse_width_us, count, WATCHDOG_MS)
        timing = box.version >= 2
        if timing:
            for _ in range(PRIME_PINGS):
                box.ping()
        else:
            ctx.error(f"trigger box on {t.port} speaks protocol {box.version}: no pulse times "
                      "(flash firmware/triggerbox for latency accounting and a watchdog)")
        ctx.ready(fps=ctx.cfg.fps, port=t.port, pulse_times=timing)
        ctx.set_state("running")
        box.start()
        pulses, running = 0, True
        next_poll = time.monotonic() + poll_s
        while not ctx.stopping and running:
            if timing:  # forward each pulse as soon as the box reports it
                box.wait_readable(next_poll - time.monotonic())
                box.poll_events()
                _publish_pulses(box, pub, ctx)
            else:
                time.sleep(max(0.0, next_poll - time.monotonic()))
            if time.monotonic() < next_poll:
                continue
            next_poll += poll_s
            if timing:
                box.ping()  # feeds the clock fit and the box's watchdog
                drift = box.clock.drift_ppm
                if drift is not None:
                    ctx.rates["board_drift_ppm"] = drift
            pulses, running = box.status()
            ctx.counters["pulses"] = pulses
            ctx.tick_health()
        pulses = box.stop()
        if timing:
            box.poll_events()
            _publish_pulses(box, pub, ctx)
        ctx.counters["pulses"] = pulses
        ctx.info["pulses_total"] = pulses
        ctx.set_state("done")
        while not ctx.stopping:
            time.sleep(0.05)
            ctx.tick_health()
    finally:
        try:  # the box must never pulse on without us
            box.stop()
        except Exception as exc:  # the port may be gone: say so, never mask the cause
            log.warning("trigger box: STOP on the way out failed (%s)", exc)
        box.close()
