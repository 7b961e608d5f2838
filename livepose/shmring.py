"""Same-host frame rings: pixels in shared memory, headers over ZeroMQ.

A camera process on the same host as its subscribers writes each frame into the next slot of
a ring in ``/dev/shm`` and publishes only the ``frame`` header, whose array entry names the
ring, the slot and the slot's generation instead of carrying the pixels (see
:func:`livepose.protocol.encode`). Subscribers map the ring read-only and read the image in
place: one copy into shared memory replaces the kernel's two copies through the socket, and a
frame-set that a worker does not own (``frame_id % K``) costs it nothing.

Ring file layout (little-endian)::

    0     magic  b"LPRING1\\0"
    8     slots       u64
    16    slot_bytes  u64   (stride, a multiple of 4096)
    64    gen[slots]  u64   generation of each slot's content, 0 while it is being written
    DATA  slot k at DATA + k * slot_bytes, DATA = 4096-aligned end of the header

Generations are a seqlock: the writer zeroes ``gen[k]`` before it writes slot ``k`` and sets
it to a new, never reused value after; a reader accepts a reference ``(ring, k, g)`` only while
``gen[k] == g``, and checks again after it has used the pixels (:func:`intact`) — a slot
overwritten meanwhile (the reader fell ``slots`` frames behind) is detected, never used
silently. The ring's name carries the writer's pid; :func:`remove_stale` deletes rings whose
writer died without unlinking (``kill -9``).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SHM_DIR = Path("/dev/shm")
MAGIC = b"LPRING1\0"
PAGE = 4096
PREFIX = "livepose-"
_NAME = re.compile(r"^livepose-(\d+)-[A-Za-z0-9_.-]{1,96}$")
MAX_SLOTS = 4096


class RingError(ValueError):
    """A reference cannot be resolved. ``reason`` is a short counter key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def available() -> bool:
    """Whether this host has a POSIX shared-memory directory we can write."""
    return SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK)


def _data_offset(slots: int) -> int:
    return -(-(64 + 8 * slots) // PAGE) * PAGE


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
    """

    def __init__(self, tag: str, slots: int, slot_bytes: int) -> None:
        if not 2 <= slots <= MAX_SLOTS:
            raise ValueError(f"slots must be in 2..{MAX_SLOTS}, got {slots}")
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", tag)[:64] or "ring"
        self.name = f"{PREFIX}{os.getpid()}-{safe}-{secrets.token_hex(4)}"
        self.slots = slots
        self.slot_bytes = -(-max(1, slot_bytes) // PAGE) * PAGE
        self.data_offset = _data_offset(slots)
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
        buf[8:24].view("<u8")[:] = (slots, self.slot_bytes)
        self._gen = buf[64 : 64 + 8 * slots].view("<u8")
        self._data = buf[self.data_offset :]
        # touch every page now: first-touch page faults on a fresh ring cost ~1 ms per
        # megabyte-sized slot, and would land on the first `slots` frames
        self._data[:] = 0
        self._next = 0
        self._last_gen = 0
        self._loaned: int | None = None
        self.closed = False

    def loan(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """The next slot as a writable ``shape``/``dtype`` array, marked as being written.
        Fill it, then :meth:`commit`."""
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if nbytes > self.slot_bytes:
            raise ValueError(f"array of {nbytes} bytes does not fit a {self.slot_bytes}-byte slot")
        k = self._next
        self._next = (k + 1) % self.slots
        self._gen[k] = 0  # readers holding the old content see it is gone
        self._loaned = k
        start = k * self.slot_bytes
        return self._data[start : start + nbytes].view(dt).reshape(shape)

    def commit(self) -> SlotRef:
        """Publish the loaned slot's content; returns the reference to send."""
        if self._loaned is None:
            raise RuntimeError("commit() without loan()")
        k, self._loaned = self._loaned, None
        self._last_gen += 1
        self._gen[k] = self._last_gen
        return SlotRef(self.name, k, self._last_gen)

    def put(self, array: np.ndarray) -> SlotRef:
        """Copy ``array`` into the next slot and commit it."""
        np.copyto(self.loan(array.shape, array.dtype), array)
        return self.commit()

    def holds(self, array: np.ndarray) -> bool:
        """Whether ``array`` lies in this ring's memory (a loaned slot)."""
        return not self.closed and bool(np.may_share_memory(array, self._data))

    def close(self) -> None:
        """Unlink the ring (readers keep their mappings until they drop them)."""
        if self.closed:
            return
        self.closed = True
        self.path.unlink(missing_ok=True)
        self._gen = self._data = np.empty(0, np.uint8)
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
    return int(array.slot_gen[array.slot_ref.slot]) == array.slot_ref.gen


class _Mapped:
    __slots__ = ("data", "gen", "mm", "slot_bytes", "slots")

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
            raise RingError("shm_bad_ring", f"{path.name}: not a livepose ring")
        self.slots, self.slot_bytes = (int(v) for v in buf[8:24].view("<u8"))
        off = _data_offset(self.slots) if 0 < self.slots <= MAX_SLOTS else -1
        if off < 0 or self.slot_bytes % PAGE or off + self.slots * self.slot_bytes > size:
            raise RingError("shm_bad_ring", f"{path.name}: inconsistent header")
        self.gen = buf[64 : 64 + 8 * self.slots].view("<u8")
        self.data = buf[off:]


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
        self._rings: dict[str, _Mapped] = {}

    def _ring(self, name: Any) -> _Mapped:
        m = self._rings.get(name)
        if m is not None:
            return m
        if not isinstance(name, str) or not _NAME.match(name):
            raise RingError("shm_bad_ref", f"ring name {name!r}")
        try:
            m = _Mapped(SHM_DIR / name)
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
        m = self._ring(name)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if not 0 <= k < m.slots or nbytes > m.slot_bytes or g <= 0:
            raise RingError("shm_bad_ref", f"slot {k} / {nbytes} bytes in {name}")
        if int(m.gen[k]) != g:
            raise RingError("shm_overrun", f"{name} slot {k} was reused")
        start = k * m.slot_bytes
        out = m.data[start : start + nbytes].view(dtype).reshape(shape).view(SharedView)
        out.slot_gen = m.gen
        out.slot_ref = SlotRef(name, k, g)
        return out


def remove_stale(directory: Path = SHM_DIR) -> list[str]:
    """Delete rings whose writer process no longer exists; returns their names."""
    removed: list[str] = []
    try:
        entries = list(directory.glob(PREFIX + "*"))
    except OSError:
        return removed
    for path in entries:
        m = _NAME.match(path.name)
        if m is None:
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
            continue  # alive (or not ours to signal): leave it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed
