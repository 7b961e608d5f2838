"""Futex doorbells: one process sleeps on a 32-bit word in shared memory, another wakes it.

A frame ring (:mod:`livepose.transport.shmring`) keeps a ``bell`` word that its writer bumps and rings
after every commit; a follower that has read everything sleeps in ``FUTEX_WAIT`` on that word
until it changes. That is one kernel wake-up from the camera's commit to the worker's next
instruction — a ZeroMQ message crosses three threads (the sender's I/O thread, the receiver's
I/O thread, the receiver's application thread), and those wake-ups are most of a same-host
hop's latency on a busy machine (docs/benchmarks.md, transport).

Linux only (``futex(2)`` through ``ctypes``, no compiled code). Shared (not ``PRIVATE``)
futexes work across processes that map the same file, and ``FUTEX_WAIT`` works on a read-only
mapping. Elsewhere :func:`supported` is ``False`` and callers stay on ZeroMQ.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import sys
import time
from typing import Any

import numpy as np

# futex(2) system call numbers by machine (asm/unistd.h)
_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98, "riscv64": 98,
              "ppc64le": 221, "ppc64": 221, "s390x": 238, "armv7l": 240, "i686": 240}
# futex_waitv(2) (Linux 5.16+): one number on every architecture
SYS_FUTEX_WAITV = 449
FUTEX_32 = 2
_ENOSYS = 38
FUTEX_WAIT = 0
FUTEX_WAKE = 1
FUTEX_PRIVATE = 128
_EAGAIN, _EINTR, _ETIMEDOUT = 11, 4, 110


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Waitv(ctypes.Structure):
    _fields_ = [("val", ctypes.c_uint64), ("uaddr", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("reserved", ctypes.c_uint32)]


_WAITV = {"ok": True}  # cleared when the kernel says ENOSYS (older than 5.16)


@functools.cache
def _syscall() -> tuple[Any, int] | None:
    """libc's ``syscall`` and the futex number, or ``None`` where futexes are unavailable."""
    number = _SYS_FUTEX.get(platform.machine().lower())
    if not sys.platform.startswith("linux") or number is None:
        return None
    if os.environ.get("LIVEPOSE_NO_FUTEX"):  # force the fallback (tests, odd kernels)
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syscall
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    return fn, number


def supported() -> bool:
    """Whether this host has futexes (Linux on a known architecture)."""
    return _syscall() is not None


def _address(word: np.ndarray) -> ctypes.c_void_p:
    if word.dtype != np.uint32 or word.size != 1:
        raise ValueError("a doorbell is one uint32 word")
    return ctypes.c_void_p(word.ctypes.data)


def wait(word: np.ndarray, seen: int, timeout_s: float) -> bool:
    """Sleep while ``word`` still holds ``seen``, at most ``timeout_s``.

    Parameters
    ----------
    word
        One ``uint32`` in shared memory, shape ``()`` or ``(1,)`` (may be read-only).
    seen
        The value read before deciding to sleep (a change since then returns at once).
    timeout_s
        Upper bound on the sleep.

    Returns
    -------
    bool
        ``True`` if woken or the word changed, ``False`` on timeout (or without futexes).
    """
    sc = _syscall()
    if sc is None:
        return False
    fn, number = sc
    ts = _Timespec(int(timeout_s), int((timeout_s % 1.0) * 1e9))
    rc = fn(number, _address(word), FUTEX_WAIT, ctypes.c_uint32(seen & 0xFFFFFFFF),
            ctypes.byref(ts), None, 0)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    return err in (_EAGAIN, _EINTR)  # changed before we slept / a signal: look again


def wake(word: np.ndarray) -> int:
    """Wake every process sleeping on ``word``; returns how many were woken (0 without
    futexes). Costs one system call (about a microsecond) when nobody sleeps."""
    sc = _syscall()
    if sc is None:
        return 0
    fn, number = sc
    return max(0, int(fn(number, _address(word), FUTEX_WAKE, 0x7FFFFFFF, None, None, 0)))


def wait_any(words: list[np.ndarray], seen: list[int], timeout_s: float) -> bool | None:
    """Sleep until any of ``words`` no longer holds its ``seen`` value, at most
    ``timeout_s`` (``futex_waitv``, Linux 5.16+).

    Returns
    -------
    bool or None
        ``True`` if woken or a word changed, ``False`` on timeout, ``None`` if the kernel
        cannot wait on several words (then wait on one of them with :func:`wait`).
    """
    sc = _syscall()
    if sc is None or not _WAITV["ok"] or not words:
        return None
    if len(words) == 1:
        return wait(words[0], seen[0], timeout_s)
    fn, _ = sc
    vec = (_Waitv * len(words))()
    for i, (w, v) in enumerate(zip(words, seen, strict=True)):
        vec[i].val = v & 0xFFFFFFFF
        vec[i].uaddr = _address(w).value or 0
        vec[i].flags = FUTEX_32
    # futex_waitv takes an absolute CLOCK_MONOTONIC deadline
    end = time.clock_gettime(time.CLOCK_MONOTONIC) + timeout_s
    ts = _Timespec(int(end), int((end % 1.0) * 1e9))
    rc = fn(SYS_FUTEX_WAITV, vec, len(words), 0, ctypes.byref(ts), 1)  # 1: CLOCK_MONOTONIC
    if rc >= 0:
        return True
    err = ctypes.get_errno()
    if err == _ENOSYS:
        _WAITV["ok"] = False
        return None
    return err in (_EAGAIN, _EINTR)


_TSO = {"x86_64", "amd64", "i686", "i386"}  # x86: stores keep their order, so do loads
_FENCE_WORD = np.zeros(1, np.uint32)


@functools.cache
def _needs_fence() -> bool:
    return platform.machine().lower() not in _TSO and _syscall() is not None


def fence() -> None:
    """A full memory barrier between the shared-memory accesses before and after it.

    On x86 (total store order) a seqlock of plain stores and loads is already ordered, so
    this is a no-op. Elsewhere (ARM: Jetson; POWER) stores and loads may become visible out of
    program order, and NumPy has no barrier; the kernel's ``futex_wake`` executes a full
    barrier (``smp_mb``) on every call, so a ``FUTEX_WAKE`` on a private word nobody waits
    on is one (about a microsecond).
    """
    if not _needs_fence():
        return
    sc = _syscall()
    if sc is None:
        return
    fn, number = sc
    fn(number, _address(_FENCE_WORD), FUTEX_WAKE | FUTEX_PRIVATE, 1, None, None, 0)
