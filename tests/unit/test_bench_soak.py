"""The soak report: slopes after the warm-up, totals and the final accounting."""

from __future__ import annotations

from livepose.bench.soak import WARMUP_S, _report, _slope_per_hour


def _sample(t: float, rss: int, fds: int) -> dict[str, object]:
    return {"t_s": t, "rss_kb": {"fusion": rss}, "fds": {"fusion": fds}, "rings": 4,
            "run_dir_kb": 10, "fused": int(t), "skipped": 0, "incomplete": 0,
            "triggered": int(t), "dropped": 0, "rejected": 0}


def test_slope_ignores_the_warm_up_and_scales_to_hours() -> None:
    t = [0.0, 60.0, WARMUP_S, WARMUP_S + 60, WARMUP_S + 120, WARMUP_S + 180]
    v = [0.0, 5000.0, 100.0, 110.0, 120.0, 130.0]  # warm-up jump, then +10 per minute
    assert abs((_slope_per_hour(t, v) or 0.0) - 600.0) < 1e-6
    assert _slope_per_hour(t[:4], v[:4]) is None  # fewer than 3 points after the warm-up


def test_report_flat_leak_and_final_accounting() -> None:
    ts = [WARMUP_S + 60.0 * k for k in range(6)]
    flat = [_sample(t, 50_000, 30) for t in ts]
    leak = [_sample(t, 50_000 + 100 * k, 30 + k) for k, t in enumerate(ts)]
    running = _report(1.0, 60.0, 30.0, flat, None)
    assert running["complete"] is False
    assert abs(running["slopes"]["rss_kb_per_h"]["fusion"]) < 1e-6
    assert running["totals"]["fused"] == int(ts[-1])
    end = {"triggered": 10, "unaccounted": 0, "accounting_ok": True}
    done = _report(1.0, 60.0, 30.0, leak, end)
    assert done["complete"] is True and done["totals"]["unaccounted"] == 0
    assert done["totals"]["triggered"] == 10  # the final accounting wins over the last sample
    assert abs(done["slopes"]["rss_kb_per_h"]["fusion"] - 6000.0) < 1e-6
    assert abs(done["slopes"]["fds_per_h"]["fusion"] - 60.0) < 1e-6
