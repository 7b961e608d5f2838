"""The software trigger clock: one pulse every ``1/fps`` seconds, published to every camera.

Pulse ``frame_id`` is due at ``t0 + frame_id / fps`` (no drift accumulates). The clock sleeps
until shortly before a pulse and spins for the last stretch, so pulses leave within tens of
microseconds of their due time. With a simulated rig it also publishes the ground-truth 3D
keypoints of each pulse (``truth``, half a period before the pulse, with the scene the sim
cameras render), so any consumer can measure the 3D error live.

``trigger.paced`` (replaying videos): pulse ``k`` also waits until fusion's ``pose3d``
stream has accounted for (fused, skipped or incomplete) every frame-set but the last
``trigger.in_flight`` already triggered — back-pressure from the end of the pipeline, so
every frame-set is processed, without any stage changing its live behaviour. A pulse held
longer than ``trigger.pace_timeout_s`` goes out anyway (counted ``pace_timeouts``, and
logged): a frame-set lost with a crashed stage must not stall a replay, but a slow one —
the first frame-sets of a run on a loaded host took 9 s through 4 colour cameras and a
person model — must not be skipped for being slow.

``ctx.args``: ``count`` (stop after this many pulses, optional).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from livepose.core import protocol
from livepose.kit.process import StageContext

log = logging.getLogger(__name__)

SPIN_S = 0.0008


class _Pacer:
    """Frame-sets accounted for by fusion's ``pose3d`` messages (paced mode)."""

    def __init__(self, ctx: StageContext) -> None:
        from livepose.transport import codec

        self.ctx = ctx
        self.sub = ctx.socket(zmq.SUB, connect=ctx.endpoints["pose3d"], subscribe=b"pose3d",
                              hwm=100_000)
        self.decoder = codec.Decoder(expect=["pose3d"])
        self.done: set[int] = set()
        self.below = 0  # every frame-id below this is accounted for

    def _drain(self, timeout_ms: int) -> None:
        if not self.sub.poll(timeout_ms):
            return
        while True:
            try:
                parts = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            msg = self.decoder.decode(parts)
            if isinstance(msg, protocol.Pose3d):
                self.done.update([msg.frame_id, *msg.skipped, *msg.incomplete])
        while self.below in self.done:
            self.done.discard(self.below)
            self.below += 1

    def wait(self, frame_id: int, in_flight: int) -> None:
        """Block until pulse ``frame_id`` may go (or the timeout; or a stop)."""
        timeout_s = self.ctx.cfg.trigger.pace_timeout_s
        deadline = time.monotonic() + timeout_s
        while not self.ctx.stopping and frame_id - self.below > in_flight - 1:
            if time.monotonic() > deadline:
                self.ctx.counters["pace_timeouts"] += 1
                log.warning("paced: frame-set %d not accounted for by fusion in %.0f s: "
                            "pulse %d goes out anyway (trigger.pace_timeout_s)", self.below,
                            timeout_s, frame_id)
                self.below = frame_id - in_flight + 1
                return
            self._drain(20)
            self.ctx.tick_health()


def _truth_source(ctx: StageContext):  # type: ignore[no-untyped-def]
    if not ctx.cfg.is_sim or ctx.cfg.sim.scene != "animal":
        return None  # the board scene needs no truth message: a pulse number says it all
    from livepose.acquisition.sim.backend import scene_function

    return scene_function(ctx.cfg)


def _wait_for_cameras(ctx: StageContext, pub: zmq.Socket[Any], timeout_s: float = 10.0) -> None:
    """Wait until every camera that listens to the clock (software-triggered, or matched to
    it by time) subscribed (its ``hello_topic``), so no camera misses the first pulses
    (ZeroMQ's slow joiner); report the ones that never did."""
    from livepose.acquisition.camera import clock_subscriber, hello_topic

    waiting = {
        b"\x01" + hello_topic(c.name): c.name for c in ctx.cfg.cameras if clock_subscriber(c)
    }
    others = {b"\x01" + hello_topic(n): n for n in ctx.args.get("hellos") or []}
    waiting.update(others)  # the run's monitor (Supervisor.start_trigger's subscribers)
    deadline = time.monotonic() + timeout_s
    while waiting and time.monotonic() < deadline and not ctx.stopping:
        if pub.poll(50):
            waiting.pop(pub.recv(), None)
        ctx.tick_health()
    cams = sorted(n for t, n in waiting.items() if t not in others)
    if cams:
        ctx.error(f"cameras not subscribed to the trigger after {timeout_s:g} s: "
                  f"{', '.join(cams)}")
    elif waiting:
        log.warning("subscribers %s did not say hello to the trigger within %g s: they may "
                    "miss the first pulses", sorted(waiting.values()), timeout_s)


def _sleep_until(t_ns: int, ctx: StageContext) -> None:
    """Sleep (coarsely) until host time ``t_ns`` or until asked to stop."""
    while not ctx.stopping:
        remaining = (t_ns - time.time_ns()) / 1e9
        if remaining <= 0:
            return
        time.sleep(min(remaining, 0.1))


def main(ctx: StageContext) -> None:
    """Run the clock until stopped or ``count`` pulses were sent."""
    # XPUB: a PUB that also sees subscriptions, so pulse 0 waits for every camera
    pub = ctx.socket(zmq.XPUB, bind=ctx.endpoints["trigger"], hwm=10_000)
    pub.setsockopt(zmq.XPUB_VERBOSE, 1)
    _wait_for_cameras(ctx, pub)
    if ctx.cfg.trigger.source == "serial":  # a trigger box: its pulses' times go out here
        from livepose.acquisition.triggerbox import run_serial_trigger

        run_serial_trigger(ctx, pub=pub)
        return
    truth = _truth_source(ctx)
    period_ns = round(1e9 / ctx.cfg.fps)
    count = ctx.args.get("count")
    pacer = _Pacer(ctx) if ctx.cfg.trigger.paced else None
    ctx.ready(fps=ctx.cfg.fps)
    ctx.set_state("running")
    t0 = time.time_ns() + 50_000_000  # first pulse 50 ms from now
    frame_id = 0
    late = 0
    while not ctx.stopping and (count is None or frame_id < count):
        if pacer is not None:  # the pipeline's pace: fps is an upper bound only
            pacer.wait(frame_id, ctx.cfg.trigger.in_flight)
            t0 = max(t0, time.time_ns() - frame_id * period_ns)
        due = t0 + frame_id * period_ns
        # ground truth is computed half a period before the pulse, while the clock waits
        # anyway: right after a pulse every camera wakes and the CPU belongs to them
        _sleep_until(due - period_ns // 2, ctx)
        if truth is not None:  # the sim rig's scene for this pulse (cameras render it now)
            spheres, albedo, xyz = truth(frame_id)
            pub.send_multipart(protocol.encode(protocol.Truth(
                frame_id=frame_id, t_trigger_ns=due, xyz=xyz, spheres=spheres, albedo=albedo)))
        while True:
            remaining = (due - time.time_ns()) / 1e9
            if remaining <= 0:
                break
            if remaining > SPIN_S:
                time.sleep(remaining - SPIN_S)
            if ctx.stopping:
                break
        if ctx.stopping:
            break
        now = time.time_ns()
        if now - due > period_ns // 2:
            late += 1
            ctx.counters["late_pulses"] = late
        pub.send_multipart(protocol.encode(protocol.Trigger(frame_id=frame_id, t_trigger_ns=now)))
        frame_id += 1
        ctx.counters["pulses"] = frame_id
        ctx.tick_health()
    ctx.info["pulses_total"] = frame_id
    ctx.set_state("done")
    # stay up until told to stop so that "done" is seen and sockets drain
    while not ctx.stopping:
        time.sleep(0.05)
        ctx.tick_health()
