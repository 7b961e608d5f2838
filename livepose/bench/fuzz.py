"""Fuzzing with structure: malformed messages through every receiver, corrupt ring headers.

For each socket kind (``frame``, ``kp2d``, ``pose3d``, ``health``, ``control``) ``n``
mutated messages (:mod:`livepose.bench.fuzz_mutate`: truncated multiparts, non-msgpack,
valid msgpack with wrong types, dtypes, shapes, buffer sizes, ``frame_id`` jumps of 2⁶²,
references to foreign, missing or stale rings, meaningless content) go through a real
ZeroMQ PUSH→PULL pair over ipc (no message dropped on the way) into the code that receives
that kind in the pipeline: the inference worker's decoder and frame-set assembler, fusion's
decoder and :class:`~livepose.fusion.process.Fuser`, the pose client, the supervisor's health
decoder, and the control decoders (record, reshard, camera outputs). Then ``n`` corruptions
of each ring header field of a real frame ring, read by a ring follower and the ring reader.

Each receiver must *account* for every message — accepted and handled, or rejected and
counted — and nothing may escape as an exception: ``uncounted`` and ``crashes`` must be 0.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from livepose.bench.fuzz_mutate import control_message, malformed
from livepose.core import protocol
from livepose.core.calibration import CalibrationError
from livepose.core.control import decode_camera_command, decode_record_control, decode_reshard
from livepose.transport import codec, security, shmring

CAMS = ["cam0", "cam1", "cam2", "cam3"]
RING_FIELDS = ("magic", "slots", "slot_bytes", "meta_bytes", "head", "closed", "gen", "meta")


class _Wire:
    """A PUSH→PULL pair over ipc: every message sent arrives (no high-water mark drop)."""

    def __init__(self, folder: Path) -> None:
        self.ctx = zmq.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        self.push = self.ctx.socket(zmq.PUSH)
        for s in (self.pull, self.push):
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 0)
            s.setsockopt(zmq.RCVHWM, 0)
        ep = f"ipc://{folder}/fuzz.sock"
        security.bind(self.pull, ep, None)  # ipc: no keys
        security.connect(self.push, ep, None)

    def roundtrip(self, parts: list[bytes]) -> list[Any]:
        self.push.send_multipart(parts, copy=True)
        return list(self.pull.recv_multipart(copy=False))

    def close(self) -> None:
        self.pull.close(0)
        self.push.close(0)
        self.ctx.term()


def _receivers() -> dict[str, Any]:
    """The pipeline's receiving code for each kind: ``handle(parts) -> outcome``."""
    from livepose.acquisition.sim.rig import make_rig
    from livepose.core.config import Config, SimCameraConfig, SimConfig
    from livepose.fusion.process import Fuser, FusionInputError
    from livepose.inference.assembler import FrameSetAssembler

    frame_dec = codec.Decoder(expect=["frame"], copy_shared=False)
    asm = FrameSetAssembler(CAMS, deadline_ns=1)
    rig = make_rig(SimConfig(), CAMS)
    cfg = Config(cameras=[SimCameraConfig(backend="sim", name=n) for n in CAMS], fps=30.0)
    fuser = Fuser(rig, cfg)
    kp_dec = codec.Decoder(expect=["kp2d"])
    pose_dec = codec.Decoder(expect=["pose3d"])
    health_dec = codec.Decoder(expect=["health"])
    health: dict[str, protocol.Health] = {}

    def frame(parts: list[Any]) -> str:
        msg = frame_dec.decode(parts)
        if msg is None:
            return "rejected"
        assert isinstance(msg, protocol.Frame)
        before = sum(asm.counters[k] for k in ("frames", "foreign", "unknown_cam", "late",
                                                "duplicates"))
        asm.add(msg)
        after = sum(asm.counters[k] for k in ("frames", "foreign", "unknown_cam", "late",
                                               "duplicates"))
        asm.pop_ready()
        return "handled" if after == before + 1 else "uncounted"

    def kp2d(parts: list[Any]) -> str:
        msg = kp_dec.decode(parts)
        if msg is None:
            return "rejected"
        assert isinstance(msg, protocol.Kp2d)
        try:
            fuser.fuse(msg, time.time_ns())
            return "handled"
        except (FusionInputError, CalibrationError):
            return "dropped"  # counted by fusion (``dropped``), the loop goes on

    def pose3d(parts: list[Any]) -> str:
        return "handled" if pose_dec.decode(parts) is not None else "rejected"

    def health_(parts: list[Any]) -> str:
        msg = health_dec.decode(parts)
        if msg is None:
            return "rejected"
        assert isinstance(msg, protocol.Health)
        health[msg.proc] = msg
        return "handled"

    def control(parts: list[Any]) -> str:
        raw = [bytes(p) for p in parts]
        decode = {b"record": decode_record_control, b"workers": decode_reshard,
                  b"camctl": decode_camera_command}.get(raw[0])
        if decode is None or len(raw) < 2:
            return "rejected"
        return "handled" if decode(raw) is not None else "rejected"

    return {"frame": frame, "kp2d": kp2d, "pose3d": pose3d, "health": health_,
            "control": control}


def fuzz_messages(n: int, seed: int = 0) -> dict[str, dict[str, int]]:
    """``n`` mutated messages per kind through the wire into each receiver; outcomes."""
    rng = random.Random(seed)
    out: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="livepose-fuzz-") as d:
        wire = _Wire(Path(d))
        try:
            for kind, handle in _receivers().items():
                c: Counter[str] = Counter()
                for _ in range(n):
                    parts = (control_message(rng) if kind == "control"
                             else malformed(kind, rng, CAMS))
                    try:
                        c[handle(wire.roundtrip(parts))] += 1
                    except Exception as exc:  # a receiver let something escape: a crash
                        c["crashes"] += 1
                        c[f"crash/{type(exc).__name__}"] += 1
                    c["sent"] += 1
                out[kind] = dict(c)
        finally:
            wire.close()
    return out


def _corrupt(buf: np.ndarray, field: str, ring: shmring.FrameRing, rng: random.Random) -> None:
    """Write garbage into one header field of a ring file's bytes."""
    u64 = rng.choice([0, 1, 2**63, 2**64 - 1, rng.randrange(2**64), ring.slots + 1])
    if field == "magic":
        buf[0:8] = np.frombuffer(rng.randbytes(8), np.uint8)
    elif field in ("slots", "slot_bytes", "meta_bytes"):
        off = {"slots": 8, "slot_bytes": 16, "meta_bytes": 24}[field]
        buf[off:off + 8] = np.frombuffer(np.uint64(u64).tobytes(), np.uint8)
    elif field == "head":
        buf[32:40] = np.frombuffer(np.uint64(u64).tobytes(), np.uint8)
    elif field == "closed":
        buf[44:48] = np.frombuffer(rng.randbytes(4), np.uint8)
    elif field == "gen":
        k = rng.randrange(ring.slots)
        buf[64 + 8 * k:72 + 8 * k] = np.frombuffer(np.uint64(u64).tobytes(), np.uint8)
    else:  # a slot's stored message: part count and lengths
        meta_off = -(-(64 + 8 * ring.slots) // 64) * 64
        k = rng.randrange(ring.slots)
        start = meta_off + k * ring.meta_bytes
        buf[start:start + 16] = np.frombuffer(rng.randbytes(16), np.uint8)


def fuzz_ring_headers(n: int, seed: int = 0) -> dict[str, dict[str, int]]:
    """``n`` corruptions of each ring header field, each followed by a reader's attempt to
    map, follow and resolve the ring; outcomes per field."""
    from livepose.transport.framefeed import RingFollower

    rng = random.Random(seed)
    out: dict[str, dict[str, int]] = {}
    ring = shmring.FrameRing("fuzz", 8, 64 * 64)
    try:
        img = np.zeros((64, 64), np.uint8)
        for k in range(12):  # a ring in use: committed frames with their headers
            msg = protocol.Frame(cam="fuzz", frame_id=k, t_grab_ns=k, pixel_format="Mono8",
                                 image=img)
            codec.encode_in_ring(msg, ring)
        pristine = ring._mm[:]  # the writer's own mapping: restore after each corruption
        buf = np.frombuffer(ring._mm, np.uint8)
        dec = codec.Decoder(expect=["frame"], copy_shared=False)
        for field in RING_FIELDS:
            c: Counter[str] = Counter()
            for _ in range(n):
                _corrupt(buf, field, ring, rng)
                try:
                    try:
                        mapped = shmring.MappedRing(ring.path)
                    except shmring.RingError:
                        c["rejected"] += 1
                        continue
                    follower = RingFollower(mapped, after_gen=rng.randrange(0, 14))
                    for parts in follower.take(16):
                        got = dec.decode(parts)
                        c["decoded" if got is not None else "rejected_msg"] += 1
                    c["handled"] += 1
                    c["lost"] += follower.lost
                    c["no_header"] += follower.no_header
                except Exception as exc:  # anything else is a reader crash
                    c["crashes"] += 1
                    c[f"crash/{type(exc).__name__}"] += 1
                finally:
                    c["sent"] += 1
                    buf[:] = np.frombuffer(pristine, np.uint8)
            out[field] = dict(c)
    finally:
        ring.close()
    return out


def summarize(messages: dict[str, dict[str, int]],
              rings: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The benchmark's summary keys: per-kind minimum, uncounted messages, crashes."""
    def uncounted(c: dict[str, int], keys: tuple[str, ...]) -> int:
        return c.get("sent", 0) - sum(c.get(k, 0) for k in keys) - c.get("crashes", 0) + \
            c.get("uncounted", 0)

    msg_keys = ("handled", "rejected", "dropped")
    ring_keys = ("handled", "rejected")
    return {
        "fuzz_messages_per_kind_min": min(c.get("sent", 0) for c in messages.values()),
        "fuzz_ring_corruptions_per_field_min": min(c.get("sent", 0) for c in rings.values()),
        "fuzz_uncounted": sum(uncounted(c, msg_keys) for c in messages.values())
        + sum(uncounted(c, ring_keys) for c in rings.values()),
        "crashes": sum(c.get("crashes", 0) for c in [*messages.values(), *rings.values()]),
    }


def main(json_path: str | Path | None, n: int = 100_000, seed: int = 0) -> dict[str, Any]:
    """Run both fuzzers; write and return ``{summary, messages, rings, seconds}``."""
    from livepose.bench.results import write_json

    t0 = time.monotonic()
    quiet = logging.getLogger("livepose")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # every rejection would log: rate-limited, but noise
    try:
        messages = fuzz_messages(n, seed)
        rings = fuzz_ring_headers(n, seed)
    finally:
        quiet.setLevel(level)
    return write_json({"summary": summarize(messages, rings), "messages": messages,
                       "rings": rings, "per_kind": n, "seed": seed,
                       "seconds": round(time.monotonic() - t0, 1)}, json_path)
