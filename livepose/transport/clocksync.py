"""Clock offset between two hosts from a ZeroMQ ping exchange (NTP's four timestamps, min-RTT).

The server (:class:`ClockServer`, a ROUTER in a thread of the supervisor) answers each ping
with its ``time.time_ns()``. A client on another host (:func:`measure`) sends ``rounds``
pings; for each it knows its send and receive times ``t0``, ``t1`` and the server's time
``ts``: the server's clock minus its own is ``ts - (t0 + t1) / 2``, wrong by at most half the
round trip (the reply's time is somewhere inside it). The sample with the smallest round
trip is kept: its uncertainty is ``rtt_min / 2``. On a LAN this is tens to hundreds of µs;
PTP (or chrony) keeps the clocks themselves that close; this exchange checks it.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import zmq

from livepose.transport import security

_FMT = "<q"


@dataclass(frozen=True)
class ClockOffset:
    """The server's clock minus this host's (ns), and how sure we are of it."""

    offset_ns: int
    rtt_ns: int  # the smallest round trip
    uncertainty_ns: int  # rtt_ns / 2: |true offset - offset_ns| is at most this
    rounds: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def worst_ms(self) -> float:
        """|offset| plus its uncertainty, in ms (what a tolerance is checked against)."""
        return (abs(self.offset_ns) + self.uncertainty_ns) / 1e6


class ClockServer:
    """Answers pings with this host's ``time.time_ns()`` (a daemon thread, own socket)."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str,
                 keys: security.CurveKeys | None = None) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.endpoint = security.bind(self.sock, endpoint, keys)
        self._stop = threading.Event()
        self.answered = 0
        self.malformed = 0
        self._thread = threading.Thread(target=self._loop, name="clock-server", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(100):
                continue
            parts = self.sock.recv_multipart()
            now = time.time_ns()
            if len(parts) != 2 or len(parts[1]) != 8:
                self.malformed += 1  # counted and dropped
                continue
            self.sock.send_multipart([parts[0], parts[1] + struct.pack(_FMT, now)])
            self.answered += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.sock.close(0)


def measure(endpoint: str, rounds: int = 20, keys: security.CurveKeys | None = None,
            timeout_s: float = 2.0) -> ClockOffset:
    """Ping the :class:`ClockServer` at ``endpoint`` ``rounds`` times (see the module
    docstring).

    Raises
    ------
    TimeoutError
        No answer within ``timeout_s`` for a ping.
    """
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    best: tuple[int, int] | None = None
    try:
        security.connect(sock, endpoint, keys)
        for _ in range(max(1, rounds)):
            t0 = time.time_ns()
            sock.send(struct.pack(_FMT, t0))
            if not sock.poll(round(timeout_s * 1000)):
                raise TimeoutError(f"clock server {endpoint} did not answer in {timeout_s} s")
            reply = sock.recv()
            t1 = time.time_ns()
            if len(reply) != 16 or struct.unpack(_FMT, reply[:8])[0] != t0:
                continue  # an answer to an older ping (after a timeout): not this round's
            ts = struct.unpack(_FMT, reply[8:])[0]
            rtt = t1 - t0
            if best is None or rtt < best[0]:
                best = (rtt, ts - (t0 + t1) // 2)
    finally:
        sock.close(0)
        ctx.term()
    if best is None:
        raise TimeoutError(f"clock server {endpoint}: no usable answer")
    return ClockOffset(offset_ns=best[1], rtt_ns=best[0], uncertainty_ns=best[0] // 2,
                       rounds=rounds)


_CHRONY_SYSTEM = re.compile(r"^System time\s*:\s*([0-9.]+) seconds (fast|slow)", re.M)
_CHRONY_LEAP = re.compile(r"^Leap status\s*:\s*(.+)$", re.M)
_PTP_OFFSET = re.compile(r"master_offset\s+(-?[0-9]+)")


def parse_chrony(text: str) -> dict[str, Any] | None:
    """``chronyc -n tracking`` → ``{"source": "chrony", "offset_ms", "synchronised"}`` (offset:
    this host's clock minus the NTP time it follows), ``None`` if the text says nothing."""
    m = _CHRONY_SYSTEM.search(text)
    if m is None:
        return None
    off = float(m.group(1)) * 1e3 * (1 if m.group(2) == "fast" else -1)
    leap = _CHRONY_LEAP.search(text)
    return {"source": "chrony", "offset_ms": round(off, 6),
            "synchronised": leap is not None and leap.group(1).strip() == "Normal"}


def parse_ptp(text: str) -> dict[str, Any] | None:
    """linuxptp's ``pmc -u -b 0 'GET TIME_STATUS_NP'`` → ``{"source": "ptp", "offset_ms"}``
    (the offset from the PTP master), ``None`` if the text says nothing."""
    m = _PTP_OFFSET.search(text)
    if m is None:
        return None
    return {"source": "ptp", "offset_ms": round(int(m.group(1)) / 1e6, 6), "synchronised": True}


def sync_status(timeout_s: float = 1.0) -> dict[str, Any]:
    """What keeps this host's clock: chrony's or linuxptp's own view where their tools are
    installed and answer, else ``{"source": "none"}`` (the ping exchange still checks)."""
    for tool, args, parse in (("chronyc", ["-n", "tracking"], parse_chrony),
                              ("pmc", ["-u", "-b", "0", "GET TIME_STATUS_NP"], parse_ptp)):
        exe = shutil.which(tool)
        if exe is None:
            continue
        try:
            out = subprocess.run([exe, *args], capture_output=True, text=True,
                                 timeout=timeout_s, check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        got = parse(out)
        if got is not None:
            return got
    return {"source": "none"}
