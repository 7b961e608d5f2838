"""Device → host clock fit, cross-camera desync flags, GigE block-id unwrapping, and the
camera loop's accounting of failed buffers and reconnects (no SDK needed)."""

from __future__ import annotations

import numpy as np

from livepose.acquisition.clock import ClockFit
from livepose.core.sync import DesyncTracker, frame_time_ns


def test_clock_fit_recovers_offset_and_drift_under_jitter() -> None:
    rng = np.random.default_rng(0)
    host0 = 1_700_000_000_000_000_000  # epoch ns: beyond float64's exact integers
    drift = 40e-6  # the device clock runs 40 ppm slow
    fit = ClockFit()
    period = 10_000_000
    latency = 300_000  # 0.3 ms minimum exposure→host
    for k in range(2000):
        dev = 5_000_000_000 + k * period
        true_host = host0 + round(k * period * (1 + drift))
        fit.add(dev, true_host + latency + int(rng.exponential(200_000)))
    assert abs(fit.drift_ppm - 40) < 2
    dev = 5_000_000_000 + 2500 * period
    expect = host0 + round(2500 * period * (1 + drift)) + latency
    assert abs(fit.to_host(dev) - expect) < 50_000  # within 50 µs of exposure + min latency
    assert fit.jitter_ns() > 0


def test_clock_fit_needs_samples() -> None:
    fit = ClockFit(min_samples=3)
    fit.add(0, 10)
    assert fit.to_host(5) is None


def test_desync_flags_spread_above_tolerance() -> None:
    d = DesyncTracker(["a", "b", "c"], tolerance_ms=2.0)
    assert d.add("a", 0, 1_000_000) is None
    assert d.add("b", 0, 1_500_000) is None
    assert d.add("c", 0, 2_900_000) is False  # 1.9 ms
    d.add("a", 1, 0)
    d.add("b", 1, 0)
    assert d.add("c", 1, 2_100_000) is True
    assert d.counters == {"sets": 2, "desync": 1}
    assert d.max_spread_ns == 2_100_000
    assert frame_time_ns(None, 7) == 7 and frame_time_ns(5, 7) == 5


def test_desync_drops_old_incomplete_sets() -> None:
    d = DesyncTracker(["a", "b"], tolerance_ms=1.0, max_pending=3)
    for k in range(5):
        d.add("a", k, 0)
    assert d.counters["incomplete"] == 2


def test_gige_block_ids_unwrap_past_65535() -> None:
    from livepose.acquisition.pylon import BlockIdUnwrapper

    u = BlockIdUnwrapper()
    ids = [*range(65530, 65536), *range(1, 5)]
    out = [u(b) for b in ids]
    assert out == list(range(65529, 65539))  # 65535 → 1 is one step, 0 never used
    assert u(7) == 65541  # a gap of two stays a gap
