"""Device clock → host clock: an online fit of offset and drift.

A camera stamps each exposure with its own clock (ticks since power-up); the host stamps the
moment the image arrives (``time.time_ns()``). Arrival = exposure + a latency that is never
negative and mostly constant (readout, transfer) plus jitter (scheduling). The fit

    host ≈ host0 + (device − device0) · (1 + drift) + offset

is a weighted least-squares line through the pairs with exponential forgetting (so slow
temperature drift is followed), and the offset is then lowered to the *lower envelope* of the
recent residuals: late arrivals (jitter) pull a mean up, the earliest arrivals are the ones
with the least added delay. The mapped time is therefore "exposure time + the minimum
exposure-to-host latency", a constant per camera model, which cancels between identical
cameras when the spread of one ``frame_id`` is checked (``desync``).

Everything is computed relative to the first pair, in float64 seconds-scale numbers, so
nanosecond epoch values (≈ 1.7e18, beyond float64's 2**53) do not lose precision.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class ClockFit:
    """Online offset + drift fit of one camera's device clock against host time.

    Parameters
    ----------
    forget
        Exponential forgetting factor per sample (1.0: ordinary least squares).
    envelope
        Number of recent residuals whose minimum sets the offset.
    min_samples
        Pairs needed before :meth:`to_host` returns anything.
    """

    forget: float = 0.999
    envelope: int = 200
    min_samples: int = 8
    n: int = 0
    _d0: int = 0
    _h0: int = 0
    _sw: float = 0.0
    _sx: float = 0.0
    _sy: float = 0.0
    _sxx: float = 0.0
    _sxy: float = 0.0
    _recent: deque[tuple[float, float]] = field(default_factory=deque)

    def add(self, device_ns: int, host_ns: int) -> None:
        """Add one (device time, host arrival time) pair, both in ns."""
        if self.n == 0:
            self._d0, self._h0 = device_ns, host_ns
        x = (device_ns - self._d0) * 1e-9
        y = (host_ns - self._h0 - (device_ns - self._d0)) * 1e-9  # residual vs. slope 1
        f = self.forget
        self._sw = f * self._sw + 1.0
        self._sx = f * self._sx + x
        self._sy = f * self._sy + y
        self._sxx = f * self._sxx + x * x
        self._sxy = f * self._sxy + x * y
        self._recent.append((x, y))
        if len(self._recent) > self.envelope:
            self._recent.popleft()
        self.n += 1

    def _line(self) -> tuple[float, float]:
        """``(intercept, slope)`` of ``y`` against ``x`` (seconds)."""
        w = self._sw
        var = self._sxx / w - (self._sx / w) ** 2
        slope = 0.0 if var <= 1e-18 else (self._sxy / w - self._sx * self._sy / w**2) / var
        return self._sy / w - slope * self._sx / w, slope

    @property
    def drift_ppm(self) -> float:
        """Device clock rate error (host seconds per device second − 1), in ppm."""
        return self._line()[1] * 1e6 if self.n >= 2 else 0.0

    def _offset(self) -> float:
        a, b = self._line()
        return a + min(y - (a + b * x) for x, y in self._recent)

    def to_host(self, device_ns: int) -> int | None:
        """Host ``time.time_ns()`` of a device time (``None`` until ``min_samples`` pairs)."""
        if self.n < self.min_samples:
            return None
        _, b = self._line()
        x = (device_ns - self._d0) * 1e-9
        y = self._offset() + b * x
        return self._h0 + (device_ns - self._d0) + round(y * 1e9)

    def jitter_ns(self) -> float:
        """Spread (max − min) of recent residuals: the arrival jitter, in ns."""
        if self.n < 2:
            return 0.0
        a, b = self._line()
        r = [y - (a + b * x) for x, y in self._recent]
        return (max(r) - min(r)) * 1e9
