"""An emulator of the trigger box's serial protocol (``firmware/triggerbox/triggerbox.ino``)
on a pseudo-terminal, for the driver's tests: the driver opens the pty's device path with
pyserial exactly as it would open ``/dev/ttyACM0``. A physical trigger line cannot exist
here; this is its stand-in."""

from __future__ import annotations

import os
import random
import select
import threading
import time


class FirmwareEmulator(threading.Thread):
    """The protocol of ``firmware/triggerbox/triggerbox.ino`` (protocol 2 unless ``ident``
    says 1) on a pty. The board clock runs ``drift_ppm`` fast from an arbitrary origin, and
    every line to the host is held back a random 0–``latency_ms`` like an FTDI adapter's
    latency timer, so only the fit's shortest round trips are honest. A physical pulse line
    cannot exist here: pulses are emulated from time, and ``truth`` records each one's true
    host time."""

    def __init__(self, fd: int, ident: str = "LIVEPOSE-TRIGGERBOX 2", drift_ppm: float = 80.0,
                 latency_ms: float = 16.0, seed: int = 0) -> None:
        super().__init__(daemon=True)
        self.fd, self.id_reply = fd, ident
        self.v2 = ident.endswith(" 2")
        self.rate, self.width, self.count = 30.0, 100, 0
        self.t0: float | None = None  # host monotonic of pulse 0
        self.stopped_at: int | None = None
        self.commands: list[str] = []
        self.truth: dict[int, int] = {}  # pulse → true host time (time.time_ns())
        self.watchdog_ms = 0
        self.watchdog_fired = False
        self.last_line = time.monotonic()
        self.drift = drift_ppm * 1e-6
        self.latency_s = latency_ms / 1000.0
        self.rng = random.Random(seed)
        self._epoch = (time.monotonic(), time.time_ns())
        self._board0 = 123_456_789
        self._out: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()
        self._reported = 0
        self._halt = threading.Event()

    def board_us(self, mono: float | None = None) -> int:
        mono = time.monotonic() if mono is None else mono
        return self._board0 + int((mono - self._epoch[0]) * (1.0 + self.drift) * 1e6)

    def host_ns(self, mono: float) -> int:
        return self._epoch[1] + round((mono - self._epoch[0]) * 1e9)

    def pulses(self) -> tuple[int, bool]:
        if self.t0 is None:
            return (self.stopped_at or 0), False
        n = int((time.monotonic() - self.t0) * self.rate) + 1
        if self.count and n >= self.count:
            return self.count, False
        return n, True

    def send(self, line: str) -> None:
        hold = self.rng.uniform(0.0, self.latency_s) if self.v2 else 0.0
        with self._lock:  # held, but in order (a serial line never reorders bytes)
            due = max(time.monotonic() + hold, self._out[-1][0] if self._out else 0.0)
            self._out.append((due, (line + "\n").encode()))

    def handle(self, line: str) -> str:
        self.commands.append(line)
        self.last_line = time.monotonic()
        cmd, _, arg = line.partition(" ")
        if cmd == "ID?":
            return self.id_reply
        if cmd == "RATE":
            r = float(arg)
            if not 0.1 <= r <= 10000:
                return "ERR rate out of range or running"
            self.rate = r
            return f"OK RATE {r:.3f} {round(1e6 / r)}" if self.v2 else f"OK RATE {r:.3f}"
        if cmd == "WIDTH":
            self.width = int(arg)
            return f"OK WIDTH {self.width}"
        if cmd == "COUNT":
            self.count = int(arg)
            return f"OK COUNT {self.count}"
        if cmd == "WATCHDOG" and self.v2:
            self.watchdog_ms = int(arg)
            return f"OK WATCHDOG {self.watchdog_ms}"
        if cmd == "REPORT" and self.v2:
            return f"OK REPORT {int(arg)}"
        if cmd == "PING" and self.v2:
            return f"PONG {self.board_us()}"
        if cmd == "START":
            if self.width >= 1e6 / self.rate:
                return "ERR width must be shorter than the period"
            self.t0 = time.monotonic()
            self._reported = 0
            return f"OK START {self.board_us(self.t0)}" if self.v2 else "OK START"
        if cmd == "STOP":
            n, _ = self.pulses()
            self.t0, self.stopped_at = None, n
            return f"OK STOP {n}"
        if cmd == "PULSES?":
            n, running = self.pulses()
            return f"PULSES {n} {int(running)}"
        return "ERR unknown command"

    def _tick(self) -> None:
        """Pulse events due, the watchdog, and held lines whose time came."""
        if self.t0 is not None:
            n, _ = self.pulses()
            while self._reported < n:
                k = self._reported
                mono = self.t0 + k / self.rate
                self.truth[k] = self.host_ns(mono)
                if self.v2:
                    self.send(f"P {k} {self.board_us(mono)}")
                self._reported += 1
            if self.watchdog_ms and time.monotonic() - self.last_line > self.watchdog_ms / 1000:
                self.stopped_at, self.t0 = n, None
                self.watchdog_fired = True
                self.send(f"W {n}")
        now = time.monotonic()
        with self._lock:
            due = [b for t, b in self._out if t <= now]
            self._out = [(t, b) for t, b in self._out if t > now]
        for b in due:
            os.write(self.fd, b)

    def run(self) -> None:
        buf = b""
        while not self._halt.is_set():
            self._tick()
            if not select.select([self.fd], [], [], 0.001)[0]:
                continue
            try:
                chunk = os.read(self.fd, 256)
            except OSError:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                self.send(self.handle(line.decode().strip()))

    def halt(self) -> None:
        """Stop the emulator and wait for its thread, so the caller may close the pty."""
        self._halt.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(2.0)
