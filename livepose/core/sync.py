"""Cross-camera synchrony of one ``frame_id``: the ``desync`` check.

Every camera's frame of one ``frame_id`` should show the same instant. Any consumer that
collects a frame-set (the inference assembler, a recorder, ``livepose bench acquisition``)
feeds each frame's best timestamp here — ``t_exposure_ns`` when the camera has a device
clock, else ``t_grab_ns`` — and learns whether the spread of the set exceeds
``desync_tolerance_ms``. Core module: any stage may use it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field


def frame_time_ns(t_exposure_ns: int | None, t_grab_ns: int) -> int:
    """The timestamp a frame is compared on: exposure if known, else grab."""
    return t_exposure_ns if t_exposure_ns is not None else t_grab_ns


@dataclass
class SpreadCheck:
    """The desync verdict of one frame-set: spread of its timestamps against a tolerance.

    Attributes
    ----------
    tolerance_ns
        ``desync_tolerance_ms`` in ns; ``None``: never desync (spread still tracked).
    max_spread_ns
        Largest spread checked so far.
    """

    tolerance_ns: int | None
    max_spread_ns: int = 0

    @classmethod
    def from_ms(cls, tolerance_ms: float | None) -> SpreadCheck:
        """From ``desync_tolerance_ms`` (``None``: no tolerance)."""
        return cls(None if tolerance_ms is None else int(tolerance_ms * 1e6))

    def check(self, times_ns: Iterable[int]) -> tuple[int, bool]:
        """``(spread_ns, desync)`` of one set's timestamps (at least one)."""
        ts = list(times_ns)
        spread = max(ts) - min(ts)
        self.max_spread_ns = max(self.max_spread_ns, spread)
        return spread, self.tolerance_ns is not None and spread > self.tolerance_ns


@dataclass
class DesyncTracker:
    """Collect per-camera timestamps by ``frame_id`` and flag spread above a tolerance.

    Parameters
    ----------
    cameras
        Camera names of a full set.
    tolerance_ms
        ``desync_tolerance_ms`` from the config.
    max_pending
        Incomplete sets kept at most (the oldest are dropped and counted ``incomplete``).

    Attributes
    ----------
    counters
        ``sets``, ``desync``, ``incomplete``.
    """

    cameras: list[str]
    tolerance_ms: float
    max_pending: int = 1000
    counters: Counter[str] = field(default_factory=Counter)
    spreads_ns: list[int] = field(default_factory=list)
    _pending: dict[int, dict[str, int]] = field(default_factory=dict)
    _check: SpreadCheck = field(init=False)

    def __post_init__(self) -> None:
        self._check = SpreadCheck.from_ms(self.tolerance_ms)

    @property
    def max_spread_ns(self) -> int:
        """Largest spread seen over complete sets."""
        return self._check.max_spread_ns

    def add(self, cam: str, frame_id: int, t_ns: int) -> bool | None:
        """Record one frame. Returns ``None`` until the set is complete, then its desync flag."""
        got = self._pending.setdefault(frame_id, {})
        got[cam] = t_ns
        if len(got) < len(self.cameras):
            if len(self._pending) > self.max_pending:
                oldest = min(self._pending)
                del self._pending[oldest]
                self.counters["incomplete"] += 1
            return None
        del self._pending[frame_id]
        spread, desync = self._check.check(got.values())
        self.spreads_ns.append(spread)
        self.counters["sets"] += 1
        if desync:
            self.counters["desync"] += 1
        return desync
