"""Same-host frame rings: pixels in shared memory, headers over ZeroMQ.

A camera process on the same host as its subscribers writes each frame into the next slot of
a ring in ``/dev/shm`` and publishes only the ``frame`` header, whose array entry names the
ring, the slot and the slot's generation instead of carrying the pixels (see
:func:`livepose.core.protocol.encode`). Subscribers map the ring read-only and read the image in
place: one copy into shared memory replaces the kernel's two copies through the socket, and a
frame-set that a worker does not own (``frame_id % K``) costs it nothing.

Ring file layout (little-endian)::

    0     magic  b"LPRING2\\0"
    8     slots       u64
    16    slot_bytes  u64   (stride, a multiple of 4096)
    24    meta_bytes  u64   (room for each slot's message header)
    32    head        u64   generation of the newest committed slot (0: none yet)
    40    bell        u32   low 32 bits of ``head``: the futex word (livepose.transport.doorbell)
    44    closed      u32   1 once the writer has closed the ring
    64    gen[slots]  u64   generation of each slot's content, 0 while it is being written
    META  slot k's header at META + k * meta_bytes: u32 part count, then (u32 length, bytes)…
    DATA  slot k at DATA + k * slot_bytes, DATA = 4096-aligned end of the META area

Generations are a seqlock: the writer zeroes ``gen[k]`` before it writes slot ``k`` and sets
it to a new, never reused value after; a reader accepts a reference ``(ring, k, g)`` only while
``gen[k] == g``, and checks again after it has used the pixels (:func:`intact`) — a slot
overwritten meanwhile (the reader fell ``slots`` frames behind) is detected, never used
silently. Generations count commits (1, 2, …) and slots are used in turn, so generation ``g``
lives in slot ``(g - 1) % slots``.

Each commit also stores the frame's encoded message (``[topic, header]``, the same bytes that
go over ZeroMQ) beside the pixels, advances ``head`` and rings the doorbell: a follower
(:class:`livepose.transport.framefeed.RingFollower`, in the inference worker) takes frames straight
from the ring and sleeps on the doorbell in between — one futex wake-up per frame instead of a
ZeroMQ hop. The ring's name
carries the writer's pid; :func:`remove_stale` deletes rings whose writer died without
unlinking (``kill -9``), and a follower notices such a writer is gone.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from livepose.core.config import TransportConfig
from livepose.core.protocol import ProtocolError
from livepose.transport import doorbell

SHM_DIR = Path("/dev/shm")
MAGIC = b"LPRING2\0"
PAGE = 4096
log = logging.getLogger(__name__)

PREFIX = "livepose-"
_NAME = re.compile(r"^livepose-(\d+)-[A-Za-z0-9_.-]{1,96}$")
MAX_SLOTS = 4096
Buffer = bytes | memoryview
META_BYTES = 2048


class RingError(ValueError):
    """A reference cannot be resolved. ``reason`` is a short counter key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def available() -> bool:
    """Whether this host has a POSIX shared-memory directory we can write."""
    return SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK)


def _offsets(slots: int, meta_bytes: int) -> tuple[int, int]:
    """Byte offsets of the META and DATA areas."""
    meta = -(-(64 + 8 * slots) // 64) * 64
    data = -(-(meta + slots * meta_bytes) // PAGE) * PAGE
    return meta, data


class _Header:
    """Views of a ring file's header fields (shared by the writer and the readers)."""

    __slots__ = ("bell", "closed", "gen", "head", "meta", "meta_bytes", "slot_bytes", "slots")

    def __init__(self, buf: np.ndarray) -> None:
        self.slots, self.slot_bytes, self.meta_bytes = (int(v) for v in buf[8:32].view("<u8"))
        self.head = buf[32:40].view("<u8")
        self.bell = buf[40:44].view(np.uint32)
        self.closed = buf[44:48].view(np.uint32)
        self.gen = buf[64 : 64 + 8 * self.slots].view("<u8")
        meta, _ = _offsets(self.slots, self.meta_bytes)
        self.meta = buf[meta : meta + self.slots * self.meta_bytes]

    def meta_of(self, k: int) -> np.ndarray:
        """Slot ``k``'s header area."""
        return self.meta[k * self.meta_bytes : (k + 1) * self.meta_bytes]


@dataclass(frozen=True, slots=True)
class SlotRef:
    """Where one array lives: ring name, slot index, generation."""

    ring: str
    slot: int
    gen: int

    def wire(self) -> list[Any]:
        """The reference as it travels in a message header."""
        return [self.ring, self.slot, self.gen]


class FrameRing:
    """The writer side: a ring of ``slots`` slots of ``slot_bytes`` each in ``/dev/shm``.

    Parameters
    ----------
    tag
        Part of the ring's name (e.g. the camera name); made safe for a file name.
    slots
        Number of slots: a reader may fall this many frames behind before it loses one.
    slot_bytes
        Bytes of the biggest array a slot must hold.
    meta_bytes
        Room for each slot's encoded message header (a frame header is a few hundred bytes).
    """

    def __init__(self, tag: str, slots: int, slot_bytes: int, meta_bytes: int = META_BYTES) -> None:
        if not 2 <= slots <= MAX_SLOTS:
            raise ValueError(f"slots must be in 2..{MAX_SLOTS}, got {slots}")
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", tag)[:64] or "ring"
        self.name = f"{PREFIX}{os.getpid()}-{safe}-{secrets.token_hex(4)}"
        self.slots = slots
        self.slot_bytes = -(-max(1, slot_bytes) // PAGE) * PAGE
        self.meta_bytes = -(-max(64, meta_bytes) // 64) * 64
        _, self.data_offset = _offsets(slots, self.meta_bytes)
        size = self.data_offset + slots * self.slot_bytes
        self.path = SHM_DIR / self.name
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            # reserve the pages now: on a full tmpfs (a container's 64 MB /dev/shm) touching
            # an unbacked page later would be SIGBUS, this is a clean OSError (ENOSPC)
            os.posix_fallocate(fd, 0, size)
            self._mm = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)
        buf = np.frombuffer(self._mm, np.uint8)
        buf[:8] = np.frombuffer(MAGIC, np.uint8)
        buf[8:32].view("<u8")[:] = (slots, self.slot_bytes, self.meta_bytes)
        self._h = _Header(buf)
        self._data = buf[self.data_offset :]
        # touch every page now: first-touch page faults on a fresh ring cost ~1 ms per
        # megabyte-sized slot, and would land on the first `slots` frames
        self._data[:] = 0
        self._next = 0
        self._last_gen = 0
        self._loaned: int | None = None
        self.meta_overflows = 0  # headers too big for meta_bytes (followers skip those)
        self.closed = False

    def loan(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """The next slot as a writable ``shape``/``dtype`` array, marked as being written.
        Fill it, then :meth:`commit` (a slot loaned again before its commit is reused)."""
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if nbytes > self.slot_bytes:
            raise ValueError(f"array of {nbytes} bytes does not fit a {self.slot_bytes}-byte slot")
        k = self._next
        self._h.gen[k] = 0  # readers holding the old content see it is gone
        doorbell.fence()  # … before any new byte lands in the slot (weakly ordered CPUs)
        self._loaned = k
        start = k * self.slot_bytes
        return self._data[start : start + nbytes].view(dt).reshape(shape)

    def pending_ref(self) -> SlotRef:
        """The reference the loaned slot will have once committed (to encode the header
        that :meth:`commit` stores with it)."""
        if self._loaned is None:
            raise RuntimeError("pending_ref() without loan()")
        return SlotRef(self.name, self._loaned, self._last_gen + 1)

    def commit(self, meta: Sequence[Buffer] = ()) -> SlotRef:
        """Publish the loaned slot's content with its encoded message ``meta`` (the parts
        sent over ZeroMQ, at most ``meta_bytes`` in all), advance ``head`` and ring the
        doorbell; returns the reference."""
        if self._loaned is None:
            raise RuntimeError("commit() without loan()")
        k, self._loaned = self._loaned, None
        self._next = (k + 1) % self.slots
        self._write_meta(k, meta)
        self._last_gen += 1
        h = self._h
        doorbell.fence()  # pixels and header visible before the generation says so
        h.gen[k] = self._last_gen
        doorbell.fence()  # and the generation before head (a follower reads head first)
        h.head[0] = self._last_gen
        h.bell[0] = self._last_gen & 0xFFFFFFFF
        doorbell.wake(h.bell)
        return SlotRef(self.name, k, self._last_gen)

    def _write_meta(self, k: int, meta: Sequence[Buffer]) -> None:
        area = self._h.meta_of(k)
        views = [np.frombuffer(m, np.uint8) for m in meta]
        need = 4 + sum(4 + v.size for v in views)
        if need > area.size:
            self.meta_overflows += 1
            views = []  # a follower skips this frame (counted); ZeroMQ subscribers get it
        area[:4].view("<u4")[0] = len(views)
        pos = 4
        for v in views:
            area[pos : pos + 4].view("<u4")[0] = v.size
            area[pos + 4 : pos + 4 + v.size] = v
            pos += 4 + v.size

    def put(self, array: np.ndarray, meta: Sequence[Buffer] = ()) -> SlotRef:
        """Copy ``array`` into the next slot and commit it."""
        np.copyto(self.loan(array.shape, array.dtype), array)
        return self.commit(meta)

    def holds(self, array: np.ndarray) -> bool:
        """Whether ``array`` lies in this ring's memory (a loaned slot)."""
        return not self.closed and bool(np.may_share_memory(array, self._data))

    def close(self) -> None:
        """Mark the ring closed (followers stop following it), unlink it (readers keep their
        mappings until they drop them)."""
        if self.closed:
            return
        self.closed = True
        self._h.closed[0] = 1
        doorbell.wake(self._h.bell)
        self.path.unlink(missing_ok=True)
        self._h = _Header(np.zeros(64, np.uint8))
        self._data = np.empty(0, np.uint8)
        with contextlib.suppress(BufferError):  # a loaned view still held: it keeps the map
            self._mm.close()


class SharedView(np.ndarray):
    """A read-only array over a ring slot; ``slot_ref``/``slot_gen`` let :func:`intact`
    tell whether the writer has reused the slot since."""

    slot_gen: np.ndarray | None
    slot_ref: SlotRef | None

    def __array_finalize__(self, obj: Any) -> None:
        self.slot_gen = getattr(obj, "slot_gen", None)
        self.slot_ref = getattr(obj, "slot_ref", None)


def intact(array: np.ndarray) -> bool:
    """``False`` if ``array`` is a view of a ring slot that has been overwritten since it was
    received; ``True`` for any other array."""
    if not isinstance(array, SharedView) or array.slot_gen is None or array.slot_ref is None:
        return True
    doorbell.fence()  # the pixels were read before the generation is looked at again
    return int(array.slot_gen[array.slot_ref.slot]) == array.slot_ref.gen


class MappedRing:
    """A ring mapped read-only by a reader."""

    __slots__ = ("data", "h", "mm", "pid")

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size < PAGE:
                raise RingError("shm_bad_ring", f"{path.name}: {size} bytes")
            self.mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        buf = np.frombuffer(self.mm, np.uint8)
        if bytes(buf[:8]) != MAGIC:
            raise RingError("shm_bad_ring", f"{path.name}: not a livepose ring (version 2)")
        slots, slot_bytes, meta_bytes = (int(v) for v in buf[8:32].view("<u8"))
        off = _offsets(slots, meta_bytes)[1] if 0 < slots <= MAX_SLOTS and meta_bytes % 64 == 0 \
            and 64 <= meta_bytes <= 1 << 20 else -1
        if off < 0 or slot_bytes % PAGE or off + slots * slot_bytes > size:
            raise RingError("shm_bad_ring", f"{path.name}: inconsistent header")
        self.h = _Header(buf)
        self.data = buf[off:]
        m = _NAME.match(path.name)
        self.pid = int(m.group(1)) if m else 0

    def writer_gone(self, check_pid: bool = True) -> bool:
        """The writer closed the ring, or (``check_pid``: one system call) its process no
        longer exists (``kill -9``)."""
        if int(self.h.closed[0]):
            return True
        if not check_pid or self.pid <= 0:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return False


class RingReader:
    """The subscriber side: resolves references to views, mapping each ring once.

    Parameters
    ----------
    max_rings
        Mappings kept; the least recently attached is dropped beyond it (a camera that
        restarts creates a new ring).
    """

    def __init__(self, max_rings: int = 64) -> None:
        self.max_rings = max_rings
        self._rings: dict[str, MappedRing] = {}

    def mapping(self, name: Any) -> MappedRing:
        """The mapping of ring ``name`` (mapped at first use). Raises :class:`RingError`."""
        m = self._rings.get(name)
        if m is not None:
            return m
        if not isinstance(name, str) or not _NAME.match(name):
            raise RingError("shm_bad_ref", f"ring name {name!r}")
        try:
            m = MappedRing(SHM_DIR / name)
        except FileNotFoundError:
            raise RingError("shm_missing", f"no ring {name} on this host") from None
        except OSError as exc:
            raise RingError("shm_missing", f"{name}: {exc}") from None
        if len(self._rings) >= self.max_rings:
            self._rings.pop(next(iter(self._rings)))
        self._rings[name] = m
        return m

    def view(self, ref: Any, dtype: np.dtype[Any], shape: list[int]) -> SharedView:
        """The array a wire reference ``[ring, slot, gen]`` points to, read-only, in place.

        Raises
        ------
        RingError
            ``shm_bad_ref`` (malformed, out of range), ``shm_missing`` (no such ring here),
            ``shm_overrun`` (the slot already holds a newer frame).
        """
        if not (isinstance(ref, list) and len(ref) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) for v in ref[1:])):
            raise RingError("shm_bad_ref", f"reference {ref!r}")
        name, k, g = ref
        m = self.mapping(name)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        h = m.h
        if not 0 <= k < h.slots or nbytes > h.slot_bytes or g <= 0:
            raise RingError("shm_bad_ref", f"slot {k} / {nbytes} bytes in {name}")
        if int(h.gen[k]) != g:
            raise RingError("shm_overrun", f"{name} slot {k} was reused")
        doorbell.fence()  # the generation was read before the caller reads the pixels
        start = k * h.slot_bytes
        out = m.data[start : start + nbytes].view(dtype).reshape(shape).view(SharedView)
        out.slot_gen = h.gen
        out.slot_ref = SlotRef(name, k, g)
        return out

    def resolve(self, ref: Any, dtype: np.dtype[Any], shape: list[int],
                copy: bool) -> np.ndarray:
        """:meth:`view`, copied out when ``copy`` (a plain array, checked intact after the
        copy); the protocol's :class:`~livepose.core.protocol.SharedArrays`.

        Raises
        ------
        ProtocolError
            With the :class:`RingError`'s reason (``shm_bad_ref``, ``shm_missing``,
            ``shm_overrun``).
        """
        try:
            view = self.view(ref, dtype, shape)
            if not copy:
                return view
            out = np.array(view, copy=True)  # a plain ndarray (subok=False)
            if not intact(view):
                raise RingError("shm_overrun", "slot reused while copying")
            return out
        except RingError as exc:
            raise ProtocolError(exc.reason, str(exc)) from None


def frames_in_shm(cfg: TransportConfig) -> bool:
    """Whether cameras put pixels in a frame ring (``transport.frames`` resolved on this
    host). Raises ``ValueError`` for ``frames: shm`` where ``/dev/shm`` is not writable."""
    if cfg.frames == "zmq" or (cfg.frames == "auto" and cfg.kind != "ipc"):
        return False
    if cfg.frames == "shm" and not available():
        raise ValueError(f"transport.frames: 'shm' but {SHM_DIR} is not writable "
                         "on this host; use 'zmq'")
    return available()


def remove_stale(directory: Path = SHM_DIR) -> list[str]:
    """Delete *our* rings whose writer process no longer exists; returns their names.

    On a shared lab machine ``/dev/shm`` also holds other users' rings: those (another
    owner, or unreadable) are skipped with a warning, never an error — only their owner may
    remove them."""
    removed: list[str] = []
    try:
        entries = list(directory.glob(PREFIX + "*"))
    except OSError:
        return removed
    uid = os.getuid()
    for path in entries:
        m = _NAME.match(path.name)
        if m is None:
            continue
        try:
            owner = path.stat().st_uid
        except OSError as exc:
            log.warning("skipping unreadable ring %s (%s)", path, exc.strerror)
            continue
        if owner != uid:
            log.warning("skipping %s: another user's ring (uid %d)", path, owner)
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
            continue  # alive (or not ours to signal): leave it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove the stale ring %s (%s)", path, exc.strerror)
            continue
        removed.append(path.name)
    return removed
