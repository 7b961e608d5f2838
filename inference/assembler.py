"""Frame-sets and the frame-set policy: which views of which ``frame_id`` go to the model.

An inference worker ``k`` of ``K`` owns the frame-ids with ``frame_id % K == k``. The
assembler keeps its pending sets by frame_id; :meth:`FrameSetAssembler.pop_ready` hands out
the newest *ready* set and abandons every older one, so a worker that falls behind jumps to
fresh data. Every frame-id of the worker's share, from the first one seen up to the last
one handed out, is accounted exactly once: handed out, *skipped* (ready but jumped over) or
*incomplete* (abandoned before it was ready). A frame arriving after its set was handed out
or abandoned is *late* and dropped.

The policy (docs/inference.md, "Frame-set policy"). A set is ready when

- every camera's frame arrived (complete), or
- every camera *not known to be gone* has delivered (a rig that lost a camera runs at the
  full rate without waiting for it), or
- ``deadline_ns`` (by default half a frame period) passed since its first frame arrived:
  it goes out with the views that arrived; the others are NaN and named in ``missing``.

A camera missing from ``gone_after`` consecutive sets handed out is *gone* (counted
``gone/<cam>``, logged) and no longer waited for; its next frame makes it rejoin
(``rejoined/<cam>``). A frame the camera's timing model flagged ``desync`` (its exposure is
not the instant of its ``frame_id``) counts as arrived but is never handed out: its view is
NaN, named in ``desynced`` and counted ``desync_views``.

Frames from one camera arrive in order (one ZeroMQ connection per camera), so once a
newer set is ready, an older set that lacks camera ``c`` will never be completed.
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
    t_first_ns: int = 0
    arrived: int = 0  # bitmask of the cameras whose frame arrived (desynced ones included)

    @property
    def complete(self) -> bool:
        """True when every camera's frame is there."""
        return self.count == len(self.frames)


@dataclass(slots=True)
class Popped:
    """What :meth:`FrameSetAssembler.pop_latest_complete` returns.

    ``frames`` are in camera order, ``None`` for a view not handed out (named in
    ``missing`` or ``desynced``); ``skipped`` and ``incomplete`` are the frame-ids abandoned
    since the previous pop, ascending.
    """

    frame_id: int
    frames: list[Frame | None]
    t_set_ns: int
    skipped: list[int] = field(default_factory=list)
    incomplete: list[int] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    desynced: list[str] = field(default_factory=list)

    @property
    def views(self) -> list[Frame]:
        """The frames handed out, in camera order."""
        return [f for f in self.frames if f is not None]


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
    desync_tolerance_ms
        Cross-camera spread of a complete set's timestamps above which it counts ``desync``.
    deadline_ns
        A set is ready this long after its first frame arrived, with the views it has
        (``None``: only complete sets, or sets complete but for gone cameras).
    gone_after
        A camera missing from this many consecutive sets handed out is gone.

    Attributes
    ----------
    counters
        ``frames`` (accepted), ``sets`` (completed), ``skipped``, ``incomplete``,
        ``late``, ``duplicates``, ``foreign`` (another worker's share), ``unknown_cam``,
        ``unlisted``, ``gaps/<cam>`` (frame-ids of this share a camera never delivered,
        judged from consecutive frames of that camera), ``desync`` (complete sets whose
        cross-camera timestamp spread exceeds ``desync_tolerance_ms``), ``reshards``,
        ``partial`` (sets handed out without every view), ``desync_views``, ``gone/<cam>``,
        ``rejoined/<cam>``.
    gone
        Cameras currently known to be gone.
    """

    def __init__(self, cams: list[str], worker: int = 0, workers: int = 1,
                 max_pending: int = 64, start_id: int | None = None,
                 desync_tolerance_ms: float | None = None, deadline_ns: int | None = None,
                 gone_after: int = 3) -> None:
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
        self.deadline_ns = deadline_ns
        self.gone_after = max(1, int(gone_after))
        self.gone: set[str] = set()
        self._live_mask = (1 << len(cams)) - 1
        self._streak = dict.fromkeys(cams, 0)

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
        self._seen_camera(frame.cam)
        if self._floor is not None and fid <= self._floor:
            self.counters["late"] += 1
            return False
        now = time.time_ns() if t_recv_ns is None else t_recv_ns
        fs = self._pending.get(fid)
        if fs is None:
            fs = self._pending[fid] = FrameSet(fid, [None] * len(self.cams), t_first_ns=now)
        if fs.arrived >> idx & 1:
            self.counters["duplicates"] += 1
            return False
        fs.arrived |= 1 << idx
        if frame.desync:
            self.counters["desync_views"] += 1  # arrived, never handed out
        else:
            fs.frames[idx] = frame
            fs.count += 1
        self.counters["frames"] += 1
        fs.t_set_ns = now
        if fs.arrived == (1 << len(self.cams)) - 1:
            self.counters["sets"] += 1
            self._check_spread(fs)
        self._mark_if_ready(fs)
        if len(self._pending) > self.max_pending:
            self._evict_oldest()
        return True

    def _mark_if_ready(self, fs: FrameSet) -> None:
        """Every camera not known to be gone delivered: ready now, no deadline to wait for."""
        if (fs.arrived & self._live_mask) == self._live_mask and fs.arrived and (
                self._newest_complete is None or fs.frame_id > self._newest_complete):
            self._newest_complete = fs.frame_id

    def _seen_camera(self, cam: str) -> None:
        self._streak[cam] = 0
        if cam in self.gone:
            self.gone.discard(cam)
            self._live_mask |= 1 << self._index[cam]
            self.counters[f"rejoined/{cam}"] += 1
            log.warning("camera %s is back: waited for again", cam)

    def _handed_out_without(self, missing: list[str]) -> None:
        for cam in missing:
            self._streak[cam] += 1
            if self._streak[cam] >= self.gone_after and cam not in self.gone:
                self.gone.add(cam)
                self._live_mask &= ~(1 << self._index[cam])
                self.counters[f"gone/{cam}"] += 1
                log.warning("camera %s missing from %d frame-sets in a row: gone, not waited "
                            "for until it delivers again", cam, self._streak[cam])
                for fs in self._pending.values():
                    self._mark_if_ready(fs)

    def _check_spread(self, fs: FrameSet) -> None:
        """Cross-camera spread of a complete set (exposure time if known, else grab time):
        above ``desync_tolerance_ms`` it counts ``desync`` (see :mod:`livepose.core.sync`)."""
        times = [frame_time_ns(f.t_exposure_ns, f.t_grab_ns) for f in fs.frames if f is not None]
        if not times:
            return
        _, desync = self._spread.check(times)
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
            else:
                self._mark_if_ready(fs)
        self.counters["reshards"] += 1

    # ------------------------------------------------------------------ output
    @property
    def has_complete(self) -> bool:
        """True when a set is ready without waiting for a deadline."""
        return self._newest_complete is not None

    def has_ready(self, now_ns: int | None = None) -> bool:
        """True when :meth:`pop_ready` would hand out a set now."""
        return self._newest_ready(time.time_ns() if now_ns is None else now_ns) is not None

    def next_deadline_ns(self) -> int | None:
        """When the oldest waiting set's deadline expires (``None``: no deadline pending)."""
        if self.deadline_ns is None or not self._pending:
            return None
        return min(fs.t_first_ns for fs in self._pending.values()) + self.deadline_ns

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

    def _newest_ready(self, now_ns: int) -> int | None:
        fid = self._newest_complete
        if self.deadline_ns is not None:
            due = now_ns - self.deadline_ns
            expired = [k for k, fs in self._pending.items()
                       if fs.t_first_ns <= due and (fid is None or k > fid)]
            if expired:
                fid = max(expired)
        return fid

    def pop_ready(self, now_ns: int | None = None) -> Popped | None:
        """Hand out the newest ready set (see the module docstring); abandon every older one.

        Returns
        -------
        Popped or None
            The set (frames in camera order, ``None`` where a view is missing or desynced)
            and the frame-ids abandoned since the previous pop; ``None`` when no set is
            ready (abandoned ids are then kept for later).
        """
        fid = self._newest_ready(time.time_ns() if now_ns is None else now_ns)
        if fid is None:
            return None
        self._retire_below(fid)
        fs = self._pending.pop(fid)
        self._floor = fid
        self._newest_complete = None
        for other in self._pending.values():  # newer sets may already be ready
            self._mark_if_ready(other)
        missing = [c for i, c in enumerate(self.cams) if not fs.arrived >> i & 1]
        desynced = [c for i, c in enumerate(self.cams)
                    if fs.arrived >> i & 1 and fs.frames[i] is None]
        if missing or desynced:
            self.counters["partial"] += 1
        self._handed_out_without(missing)
        out = Popped(fid, fs.frames, fs.t_set_ns, self._skipped, self._incomplete,
                     missing, desynced)
        self._skipped, self._incomplete = [], []
        return out

    def pop_latest_complete(self) -> Popped | None:
        """:meth:`pop_ready` without deadlines (kept for callers that only want sets ready
        now)."""
        return self.pop_ready()

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
            if fs is not None and fs.arrived and (fs.arrived & self._live_mask) == self._live_mask:
                self._skipped.append(i)
                self.counters["skipped"] += 1
            else:
                self._incomplete.append(i)
                self.counters["incomplete"] += 1
        if ids:
            self._floor = ids[-1]  # ascending, and above the old floor
        if self._newest_complete is not None and self._newest_complete < fid:
            self._newest_complete = None
