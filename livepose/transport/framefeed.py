"""Receive camera frames: over a ZeroMQ SUB socket, or straight from the cameras' frame rings.

A consumer of frames (the inference worker) subscribes to ``frame/<cam>`` as any subscriber
does. When a same-host camera's frame arrives whose pixels lie in a frame ring
(:mod:`livepose.transport.shmring`), the feed starts *following* that ring from the next frame and
unsubscribes the camera's topic: from then on the camera's frames — header and pixels — are
taken from shared memory, and the consumer sleeps on the ring's futex doorbell
(:mod:`livepose.transport.doorbell`) instead of in ``zmq_poll``. That removes the ZeroMQ hop (three
thread wake-ups) from the frame path; the socket stays for everyone else (recorder,
dashboard, remote workers over tcp) and for this consumer's discovery.

A followed ring whose writer closes it (a ROI change makes a new ring) or dies (the camera
process restarts) is dropped and the topic subscribed again, so the next ring is found the
same way. Frames lost meanwhile show as gaps, like any other loss.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from livepose.core import protocol
from livepose.transport import codec, doorbell, shmring

MAX_DRAIN = 256  # messages taken per drain, per source
CHECK_GONE_S = 0.25  # how often a silent followed ring's writer is checked
SINGLE_BELL_MS = 2  # longest sleep on one ring's doorbell when others may ring
MAX_LEFT = 256  # rings remembered as left


#: a generation jump no real run makes between two reads (2⁴⁰ frames: 35 years at 1 kHz)
MAX_GEN_JUMP = 1 << 40


class RingFollower:
    """Take a ring's frames in commit order, straight from shared memory.

    Parameters
    ----------
    mapped
        The ring (from :meth:`~livepose.transport.shmring.RingReader.mapping`).
    after_gen
        Generation of the last frame already received some other way; following starts
        with the next one.

    Attributes
    ----------
    lost
        Frames overwritten before the follower got to them (it fell ``slots`` behind).
    no_header
        Frames committed without their message (header bigger than the ring's meta area).
    """

    def __init__(self, mapped: shmring.MappedRing, after_gen: int) -> None:
        self.m = mapped
        self.next_gen = after_gen + 1
        self.lost = 0
        self.no_header = 0
        #: the ring's header went impossible (a head far beyond any real run): not followed
        self.corrupt = False

    def pending(self) -> bool:
        """Whether a committed frame is waiting."""
        return int(self.m.h.head[0]) >= self.next_gen

    def take(self, limit: int = 64) -> Iterator[list[bytes]]:
        """The next committed frames' messages (``[topic, header]`` each), oldest first,
        at most ``limit``; frames overwritten meanwhile are skipped and counted in ``lost``."""
        h = self.m.h
        for _ in range(limit):
            head = int(h.head[0])
            if head < self.next_gen or self.corrupt:
                return
            if head - self.next_gen > MAX_GEN_JUMP:  # not a lap: a corrupt header
                self.corrupt = True
                return
            if head - self.next_gen >= h.slots:  # lapped: only the newest slots are left
                skip = head - h.slots + 1 - self.next_gen
                self.lost += skip
                self.next_gen += skip
            g = self.next_gen
            self.next_gen += 1
            k = (g - 1) % h.slots
            doorbell.fence()  # head, then the slot's generation (weakly ordered CPUs)
            parts = _read_meta(h.meta_of(k)) if int(h.gen[k]) == g else None
            doorbell.fence()  # the header was read before the generation is checked again
            if parts is None or int(h.gen[k]) != g:  # torn or reused while we read it
                self.lost += 1
                continue
            if not parts:
                self.no_header += 1
                continue
            yield parts

    @property
    def bell(self) -> np.ndarray:
        """The ring's doorbell word (``uint32``, shape ``(1,)``)."""
        return self.m.h.bell

    def bell_value(self) -> int:
        """The doorbell's value now (read it before :meth:`pending`, then sleep on it)."""
        return int(self.m.h.bell[0])

    def wait(self, timeout_s: float) -> bool:
        """Sleep on the ring's doorbell until a frame is committed (``True``), at most
        ``timeout_s`` (``False``)."""
        seen = self.bell_value()
        if self.pending():
            return True
        doorbell.wait(self.bell, seen, timeout_s)
        return self.pending()

    def writer_gone(self, check_pid: bool = True) -> bool:
        """The writer closed the ring or died, and everything it committed has been taken."""
        return not self.pending() and self.m.writer_gone(check_pid)


def _ring_of(msg: protocol.Frame) -> str | None:
    """The ring a frame's pixels lie in (``None``: in the message)."""
    ref = getattr(msg.image, "slot_ref", None)
    return ref.ring if ref is not None else None


def _read_meta(area: np.ndarray) -> list[bytes] | None:
    """A slot's stored message parts; ``None`` if the area is inconsistent (torn)."""
    if area.size < 4:
        return None
    n = int(area[:4].view("<u4")[0])
    if n > 8:
        return None
    parts: list[bytes] = []
    pos = 4
    for _ in range(n):
        if pos + 4 > area.size:
            return None
        size = int(area[pos : pos + 4].view("<u4")[0])
        if pos + 4 + size > area.size:
            return None
        parts.append(area[pos + 4 : pos + 4 + size].tobytes())
        pos += 4 + size
    return parts


@dataclass
class _Followed:
    follower: RingFollower
    name: str
    last_frame_id: int
    last_seen: float


class FrameFeed:
    """Frames of ``cams`` from ``sub`` (subscribed to ``frame/<cam>`` for each), following
    their rings where possible.

    Parameters
    ----------
    sub
        A connected SUB socket.
    cams
        Camera names whose frames are wanted.
    decoder
        Decodes every message (socket or ring); its ring reader maps the rings. Rings are
        found through frames decoded in place (``copy_shared=False``, as the worker does): a
        copied image no longer says which ring it came from.
    follow
        Take frames from rings when they are in one (``False``: the socket only).

    Attributes
    ----------
    counters
        ``shm_followed`` (rings followed so far), ``shm_lost`` (frames overwritten in a ring
        before this consumer read them), ``shm_no_header``, ``shm_writer_gone``,
        ``shm_socket_dups`` (socket copies of frames taken from a ring, dropped).
    """

    def __init__(self, sub: zmq.Socket[Any], cams: list[str], decoder: codec.Decoder,
                 follow: bool = True) -> None:
        self.sub = sub
        self.cams = list(cams)
        self.decoder = decoder
        self.follow = follow and doorbell.supported()
        self.rings: dict[str, _Followed] = {}
        self._left: dict[str, None] = {}  # rings followed and left (oldest first)
        self.counters = dict.fromkeys(
            ("shm_followed", "shm_lost", "shm_no_header", "shm_writer_gone", "shm_socket_dups"),
            0)
        self._poller = zmq.Poller()
        self._poller.register(sub, zmq.POLLIN)

    @property
    def followed(self) -> list[str]:
        """Cameras whose frames now come from their ring."""
        return list(self.rings)

    def drain(self) -> Iterator[tuple[protocol.Message | None, int]]:
        """Every message available now, without blocking: ``(message or None if malformed,
        receive time ns)``."""
        for _ in range(MAX_DRAIN):
            try:
                parts = self.sub.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            t = time.time_ns()
            msg = self.decoder.decode(parts)
            if isinstance(msg, protocol.Frame):
                if msg.cam in self.rings or _ring_of(msg) in self._left:
                    self.counters["shm_socket_dups"] += 1  # sent before the unsubscribe
                    continue  # reached us: taken from the ring already
                self._maybe_follow(msg)
            yield msg, t
        now = time.monotonic()
        for cam, f in list(self.rings.items()):
            for stored in f.follower.take(MAX_DRAIN):
                t = time.time_ns()
                msg = self.decoder.decode(stored)
                if isinstance(msg, protocol.Frame):
                    f.last_frame_id = msg.frame_id
                    f.last_seen = now
                yield msg, t
            self._count(f.follower)
            silent = now - f.last_seen > CHECK_GONE_S  # then also ask whether it died
            if silent:
                f.last_seen = now
            if f.follower.corrupt:
                self.counters["shm_bad_ring"] += 1
                self._unfollow(cam)
            elif f.follower.writer_gone(check_pid=silent):
                self._unfollow(cam)

    def wait(self, timeout_ms: int) -> bool:
        """Block until something may be available, at most ``timeout_ms``. With every
        camera followed, sleep on all their doorbells at once."""
        if any(f.follower.pending() for f in self.rings.values()):
            return True
        if len(self.rings) < len(self.cams) or not self.rings:
            # some frames still come over the socket: poll it (briefly, if rings also feed us)
            ms = timeout_ms if not self.rings else min(timeout_ms, 1)
            return bool(self._poller.poll(ms))
        followers = [f.follower for f in self.rings.values()]
        seen = [fo.bell_value() for fo in followers]
        if any(fo.pending() for fo in followers):
            return True
        woken = doorbell.wait_any([fo.bell for fo in followers], seen, timeout_ms / 1000)
        if woken is None:  # kernel < 5.16: one doorbell at a time, the furthest behind
            # camera's (the one a frame-set most likely waits for), briefly
            behind = min(self.rings.values(), key=lambda f: f.last_frame_id)
            return behind.follower.wait(min(timeout_ms, SINGLE_BELL_MS) / 1000)
        return woken

    def _maybe_follow(self, msg: protocol.Frame) -> None:
        image = msg.image
        if not self.follow or not isinstance(image, shmring.SharedView) \
                or image.slot_ref is None:
            return
        ref = image.slot_ref
        try:
            mapped = self.decoder.rings.mapping(ref.ring)
        except shmring.RingError:
            return
        if mapped.writer_gone(check_pid=False):
            return  # closed: its remaining frames come over the socket
        self.rings[msg.cam] = _Followed(RingFollower(mapped, ref.gen), ref.ring, msg.frame_id,
                                        time.monotonic())
        self.counters["shm_followed"] += 1
        self.sub.setsockopt(zmq.UNSUBSCRIBE, b"frame/" + msg.cam.encode())

    def _unfollow(self, cam: str) -> None:
        f = self.rings.pop(cam)
        self._left[f.name] = None  # its frames still queued on the socket are duplicates
        while len(self._left) > MAX_LEFT:
            self._left.pop(next(iter(self._left)))
        self._count(f.follower)
        self.counters["shm_writer_gone"] += 1
        self.sub.setsockopt(zmq.SUBSCRIBE, b"frame/" + cam.encode())

    def _count(self, follower: RingFollower) -> None:
        """Fold a follower's loss counters into ``counters`` (they only grow)."""
        lost = follower.lost
        if lost:
            self.counters["shm_lost"] += lost
            follower.lost = 0
        if follower.no_header:
            self.counters["shm_no_header"] += follower.no_header
            follower.no_header = 0
