"""The serial trigger box: driver for ``firmware/triggerbox/triggerbox.ino`` (pyserial).

With ``trigger.source: serial`` the trigger process drives the box instead of publishing
software pulses: the cameras are hardware-triggered from the box's pin, the box counts the
pulses it sent, and the process publishes that count in ``health`` (``pulses``) so every
triggered frame-set can be accounted for. The line protocol is documented in the sketch
and in docs/acquisition.md; every command gets exactly one reply line.
"""

from __future__ import annotations

import time
from typing import Any

from livepose.core.errors import UserError
from livepose.kit.process import StageContext

IDENT = "LIVEPOSE-TRIGGERBOX"


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
        self.identify(identify_wait_s)

    def _fail(self, why: str) -> UserError:
        return UserError(f"trigger.port: trigger box on {self.port}: {why}")

    def command(self, line: str) -> str:
        """Send one command line; return its reply (``UserError`` on ``ERR`` or silence)."""
        self._ser.write((line + "\n").encode("ascii"))
        self._ser.flush()
        reply = self._ser.readline().decode("ascii", "replace").strip()
        if not reply:
            raise self._fail(f"no reply to {line!r} within {self.timeout_s:g} s")
        if reply.startswith("ERR"):
            raise self._fail(f"{line!r} refused: {reply[3:].strip()}")
        return str(reply)

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

    def configure(self, rate_hz: float, width_us: int, count: int | None) -> None:
        """Set rate, pulse width and count (``None``/0: until stopped)."""
        self.command(f"RATE {rate_hz:.6g}")
        self.command(f"WIDTH {int(width_us)}")
        self.command(f"COUNT {int(count or 0)}")

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


def run_serial_trigger(ctx: StageContext, poll_s: float = 0.1) -> None:
    """The trigger process with a trigger box: configure, start once every camera is armed
    (the supervisor starts this process last), publish the box's pulse count, stop."""
    t = ctx.cfg.trigger
    assert t.port is not None  # the config model requires it for source=serial
    count = ctx.args.get("count")
    box = TriggerBox(t.port, t.baud, t.timeout_s)
    try:
        box.configure(ctx.cfg.fps, t.pulse_width_us, count)
        ctx.ready(fps=ctx.cfg.fps, port=t.port)
        ctx.set_state("running")
        box.start()
        pulses, running = 0, True
        while not ctx.stopping and running:
            time.sleep(poll_s)
            pulses, running = box.status()
            ctx.counters["pulses"] = pulses
            ctx.tick_health()
        pulses = box.stop()
        ctx.counters["pulses"] = pulses
        ctx.info["pulses_total"] = pulses
        ctx.set_state("done")
        while not ctx.stopping:
            time.sleep(0.05)
            ctx.tick_health()
    finally:
        box.close()
