"""Frame identity: counters → frame_id with wrap-around, drops and duplicates counted."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from livepose.acquisition.identity import FrameIdentity


def test_wraparound_16bit() -> None:
    f = FrameIdentity(counter_bits=16)
    ids = [f.update(c) for c in [65533, 65534, 65535, 0, 1, 3]]
    assert ids == [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (6, 1)]
    assert f.dropped == 1 and f.duplicates == 0


def test_duplicates_are_dropped() -> None:
    f = FrameIdentity()
    assert f.update(10) == (0, 0)
    assert f.update(10) is None
    assert f.update(11) == (1, 0)
    assert f.duplicates == 1


def test_origin_counts_a_lost_first_frame() -> None:
    f = FrameIdentity(origin=0)
    assert f.update(2) == (2, 2)
    assert f.dropped == 2


@given(st.lists(st.booleans(), min_size=1, max_size=300), st.integers(8, 32), st.integers(0, 2**8))
def test_any_drop_pattern_is_accounted(kept: list[bool], bits: int, start: int) -> None:
    """Pulses 0..N-1, some lost: delivered frames keep their pulse index; losses are counted."""
    f = FrameIdentity(counter_bits=bits, origin=start % (1 << bits))
    seen = []
    for pulse, keep in enumerate(kept):
        if keep:
            out = f.update((start + pulse) % (1 << bits))
            assert out is not None
            seen.append(out[0])
            assert out[0] == pulse
    last = max(seen) if seen else -1
    assert f.dropped == (last + 1) - len(seen)
