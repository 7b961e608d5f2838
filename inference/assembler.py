"""Frame-sets: one frame per camera with the same ``frame_id``, newest complete set first.

An inference worker ``k`` of ``K`` owns the frame-ids with ``frame_id % K == k``. The
assembler keeps its pending sets by frame_id; :meth:`FrameSetAssembler.pop_latest_complete`
hands out the newest complete set and abandons every older one, so a worker that falls
behind jumps to fresh data. Every frame-id of the worker's share, from the first one seen
up to the last one handed out, is accounted exactly once: handed out, *skipped* (complete
but jumped over) or *incomplete* (a camera's frame, or all of them, never arrived). A
frame arriving after its set was handed out or abandoned is *late* and dropped.

Frames from one camera arrive in order (one ZeroMQ connection per camera), so once a
newer set is complete, an older set that lacks camera ``c`` will never be completed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from livepose.core.protocol import Frame
from livepose.core.sync import SpreadCheck, frame_time_ns

log = logging.getLogger(__name__)

#: At most this many never-seen frame-ids are listed per jump (a bigger jump is counted
#: under ``unlisted`` instead of producing a huge message).
MAX_LISTED = 100_000


@dataclass(slots=True)
class FrameSet:
    """One frame-id seen by every camera.

    Attributes
    ----------
    frame_id
        The trigger pulse index.
    frames
        One frame per camera, in the assembler's camera order (``None`` while missing).
    t_set_ns
        Host time the last frame of the set was received (``time.time_ns()``).
    """

    frame_id: int
    frames: list[Frame | None]
    t_set_ns: int = 0
    count: int = 0

    @property
    def complete(self) -> bool:
        """True when every camera's frame is there."""
        return self.count == len(self.frames)


@dataclass(slots=True)
class Popped:
    """What :meth:`FrameSetAssembler.pop_latest_complete` returns.

    ``frames`` are in camera order; ``skipped`` and ``incomplete`` are the frame-ids
    abandoned since the previous pop, ascending.
    """

    frame_id: int
    frames: list[Frame]
    t_set_ns: int
    skipped: list[int] = field(default_factory=list)
    incomplete: list[int] = field(default_factory=list)


class FrameSetAssembler:
    """Groups frames into frame-sets for inference worker ``worker`` of ``workers``.

    Parameters
    ----------
    cams
        Camera names; the order of every returned frame list.
    worker, workers
        This worker's index and the number of workers (frame-id share).
    max_pending
        At most this many sets are kept; beyond it the oldest is abandoned.
    start_id
        First frame-id to account for. ``None``: the oldest frame-id seen at the first
        pop (frames that never reached this worker before then are not reported).

    Attributes
    ----------
    counters
        ``frames`` (accepted), ``sets`` (completed), ``skipped``, ``incomplete``,
        ``late``, ``duplicates``, ``foreign`` (another worker's share), ``unknown_cam``,
        ``unlisted``, ``gaps/<cam>`` (frame-ids of this share a camera never delivered,
        judged from consecutive frames of that camera), ``desync`` (complete sets whose
        cross-camera timestamp spread exceeds ``desync_tolerance_ms``) and ``reshards``.
    """

    def __init__(self, cams: list[str], worker: int = 0, workers: int = 1,
                 max_pending: int = 64, start_id: int | None = None,
                 desync_tolerance_ms: float | None = None) -> None:
        if not cams or len(set(cams)) != len(cams):
            raise ValueError(f"cams must be unique and non-empty, got {cams}")
        if not 0 <= worker < workers:
            raise ValueError(f"worker {worker} out of range for {workers} workers")
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        self.cams = list(cams)
        self.worker = worker
        self.workers = workers
        self.max_pending = max_pending
        self._index = {c: i for i, c in enumerate(cams)}
        self._pending: dict[int, FrameSet] = {}
        self._newest_complete: int | None = None
        # highest frame-id handed out or abandoned; frames at or below it are late
        self._floor: int | None = None if start_id is None else self._share_floor(start_id)
        self._last_seen: dict[str, int] = {}
        self._skipped: list[int] = []
        self._incomplete: list[int] = []
        self.counters: Counter[str] = Counter()
        self._spread = SpreadCheck.from_ms(desync_tolerance_ms)

    def _share_floor(self, start_id: int) -> int:
        """The share frame-id just before the first share frame-id ≥ ``start_id``."""
        first = start_id + (self.worker - start_id) % self.workers
        return first - self.workers

    # ------------------------------------------------------------------ input
    def add(self, frame: Frame, t_recv_ns: int | None = None) -> bool:
        """Take one frame; return True if it was kept.

        Parameters
        ----------
        frame
            A decoded frame (its image may be a view of the received ZeroMQ buffer; it is
            referenced until its set is handed out or abandoned).
        t_recv_ns
            When it was received (default: now).
        """
        fid = frame.frame_id
        if fid % self.workers != self.worker:
            self.counters["foreign"] += 1
            return False
        idx = self._index.get(frame.cam)
        if idx is None:
            self.counters["unknown_cam"] += 1
            return False
        self._track_gap(frame.cam, fid)
        if self._floor is not None and fid <= self._floor:
            self.counters["late"] += 1
            return False
        fs = self._pending.get(fid)
        if fs is None:
            fs = self._pending[fid] = FrameSet(fid, [None] * len(self.cams))
        if fs.frames[idx] is not None:
            self.counters["duplicates"] += 1
            return False
        fs.frames[idx] = frame
        fs.count += 1
        self.counters["frames"] += 1
        if fs.complete:
            fs.t_set_ns = time.time_ns() if t_recv_ns is None else t_recv_ns
            self.counters["sets"] += 1
            self._check_spread(fs)
            if self._newest_complete is None or fid > self._newest_complete:
                self._newest_complete = fid
        if len(self._pending) > self.max_pending:
            self._evict_oldest()
        return True

    def _check_spread(self, fs: FrameSet) -> None:
        """Cross-camera spread of a complete set (exposure time if known, else grab time):
        above ``desync_tolerance_ms`` it counts ``desync`` (see :mod:`livepose.core.sync`)."""
        _, desync = self._spread.check(frame_time_ns(f.t_exposure_ns, f.t_grab_ns)
                                       for f in fs.frames if f is not None)
        if desync:
            self.counters["desync"] += 1

    @property
    def max_spread_ns(self) -> int:
        """Largest cross-camera timestamp spread of a completed set, ns."""
        return self._spread.max_spread_ns

    def _track_gap(self, cam: str, fid: int) -> None:
        last = self._last_seen.get(cam)
        if last is not None and fid > last + self.workers:
            self.counters[f"gaps/{cam}"] += (fid - last) // self.workers - 1
        if last is None or fid > last:
            self._last_seen[cam] = fid

    def reshard(self, worker: int, workers: int, from_id: int) -> None:
        """Own ``frame_id % workers == worker`` from ``from_id`` on (a worker died).

        Every id of the old share below ``from_id`` is abandoned now (reported by the next
        pop as skipped or incomplete); frames below ``from_id`` are late from here on.
        """
        if not 0 <= worker < workers:
            raise ValueError(f"worker {worker} out of range for {workers} workers")
        if self._floor is None and self._pending:
            self._floor = min(self._pending) - self.workers
        if self._floor is not None and from_id > self._floor + self.workers:
            self._retire_below(from_id)
        self._pending = {k: v for k, v in self._pending.items() if k >= from_id}
        self.worker, self.workers = worker, workers
        self._floor = self._share_floor(from_id)
        self._last_seen.clear()
        self._newest_complete = None
        for fid, fs in list(self._pending.items()):  # kept only if also in the new share
            if fid % workers != worker:
                del self._pending[fid]
            elif fs.complete and (self._newest_complete is None or fid > self._newest_complete):
                self._newest_complete = fid
        self.counters["reshards"] += 1

    # ------------------------------------------------------------------ output
    @property
    def has_complete(self) -> bool:
        """True when a complete set is waiting."""
        return self._newest_complete is not None

    @property
    def pending(self) -> int:
        """Number of sets waiting (complete or not)."""
        return len(self._pending)

    def pending_ids(self) -> list[int]:
        """Frame-ids of the waiting sets, ascending."""
        return sorted(self._pending)

    def unreported(self) -> tuple[list[int], list[int]]:
        """Frame-ids abandoned (skipped, incomplete) that the next pop will report."""
        return list(self._skipped), list(self._incomplete)

    def pop_latest_complete(self) -> Popped | None:
        """Hand out the newest complete set; abandon every older one.

        Returns
        -------
        Popped or None
            The set (frames in camera order) and the frame-ids abandoned since the previous
            pop; ``None`` when no set is complete (abandoned ids are then kept for later).
        """
        fid = self._newest_complete
        if fid is None:
            return None
        self._retire_below(fid)
        fs = self._pending.pop(fid)
        self._floor = fid
        self._newest_complete = None
        out = Popped(fid, [f for f in fs.frames if f is not None], fs.t_set_ns,
                     self._skipped, self._incomplete)
        self._skipped, self._incomplete = [], []
        return out

    def _evict_oldest(self) -> None:
        oldest = min(self._pending)
        self._retire_below(oldest + 1)
        log.debug("more than %d pending frame-sets; abandoned %d", self.max_pending, oldest)

    def _retire_below(self, fid: int) -> None:
        """Abandon every share frame-id above the floor and below ``fid``, pending or not."""
        step = self.workers
        lo = self._floor + step if self._floor is not None else min(self._pending)
        older = sorted(k for k in self._pending if k < fid)
        n_ids = max(0, (fid - lo + step - 1) // step)
        if n_ids > MAX_LISTED:  # a huge jump: list only what was seen
            self.counters["unlisted"] += n_ids - len(older)
            ids = older
        else:
            ids = list(range(lo, fid, step))
        for i in ids:
            fs = self._pending.pop(i, None)
            if fs is not None and fs.complete:
                self._skipped.append(i)
                self.counters["skipped"] += 1
            else:
                self._incomplete.append(i)
                self.counters["incomplete"] += 1
        if ids:
            self._floor = ids[-1]  # ascending, and above the old floor
        if self._newest_complete is not None and self._newest_complete < fid:
            self._newest_complete = None
