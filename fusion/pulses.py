"""Pulse times from a trigger box, for poses whose frames carry none.

Hardware-triggered cameras do not know when their trigger pulse came; the trigger process
publishes each pulse's host time (the box's stamp through its clock fit) as a ``trigger``
message, at most a few tens of ms after the pulse (USB-serial latency). Fusion keeps the
recent ones by ``frame_id``; a pose whose pulse was not reported yet gets the time the
pulse grid predicts (the last reported pulse plus whole periods: the box schedules pulses
from one start time), with the same uncertainty.
"""

from __future__ import annotations

from collections import OrderedDict

from livepose.core import protocol

KEEP = 4096


class PulseTimes:
    """``frame_id`` → ``(t_trigger_ns, sigma_ns)`` from ``trigger`` messages.

    Parameters
    ----------
    fps
        The trigger rate (the pulse grid between reports).
    """

    def __init__(self, fps: float) -> None:
        self.period_ns = 1e9 / float(fps)
        self._times: OrderedDict[int, tuple[int, int | None]] = OrderedDict()
        self._last: tuple[int, int, int | None] | None = None
        self.predicted = 0

    def add(self, msg: protocol.Trigger) -> None:
        """One reported pulse."""
        self._times[msg.frame_id] = (msg.t_trigger_ns, msg.t_trigger_sigma_ns)
        while len(self._times) > KEEP:
            self._times.popitem(last=False)
        if self._last is None or msg.frame_id >= self._last[0]:
            self._last = (msg.frame_id, msg.t_trigger_ns, msg.t_trigger_sigma_ns)

    def get(self, frame_id: int) -> tuple[int, int | None] | None:
        """The pulse's host time and uncertainty, reported or predicted (``None``: no pulse
        reported yet)."""
        hit = self._times.get(frame_id)
        if hit is not None:
            return hit
        if self._last is None:
            return None
        k, t, sigma = self._last
        self.predicted += 1
        return t + round((frame_id - k) * self.period_ns), sigma
