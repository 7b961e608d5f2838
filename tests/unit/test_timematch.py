"""Matching free-running frames to trigger pulses by timestamp (``acquisition/timematch.py``),
on synthetic timestamp streams whose right answer is known: a hand-worked case, and streams
with jitter, drift, drops, duplicates, a slower and a faster camera, and late delivery, each
compared with a brute-force offline nearest-pulse matching. The streams are replayed the way
the camera loop feeds the matcher: pulses are drained when a frame arrives or a deadline
passes, and ``poll`` is called then."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest

from livepose.acquisition.timematch import Match, TimeMatcher

MS = 1_000_000


@dataclass
class Replay:
    """What the matcher released, and when."""

    matches: list[Match[int]] = field(default_factory=list)
    released_at: list[int] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)
    max_waiting: int = 0


def replay(
    m: TimeMatcher[int],
    pulses: list[tuple[int, int]],
    frames: list[int],
    pulse_delay: list[int] | None = None,
    frame_delay: list[int] | None = None,
) -> Replay:
    """Feed ``pulses`` ``(id, t)`` and frame times like the camera loop does.

    A pulse reaches the process at ``t + pulse_delay``, a frame at ``t + frame_delay``; the
    loop wakes at each frame arrival, at each pulse arrival while a frame waits (it listens
    in short slices then) or at the matcher's deadline, drains the pulses that have
    arrived, adds the frame and polls. The item of frame ``i`` is ``i``.
    """
    pd = pulse_delay or [0] * len(pulses)
    fd = frame_delay or [0] * len(frames)
    p_arr = sorted((t + d, k, t) for (k, t), d in zip(pulses, pd, strict=True))
    f_arr, last = [], 0  # a camera delivers its frames in order
    for i, (t, d) in enumerate(zip(frames, fd, strict=True)):
        last = max(last, t + d)
        f_arr.append((last, i, t))
    out = Replay()
    pi = fi = 0
    last_now, stuck = -1, 0
    while fi < len(f_arr) or m.waiting:
        deadline = m.next_deadline_ns()
        nxt = f_arr[fi][0] if fi < len(f_arr) else None
        if nxt is None and deadline is None:
            break
        pulse = p_arr[pi][0] if m.waiting and pi < len(p_arr) else None
        now = min(x for x in (nxt, deadline, pulse) if x is not None)
        stuck = stuck + 1 if now <= last_now else 0
        assert stuck < 3, "the deadline does not move: the camera loop would spin"
        last_now = now
        while pi < len(p_arr) and p_arr[pi][0] <= now:
            m.add_pulse(p_arr[pi][1], p_arr[pi][2])
            pi += 1
        if nxt is not None and nxt <= now:
            m.add_frame(f_arr[fi][2], f_arr[fi][1])
            fi += 1
        got = m.poll(now)
        out.matches += got
        out.released_at += [now] * len(got)
        out.max_waiting = max(out.max_waiting, m.waiting)
    out.matches += m.flush()
    out.counters = m.counters
    return out


def oracle(pulses: list[tuple[int, int]], frames: list[int], tol: int,
           idle: int) -> tuple[list[tuple[int, int, int]], Counter[str]]:
    """Offline answer: ``[(frame index, frame_id, error)]`` and counters. Nearest pulse
    (ties: the earlier pulse); per pulse the nearest frame (ties: the earlier frame)."""
    ids = np.array([k for k, _ in pulses])
    pt = np.array([t for _, t in pulses], dtype=np.int64)
    c: Counter[str] = Counter()
    best: dict[int, tuple[int, int, int]] = {}
    for i, t in enumerate(frames):
        d = np.abs(pt - t)
        j = int(np.argmin(d))  # first minimum: the earlier pulse on a tie
        if d[j] <= tol:
            k = int(ids[j])
            if k in best:
                c["duplicates"] += 1
                if abs(t - pt[j]) >= abs(best[k][2]):
                    continue
            best[k] = (i, k, int(t - pt[j]))
        elif t < pt[0] or t - pt[-1] > idle:
            c["no_trigger"] += 1
        else:
            c["unmatched"] += 1
    kept = sorted(best.values(), key=lambda x: x[1])
    c["matched"] = len(kept)
    c["dropped"] = (kept[-1][1] + 1 - len(kept)) if kept else 0
    return kept, c


def check_against_oracle(r: Replay, pulses: list[tuple[int, int]], frames: list[int],
                         tol: int, idle: int, exact_labels: bool = True) -> None:
    """The streaming result equals the offline one. ``exact_labels=False``: only the sum of
    ``unmatched`` and ``no_trigger`` must agree (after a run of lost pulses longer than
    ``idle`` the streaming matcher cannot tell a stalled trigger from lost pulses)."""
    kept, c = oracle(pulses, frames, tol, idle)
    got = [(x.item, x.frame_id, x.error_ns) for x in r.matches]
    assert got == kept
    for key in ("matched", "duplicates", "dropped"):
        assert r.counters[key] == c[key], key
    if exact_labels:
        assert (r.counters["unmatched"], r.counters["no_trigger"]) == (
            c["unmatched"], c["no_trigger"])
    else:
        assert r.counters["unmatched"] + r.counters["no_trigger"] == (
            c["unmatched"] + c["no_trigger"])
    # dropped_before accounts for every pulse before the last match that has no frame
    prev = -1
    for x in r.matches:
        assert x.dropped_before == x.frame_id - prev - 1
        prev = x.frame_id
    assert all(abs(x.error_ns) <= tol for x in r.matches)


def periodic(n: int, period: int, t0: int = 1_000 * MS) -> list[tuple[int, int]]:
    return [(k, t0 + k * period) for k in range(n)]


def test_hand_worked_case() -> None:
    """Pulses every 10 ms from t=0 (ids 0…9), tolerance 3 ms; every outcome worked out by
    hand."""
    pulses = periodic(10, 10 * MS, t0=0)
    f = [x * MS for x in (-20, 1, 9, 10.5, 25, 31, 32, 48, 70.2, 200)]
    frames = [round(x) for x in f]
    m: TimeMatcher[int] = TimeMatcher(3 * MS, idle_ns=50 * MS)
    r = replay(m, pulses, frames)
    assert [x.frame_id for x in r.matches] == [0, 1, 3, 5, 7]
    assert [x.item for x in r.matches] == [1, 3, 5, 7, 8]  # 10.5 beat 9 (pulse 1); 31 beat 32
    assert [x.error_ns for x in r.matches] == [MS, MS // 2, MS, -2 * MS, 200_000]
    assert [x.dropped_before for x in r.matches] == [0, 0, 1, 1, 1]
    assert [x.t_pulse_ns for x in r.matches] == [0, 10 * MS, 30 * MS, 50 * MS, 70 * MS]
    c = r.counters
    assert (c["unmatched"], c["no_trigger"], c["duplicates"], c["dropped"]) == (1, 2, 2, 3)


def test_jitter_every_frame_gets_its_pulse_with_its_error() -> None:
    rng = np.random.default_rng(0)
    period, n = 10 * MS, 500
    pulses = periodic(n, period)
    offsets = rng.normal(0.4 * MS, 0.6 * MS, n).round().astype(int)  # ±~2 ms, tol 3.3
    frames = [t + int(o) for (_, t), o in zip(pulses, offsets, strict=True)]
    tol = period // 3
    r = replay(TimeMatcher(tol, min_pulse_gap_ns=period // 2), pulses, frames,
               pulse_delay=list(rng.integers(20_000, 300_000, n)),
               frame_delay=list(rng.integers(0, 500_000, n)))
    assert np.abs(offsets).max() <= tol
    assert [x.frame_id for x in r.matches] == list(range(n))
    assert [x.error_ns for x in r.matches] == list(offsets)
    assert r.counters["unmatched"] == r.counters["duplicates"] == r.counters["dropped"] == 0
    check_against_oracle(r, pulses, frames, tol, 1_000_000_000)


def test_drift_through_the_whole_phase() -> None:
    """A camera 0.2 % fast: its phase against the trigger sweeps a full period, so frames
    match, then fall between pulses (unmatched), then match the next pulse (a gap)."""
    period, n = round(1e9 / 30), 1200
    pulses = periodic(n, period)
    cam_period = round(period / 1.002)
    frames = [pulses[0][1] + 3 * MS + k * cam_period for k in range(n)]
    tol = period // 3
    r = replay(TimeMatcher(tol, min_pulse_gap_ns=period // 2), pulses, frames)
    check_against_oracle(r, pulses, frames, tol, 1_000_000_000)
    c = r.counters
    # frame k sits at phase 3 ms − k·(P − P_cam) from pulse k: 1200 frames sweep 2.4
    # periods, and the frames farther than P/3 from every pulse are unmatched
    phase = 3 * MS - np.arange(n) * (period - cam_period)
    dist = np.abs((phase + period // 2) % period - period // 2)
    assert c["unmatched"] == np.sum(dist > tol) > 300
    assert c["dropped"] > 300
    assert c["matched"] + c["unmatched"] + c["duplicates"] == n


def test_drops_on_both_sides_and_late_delivery() -> None:
    rng = np.random.default_rng(3)
    period, n = 10 * MS, 600
    all_pulses = periodic(n, period)
    lost_pulse = rng.random(n) < 0.05  # pulses that never reached the camera
    pulses = [p for p, lost in zip(all_pulses, lost_pulse, strict=True) if not lost]
    keep = rng.random(n) > 0.1  # frames the camera dropped
    frames = [t + int(rng.integers(-2 * MS, 2 * MS)) for (_, t), k in
              zip(all_pulses, keep, strict=True) if k]
    tol = period // 3
    grace = 2 * MS
    r = replay(TimeMatcher(tol, min_pulse_gap_ns=period // 2, grace_ns=grace), pulses, frames,
               pulse_delay=list(rng.integers(0, grace, len(pulses))),
               frame_delay=list(rng.integers(0, grace, len(frames))))
    check_against_oracle(r, pulses, frames, tol, 1_000_000_000)
    got = {x.frame_id for x in r.matches}
    expected = {k for k, (lost, kept) in enumerate(zip(lost_pulse, keep, strict=True))
                if kept and not lost}
    assert got == expected  # a frame whose pulse was lost is not moved to a neighbour
    assert r.counters["unmatched"] == sum(keep & lost_pulse)


def test_faster_camera_keeps_the_nearest_of_two() -> None:
    """A 2× camera: two frames near each pulse; the nearer one is kept."""
    period, n = 20 * MS, 300
    pulses = periodic(n, period)
    frames = [pulses[0][1] - 4 * MS + k * (period // 2) for k in range(2 * n)]
    # offsets alternate -4 ms (before the pulse) and +6 ms (after): every -4 ms frame wins
    tol = period // 3
    r = replay(TimeMatcher(tol, min_pulse_gap_ns=period // 2), pulses, frames)
    check_against_oracle(r, pulses, frames, tol, 1_000_000_000)
    assert [x.item for x in r.matches] == list(range(0, 2 * n, 2))
    assert {x.error_ns for x in r.matches} == {-4 * MS}
    assert r.counters["duplicates"] == n  # every +6 ms frame


def test_slower_camera_leaves_gaps() -> None:
    """24 fps camera on a 60 Hz trigger: 2.5 periods per frame, phase alternates."""
    period = round(1e9 / 60)
    pulses = periodic(600, period)
    frames = [pulses[0][1] + 1 * MS + round(k * 1e9 / 24) for k in range(235)]
    tol = period // 3
    r = replay(TimeMatcher(tol, min_pulse_gap_ns=period // 2), pulses, frames)
    check_against_oracle(r, pulses, frames, tol, 1_000_000_000)
    # frame k lies at 2.5·k periods + 1 ms: even k match pulse 2.5k (error 1 ms); odd k sit
    # half a period + 1 ms from the pulses around them: unmatched
    assert [x.frame_id for x in r.matches] == [5 * j for j in range(118)]
    assert r.counters["unmatched"] == 117
    assert r.counters["dropped"] == 5 * 117 - 117


@pytest.mark.parametrize("seed", range(6))
def test_random_streams_equal_offline_matching(seed: int) -> None:
    """Random trigger and camera rates, jitter, drops, phase, tolerance and late delivery
    (within the grace): the streaming answer is the offline answer."""
    rng = np.random.default_rng(100 + seed)
    period = int(rng.integers(5 * MS, 40 * MS))
    n = 400
    pulses = periodic(n, period)
    pulses = [p for p in pulses if rng.random() > 0.03]
    cam_period = int(period * rng.uniform(0.4, 2.5))
    start = pulses[0][1] - int(rng.integers(0, 10 * period))
    frames = []
    t = start
    while t < pulses[-1][1] + 5 * period:
        if rng.random() > 0.05:
            frames.append(t + int(rng.normal(0, period / 20)))
        t += cam_period
    frames.sort()
    tol = int(period * rng.uniform(0.1, 0.5))
    grace = 2 * MS
    gap = int(np.diff(frames).min()) if seed % 2 else 0  # a true hint, or none
    m: TimeMatcher[int] = TimeMatcher(tol, min_pulse_gap_ns=period // 2, grace_ns=grace,
                                      min_frame_gap_ns=gap, idle_ns=3 * period)
    r = replay(m, pulses, frames, pulse_delay=list(rng.integers(0, grace, len(pulses))),
               frame_delay=list(rng.integers(0, grace, len(frames))))
    check_against_oracle(r, pulses, frames, tol, 3 * period, exact_labels=False)
    assert r.max_waiting <= 3 + (tol + grace) // cam_period


def _latency_run(frame_gap: bool) -> list[int]:
    """60 Hz trigger, one frame per pulse at offsets uniform in ±P/3, pulses 0.2 ms late;
    checks the waits and returns how long frames before their pulse waited past it."""
    rng = np.random.default_rng(7)
    period, n = round(1e9 / 60), 600
    pulses = periodic(n, period)
    offsets = rng.uniform(-period / 3, period / 3, n).astype(int)
    frames = [t + int(o) for (_, t), o in zip(pulses, offsets, strict=True)]
    tol, grace, delay = period // 3, 2 * MS, 200_000
    gap = int(np.diff(frames).min()) if frame_gap else 0
    r = replay(TimeMatcher(tol, min_pulse_gap_ns=period // 2, min_frame_gap_ns=gap,
                           grace_ns=grace), pulses, frames, pulse_delay=[delay] * n)
    assert [x.frame_id for x in r.matches] == list(range(n))
    before = []
    for x, at in zip(r.matches, r.released_at, strict=True):
        wait = at - frames[x.item]
        assert wait <= 2 * tol + grace
        if delay <= x.error_ns <= period // 4:  # after its (arrived) pulse, within P/4
            assert wait == 0
        if x.error_ns < 0:  # before its pulse: not before the pulse is known
            assert at >= x.t_pulse_ns + delay
            # knowing frames are ≥ gap apart, it goes when the pulse arrives if the next
            # frame cannot be nearer; otherwise it waits until no nearer frame can come
            if 2 * -x.error_ns <= gap:
                assert at == x.t_pulse_ns + delay
            before.append(at - (x.t_pulse_ns + delay))
    return before


def test_added_latency_is_bounded_and_zero_shortly_after_the_pulse() -> None:
    without, with_gap = _latency_run(False), _latency_run(True)
    assert min(without) > 0  # held until no nearer frame can come
    assert np.mean(with_gap) < np.mean(without) and with_gap.count(0) > len(with_gap) / 4


def test_no_pulse_yet_and_bounded_pending() -> None:
    """Frames streaming before the trigger starts are ``no_trigger`` and never pile up."""
    m: TimeMatcher[int] = TimeMatcher(3 * MS, max_pending=4)
    for i in range(50):
        m.add_frame(i * 10 * MS, i)
        assert m.poll(i * 10 * MS) == []
        assert m.waiting <= 5
    m.flush()
    assert m.counters["no_trigger"] == 50 and m.counters["matched"] == 0
    m.add_pulse(0, 600 * MS)
    m.add_frame(601 * MS, 99)
    (x,) = m.poll(601 * MS + 5 * MS)
    assert (x.item, x.frame_id, x.error_ns, x.dropped_before) == (99, 0, MS, 0)


def test_out_of_order_pulse_is_ignored_and_bad_tolerance_refused() -> None:
    m: TimeMatcher[int] = TimeMatcher(MS)
    m.add_pulse(3, 100)
    m.add_pulse(2, 200)
    m.add_pulse(3, 300)
    assert m.counters["pulses_out_of_order"] == 2
    with pytest.raises(ValueError, match="tolerance"):
        TimeMatcher(0)
