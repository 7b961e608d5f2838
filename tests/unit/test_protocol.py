"""Wire protocol: every valid message round-trips; malformed ones are counted, never raised."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from livepose.core import protocol as P
from livepose.transport import codec

ints = st.integers(min_value=0, max_value=2**62)
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12)


def frames() -> st.SearchStrategy[P.Frame]:
    img = st.one_of(
        hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, max_side=40)),
        hnp.arrays(np.uint16, st.tuples(st.integers(1, 20), st.integers(1, 20), st.just(3))),
    )
    return st.builds(
        P.Frame,
        cam=names,
        frame_id=ints,
        t_grab_ns=ints,
        pixel_format=st.sampled_from(["Mono8", "RGB8"]),
        image=img,
        t_trigger_ns=st.none() | ints,
        t_exposure_ns=st.none() | ints,
        dropped_before=ints,
        match_error_ns=st.none() | st.integers(-(2**62), 2**62),
    )


def kp2ds() -> st.SearchStrategy[P.Kp2d]:
    @st.composite
    def build(draw: st.DrawFn) -> P.Kp2d:
        c, j = draw(st.integers(1, 8)), draw(st.integers(0, 30))
        pts = draw(
            hnp.arrays(
                np.float32, (c, j, 3), elements=st.floats(-1e4, 1e4, width=32) | st.just(np.nan)
            )
        )
        return P.Kp2d(
            frame_id=draw(ints),
            cams=draw(st.lists(names, min_size=c, max_size=c)),
            model=draw(names),
            points=pts,
            t_trigger_ns=draw(st.none() | ints),
            t_grab_ns=draw(st.lists(ints, max_size=c)),
            skipped=draw(st.lists(ints, max_size=5)),
        )

    return build()


def pose3ds() -> st.SearchStrategy[P.Pose3d]:
    @st.composite
    def build(draw: st.DrawFn) -> P.Pose3d:
        j = draw(st.integers(0, 30))
        f64 = hnp.arrays(
            np.float64, (j, 3), elements=st.floats(allow_nan=True, allow_infinity=False)
        )
        raw = draw(st.none() | f64)
        return P.Pose3d(
            frame_id=draw(ints),
            xyz=draw(f64),
            variance=draw(f64),
            reproj=draw(hnp.arrays(np.float32, (j,))),
            views=draw(hnp.arrays(np.uint16, (j,))),
            status=draw(hnp.arrays(np.uint8, (j,), elements=st.integers(0, 2))),
            raw_xyz=raw,
            xyz_lead=draw(st.none() | f64),
            late=draw(st.booleans()),
            units=draw(st.sampled_from(["mm", "m"])),
            lead_ns=draw(ints),
            incomplete=draw(st.lists(ints, max_size=4)),
            missing=draw(st.lists(names, max_size=3)),
        )

    return build()


def health() -> st.SearchStrategy[P.Health]:
    return st.builds(
        P.Health,
        proc=names,
        pid=ints,
        state=names,
        t_ns=ints,
        counters=st.dictionaries(names, ints, max_size=5),
        rates=st.dictionaries(names, st.floats(allow_nan=False), max_size=5),
        last_error=st.none() | st.text(max_size=50),
    )


def _wire(parts: list) -> list[bytes]:
    """What actually crosses the socket: bytes."""
    return [bytes(p) for p in parts]


def _same(a: P.Message, b: P.Message) -> None:
    assert type(a) is type(b)
    for name in a._SCALARS:
        assert getattr(a, name) == getattr(b, name), name
    for name in a.ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        if x is None:
            assert y is None
        else:
            assert y.dtype == x.dtype and y.shape == x.shape
            np.testing.assert_array_equal(x, y)


@settings(max_examples=60, deadline=None)
@given(st.one_of(frames(), kp2ds(), pose3ds(), health()))
def test_roundtrip(msg: P.Message) -> None:
    parts = P.encode(msg)
    assert parts[0] == msg.topic()
    dec = codec.Decoder()
    out = dec.decode(_wire(parts))
    assert out is not None, dec.errors
    _same(msg, out)


def test_arrays_are_zero_copy_views() -> None:
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    parts = P.encode(P.Frame(cam="a", frame_id=1, t_grab_ns=2, pixel_format="Mono8", image=img))
    assert np.shares_memory(np.frombuffer(parts[2], np.uint8), img)  # send side: no copy
    buf = bytearray(parts[2])
    out = P.decode_strict([parts[0], parts[1], memoryview(buf)])
    buf[0] = 99
    assert out.image[0, 0] == 99  # receive side: a view of the received buffer


def _valid() -> list[bytes]:
    img = np.zeros((4, 5), np.uint8)
    return _wire(
        P.encode(P.Frame(cam="a", frame_id=1, t_grab_ns=2, pixel_format="Mono8", image=img))
    )


def _with_header(**changes: object) -> list[bytes]:
    parts = _valid()
    h = msgpack.unpackb(parts[1])
    h.update(changes)
    parts[1] = msgpack.packb(h)
    return parts


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        ([b"frame/a"], "too_few_parts"),
        ([b"frame/a", b"\xc1\xc1"], "bad_msgpack"),
        ([b"frame/a", msgpack.packb([1, 2])], "bad_header"),
        (_with_header(v=99), "bad_version"),
        (_with_header(kind="nope"), "unknown_kind"),
        (_with_header(frame_id="7"), "bad_field"),
        (_with_header(frame_id=True), "bad_field"),
        (_with_header(arrays=[["image", "<f8", [4, 5]]]), "bad_dtype"),
        (_with_header(arrays=[["image", "|u1", [4, 6]]]), "buffer_size"),
        (_with_header(arrays=[["image", "|u1", [4, -5]]]), "bad_shape"),
        (_with_header(arrays=[["image", "|u1", [20]]]), "bad_shape"),
        (_with_header(arrays=[["other", "|u1", [4, 5]]]), "unknown_array"),
        (_with_header(arrays=[]), "buffer_count"),
        ([*_valid()[:2], b"", *_valid()[2:]], "buffer_count"),
    ],
)
def test_malformed_is_counted_not_raised(parts: list[bytes], reason: str) -> None:
    dec = codec.Decoder()
    assert dec.decode(parts) is None
    assert dec.errors[reason] == 1
    with pytest.raises(P.ProtocolError):
        P.decode_strict(parts)


def test_missing_field_and_required_array() -> None:
    parts = _valid()
    h = msgpack.unpackb(parts[1])
    del h["cam"]
    parts[1] = msgpack.packb(h)
    dec = codec.Decoder()
    assert dec.decode(parts) is None and dec.errors["missing_field"] == 1
    assert dec.decode(_with_header(arrays=[])[:2]) is None
    assert dec.errors["missing_array"] == 1


def test_size_limits() -> None:
    limits = P.Limits(max_array_bytes=10)
    dec = codec.Decoder(limits)
    assert dec.decode(_valid()) is None and dec.errors["array_too_big"] == 1


def test_unexpected_kind() -> None:
    dec = codec.Decoder(expect=["pose3d"])
    assert dec.decode(_valid()) is None and dec.errors["unexpected_kind"] == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=5))
def test_garbage_never_escapes(parts: list[bytes]) -> None:
    dec = codec.Decoder()
    dec.decode(parts)  # must not raise
    assert dec.received + dec.rejected == 1


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["v", "kind", "cam", "frame_id", "t_grab_ns", "pixel_format", "arrays", "image"]
        ),
        st.one_of(
            st.integers(-(2**63), 2**63 - 1),
            st.text(max_size=5),
            st.none(),
            st.booleans(),
            st.lists(st.integers(-(2**31), 2**31), max_size=3),
            st.floats(),
        ),
    )
)
def test_fuzzed_headers_never_escape(header: dict) -> None:
    dec = codec.Decoder()
    dec.decode([b"t", msgpack.packb(header), b"\x00" * 20])
    assert dec.received + dec.rejected == 1
