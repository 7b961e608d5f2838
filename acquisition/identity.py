"""Frame identity: turn a camera's own frame counter into ``frame_id``.

``frame_id`` is the trigger pulse index since acquisition started: the same number means the
same instant in every camera. Cameras are armed before the trigger starts, so a camera's
first frame is pulse 0 and from then on ``frame_id`` follows the camera's counter relative to
its first value, unwrapping ``counter_bits``-bit counters (GigE block ids are 16 bit). A jump
larger than one is a run of dropped frames; a counter that does not advance is a duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FrameIdentity:
    """Per-camera counter unwrapping and drop/duplicate accounting.

    Parameters
    ----------
    counter_bits
        Width of the camera's counter (wraps at ``2**counter_bits``); 64 for "never".
    first_frame_id
        The ``frame_id`` of the first frame (0 when armed before the trigger started).
    origin
        The counter value of pulse 0 when the camera resets its counter at arming (then a
        lost first frame is still counted as dropped); ``None``: the first frame seen is
        pulse ``first_frame_id``.
    """

    counter_bits: int = 64
    first_frame_id: int = 0
    origin: int | None = None
    _first: int | None = None
    _last_raw: int = 0
    _wraps: int = 0
    last_frame_id: int = -1
    dropped: int = 0
    duplicates: int = 0

    def __post_init__(self) -> None:
        if self.origin is not None:
            self._first = self.origin
            self._last_raw = self.origin - 1
            self.last_frame_id = self.first_frame_id - 1

    def update(self, counter: int) -> tuple[int, int] | None:
        """Account for one frame.

        Parameters
        ----------
        counter
            The camera's raw counter value.

        Returns
        -------
        tuple[int, int] | None
            ``(frame_id, dropped_before)``, or ``None`` for a duplicate (drop the frame).
        """
        span = 1 << self.counter_bits
        if self._first is None:
            self._first = counter
            self._last_raw = counter
            self.last_frame_id = self.first_frame_id
            return self.first_frame_id, 0
        if counter < self._last_raw and self._last_raw - counter > span // 2:
            self._wraps += 1
        elif counter <= self._last_raw:
            self.duplicates += 1
            return None
        self._last_raw = counter
        frame_id = self.first_frame_id + self._wraps * span + counter - self._first
        gap = frame_id - self.last_frame_id - 1
        if gap < 0:  # counter went backwards without wrapping: treat as duplicate/stale
            self.duplicates += 1
            return None
        self.dropped += gap
        self.last_frame_id = frame_id
        return frame_id, gap
