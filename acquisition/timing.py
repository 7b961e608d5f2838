"""The per-camera timing model: when was this frame exposed, and is that the instant of its
``frame_id``?

This is the one place that answers it (docs/acquisition.md, "Timing model"). Host grab
times include transfer jitter (about 11 ms for a 1.3 MB frame on GigE), so they are never
compared across cameras; each camera's frames are judged against *its own* trigger pulses:

- with a device clock (``t_exposure_ns``, mapped to host time by :class:`~livepose.
  acquisition.clock.ClockFit`: exposure + the camera's minimum latency), the lag
  ``t_exposure − t_trigger`` of a frame of pulse ``frame_id`` is never negative — an exposure
  before its own pulse belongs to an earlier pulse — and stays near its running median;
- without one, the lag ``t_grab − t_trigger`` is compared with its own running median, with
  the tolerance widened by the lag's jitter (4 σ, σ from the median absolute deviation).

A frame outside ``desync_tolerance_ms`` (plus that uncertainty) of where its pulse puts it is
*desync*: it does not show the instant of its ``frame_id`` (a camera two frames behind, a
frame placed by elapsed time after a reconnect that landed on the wrong pulse) and the
frame-set policy never fuses it. Without pulse times (a trigger box that publishes none) the
model gives no verdict; the workers' cross-camera spread check is all there is.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

#: lag samples kept for the running median
WINDOW = 256
#: samples before the running median is trusted (the physical bound applies from the start)
MIN_SAMPLES = 16
#: jitter allowance in robust standard deviations of the lag
JITTER_SIGMAS = 4.0


@dataclass
class Verdict:
    """The model's answer for one frame.

    Attributes
    ----------
    residual_ns
        Lag minus the camera's usual lag (``None`` without a pulse time).
    desync
        The frame is not of its pulse's instant.
    """

    residual_ns: int | None
    desync: bool


@dataclass
class TimingModel:
    """One camera's trigger→frame lag and the desync verdict (see the module docstring).

    Parameters
    ----------
    tolerance_ns
        ``desync_tolerance_ms`` in ns.

    Attributes
    ----------
    desync_frames
        Frames judged desync so far.
    """

    tolerance_ns: int
    desync_frames: int = 0
    _lags: deque[int] = field(default_factory=lambda: deque(maxlen=WINDOW))
    _device: bool | None = None

    def observe(self, t_trigger_ns: int | None, t_exposure_ns: int | None,
                t_grab_ns: int) -> Verdict:
        """Judge one frame numbered to the pulse at ``t_trigger_ns``."""
        if t_trigger_ns is None:
            return Verdict(None, False)
        device = t_exposure_ns is not None
        if self._device is not None and device != self._device:
            self._lags.clear()  # the camera's clock came or went: start the statistics again
        self._device = device
        lag = (t_exposure_ns if t_exposure_ns is not None else t_grab_ns) - t_trigger_ns
        med, sigma = self.usual()
        residual = lag - med if med is not None else lag
        bad = device and lag < -self.tolerance_ns  # exposed before its own pulse
        if med is not None:
            bad = bad or abs(residual) > self.tolerance_ns + JITTER_SIGMAS * sigma
        if bad:
            self.desync_frames += 1
        else:
            self._lags.append(lag)
        return Verdict(int(residual), bool(bad))

    def usual(self) -> tuple[int | None, float]:
        """The running median lag (ns; ``None`` before :data:`MIN_SAMPLES`) and the lag's
        robust standard deviation (ns)."""
        if len(self._lags) < MIN_SAMPLES:
            return None, 0.0
        a = np.fromiter(self._lags, dtype=np.int64)
        med = int(np.median(a))
        return med, float(1.4826 * np.median(np.abs(a - med)))
