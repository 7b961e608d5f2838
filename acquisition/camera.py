"""The camera process: one per camera. Grabs, stamps, numbers and publishes frames.

It never blocks on a consumer: frames go out on a PUB socket whose high-water mark drops
frames for a slow subscriber (each consumer detects the gap from ``frame_id``). A small
decimated JPEG preview (``preview/<cam>``) goes out on the same socket for the dashboard.

``ctx.args``: ``camera`` (index into ``cfg.cameras``).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from functools import partial
from typing import Any, cast

import numpy as np
import zmq

from livepose.acquisition.base import (
    CameraBackend,
    DeviceLost,
    Grab,
    GrabFailed,
    OverlappedTrigger,
    make_backend,
)
from livepose.acquisition.clock import ClockFit
from livepose.acquisition.encoder import ring_slots
from livepose.acquisition.identity import FrameIdentity
from livepose.acquisition.outputs import HasOutputs, OutputPulser
from livepose.acquisition.swtrigger import TriggerThread
from livepose.acquisition.timematch import Match, TimeMatcher
from livepose.acquisition.timing import TimingModel
from livepose.core import protocol
from livepose.core.config import Config, clock_matched
from livepose.kit.process import StageContext
from livepose.transport import codec, shmring


def hello_topic(cam: str) -> bytes:
    """The subscription by which a software-triggered camera tells the trigger clock that
    it is connected (the clock waits for every camera's before pulse 0)."""
    return protocol.clock_hello(cam)


def software_triggered(cam_cfg: object) -> bool:
    """Whether a camera config is driven by the software trigger clock (from config alone)."""
    backend = getattr(cam_cfg, "backend", "")
    if backend == "sim":
        return True
    if backend == "video":
        return not getattr(cam_cfg, "free_run", False)
    trigger = getattr(cam_cfg, "trigger", None)
    return trigger is not None and trigger.mode == "software"


def clock_subscriber(cam_cfg: object) -> bool:
    """Whether a camera listens to the trigger clock: triggered by it, or matched to its
    pulses by timestamp (the clock waits for both kinds before pulse 0)."""
    return software_triggered(cam_cfg) or clock_matched(cam_cfg)


def time_matcher(cam_cfg: Any, fps: float) -> tuple[TimeMatcher[Any], int] | None:
    """The matcher of a ``match: clock`` camera and its latency to subtract (ns), else None.

    Tolerance: ``match_tolerance_ms``, by default a third of the trigger period. Pulses are
    taken to be at least half a period apart (a pulse later than that is counted by the
    clock as ``late_pulses``), so a frame within a quarter period after its pulse is decided
    at once; when the camera's rate is configured (webcam ``fps``, ``frame_rate``), its
    frames are taken to be at least 3/4 of its period apart.
    """
    if not clock_matched(cam_cfg):
        return None
    webcam = getattr(cam_cfg, "backend", "") == "webcam"
    src = cam_cfg if webcam else cam_cfg.trigger
    period_ns = round(1e9 / fps)
    tol_ms = src.match_tolerance_ms
    tol_ns = period_ns // 3 if tol_ms is None else round(tol_ms * 1e6)
    cam_fps = cam_cfg.fps if webcam else cam_cfg.frame_rate
    matcher: TimeMatcher[Any] = TimeMatcher(
        tol_ns, min_pulse_gap_ns=period_ns // 2,
        min_frame_gap_ns=0 if cam_fps is None else round(0.75e9 / cam_fps),
        idle_ns=max(10 * period_ns, 500_000_000),
    )
    return matcher, round(src.match_latency_ms * 1e6)


def encode_preview(image: np.ndarray, scale: float, quality: int) -> tuple[np.ndarray, int, int]:
    """Downscale (by striding) and JPEG-encode a frame.

    Parameters
    ----------
    image
        ``(H, W)`` or ``(H, W, 3)`` uint8/uint16.

    Returns
    -------
    tuple
        JPEG bytes as uint8 ``(N,)``, width, height.
    """
    from PIL import Image

    step = max(1, round(1.0 / scale))
    small = image[::step, ::step]
    if small.dtype != np.uint8:
        small = (small >> 8).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(small)).save(buf, format="JPEG", quality=quality)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8), small.shape[1], small.shape[0]


COPY_BELOW_BYTES = 1 << 20


class CameraLoop:
    """Drives one backend and publishes what it grabs."""

    def __init__(self, ctx: StageContext, backend: CameraBackend, pub: zmq.Socket[Any]) -> None:
        self.ctx = ctx
        self.cam = backend
        self.pub = pub
        self.identity = FrameIdentity(
            counter_bits=backend.counter_bits, origin=backend.counter_origin
        )
        # a camera started again by the supervisor: the pulses before its first frame are
        # the restart gap (the workers count it), not drops of this process
        self.restarted = bool(ctx.args.get("restarted"))
        self.preview_every = max(1, round(ctx.cfg.fps / ctx.cfg.preview.fps))
        self.clock = ClockFit()
        self.timing = TimingModel(round(ctx.cfg.desync_tolerance_ms * 1e6))
        self.pending_dropped = 0  # failed buffers / reconnect gaps, carried to the next frame
        self.rebase = False  # after a reconnect: re-anchor frame_id at the next frame
        self.unverified = False  # frames placed by elapsed time after a reconnect
        self.t_last_grab_ns = 0
        self.dups_seen = 0  # duplicates counted up to the previous frame (duplicates_before)
        # the preview is encoded two thirds of a period after its frame: away from the instant
        # when every camera publishes and inference starts, and after a typical inference +
        # fusion (at a third it collided with the end of inference and delayed fusion)
        self.preview_delay_ns = round(2e9 / ctx.cfg.fps / 3)
        self.preview_due: tuple[int, np.ndarray, int, int] | None = None
        tcfg = ctx.cfg.transport
        self.shm = shmring.frames_in_shm(tcfg)  # pixels through a frame ring (same host)
        self.ring_slots = ring_slots(ctx.cfg)  # recording: the encoder may lag this far
        self.ring: shmring.FrameRing | None = None
        self.loaned: np.ndarray | None = None  # the ring slot the backend is filling
        if self.shm and hasattr(backend, "image_sink"):
            # backends that copy out of a driver buffer copy straight into the ring
            backend.image_sink = self.loan

    def _ring_for(self, nbytes: int) -> shmring.FrameRing | None:
        """This camera's frame ring (made at the first frame, again if a frame no longer
        fits, e.g. after a ROI change); ``None`` if /dev/shm cannot hold it — the frames
        then carry their pixels, as with ``transport.frames: zmq``."""
        if self.ring is None or nbytes > self.ring.slot_bytes:
            if self.ring is not None:
                self.ring.close()
                self.ring = None
            try:
                self.ring = shmring.FrameRing(self.cam.name, self.ring_slots, nbytes)
            except OSError as exc:
                self.shm = False
                self.ctx.counters["shm_unavailable"] += 1
                self.ctx.error(f"{self.cam.name}: no frame ring of {self.ring_slots} × "
                               f"{nbytes} bytes in {shmring.SHM_DIR} ({exc.strerror}); frames "
                               "carry their pixels instead (lower transport.shm_slots)")
                return None
            self.ctx.counters["shm_rings"] += 1
        return self.ring

    def loan(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        """The backend's image sink: the next ring slot (committed when published)."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ring = self._ring_for(nbytes) if self.shm else None
        if ring is None:
            return np.empty(shape, dtype)
        self.loaned = ring.loan(shape, dtype)
        return self.loaned

    def ring_for_image(self, image: np.ndarray) -> tuple[shmring.FrameRing | None, bool]:
        """The frame ring this image goes through (``None``: frames carry their pixels) and
        whether it is already in the loaned slot (the backend wrote it there)."""
        loaned, self.loaned = self.loaned, None
        if not self.shm:
            return None, False
        if loaned is not None and image is loaned and self.ring is not None:
            return self.ring, True
        return self._ring_for(image.nbytes), False

    def close(self) -> None:
        """Unlink the frame ring (subscribers keep what they mapped)."""
        if self.ring is not None:
            self.ring.close()

    def preview_wait_ms(self, default_ms: int) -> int:
        """How long the loop may block before a pending preview is due."""
        if self.preview_due is None:
            return default_ms
        return max(0, min(default_ms, (self.preview_due[0] - time.time_ns()) // 1_000_000))

    def flush_preview(self) -> None:
        """Encode and publish the pending preview if it is due."""
        if self.preview_due is None or time.time_ns() < self.preview_due[0]:
            return
        _, image, frame_id, t_grab_ns = self.preview_due
        self.preview_due = None
        p = self.ctx.cfg.preview
        jpeg, w, h = encode_preview(image, p.scale, p.jpeg_quality)
        prev = protocol.Preview(cam=self.cam.name, frame_id=frame_id, t_grab_ns=t_grab_ns,
                                width=w, height=h, jpeg=jpeg)
        self.pub.send_multipart(protocol.encode(prev))

    def sync_counters(self) -> None:
        """Copy the backend's own counters (failed buffers, reconnects…) into health."""
        for key, value in getattr(self.cam, "counters", {}).items():
            self.ctx.counters[key] = value

    def failed(self, exc: GrabFailed) -> None:
        """A failed buffer: number it if its counter is known, count it as dropped."""
        self.ctx.error(str(exc))
        if exc.counter is not None:
            ident = self.identity.update(exc.counter)
            if ident is None:
                return
            self.pending_dropped += ident[1] + 1
            self.ctx.counters["dropped"] += ident[1] + 1

    def reanchor(self, frame_id: int | None) -> None:
        """After a reconnect the camera counts from its origin again: the next frame is
        ``frame_id`` (software trigger: identified by its pulse), or is placed by elapsed time
        at the trigger rate. A frame placed by time is *unverified*: it goes out marked
        ``desync`` (recorded, never fused; counted ``unidentified``) until the timing model
        can check frames against pulse times (docs/acquisition.md, "Timing model")."""
        last = self.identity.last_frame_id
        if frame_id is None:
            gap_s = (time.time_ns() - self.t_last_grab_ns) / 1e9
            frame_id = last + max(1, round(gap_s * self.ctx.cfg.fps))
            self.ctx.counters["reanchored_by_time"] += 1
            self.unverified = True
            self.ctx.error(f"{self.cam.name}: reconnected without pulse times to identify its "
                           "frames: they are recorded but not fused")
        self.identity = FrameIdentity(
            counter_bits=self.cam.counter_bits,
            first_frame_id=frame_id,
            origin=self.cam.counter_origin,
        )
        missed = max(0, frame_id - last - 1)
        self.pending_dropped += missed
        self.ctx.counters["dropped"] += missed
        self.rebase = False

    def stamp(self, grab: Grab) -> int:
        """Map the device time to host time (``t_exposure_ns``) when the camera has a clock;
        return the frame's best host time (exposure if known, else grab)."""
        self.t_last_grab_ns = grab.t_grab_ns
        if grab.t_device_ns is not None and grab.t_exposure_ns is None:
            self.clock.add(grab.t_device_ns, grab.t_grab_ns)
            grab.t_exposure_ns = self.clock.to_host(grab.t_device_ns)
        return grab.t_exposure_ns if grab.t_exposure_ns is not None else grab.t_grab_ns

    def publish(self, grab_t_trigger: int | None, grab: Grab) -> None:
        """Number (by the camera's counter), stamp and publish one grab."""
        ident = self.identity.update(grab.counter)
        c = self.ctx.counters
        if ident is None:
            c["duplicates"] += 1
            return
        frame_id, dropped = ident
        self.stamp(grab)
        if self.restarted:
            self.restarted, dropped = False, 0
        if dropped:
            c["dropped"] += dropped
            self.ctx.error(f"{self.cam.name}: {dropped} frame(s) dropped before frame {frame_id}")
        dropped += self.pending_dropped  # already counted when they failed
        self.pending_dropped = 0
        t_trigger = grab.t_trigger_ns if grab.t_trigger_ns is not None else grab_t_trigger
        self.send(grab, frame_id, dropped, t_trigger)

    def publish_matched(self, match: Match[Grab]) -> None:
        """Publish a grab numbered by the trigger pulse its time was matched to (already
        stamped; gaps counted by the matcher)."""
        self.send(match.item, match.frame_id, match.dropped_before, match.t_pulse_ns,
                  match_error_ns=match.error_ns)

    def send(self, grab: Grab, frame_id: int, dropped: int, t_trigger: int | None,
             match_error_ns: int | None = None) -> None:
        """Publish one numbered frame (and maybe its preview)."""
        c = self.ctx.counters
        verdict = self.timing.observe(t_trigger, grab.t_exposure_ns, grab.t_grab_ns)
        if verdict.residual_ns is not None:
            self.unverified = False  # frames are checked against their pulses again
        elif self.unverified:
            verdict.desync = True
            c["unidentified"] += 1
        if verdict.desync:
            c["desync_frames"] += 1
        msg = protocol.Frame(
            cam=self.cam.name,
            frame_id=frame_id,
            t_grab_ns=grab.t_grab_ns,
            pixel_format=self.cam.pixel_format,
            image=grab.image,
            t_trigger_ns=t_trigger,
            t_exposure_ns=grab.t_exposure_ns,
            dropped_before=dropped,
            duplicates_before=c["duplicates"] - self.dups_seen,
            match_error_ns=match_error_ns,
            timing_residual_ns=verdict.residual_ns,
            desync=verdict.desync,
        )
        ring, staged = self.ring_for_image(grab.image)
        msg.t_pub_ns = time.time_ns()
        if ring is None:
            parts = protocol.encode(msg)
        else:  # pixels and header into the ring: a worker following it is woken now
            parts = codec.encode_in_ring(msg, ring, staged=staged)
            c["shm_header_overflow"] = ring.meta_overflows
        self.pub.send_multipart(parts, copy=False)
        c["frames"] += 1
        self.dups_seen = c["duplicates"]
        if frame_id % self.preview_every == 0:
            self.preview_due = (grab.t_grab_ns + self.preview_delay_ns, grab.image, frame_id,
                                grab.t_grab_ns)


def prewarm(cfg: Config, args: dict[str, Any]) -> None:
    """In a warm spare (livepose/runtime/spares.py): load the JPEG encoder and, for a
    simulated camera, open it and render one frame (numba's target and the render kernels);
    a real camera's device is opened only by the process that becomes it."""
    encode_preview(np.zeros((8, 8), np.uint8), 1.0, 50)
    index = int(args.get("camera", 0))
    cam_cfg = cfg.cameras[index]
    if cam_cfg.backend != "sim":
        return
    backend = make_backend(cam_cfg, cfg=cfg, index=index)
    backend.open()
    try:
        backend.arm()
        backend.software_trigger(0, time.time_ns())
        backend.grab(5.0)
    finally:
        backend.close()


def main(ctx: StageContext) -> None:
    """Camera process main."""
    index = int(ctx.args["camera"])
    cam_cfg = ctx.cfg.cameras[index]
    backend = make_backend(cam_cfg, cfg=ctx.cfg, index=index)
    pub = ctx.socket(
        zmq.PUB, bind=ctx.endpoints[f"frame/{cam_cfg.name}"], hwm=ctx.cfg.transport.frame_hwm
    )
    # pyzmq sends a buffer above copy_threshold without copying, and frees it later through
    # its garbage-collector thread: one more thread wake-up per frame. Below ~1 MB the copy
    # (tens of µs) is cheaper than that wake-up; bigger frames stay zero-copy.
    pub.copy_threshold = COPY_BELOW_BYTES
    trig = None
    matching = time_matcher(cam_cfg, ctx.cfg.fps)  # free-running, matched to the clock
    if backend.software_triggered or matching is not None:
        # the second topic never matches a message: it tells the clock this camera listens
        trig = ctx.socket(
            zmq.SUB,
            connect=ctx.endpoints["trigger"],
            subscribe=[b"trigger", hello_topic(cam_cfg.name)],
        )
    on_scene = getattr(backend, "on_scene", None)  # a backend that renders a known scene
    if trig is not None and on_scene is not None:
        trig.setsockopt(zmq.SUBSCRIBE, b"truth")
    decoder = codec.Decoder(expect=["trigger", "truth"])
    ctx.publish_health(force=True)  # connect health now, so an error in open() is heard
    encode_preview(np.zeros((8, 8), np.uint8), 1.0, 50)  # import the JPEG encoder now, not on frame 0
    backend.open()
    pulser: OutputPulser | None = None  # output lines for closed-loop actions (outputs.py)
    loop: CameraLoop | None = None
    fire: TriggerThread | None = None  # overlapped software trigger (swtrigger.py)
    try:
        backend.arm()
        loop = CameraLoop(ctx, backend, pub)
        if getattr(backend, "output_lines", None) and ctx.endpoints.get("camctl"):
            outputs = cast(HasOutputs, backend)  # it has output_lines and set_output
            pulser = OutputPulser(ctx, cam_cfg.name, outputs, ctx.endpoints["camctl"])
            pulser.start()
        overlapped = backend.software_triggered and getattr(backend, "overlapped_trigger", False)
        if trig is not None and overlapped:  # the trigger thread takes the socket over
            fire = TriggerThread(cast(OverlappedTrigger, backend), trig, decoder,
                                 round(ctx.cfg.desync_tolerance_ms * 1e6))
            trig, recover = None, partial(_recover, ctx, backend, loop, trig=None)
            fire.start()
        ctx.ready(pixel_format=backend.pixel_format, **getattr(backend, "info", {}))
        ctx.set_state("running")
        while not ctx.stopping:
            ctx.tick_health()
            ctx.counters["rejected"] = decoder.rejected
            loop.sync_counters()
            loop.flush_preview()
            if fire is not None:  # overlapped software trigger: grab like hardware-triggered
                fire.sync(ctx.counters, ctx.error)
                fire.grab(loop, recover)
                continue
            if matching is not None and trig is not None:
                _matched_step(ctx, backend, loop, trig, decoder, *matching)
                continue
            if trig is None:
                try:
                    grab = backend.grab(0.1)
                except GrabFailed as exc:
                    loop.failed(exc)
                    continue
                except DeviceLost as exc:
                    _recover(ctx, backend, loop, exc, None)
                    continue
                if grab is not None:
                    if loop.rebase:
                        loop.reanchor(None)
                    loop.publish(None, grab)
                continue
            if not trig.poll(loop.preview_wait_ms(100)):
                continue
            for msg in pending(trig, decoder):
                if isinstance(msg, protocol.Truth):
                    if on_scene is not None and msg.spheres is not None and msg.albedo is not None:
                        on_scene(msg.frame_id, msg.spheres, msg.albedo)
                    continue
                if not isinstance(msg, protocol.Trigger):
                    continue
                if loop.rebase:
                    loop.reanchor(msg.frame_id)
                try:
                    backend.software_trigger(msg.frame_id, msg.t_trigger_ns)
                    grab = backend.grab(1.0)
                except GrabFailed as exc:
                    loop.failed(exc)
                    continue
                except DeviceLost as exc:
                    _recover(ctx, backend, loop, exc, trig)
                    break
                if grab is None:
                    ctx.error(f"{backend.name}: no image within 1 s of trigger {msg.frame_id}")
                    continue
                loop.publish(msg.t_trigger_ns, grab)
    finally:
        try:
            if fire is not None:
                fire.close()
            if pulser is not None:
                pulser.close()
            backend.close()
        finally:
            if loop is not None:
                loop.close()


def pending(sock: zmq.Socket[Any], decoder: codec.Decoder) -> Iterator[protocol.Message]:
    """The messages waiting on ``sock``, decoded, without blocking (malformed ones are
    counted by ``decoder`` and skipped)."""
    while True:
        try:
            parts = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        msg = decoder.decode(parts)
        if msg is not None:
            yield msg


def _matched_step(ctx: StageContext, backend: CameraBackend, loop: CameraLoop,
                  trig: zmq.Socket[Any], decoder: codec.Decoder, matcher: TimeMatcher[Grab],
                  latency_ns: int) -> None:
    """One turn of a free-running camera matched to the trigger clock: grab (waiting no
    longer than the matcher's next deadline, and 1 ms at a time while a frame waits for a
    pulse), take the pulses that arrived, match, publish."""
    wait_ms = loop.preview_wait_ms(100)
    deadline = matcher.next_deadline_ns()
    if deadline is not None:
        wait_ms = max(0, min(wait_ms, 1, (deadline - time.time_ns()) // 1_000_000 + 1))
    grab = None
    try:
        grab = backend.grab(wait_ms / 1000)
    except GrabFailed as exc:  # a gap: the pulse gets no frame (counted by the matcher)
        ctx.error(str(exc))
    except DeviceLost as exc:
        _recover(ctx, backend, loop, exc, None)  # pulses meanwhile stay queued: gaps
    for msg in pending(trig, decoder):
        if isinstance(msg, protocol.Trigger):
            matcher.add_pulse(msg.frame_id, msg.t_trigger_ns)
    if grab is not None:
        matcher.add_frame(loop.stamp(grab) - latency_ns, grab)
    for match in matcher.poll(time.time_ns()):
        loop.publish_matched(match)
    for key in ("unmatched", "no_trigger", "duplicates", "dropped"):
        ctx.counters[key] = matcher.counters[key]


def _recover(ctx: StageContext, backend: CameraBackend, loop: CameraLoop, exc: Exception,
             trig: zmq.Socket[Any] | None) -> None:
    """A lost device: report it, reconnect (``UserError`` if it does not come back), drop
    the trigger pulses that arrived meanwhile, and re-anchor ``frame_id`` at the next frame."""
    ctx.counters["device_lost"] += 1
    ctx.error(f"{exc}; reconnecting")
    ctx.set_state("reconnecting")
    reconnect = getattr(backend, "reconnect", None)
    if reconnect is None:
        raise exc
    reconnect()
    if trig is not None:
        while trig.poll(0):
            trig.recv_multipart()
    # a software-triggered frame is numbered by its pulse; other counters restart
    loop.rebase = not backend.software_triggered
    ctx.set_state("running")
