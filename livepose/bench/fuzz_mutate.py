"""Structured mutations of wire messages for the fuzz benchmark (:mod:`livepose.bench.fuzz`).

Each mutation starts from a *valid* message of a kind and breaks it in one way a buggy or
hostile sender could: past msgpack (valid msgpack, wrong meaning) as well as before it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from livepose.core import protocol

Parts = list[bytes]

_TYPES: list[Any] = [None, True, -1, 2**62, -(2**62), 1.5, float("nan"), "x" * 300, b"\x00",
                     [], [1, 2], {"a": 1}, {1: 2}]


def valid(kind: str, rng: random.Random, cams: list[str]) -> protocol.Message:
    """A well-formed message of ``kind`` (``frame``, ``kp2d``, ``pose3d``, ``health``)."""
    fid = rng.randrange(0, 1000)
    J = 4
    if kind == "frame":
        return protocol.Frame(cam=rng.choice(cams), frame_id=fid, t_grab_ns=fid,
                              pixel_format="Mono8", image=np.zeros((8, 8), np.uint8))
    if kind == "kp2d":
        pts = np.full((len(cams), J, 3), 1.0, np.float32)
        return protocol.Kp2d(frame_id=fid, cams=cams, model="m", points=pts)
    if kind == "pose3d":
        return protocol.Pose3d(frame_id=fid, xyz=np.zeros((J, 3)), variance=np.ones((J, 3)),
                               reproj=np.zeros(J, np.float32), views=np.ones(J, np.uint16),
                               status=np.ones(J, np.uint8))
    if kind == "health":
        return protocol.Health(proc=rng.choice(cams), pid=1, state="running", t_ns=fid)
    raise ValueError(kind)


def _header(parts: Parts) -> dict[str, Any]:
    out: dict[str, Any] = msgpack.unpackb(parts[1], raw=False)
    return out


def _with_header(parts: Parts, header: dict[str, Any]) -> Parts:
    return [parts[0], msgpack.packb(header, use_bin_type=True), *parts[2:]]


def m_truncate(parts: Parts, rng: random.Random) -> Parts:
    """A multipart cut short (topic only, header only, header cut mid-way)."""
    c = rng.randrange(3)
    if c == 0:
        return parts[:1]
    if c == 1:
        return parts[:2] if len(parts) > 2 else [parts[0]]
    h = parts[1]
    return [parts[0], h[: rng.randrange(len(h))], *parts[2:]]


def m_bytes(parts: Parts, rng: random.Random) -> Parts:
    """Random bytes as the header (not msgpack, or msgpack of something else)."""
    blob = rng.randbytes(rng.randrange(1, 64))
    return [parts[0], blob, *parts[2:]]


def m_field(parts: Parts, rng: random.Random) -> Parts:
    """A header field with a value of the wrong type or out of range (``frame_id`` jumps of
    2⁶² included), a field removed, or an unknown one added."""
    h = _header(parts)
    keys = [k for k in h if k != "arrays"]
    c = rng.randrange(4)
    if c == 0 and keys:
        h[rng.choice(keys)] = rng.choice(_TYPES)
    elif c == 1 and keys:
        h.pop(rng.choice(keys))
    elif c == 2:
        h["frame_id"] = rng.choice([2**62, -(2**62), 2**63 - 1, -1, 2**64 - 1, 0])
    else:
        h[rng.choice(["zz", "v", "kind"])] = rng.choice([*_TYPES, "frame", "pose3d", 99])
    return _with_header(parts, h)


def m_array(parts: Parts, rng: random.Random) -> Parts:
    """An array entry that lies: wrong dtype, ndims, negative or huge dims, a name the kind
    does not have, or a buffer of the wrong size / a missing or extra buffer."""
    h = _header(parts)
    arrays = h.get("arrays") or []
    bufs = list(parts[2:])
    c = rng.randrange(7)
    if arrays and c == 0:
        arrays[0][1] = rng.choice(["<f8", "|u1", "<i4", ">f4", "O", "", 7])
    elif arrays and c == 1:
        arrays[0][2] = rng.choice([[], [1], [2, 3, 4, 5, 6], [-1, 2], [2**40, 2**40], "x"])
    elif arrays and c == 2:
        arrays[0][0] = rng.choice(["nope", "", 5, None])
    elif bufs and c == 3:
        b = bufs[0]
        bufs[0] = b[: max(0, len(b) - rng.randrange(1, 9))] + (b"" if rng.random() < 0.5 else b"\x00" * 3)
    elif c == 4:
        bufs.append(rng.randbytes(16))
    elif bufs and c == 5:
        bufs = bufs[1:]
    else:
        h["arrays"] = rng.choice([None, 5, "arrays", [[1, 2]], [["a", "<f4", [1], [1]]] * 40])
    h["arrays"] = h.get("arrays", arrays) if c != 6 else h["arrays"]
    return [parts[0], msgpack.packb(h, use_bin_type=True), *bufs]


def m_ring(parts: Parts, rng: random.Random) -> Parts:
    """A shared-memory reference to a ring that is foreign, missing, malformed or stale."""
    h = _header(parts)
    arrays = h.get("arrays") or []
    if not arrays:
        return m_field(parts, rng)
    name = rng.choice([f"livepose-{rng.randrange(1, 99999)}-cam0-deadbeef", "../../etc/passwd",
                       "livepose-1-x", "", "x" * 500, 7])
    slot = rng.choice([0, -1, 2**31, 3])
    gen = rng.choice([0, -5, 1, 2**62])
    arrays[0] = [arrays[0][0], arrays[0][1], arrays[0][2], [name, slot, gen]]
    h["arrays"] = arrays
    return [parts[0], msgpack.packb(h, use_bin_type=True)]  # no buffer: it "is in the ring"


def m_semantic(parts: Parts, rng: random.Random) -> Parts:
    """Well-formed, but meaningless to the receiver: cameras it does not know, NaN/inf values,
    mismatched shapes between related fields."""
    h = _header(parts)
    if "cams" in h:
        cams = h["cams"] if isinstance(h["cams"], list) else []
        h["cams"] = rng.choice([["nope"], [], ["a"] * 3, cams[:1] * len(cams)])
    if "cam" in h:
        h["cam"] = rng.choice(["nope", "", "a" * 200])
    if "proc" in h:
        h["proc"] = rng.choice(["nope", "", "x" * 300])
    bufs = list(parts[2:])
    if bufs and rng.random() < 0.5:
        raw = bytearray(bufs[0])
        for i in range(0, len(raw), 4):
            raw[i:i + 4] = np.array([rng.choice([np.nan, np.inf, -np.inf, 1e38])],
                                    np.float32).tobytes()
        bufs[0] = bytes(raw)
    return [parts[0], msgpack.packb(h, use_bin_type=True), *bufs]


MUTATIONS: list[Callable[[Parts, random.Random], Parts]] = [
    m_truncate, m_bytes, m_field, m_array, m_ring, m_semantic,
]


def malformed(kind: str, rng: random.Random, cams: list[str]) -> Parts:
    """One mutated message of ``kind``."""
    parts = [bytes(p) for p in protocol.encode(valid(kind, rng, cams))]
    return rng.choice(MUTATIONS)(parts, rng)


def control_message(rng: random.Random) -> Parts:
    """A mutated control message (``record``, ``workers`` reshard, ``camctl``)."""
    topic = rng.choice([b"record", b"workers", b"camctl"])
    body: Any = {"v": rng.choice([1, 2, None]), "cmd": rng.choice(
        ["start", "stop", "reshard", "user_output", "nope", 5]),
        "session": rng.choice([None, "/tmp/x", 5]), "frame": rng.choice([None, -1, 2**62, "x"]),
        "alive": rng.choice([[0, 1], [], [-1], ["a"], [0, 0], None]),
        "from": rng.choice([0, -1, 2**62, None]), "cam": rng.choice(["a", 5, None]),
        "line": rng.choice(["Line1", None]), "width_us": rng.choice([1000, 0, -5, "x"]),
        "t_ns": rng.choice([1, "x", None])}
    c = rng.randrange(4)
    if c == 0:
        return [topic]
    if c == 1:
        return [topic, rng.randbytes(rng.randrange(0, 40))]
    if c == 2:
        return [topic, msgpack.packb(rng.choice(_TYPES[:10]), use_bin_type=True)]
    return [topic, msgpack.packb(body, use_bin_type=True)]
