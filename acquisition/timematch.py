"""Free-running cameras matched to the trigger clock's pulses by timestamp.

A free-running camera (a webcam, or a machine-vision camera in ``trigger.mode: free_run``
with ``trigger.match: clock``) is not fired by the trigger clock, but still listens to its
pulses: pulse ``k`` carries the host time it was sent. Each frame gets the ``frame_id`` of the
pulse whose time is **nearest** to the frame's host time, if it lies within the tolerance:

- a frame with no pulse within tolerance is dropped and counted: ``unmatched`` while the
  trigger runs, ``no_trigger`` before its first pulse or long (``idle_ns``) after its last;
- two frames nearest the same pulse: the nearer is kept, the other counted as ``duplicates``;
- a pulse that got no frame is a gap, counted as ``dropped`` and carried by the next frame
  (``dropped_before``), as for triggered cameras.

Frames do not wait for long. A frame is decided as soon as a pulse later than it has arrived,
or no later pulse can still beat the previous one: one nearer than the previous pulse must come
before ``t + d`` (``d``: distance to the previous pulse, at most the tolerance), so the frame
waits at most until ``t + d + grace_ns`` (``grace_ns``: how late a pulse may reach the camera
process); and when pulses are known to be at least ``min_pulse_gap_ns`` apart, a frame within
half that gap after its pulse is decided at once. A frame *before* its pulse is held until no
later frame can be nearer that pulse (at most ``d + grace_ns`` after the pulse), unless the
camera's frames are known to be at least ``min_frame_gap_ns`` apart and the next one cannot
come that soon. Added latency is therefore zero for frames that arrive shortly after their
pulse (or whose timestamp is older than the tolerance, as a webcam's usually is), and bounded
by about two tolerances plus ``grace_ns`` otherwise. The result equals the offline
nearest-pulse matching whenever pulses and frames reach the matcher within ``grace_ns`` of
their timestamps.

Pure logic, no sockets: the camera loop feeds pulses and frames and calls :meth:`poll` with
the current time (tested with synthetic timestamp streams).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter, deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

PULSE_GRACE_NS = 2_000_000  # how late a pulse may reach the camera process


@dataclass(slots=True)
class Match(Generic[T]):
    """A frame labelled with a pulse.

    Attributes
    ----------
    item
        What was passed to :meth:`TimeMatcher.add_frame` (the grab).
    frame_id
        The pulse index.
    t_pulse_ns
        The pulse's host time.
    error_ns
        Frame time − pulse time (signed, |error| ≤ tolerance).
    dropped_before
        Pulses without a frame since the previous match.
    """

    item: T
    frame_id: int
    t_pulse_ns: int
    error_ns: int
    dropped_before: int


class TimeMatcher(Generic[T]):
    """Label frames with the nearest trigger pulse, within a tolerance, as they stream in.

    Parameters
    ----------
    tolerance_ns
        Largest |frame time − pulse time| accepted.
    min_pulse_gap_ns
        Pulses are at least this far apart (0: assume nothing); lets a frame shortly after its
        pulse be decided without waiting for the next pulse.
    min_frame_gap_ns
        The camera's frames are at least this far apart (0: assume nothing); lets a frame
        before its pulse go without waiting for a nearer one that cannot come.
    grace_ns
        How late a pulse (or a frame) may reach the matcher after its timestamp.
    idle_ns
        A frame this long after the last pulse, with none after it, counts as ``no_trigger``.
    max_pulses
        Pulses kept (older ones are forgotten).
    max_pending
        Frames waiting for a decision; beyond it the oldest is decided with what is known.

    Attributes
    ----------
    counters
        ``matched``, ``unmatched``, ``no_trigger``, ``duplicates``, ``dropped``.
    """

    def __init__(
        self,
        tolerance_ns: int,
        min_pulse_gap_ns: int = 0,
        min_frame_gap_ns: int = 0,
        grace_ns: int = PULSE_GRACE_NS,
        idle_ns: int = 1_000_000_000,
        max_pulses: int = 4096,
        max_pending: int = 32,
    ) -> None:
        if tolerance_ns <= 0:
            raise ValueError(f"tolerance_ns must be positive, got {tolerance_ns}")
        self.tol = int(tolerance_ns)
        self.min_gap = int(min_pulse_gap_ns)
        self.min_frame_gap = int(min_frame_gap_ns)
        self.grace = int(grace_ns)
        self.idle = int(idle_ns)
        self.max_pulses = max_pulses
        self.max_pending = max_pending
        self.counters: Counter[str] = Counter()
        self._pt: list[int] = []  # pulse times, ascending
        self._pid: list[int] = []  # pulse ids, ascending
        self._first_pulse_t: int | None = None
        self._pending: deque[tuple[int, T]] = deque()
        self._held: tuple[int, T, int, int] | None = None  # (t, item, pulse index k, t_k)
        self._last_id = -1  # last emitted frame_id

    # ------------------------------------------------------------------ input
    def add_pulse(self, frame_id: int, t_ns: int) -> None:
        """One pulse of the trigger clock (pulses come in order; a repeat is ignored)."""
        if self._pid and (frame_id <= self._pid[-1] or t_ns < self._pt[-1]):
            self.counters["pulses_out_of_order"] += 1
            return
        if self._first_pulse_t is None:
            self._first_pulse_t = t_ns
        self._pt.append(t_ns)
        self._pid.append(frame_id)
        if len(self._pt) > self.max_pulses:
            del self._pt[: len(self._pt) - self.max_pulses]
            del self._pid[: len(self._pid) - self.max_pulses]

    def add_frame(self, t_ns: int, item: T) -> None:
        """One frame, with its host-mapped time (the matching time)."""
        self._pending.append((t_ns, item))

    # ------------------------------------------------------------------ output
    def poll(self, now_ns: int) -> list[Match[T]]:
        """Decide what can be decided at host time ``now_ns``; matched frames in order."""
        out: list[Match[T]] = []
        while self._pending:
            t, item = self._pending[0]
            decision = self._decide(t, now_ns, force=len(self._pending) > self.max_pending)
            if decision is None:
                break
            self._pending.popleft()
            self._settle(t, item, decision, out)
        if self._held is not None and self._held_due(now_ns):
            self._emit(self._held, out)
            self._held = None
        self._prune()
        return out

    def flush(self) -> list[Match[T]]:
        """Decide everything with what is known now (end of acquisition)."""
        far = 1 << 62
        return self.poll(far)

    def next_deadline_ns(self) -> int | None:
        """When :meth:`poll` may release something without new input (``None``: nothing
        waits). The camera loop bounds its grab timeout by it."""
        pending = None
        if self._pending:
            t = self._pending[0][0]
            pending = self._wait_until(t) or t
        if self._held is None:
            return pending
        t, _, _, t_k = self._held
        limit = t_k + (t_k - t)
        if pending is not None and self._pending[0][0] < limit:
            return pending  # the held frame waits for that one's decision
        return limit + self.grace if pending is None else min(pending, limit + self.grace)

    @property
    def waiting(self) -> int:
        """Frames not yet decided or released."""
        return len(self._pending) + (self._held is not None)

    # ------------------------------------------------------------------ internals
    def _decide(self, t: int, now: int, force: bool) -> tuple[int, int] | str | None:
        """``(pulse index, pulse time)``, ``"unmatched"``, ``"no_trigger"``, or ``None``
        (wait: a pulse that could still arrive might be nearer)."""
        if not force:
            wait_until = self._wait_until(t)
            if wait_until is not None and now < wait_until:
                return None
        pt = self._pt
        i = bisect_right(pt, t)
        has_next = i < len(pt)
        d_prev = t - pt[i - 1] if i > 0 else None
        best: tuple[int, int] | None = None
        best_d = self.tol + 1
        if d_prev is not None and d_prev <= self.tol:
            best, best_d = (self._pid[i - 1], pt[i - 1]), d_prev
        if has_next and pt[i] - t < best_d:
            best = (self._pid[i], pt[i])
        if best is not None:
            return best
        if self._first_pulse_t is None or t < self._first_pulse_t:
            return "no_trigger"
        if not has_next and d_prev is not None and d_prev > self.idle:
            return "no_trigger"
        return "unmatched"

    def _wait_until(self, t: int) -> int | None:
        """Until when a frame at ``t`` must wait for a pulse that could still beat the ones
        known (``None``: no need to wait)."""
        pt = self._pt
        i = bisect_right(pt, t)
        if i < len(pt):
            return None  # a later pulse is known: nothing can come in between
        d_prev = t - pt[i - 1] if i > 0 else None
        horizon = self.tol if d_prev is None else min(self.tol, d_prev)
        # a later pulse wins only if it comes before t + horizon
        if horizon == 0:
            return None
        if d_prev is not None and self.min_gap > 0 and pt[i - 1] + self.min_gap >= t + horizon:
            return None
        return t + horizon + self.grace

    def _settle(self, t: int, item: T, decision: tuple[int, int] | str,
                out: list[Match[T]]) -> None:
        """Apply one decided frame: release, hold (before its pulse) or count it."""
        held = self._held
        if isinstance(decision, str):
            self.counters[decision] += 1
            if held is not None:  # a later frame is not nearer the held one's pulse
                self._emit(held, out)
                self._held = None
            return
        k, t_k = decision
        cand = (t, item, k, t_k)
        if held is not None:
            self._held = None
            if held[2] == k:  # both nearest the same pulse: keep the nearer
                self.counters["duplicates"] += 1
                if abs(held[0] - held[3]) <= abs(t - t_k):
                    self._emit(held, out)  # later frames are farther still
                    return
            else:
                self._emit(held, out)
        if k <= self._last_id:  # that pulse already has its (nearer or earlier) frame
            self.counters["duplicates"] += 1
            return
        if t >= t_k or t + self.min_frame_gap >= t_k + (t_k - t):
            self._emit(cand, out)  # no later frame can be nearer this pulse
        else:  # before its pulse: a later frame may still be nearer (see _held_due)
            self._held = cand

    def _held_due(self, now: int) -> bool:
        """The held frame can go: no frame that could be nearer its pulse is still coming."""
        assert self._held is not None
        t, _, _, t_k = self._held
        limit = t_k + (t_k - t)  # a frame beating the held one lies before this
        if self._pending:  # frames come in order: none before the next one is still coming
            return self._pending[0][0] >= limit
        return now >= limit + self.grace

    def _emit(self, cand: tuple[int, T, int, int], out: list[Match[T]]) -> None:
        t, item, k, t_k = cand
        dropped = k - self._last_id - 1
        self.counters["dropped"] += dropped
        self.counters["matched"] += 1
        self._last_id = k
        out.append(Match(item=item, frame_id=k, t_pulse_ns=t_k, error_ns=t - t_k,
                         dropped_before=dropped))

    def _prune(self) -> None:
        """Forget pulses no future frame can match (keeps the newest one)."""
        if len(self._pt) < 2:
            return
        if self._pending:
            oldest = self._pending[0][0]
        elif self._held is not None:
            oldest = self._held[0]
        else:
            return
        cut = bisect_right(self._pt, oldest - self.tol - self.idle) - 1
        if cut > 0:
            del self._pt[:cut]
            del self._pid[:cut]
