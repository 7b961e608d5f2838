"""The encoder process: one per camera, recording its video apart from the camera.

The camera publishes each frame as before — pixels in its shared-memory frame ring
(:mod:`livepose.transport.shmring`), the header over ZeroMQ — and knows nothing of the
recording. Its encoder subscribes to the camera's ``frame/<cam>`` topic while a recording
runs, resolves each header's ring reference in place (zero-copy across processes; the
encoder's one copy is the codec's input frame) and writes the video and the frame table
(:class:`livepose.acquisition.recorder.SegmentWriter`). So:

- an encoder that crashes, stalls on a disk or is killed never touches the camera: the
  supervisor starts it again, and it continues into a new segment (``<cam>.1.mkv`` …);
- memory is bounded by the ring: an encoder that falls a whole ring behind loses those
  frames' pixels (``rec_lapped``) — never the camera's frames or their table rows, because
  the headers queue on its socket far beyond the ring (``RCVHWM``);
- a restarted encoder first takes, from the ring, the frames published while it was down
  that the ring still holds (``recording.queue_s`` of them), so a restart within that time
  loses no video; frames it can no longer get are ``recorded=0`` rows (``rec_gap``);
- a write error (full disk) fails the segment loudly; the encoder tries every
  ``RETRY_S`` whether the disk takes the held table rows again, and then continues into a
  new segment.

``ctx.args``: ``camera`` (index into ``cfg.cameras``), ``record`` (``{"session", "frame"}``:
record from launch, or — after a restart — the session being recorded), ``restarted``.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from livepose.acquisition.recorder import SegmentWriter, last_frame_id
from livepose.core import protocol
from livepose.core.config import Config
from livepose.core.control import RECORD_TOPIC, decode_record_control
from livepose.core.protocol import ProtocolError
from livepose.kit.process import StageContext
from livepose.transport import codec, shmring
from livepose.transport.framefeed import RingFollower

PROBE_BYTES = 1 << 20  # a write this big must succeed before a failed writer goes on
RETRY_S = 1.0  # how often a failed writer checks whether the disk takes writes again
DRAIN_IDLE_S = 0.5  # at stop: the camera is silent this long, the queue is drained
DRAIN_MAX_S = 30.0
HEADER_QUEUE_RINGS = 4  # headers queued on the socket: this many rings' worth


def ring_slots(cfg: Config) -> int:
    """Slots of a camera's frame ring: the transport's, and at least ``recording.queue_s``
    of frames when the run records from launch (how far its encoder may fall behind)."""
    slots = cfg.transport.ring_slots(cfg.fps)
    if cfg.recording.enabled:
        slots = max(slots, min(shmring.MAX_SLOTS, round(cfg.recording.queue_s * cfg.fps)))
    return slots


class LapTolerantRings(shmring.RingReader):
    """Resolves ring references in place; a slot already reused (or a ring already gone)
    gives an empty image instead of a rejected message, so the frame's header still gets
    its table row (``recorded=0``)."""

    def resolve(self, ref: Any, dtype: np.dtype[Any], shape: list[int],
                copy: bool) -> np.ndarray:
        try:
            return self.view(ref, dtype, shape)
        except shmring.RingError as exc:
            if exc.reason in ("shm_overrun", "shm_missing"):
                return np.empty((0,) * len(shape), dtype)
            raise ProtocolError(exc.reason, str(exc)) from None


class Encoder:
    """The recording state of one camera's encoder (see the module docstring)."""

    def __init__(self, ctx: StageContext, cam: str, frames: zmq.Socket[Any],
                 decoder: codec.Decoder) -> None:
        self.ctx, self.cam, self.frames, self.decoder = ctx, cam, frames, decoder
        self.topic = b"frame/" + cam.encode()
        self.session: Path | None = None
        self.writer: SegmentWriter | None = None
        self.start_frame = 0
        self.stop_frame: int | None = None
        self.catch_up = False  # restarted: first take what the ring still holds
        self._after: int | None = None  # the last frame accounted for while no writer is open
        self._held = b""
        self._retry_at = 0.0

    def start(self, session: Path, frame: int | None, resume: bool = False) -> None:
        """Record frames ``>= frame`` into ``session`` (``resume``: after a restart, go on
        from the last frame the session's tables hold)."""
        self.stop_now()
        self.session, self.start_frame, self.stop_frame = session, frame or 0, None
        self.frames.setsockopt(zmq.SUBSCRIBE, self.topic)
        self._after = last_frame_id(session, self.cam) if resume else None
        self.catch_up = resume and self._after is not None
        self._open()

    def _open(self) -> None:
        assert self.session is not None
        try:
            self.writer = SegmentWriter(self.session, self.cam, self.ctx.cfg, self.ctx.counters,
                                        self.ctx.error, after=self._after, held=self._held)
            self._held = b""
        except OSError as exc:
            self.writer = None
            self._retry_at = time.monotonic() + RETRY_S
            self.ctx.counters["rec_errors"] += 1
            self.ctx.error(f"{self.cam}: cannot open a new video segment: {exc}")

    def stop_now(self) -> None:
        """Close the segment and stop taking frames."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.session is not None:
            self.frames.setsockopt(zmq.UNSUBSCRIBE, self.topic)
        self.session = None

    def control(self, body: dict[str, Any]) -> None:
        """A ``record`` control message from the supervisor."""
        if body["cmd"] == "start":
            self.start(Path(body["session"]), body["frame"])
        elif body["frame"] is None:
            self.stop_now()
        else:
            self.stop_frame = body["frame"]

    def on_frame(self, msg: protocol.Frame) -> None:
        """Record one frame header (and its pixels, if still in the ring)."""
        if self.session is None or msg.frame_id < self.start_frame:
            return
        if self.stop_frame is not None and msg.frame_id > self.stop_frame:
            self.stop_now()
            return
        now = time.monotonic()
        w = self.writer
        if w is not None and (not w.fits(msg.image) or (w.failed and self._disk_back(w, now))):
            self._roll()
        if self.writer is None:
            if now < self._retry_at:
                return  # counted as a gap by the next segment
            self._open()
            if self.writer is None:
                return
        if self.catch_up:
            self.catch_up = False
            self._from_ring(msg)
        self.writer.frame(msg)
        ref = getattr(msg.image, "slot_ref", None)
        if ref is not None:  # how far behind the camera the encoder is (frames)
            m = self.decoder.rings.mapping(ref.ring)
            self.ctx.rates["rec_behind"] = int(m.h.head[0]) - ref.gen

    def _disk_back(self, w: SegmentWriter, now: float) -> bool:
        """A failed writer: whether to go on in a new segment now — the held table rows
        could be written, and a probe file of ``PROBE_BYTES`` too (a full disk still takes
        a row into the free end of a file's last page, so rows alone prove nothing)."""
        if now < self._retry_at:
            return False
        self._retry_at = now + RETRY_S
        w._flush()
        if w._pending:
            return False
        probe = w.table_path.with_name(f".probe-{self.cam}")
        try:
            with probe.open("wb") as f:
                f.write(b"\0" * PROBE_BYTES)
                f.flush()
                os.fsync(f.fileno())
            return True
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()

    def _roll(self) -> None:
        """Close this segment and continue into a new one."""
        assert self.writer is not None
        old, self.writer = self.writer, None
        self._held = old.take_pending()
        self._after = old.last
        old.close()
        self._open()

    def _from_ring(self, msg: protocol.Frame) -> None:
        """After a restart: the frames between the session's last row and ``msg`` that
        the camera's ring still holds, oldest first."""
        ref = getattr(msg.image, "slot_ref", None)
        w = self.writer
        if ref is None or w is None or w.last is None:
            return
        try:
            mapped = self.decoder.rings.mapping(ref.ring)
        except shmring.RingError:
            return
        follower = RingFollower(mapped, max(0, ref.gen - mapped.h.slots))
        taken = 0
        for parts in follower.take(mapped.h.slots):
            old = self.decoder.decode(parts)
            if not isinstance(old, protocol.Frame) or old.frame_id >= msg.frame_id:
                break
            if old.frame_id > w.last and old.frame_id >= self.start_frame:
                w.frame(old)
                taken += 1
        self.ctx.counters["rec_from_ring"] += taken

    def close(self) -> None:
        """Finish the segment (at exit)."""
        self.stop_now()


def prewarm(cfg: Config, args: dict[str, Any]) -> None:
    """In a warm spare (livepose/runtime/spares.py): load the codec library and open the
    configured encoder once."""
    from livepose.acquisition.encoders import check_codec

    check_codec(cfg.recording)


def main(ctx: StageContext) -> None:
    """Encoder process main."""
    cam = ctx.cfg.cameras[int(ctx.args["camera"])].name
    hwm = max(1000, HEADER_QUEUE_RINGS * ring_slots(ctx.cfg))
    frames = ctx.socket(zmq.SUB, connect=ctx.endpoints[f"frame/{cam}"], subscribe=[], hwm=hwm)
    ep = ctx.endpoints.get("record")
    ctl = ctx.socket(zmq.SUB, connect=ep, subscribe=RECORD_TOPIC) if ep else None
    decoder = codec.Decoder(expect=["frame"], copy_shared=False)
    decoder.rings = LapTolerantRings()
    enc = Encoder(ctx, cam, frames, decoder)
    launch = ctx.args.get("record")
    if launch:  # subscribe first, so headers queue while the codec loads
        enc.start(Path(launch["session"]), launch.get("frame"),
                  resume=bool(ctx.args.get("restarted")))
    if ctx.cfg.recording.codec not in ("raw", "none"):
        import av  # noqa: F401  (the codec library, before the first frame)
    poller = zmq.Poller()
    poller.register(frames, zmq.POLLIN)
    if ctl is not None:
        poller.register(ctl, zmq.POLLIN)
    ctx.ready(camera=cam)
    ctx.set_state("running")
    idle_since: float | None = None
    stop_by: float | None = None
    try:
        while True:
            ctx.tick_health()
            ctx.counters["rejected"] = decoder.rejected
            if ctx.stopping:  # drain what the camera sent before it stopped, then close
                now = time.monotonic()
                stop_by = stop_by or now + DRAIN_MAX_S
                if enc.session is None or now > stop_by or \
                        (idle_since is not None and now - idle_since > DRAIN_IDLE_S):
                    break
            events = dict(poller.poll(100))
            if ctl is not None and ctl in events:
                _take_control(ctx, ctl, enc)
            if frames not in events:
                idle_since = idle_since or time.monotonic()
                continue
            idle_since = None
            for _ in range(256):
                try:
                    parts = frames.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                msg = decoder.decode(parts)
                if isinstance(msg, protocol.Frame) and msg.cam == cam:
                    enc.on_frame(msg)
    finally:
        enc.close()


def _take_control(ctx: StageContext, ctl: zmq.Socket[Any], enc: Encoder) -> None:
    while True:
        try:
            parts = ctl.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        body = decode_record_control(parts)
        if body is None:
            ctx.counters["rejected_control"] += 1
        else:
            enc.control(body)
