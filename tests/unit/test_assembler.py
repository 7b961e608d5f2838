"""Frame-set assembly: latest complete set first, and every frame-id accounted once."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livepose.core.protocol import Frame
from livepose.inference.assembler import FrameSetAssembler, Popped

_IMG = np.zeros((2, 2), np.uint8)


def frame(cam: str, fid: int) -> Frame:
    return Frame(cam=cam, frame_id=fid, t_grab_ns=1000 + fid, pixel_format="Mono8", image=_IMG,
                 t_trigger_ns=fid)


def feed(a: FrameSetAssembler, arrivals: list[tuple[str, int]]) -> None:
    for cam, fid in arrivals:
        a.add(frame(cam, fid))


CAMS = ["a", "b", "c"]


def test_in_order_complete_sets() -> None:
    a = FrameSetAssembler(CAMS)
    assert a.pop_latest_complete() is None
    feed(a, [("a", 0), ("b", 0)])
    assert not a.has_complete
    a.add(frame("c", 0), t_recv_ns=42)
    p = a.pop_latest_complete()
    assert isinstance(p, Popped)
    assert p.frame_id == 0 and p.t_set_ns == 42 and [f.cam for f in p.frames] == CAMS
    assert p.skipped == [] and p.incomplete == []
    assert a.pending == 0


def test_frames_returned_in_camera_order() -> None:
    a = FrameSetAssembler(CAMS)
    feed(a, [("c", 3), ("a", 3), ("b", 3)])
    p = a.pop_latest_complete()
    assert p is not None and [f.cam for f in p.frames] == CAMS


def test_latest_complete_first_skips_and_abandons() -> None:
    a = FrameSetAssembler(CAMS)
    feed(a, [(c, 0) for c in CAMS])  # complete
    feed(a, [("a", 1), ("c", 1)])  # b lost
    feed(a, [(c, 2) for c in CAMS])  # complete
    feed(a, [("a", 3)])  # still arriving
    p = a.pop_latest_complete()
    assert p is not None and p.frame_id == 2
    assert p.skipped == [0] and p.incomplete == [1]
    assert a.pending_ids() == [3]
    # stragglers of abandoned or returned sets are late
    assert not a.add(frame("b", 1)) and not a.add(frame("b", 2))
    assert a.counters["late"] == 2
    assert a.counters["skipped"] == 1 and a.counters["incomplete"] == 1


def test_ids_never_seen_are_reported_incomplete() -> None:
    a = FrameSetAssembler(CAMS, start_id=0)
    feed(a, [(c, 3) for c in CAMS])
    p = a.pop_latest_complete()
    assert p is not None and p.frame_id == 3 and p.incomplete == [0, 1, 2]


def test_share_of_worker() -> None:
    a = FrameSetAssembler(CAMS, worker=1, workers=3, start_id=0)
    feed(a, [(c, fid) for fid in range(12) for c in CAMS if fid != 4])
    assert a.counters["foreign"] == 8 * 3
    p = a.pop_latest_complete()
    assert p is not None and p.frame_id == 10
    assert p.skipped == [1, 7] and p.incomplete == [4]


def test_memory_bound_abandons_oldest() -> None:
    a = FrameSetAssembler(CAMS, max_pending=3)
    feed(a, [(c, 0) for c in CAMS])  # complete, never popped
    feed(a, [("a", fid) for fid in range(1, 6)])
    assert a.pending <= 3
    assert a.pending_ids() == [3, 4, 5]
    feed(a, [(c, 6) for c in ["b", "c", "a"]][:3])
    p = a.pop_latest_complete()
    assert p is not None and p.frame_id == 6
    assert p.skipped == [0] and p.incomplete == [1, 2, 3, 4, 5]


def test_gaps_per_camera() -> None:
    a = FrameSetAssembler(["a", "b"])
    feed(a, [("a", 0), ("a", 1), ("a", 4), ("a", 5), ("b", 0), ("b", 5)])
    assert a.counters["gaps/a"] == 2 and a.counters["gaps/b"] == 4
    w = FrameSetAssembler(["a"], worker=0, workers=2)
    feed(w, [("a", 0), ("a", 2), ("a", 8), ("a", 10)])
    assert w.counters["gaps/a"] == 2


def test_duplicates_and_unknown_cameras() -> None:
    a = FrameSetAssembler(CAMS)
    assert a.add(frame("a", 0)) and not a.add(frame("a", 0))
    assert not a.add(frame("zz", 0))
    assert a.counters["duplicates"] == 1 and a.counters["unknown_cam"] == 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        FrameSetAssembler(["a", "a"])
    with pytest.raises(ValueError):
        FrameSetAssembler(["a"], worker=2, workers=2)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple:
    ncam = draw(st.integers(1, 4))
    cams = [f"c{i}" for i in range(ncam)]
    workers = draw(st.integers(1, 3))
    worker = draw(st.integers(0, workers - 1))
    n = draw(st.integers(1, 30))
    drop = draw(st.lists(st.booleans(), min_size=n * ncam, max_size=n * ncam))
    in_order = draw(st.booleans())
    streams = {c: [f for f in range(n) if not drop[f * ncam + i]] for i, c in enumerate(cams)}
    arrivals: list[tuple[str, int]] = []
    if in_order:  # each camera in order, cameras interleaved at random
        pos = dict.fromkeys(cams, 0)
        while any(pos[c] < len(streams[c]) for c in cams):
            c = draw(st.sampled_from([c for c in cams if pos[c] < len(streams[c])]))
            arrivals.append((c, streams[c][pos[c]]))
            pos[c] += 1
    else:
        arrivals = draw(st.permutations([(c, f) for c in cams for f in streams[c]]))
    pops = draw(st.lists(st.booleans(), min_size=len(arrivals), max_size=len(arrivals)))
    max_pending = draw(st.sampled_from([1, 2, 4, 1000]))
    return cams, workers, worker, n, drop, in_order, arrivals, pops, max_pending


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_every_frame_id_accounted_exactly_once(scenario: tuple) -> None:
    cams, workers, worker, n, drop, in_order, arrivals, pops, max_pending = scenario
    a = FrameSetAssembler(cams, worker, workers, max_pending=max_pending, start_id=0)
    returned: list[int] = []
    skipped: list[int] = []
    incomplete: list[int] = []
    seen: set[int] = set()

    def take(p: Popped | None) -> None:
        if p is None:
            return
        assert [f.cam for f in p.frames] == cams
        assert all(f.frame_id == p.frame_id for f in p.frames)
        assert not returned or p.frame_id > returned[-1]
        returned.append(p.frame_id)
        skipped.extend(p.skipped)
        incomplete.extend(p.incomplete)

    for (cam, fid), pop in zip(arrivals, pops, strict=True):
        a.add(frame(cam, fid))
        if fid % workers == worker:
            seen.add(fid)
        assert a.pending <= max_pending
        if pop:
            take(a.pop_latest_complete())
    take(a.pop_latest_complete())
    later_skipped, later_incomplete = a.unreported()  # reported with the next set
    skipped += later_skipped
    incomplete += later_incomplete

    accounted = returned + skipped + incomplete
    pending = a.pending_ids()
    assert len(accounted) == len(set(accounted)), "a frame-id was reported twice"
    assert not set(accounted) & set(pending)
    assert all(f % workers == worker for f in accounted + pending)
    assert seen <= set(accounted) | set(pending)
    if returned:  # every id of the share up to the last returned one is accounted
        share = {f for f in range(returned[-1] + 1) if f % workers == worker}
        assert share <= set(accounted)
    truly_complete = {f for f in range(n) if not any(drop[f * len(cams): (f + 1) * len(cams)])}
    assert set(returned) <= truly_complete and set(skipped) <= truly_complete
    if in_order and max_pending >= n:  # nothing evicted: incomplete means a frame was lost
        assert not set(incomplete) & truly_complete
        assert a.counters["late"] == 0


@given(st.integers(0, 2), st.integers(3, 40), st.integers(0, 3))
@settings(max_examples=60, deadline=None)
def test_reshard_accounts_for_the_old_share_and_owns_the_new_one(
    dead: int, from_id: int, popped_before: int
) -> None:
    """Worker ``k`` of 3 loses worker ``dead``; from ``from_id`` on the two survivors split
    every frame-id. Each id of the old share below ``from_id`` (from the first one seen) is
    handed out, skipped or incomplete exactly once; every id of the new share is owned."""
    survivors = [k for k in range(3) if k != dead]
    k = survivors[0]
    a = FrameSetAssembler(CAMS, worker=k, workers=3)
    seen: list[int] = []
    for fid in range(0, from_id - 1):  # everything up to just before the switch arrives
        feed(a, [(c, fid) for c in CAMS])
        if popped_before and fid % 3 == k and fid % (3 * popped_before + 1) == 0:
            p = a.pop_latest_complete()
            assert p is not None
            seen += [p.frame_id, *p.skipped, *p.incomplete]
    a.reshard(survivors.index(k), 2, from_id)
    for fid in range(from_id - 3, from_id + 20):  # late ones first, then the new share
        feed(a, [(c, fid) for c in CAMS])
        p = a.pop_latest_complete()
        if p is not None:
            seen += [p.frame_id, *p.skipped, *p.incomplete]
    old = [i for i in range(from_id) if i % 3 == k]
    new = [i for i in range(from_id, from_id + 20) if i % 2 == survivors.index(k)]
    assert sorted(seen) == sorted(set(seen))  # nothing twice
    olds = [i for i in sorted(seen) if i < from_id]
    assert olds and olds == old[old.index(olds[0]):]  # contiguous to the switch
    assert [i for i in sorted(seen) if i >= from_id] == new
    assert a.counters["reshards"] == 1
    with pytest.raises(ValueError):
        a.reshard(2, 2, from_id + 30)


def test_cross_camera_spread_above_tolerance_counts_desync() -> None:
    a = FrameSetAssembler(CAMS, desync_tolerance_ms=2.0)

    def f(cam: str, fid: int, t_ms: float, exposure: bool) -> Frame:
        t = int(t_ms * 1e6)
        return Frame(cam=cam, frame_id=fid, t_grab_ns=t + 5_000_000, pixel_format="Mono8",
                     image=_IMG, t_trigger_ns=0, t_exposure_ns=t if exposure else None)

    for c, t in zip(CAMS, (0.0, 1.0, 1.9), strict=True):  # 1.9 ms spread: in sync
        a.add(f(c, 0, t, exposure=True))
    assert a.counters["desync"] == 0 and a.max_spread_ns == 1_900_000
    for c, t in zip(CAMS, (0.0, 0.5, 2.5), strict=True):  # 2.5 ms: desync
        a.add(f(c, 1, t, exposure=True))
    assert a.counters["desync"] == 1 and a.max_spread_ns == 2_500_000
    for c, t in zip(CAMS, (0.0, 0.0, 3.0), strict=True):  # no device clock: grab times
        a.add(f(c, 2, t, exposure=False))
    assert a.counters["desync"] == 2 and a.counters["sets"] == 3
