"""Frames straight from the rings: headers beside the pixels, futex doorbells, and the feed
that switches a camera from the ZeroMQ socket to its ring and back (livepose.transport.framefeed)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from livepose.core import protocol
from livepose.transport import codec, doorbell, shmring
from livepose.transport.framefeed import FrameFeed, RingFollower

pytestmark = pytest.mark.skipif(not shmring.available(), reason="no writable /dev/shm")
needs_futex = pytest.mark.skipif(not doorbell.supported(), reason="no futex on this host")


def frame(k: int, cam: str = "cam0", shape: tuple[int, int] = (6, 8)) -> protocol.Frame:
    image = np.full(shape, k % 256, np.uint8)
    return protocol.Frame(cam=cam, frame_id=k, t_grab_ns=k, pixel_format="Mono8", image=image)


def test_follower_takes_frames_in_order_and_counts_what_it_lost() -> None:
    ring = shmring.FrameRing("cam0", 4, 48)
    dec = codec.Decoder(copy_shared=False)
    try:
        for k in range(3):
            codec.encode_in_ring(frame(k), ring)
        fo = RingFollower(dec.rings.mapping(ring.name), after_gen=0)
        got = [dec.decode(p) for p in fo.take()]
        assert [m.frame_id for m in got] == [0, 1, 2]  # type: ignore[union-attr]
        assert [int(m.image[0, 0]) for m in got] == [0, 1, 2]  # type: ignore[union-attr]
        assert not fo.pending() and list(fo.take()) == []
        for k in range(3, 9):  # 6 more into 4 slots while the follower sleeps: 2 are gone
            codec.encode_in_ring(frame(k), ring)
        got = [dec.decode(p) for p in fo.take()]
        assert [m.frame_id for m in got] == [5, 6, 7, 8]  # type: ignore[union-attr]
        assert fo.lost == 2
        # started after a frame received some other way: the next one on
        fo2 = RingFollower(dec.rings.mapping(ring.name), after_gen=7)
        assert [dec.decode(p).frame_id for p in fo2.take()] == [7, 8]  # type: ignore[union-attr]
    finally:
        ring.close()


def test_header_too_big_for_the_ring_is_counted_not_misread() -> None:
    ring = shmring.FrameRing("cam0", 4, 48, meta_bytes=64)  # a frame header is ~200 bytes
    try:
        parts = codec.encode_in_ring(frame(0), ring)
        assert ring.meta_overflows == 1
        assert codec.Decoder().decode(parts) is not None  # the socket copy is whole
        fo = RingFollower(shmring.RingReader().mapping(ring.name), after_gen=0)
        assert list(fo.take()) == [] and fo.no_header == 1
    finally:
        ring.close()


def _commit_later(delay_s: float) -> None:
    ring = shmring.FrameRing("cam0", 4, 48)
    Path(os.environ["RING_NAME_FILE"]).write_text(ring.name)
    time.sleep(delay_s)
    codec.encode_in_ring(frame(0), ring)
    time.sleep(60)  # killed by the test


@needs_futex
def test_doorbell_wakes_a_follower_in_another_process(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A real writer process commits after 0.5 s; the follower sleeping on the doorbell wakes
    then (not at its 10 s timeout). Killed with -9, the writer is noticed as gone."""
    name_file = tmp_path / "ring"
    monkeypatch.setenv("RING_NAME_FILE", str(name_file))
    p = mp.get_context("spawn").Process(target=_commit_later, args=(0.5,))
    p.start()
    try:
        deadline = time.monotonic() + 30
        while not name_file.exists() or not name_file.read_text():
            assert time.monotonic() < deadline, "writer never started"
            time.sleep(0.01)
        fo = RingFollower(shmring.RingReader().mapping(name_file.read_text()), 0)
        t0 = time.monotonic()
        assert not fo.wait(0.05)  # nothing yet: a timeout, False
        assert fo.wait(10.0)
        waited = time.monotonic() - t0
        assert waited < 5.0, waited
        assert len(list(fo.take())) == 1
        assert not fo.writer_gone()
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        assert fo.writer_gone()  # died without closing: its pid is gone
    finally:
        if p.is_alive():
            p.kill()
        shmring.remove_stale()


@needs_futex
def test_wait_any_wakes_on_any_word() -> None:
    words = [np.zeros(1, np.uint32), np.zeros(1, np.uint32)]

    def ring_second() -> None:
        time.sleep(0.2)
        words[1][0] = 5
        doorbell.wake(words[1])

    t = threading.Thread(target=ring_second)
    t0 = time.monotonic()
    t.start()
    woken = doorbell.wait_any(words, [0, 0], 10.0)
    t.join()
    if woken is None:
        pytest.skip("kernel older than 5.16 (no futex_waitv)")
    assert woken and time.monotonic() - t0 < 5.0
    assert doorbell.wait_any(words, [0, 5], 0.05) is False  # unchanged: times out
    assert doorbell.wait_any(words, [0, 4], 10.0) is True  # already changed: at once


def _pub_sub(tmp_path: Path) -> tuple[zmq.Context[Any], zmq.Socket[Any], zmq.Socket[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    ep = f"ipc://{tmp_path}/feed.sock"
    pub.bind(ep)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"frame/cam0")
    sub.connect(ep)
    return ctx, pub, sub


def _until_first(pub: zmq.Socket[Any], ring: shmring.FrameRing, feed: FrameFeed,
                 start: int) -> tuple[int, list[int]]:
    """Publish frames until one arrives (ZeroMQ's slow joiner); returns the next frame id
    and the ids received."""
    k = start
    got: list[int] = []
    deadline = time.monotonic() + 10
    while not got:
        assert time.monotonic() < deadline, "no frame arrived"
        pub.send_multipart(codec.encode_in_ring(frame(k), ring))
        k += 1
        time.sleep(0.02)
        got = [m.frame_id for m, _ in feed.drain() if isinstance(m, protocol.Frame)]
    return k, got


@needs_futex
@pytest.mark.parametrize("waitv", [True, False], ids=["futex_waitv", "one_bell"])
def test_feed_moves_a_camera_to_its_ring_and_back(tmp_path: Path, waitv: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Real ZeroMQ ipc sockets: the first frame comes over the socket, the rest from the
    ring, each exactly once; when the ring closes (a new ring after a ROI change) the feed
    subscribes again and follows the next ring."""
    if not waitv:
        monkeypatch.setitem(doorbell._WAITV, "ok", False)
    ctx, pub, sub = _pub_sub(tmp_path)
    ring = shmring.FrameRing("cam0", 64, 48)
    feed = FrameFeed(sub, ["cam0"], codec.Decoder(copy_shared=False))
    try:
        k, got = _until_first(pub, ring, feed, 0)
        assert feed.followed == ["cam0"] and feed.counters["shm_followed"] == 1
        for j in range(k, k + 20):
            stale = codec.encode_in_ring(frame(j), ring)
            pub.send_multipart(stale)
        while got[-1] != k + 19:
            assert feed.wait(5000), "the doorbell never rang"
            got += [m.frame_id for m, _ in feed.drain() if isinstance(m, protocol.Frame)]
        assert got == sorted(set(got)), "a frame came twice (socket and ring)"
        assert got[-20:] == list(range(k, k + 20))
        ring.close()  # e.g. a ROI change: the camera makes a new ring
        list(feed.drain())
        assert feed.followed == [] and feed.counters["shm_writer_gone"] == 1
        # a socket copy of a frame of the left ring (sent before the unsubscribe, late):
        # already delivered from the ring, dropped, and the closed ring is not followed again
        dups = feed.counters["shm_socket_dups"]
        deadline = time.monotonic() + 10
        while feed.counters["shm_socket_dups"] == dups:  # once the subscription is back
            assert time.monotonic() < deadline, "the socket copy never came"
            pub.send_multipart(stale)
            time.sleep(0.02)
            assert [m for m, _ in feed.drain() if m is not None] == []
        assert feed.followed == []
        ring = shmring.FrameRing("cam0", 64, 48)
        _, got2 = _until_first(pub, ring, feed, k + 20)
        assert feed.followed == ["cam0"] and feed.counters["shm_followed"] == 2
        assert got2 == sorted(set(got2)) and got2[0] >= k + 20
        assert feed.counters["shm_lost"] == 0
    finally:
        ring.close()
        pub.close(0)
        sub.close(0)
        ctx.term()


def test_feed_stays_on_the_socket_without_futexes(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doorbell, "supported", lambda: False)
    ctx, pub, sub = _pub_sub(tmp_path)
    ring = shmring.FrameRing("cam0", 64, 48)
    feed = FrameFeed(sub, ["cam0"], codec.Decoder(copy_shared=False))
    try:
        k, got = _until_first(pub, ring, feed, 0)
        for j in range(k, k + 5):
            pub.send_multipart(codec.encode_in_ring(frame(j), ring))
        while got[-1] != k + 4:
            assert feed.wait(5000)
            got += [m.frame_id for m, _ in feed.drain() if isinstance(m, protocol.Frame)]
        assert feed.followed == [] and feed.counters["shm_followed"] == 0
        assert got[-5:] == list(range(k, k + 5))
    finally:
        ring.close()
        pub.close(0)
        sub.close(0)
        ctx.term()


def test_barriers_order_the_seqlock_on_weakly_ordered_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """x86 keeps stores (and loads) in order; ARM does not, so the ring puts a full barrier
    between the slot's bytes and its generation, and the generation and ``head``. Counted
    here with a recording stand-in for the barrier; the real one is a private FUTEX_WAKE
    (run once below: it must not fail)."""
    calls: list[str] = []
    monkeypatch.setattr(doorbell, "fence", lambda: calls.append("fence"))
    ring = shmring.FrameRing("cam0", 4, 48)
    try:
        codec.encode_in_ring(frame(0), ring)
        assert calls == ["fence"] * 3  # after gen = 0; before gen = g; before head = g
        calls.clear()
        fo = RingFollower(shmring.RingReader().mapping(ring.name), after_gen=0)
        assert len(list(fo.take())) == 1 and calls == ["fence"] * 2
    finally:
        ring.close()
    monkeypatch.undo()
    monkeypatch.setattr(doorbell, "_needs_fence", lambda: True)
    doorbell.fence()


@pytest.mark.parametrize("garbage", ["too_many_parts", "length_past_the_area", "not_msgpack"])
def test_a_corrupt_header_in_the_ring_is_counted_and_dropped(garbage: str) -> None:
    """The ring is a file any process of this user can write: a slot's header area that does
    not parse is a counted loss or a counted rejection, the frames around it still arrive."""
    ring = shmring.FrameRing("cam0", 4, 48)
    dec = codec.Decoder(copy_shared=False)
    try:
        for k in range(3):
            codec.encode_in_ring(frame(k), ring)
        area = ring._h.meta_of(1)  # frame 1's header (generation 2 is slot 1)
        words = area[:12].view("<u4")
        if garbage == "too_many_parts":
            words[0] = 10_000
        elif garbage == "length_past_the_area":
            words[1] = 1 << 30
        else:  # the second part (the msgpack header) overwritten with junk
            n0 = int(words[1])
            area[4 + 4 + n0 + 4 : 4 + 4 + n0 + 12] = 0xC1  # 0xc1: never valid msgpack
        fo = RingFollower(dec.rings.mapping(ring.name), after_gen=0)
        got = [dec.decode(p) for p in fo.take()]
        ids = [m.frame_id for m in got if isinstance(m, protocol.Frame)]
        assert ids == [0, 2]
        if garbage == "not_msgpack":
            assert dec.rejected == 1 and fo.lost == 0
        else:
            assert fo.lost == 1 and dec.rejected == 0
    finally:
        ring.close()
