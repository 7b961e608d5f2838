"""The trigger box's clock mapped to host time, from ping round trips.

The host sends ``PING`` at ``t_send`` and reads ``PONG <board_us>`` at ``t_recv``. The board
stamped its reply somewhere in between, so ``host ≈ (t_send + t_recv) / 2`` with an error of
at most half the round trip. USB-serial adapters hold device→host bytes for up to their
latency timer (16 ms by default on FTDI chips), so most round trips are long and lopsided;
some are not. Like NTP, the fit uses only the shortest round trips of a sliding window
(their midpoints are the least biased), least squares for offset and drift, and states its
uncertainty: half the shortest round trip used, plus the fit's residual spread. The drift
is fitted once the pings span a few seconds; before that the board's nominal rate is used. Pulse times
are the board's own stamps mapped through this fit — the serial latency of the *report*
never enters them.

Everything is relative to the first sample, in float64, so epoch nanoseconds do not lose
precision.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

#: pings kept (at 10 Hz: 25 s, enough to see a crystal's drift of tens of ppm)
WINDOW = 256
#: share of the shortest round trips the fit uses
BEST_SHARE = 0.25
#: samples needed before :meth:`BoardClock.to_host` answers
MIN_SAMPLES = 8
#: the drift is fitted only over at least this span of board time (s); before, the board's
#: nominal rate is assumed (a crystal is good to ~50 ppm: 50 µs over a second)
DRIFT_SPAN_S = 5.0


@dataclass
class BoardClock:
    """Offset + drift of the board's µs clock against host ns (see the module docstring)."""

    window: int = WINDOW
    _samples: deque[tuple[int, int, int]] = field(default_factory=lambda: deque(maxlen=WINDOW))
    _origin: tuple[int, int] | None = None
    _fit: tuple[float, float, float] | None = None  # intercept ns, ns per µs, sigma ns

    def add(self, t_send_ns: int, board_us: int, t_recv_ns: int) -> None:
        """One ping: host send time, the board's stamp, host receive time."""
        rtt = t_recv_ns - t_send_ns
        if rtt < 0:
            return
        mid = t_send_ns + rtt // 2
        if self._origin is None:
            self._origin = (board_us, mid)
        self._samples.append((board_us, mid, rtt))
        self._fit = None

    @property
    def ready(self) -> bool:
        """Enough pings for a fit."""
        return len(self._samples) >= MIN_SAMPLES

    def _solve(self) -> tuple[float, float, float]:
        assert self._origin is not None
        b0, h0 = self._origin
        a = np.array(self._samples, dtype=np.float64)
        order = np.argsort(a[:, 2])
        best = a[order[: max(MIN_SAMPLES // 2, int(len(a) * BEST_SHARE))]]
        x = best[:, 0] - b0
        y = best[:, 1] - h0
        if np.ptp(x) >= DRIFT_SPAN_S * 1e6:
            slope, icpt = np.polyfit(x, y, 1)
        else:  # too short a span to tell drift from round-trip noise: nominal rate
            slope, icpt = 1000.0, float(np.median(y - 1000.0 * x))
        resid = y - (icpt + slope * x)
        sigma = float(best[:, 2].min()) / 2.0 + float(np.std(resid))
        return float(icpt), float(slope), sigma

    def to_host(self, board_us: int) -> tuple[int, int]:
        """``(host ns, uncertainty ns)`` of a board time; raises ``RuntimeError`` before
        :attr:`ready`."""
        if not self.ready or self._origin is None:
            raise RuntimeError("board clock: not enough pings yet")
        if self._fit is None:
            self._fit = self._solve()
        icpt, slope, sigma = self._fit
        b0, h0 = self._origin
        return h0 + round(icpt + slope * (board_us - b0)), round(sigma)

    @property
    def drift_ppm(self) -> float | None:
        """The board clock's rate error against the host's, in ppm (``None``: no fit)."""
        if not self.ready:
            return None
        if self._fit is None:
            self._fit = self._solve()
        return (self._fit[1] / 1000.0 - 1.0) * 1e6
