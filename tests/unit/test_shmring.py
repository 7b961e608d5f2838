"""Same-host frame rings (livepose.transport.shmring) and their references in the protocol."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from livepose.core import protocol
from livepose.core.config import parse_config
from livepose.transport import codec, shmring

pytestmark = pytest.mark.skipif(not shmring.available(), reason="no writable /dev/shm")


def frame(k: int, image: np.ndarray) -> protocol.Frame:
    return protocol.Frame(cam="cam0", frame_id=k, t_grab_ns=k, pixel_format="Mono8", image=image)


def test_round_trip_copy_and_in_place() -> None:
    ring = shmring.FrameRing("cam0", 4, 48 * 64)
    try:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 255, (48, 64), np.uint8) for _ in range(6)]
        parts = [protocol.encode(frame(k, im), {"image": ring.put(im)})
                 for k, im in enumerate(images)]
        assert all(len(p) == 2 for p in parts)  # topic + header: no pixels in the message
        copying = codec.Decoder()
        in_place = codec.Decoder(copy_shared=False)
        # frames 0 and 1 were overwritten by 4 and 5: counted and dropped, never wrong pixels
        assert copying.decode(parts[0]) is None and copying.errors["shm_overrun"] == 1
        for k in (2, 3, 4, 5):
            msg = copying.decode(parts[k])
            assert isinstance(msg, protocol.Frame) and type(msg.image) is np.ndarray
            np.testing.assert_array_equal(msg.image, images[k])
        view = in_place.decode(parts[5])
        assert isinstance(view, protocol.Frame) and isinstance(view.image, shmring.SharedView)
        assert not view.image.flags.writeable and shmring.intact(view.image)
        np.testing.assert_array_equal(view.image, images[5])
        for _ in range(3):  # not yet round the ring
            ring.put(images[0])
        assert shmring.intact(view.image)
        ring.put(images[0])  # slot of frame 5 reused
        assert not shmring.intact(view.image)
        assert shmring.intact(np.zeros(3))  # an ordinary array is always intact
    finally:
        ring.close()
    assert not ring.path.exists()


def test_loan_and_commit_fill_in_place() -> None:
    ring = shmring.FrameRing("cam0", 3, 100)
    try:
        slot = ring.loan((10, 10), np.uint8)
        slot[:] = 7
        ref = ring.commit()
        view = shmring.RingReader().view(ref.wire(), np.dtype(np.uint8), [10, 10])
        assert (view == 7).all()
        with pytest.raises(RuntimeError, match="without loan"):
            ring.commit()
        with pytest.raises(ValueError, match="does not fit"):
            ring.loan((100, 100), np.uint8)
        with pytest.raises(ValueError, match="slots"):
            shmring.FrameRing("x", 1, 10)
    finally:
        ring.close()


@pytest.mark.parametrize(("ref", "reason"), [
    (["../../etc/passwd", 0, 1], "shm_bad_ref"),
    (["livepose-1-nosuchring", 0, 1], "shm_missing"),
    ("livepose-1-x", "shm_bad_ref"),
    ([None, 0, 1], "shm_bad_ref"),
    (["RING", 99, 1], "shm_bad_ref"),
    (["RING", 0, True], "shm_bad_ref"),
    (["RING", 0, 0], "shm_bad_ref"),
    (["RING", 0, 77], "shm_overrun"),
])
def test_malformed_references_are_counted_and_dropped(ref: Any, reason: str) -> None:
    ring = shmring.FrameRing("cam0", 2, 64)
    try:
        ring.put(np.ones((8, 8), np.uint8))
        if isinstance(ref, list) and ref[0] == "RING":
            ref = [ring.name, *ref[1:]]
        header = protocol.encode(frame(0, np.ones((8, 8), np.uint8)))[1]
        import msgpack

        h = msgpack.unpackb(header)
        h["arrays"] = [["image", "|u1", [8, 8], ref]]
        dec = codec.Decoder()
        assert dec.decode([b"frame/cam0", msgpack.packb(h)]) is None
        assert dec.errors[reason] == 1
        # a slot too small for the shape the header claims
        h["arrays"] = [["image", "|u1", [65, 64], [ring.name, 0, 1]]]  # > one page
        assert dec.decode([b"frame/cam0", msgpack.packb(h)]) is None
        assert dec.errors["shm_bad_ref"] >= 1
        # without a ring reader (a strict decode with none): a clear reason
        with pytest.raises(protocol.ProtocolError, match="shm_unavailable"):
            protocol.decode_strict([b"frame/cam0", msgpack.packb(h)])
    finally:
        ring.close()


def test_not_a_ring_is_refused(tmp_path: Path) -> None:
    name = f"livepose-{os.getpid()}-notaring"
    path = shmring.SHM_DIR / name
    path.write_bytes(b"x" * 8192)
    try:
        with pytest.raises(shmring.RingError, match="shm_bad_ring"):
            shmring.RingReader().view([name, 0, 1], np.dtype(np.uint8), [4])
    finally:
        path.unlink()


def _exit() -> None:
    pass


def test_remove_stale_deletes_rings_of_dead_writers_only() -> None:
    p = mp.get_context("spawn").Process(target=_exit)
    p.start()
    p.join()
    dead = shmring.SHM_DIR / f"livepose-{p.pid}-cam0-deadbeef"
    dead.write_bytes(b"")
    live = shmring.FrameRing("cam0", 2, 10)
    try:
        removed = shmring.remove_stale()
        assert dead.name in removed and not dead.exists()
        assert live.path.exists() and live.name not in removed
    finally:
        dead.unlink(missing_ok=True)
        live.close()


def _writer(endpoint: str, n: int) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.bind(endpoint)
    pub.recv()  # the subscription
    ring = shmring.FrameRing("cam0", 8, 32 * 40 * 2)
    for k in range(n):
        img = np.full((32, 40), k * 1000, np.uint16)
        pub.send_multipart(protocol.encode(frame(k, img), {"image": ring.put(img)}))
    pub.recv()  # the subscriber says it is done: the ring may go
    ring.close()
    pub.close()
    ctx.term()


def test_across_processes(tmp_path: Path) -> None:
    """A real writer process, a real ZeroMQ ipc socket: uint16 frames arrive bit-exact and
    the ring file is gone after the writer closes it."""
    ep = f"ipc://{tmp_path}/ring.sock"
    p = mp.get_context("spawn").Process(target=_writer, args=(ep, 5))
    ctx: zmq.Context[Any] = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(ep)
    p.start()
    dec = codec.Decoder()
    try:
        got = []
        while len(got) < 5 and sub.poll(10_000):
            msg = dec.decode(sub.recv_multipart(copy=False))
            assert isinstance(msg, protocol.Frame)
            got.append(msg)
        assert [int(m.image[0, 0]) for m in got] == [0, 1000, 2000, 3000, 4000]
        assert all(m.image.dtype == np.uint16 and m.image.shape == (32, 40) for m in got)
        sub.setsockopt(zmq.UNSUBSCRIBE, b"")  # XPUB sees it: the writer may close
        p.join(10)
        assert p.exitcode == 0
        assert not list(shmring.SHM_DIR.glob(f"livepose-{p.pid}-*"))
    finally:
        if p.is_alive():
            p.kill()
        sub.close(0)
        ctx.term()


def test_config() -> None:
    base = {"cameras": [{"name": "a", "backend": "sim"}, {"name": "b", "backend": "sim"}]}
    cfg = parse_config(base)
    assert cfg.transport.frames == "auto" and shmring.frames_in_shm(cfg.transport)
    assert cfg.transport.ring_slots(30) == 16 and cfg.transport.ring_slots(200) == 100
    tcp = parse_config({**base, "transport": {"kind": "tcp"}})
    assert not shmring.frames_in_shm(tcp.transport)
    assert not shmring.frames_in_shm(parse_config({**base, "transport": {"frames": "zmq"}}).transport)
    with pytest.raises(Exception, match=r"transport: frames: .shm. needs every process on one host"):
        parse_config({**base, "transport": {"kind": "tcp", "frames": "shm"}})
    with pytest.raises(Exception, match=r"transport\.shm_slots"):
        parse_config({**base, "transport": {"shm_slots": 2}})


def _camera_loop(tmp_path: Path) -> tuple[Any, Any]:
    from livepose.acquisition.camera import CameraLoop
    from livepose.kit.process import StageContext

    cfg = parse_config({"cameras": [{"name": "cam0", "backend": "sim"},
                                    {"name": "cam1", "backend": "sim"}]})
    zctx: zmq.Context[Any] = zmq.Context()
    ctx = StageContext(name="cam0", cfg=cfg, endpoints={}, args={"camera": 0}, zmq_ctx=zctx)

    class Backend:  # only what CameraLoop reads; the image sink is what is tested
        name = "cam0"
        counter_bits = 64
        counter_origin = 0
        image_sink = None

    backend = Backend()
    pub = zctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    return CameraLoop(ctx, backend, pub), backend  # type: ignore[arg-type]


def _close(loop: Any) -> None:
    loop.close()
    loop.pub.close(0)
    loop.ctx.close()


def test_camera_loop_loans_slots_to_the_backend(tmp_path: Path) -> None:
    from livepose.acquisition.base import copy_out

    loop, backend = _camera_loop(tmp_path)
    try:
        assert loop.shm and backend.image_sink == loop.loan
        driver_buffer = np.arange(48 * 64, dtype=np.uint16).reshape(48, 64)
        image = copy_out(driver_buffer, backend.image_sink)  # what pylon/harvesters/PySpin do
        ring, staged = loop.ring_for_image(image)
        assert staged  # in place: no second copy
        ref = ring.commit()
        assert np.shares_memory(image, loop.ring._data) and loop.ring.holds(image)
        view = shmring.RingReader().view(ref.wire(), np.dtype(np.uint16), [48, 64])
        np.testing.assert_array_equal(view, driver_buffer)
        other = np.ones((48, 64), np.uint16)  # a backend's own array: copied into a slot
        assert not loop.ring.holds(other)
        ring, staged = loop.ring_for_image(other)
        assert ring is loop.ring and not staged
        ref2 = ring.put(other)
        assert ref2.slot != ref.slot and ref2.gen > ref.gen
        big = np.zeros((480, 640), np.uint16)  # bigger frames (ROI change): a new ring
        name = loop.ring.name
        loop.ring_for_image(big)
        assert loop.ring.name != name and not (shmring.SHM_DIR / name).exists()
        assert loop.ctx.counters["shm_rings"] == 2
    finally:
        _close(loop)


def test_camera_loop_falls_back_when_dev_shm_is_full(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A container's /dev/shm is often 64 MB. A ring that does not fit is refused cleanly
    (ENOSPC from posix_fallocate, simulated here: filling this machine's /dev/shm is not an
    option) and frames carry their pixels instead: logged, counted, nothing lost."""
    import errno

    def full(fd: int, offset: int, size: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    loop, backend = _camera_loop(tmp_path)
    monkeypatch.setattr(os, "posix_fallocate", full)
    try:
        before = set(shmring.SHM_DIR.glob("livepose-*"))
        image = backend.image_sink((8, 8), np.dtype(np.uint8))
        assert loop.ring_for_image(image) == (None, False) and not loop.shm
        assert loop.ring_for_image(np.zeros((8, 8), np.uint8)) == (None, False)
        assert loop.ctx.counters["shm_unavailable"] == 1
        assert "No space left" in (loop.ctx.last_error or "")
        assert set(shmring.SHM_DIR.glob("livepose-*")) == before  # nothing left half-made
    finally:
        _close(loop)


@pytest.mark.skipif(os.getuid() != 0, reason="making a file another user owns needs root")
def test_other_users_rings_are_skipped_not_errors(tmp_path: Path, caplog: Any) -> None:
    """A shared lab machine: another user's dead ring (and a stale one of ours) in the ring
    folder; start-up removes ours, skips theirs with a warning, never raises."""
    dead = 2**22 + 12345  # beyond pid_max on default kernels: no such process
    theirs = tmp_path / f"livepose-{dead}-cam0-deadbeef"
    ours = tmp_path / f"livepose-{dead}-cam1-cafef00d"
    theirs.write_bytes(b"x")
    ours.write_bytes(b"x")
    os.chown(theirs, 54321, 54321)
    with caplog.at_level("WARNING"):
        removed = shmring.remove_stale(tmp_path)
    assert removed == [ours.name] and theirs.exists() and not ours.exists()
    assert "another user's ring" in caplog.text
