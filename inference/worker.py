"""The inference stage: frame-sets in, 2D keypoints (``kp2d``) out.

Worker ``k`` of ``model.workers`` subscribes to every camera's frames, assembles the
frame-sets of its share (``frame_id % K == k``), and for the newest complete set runs one
batched model call over all C views, decodes its outputs and publishes a
:class:`~livepose.core.protocol.Kp2d`. Each kp2d also lists the frame-ids this worker abandoned
since its previous message (``skipped``, ``incomplete``), so downstream can account for
every frame-set. A frame it cannot read becomes a NaN view and a counted ``bad_frames``;
it never stops the loop.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import zmq

from livepose.core import protocol
from livepose.core.calibration import read_calibration
from livepose.core.camera import CameraGroup
from livepose.core.config import Config
from livepose.core.control import WORKERS_TOPIC, decode_reshard
from livepose.inference.assembler import FrameSetAssembler, Popped
from livepose.inference.crops import CropPlan, CropPlanner, PoseTrack
from livepose.inference.decode import decode_outputs
from livepose.inference.engine import (
    ENGINES,
    Engine,
    OrtEngine,
    available_providers,
    check_output,
    create_engine,
    engine_name,
    select_providers,
)
from livepose.inference.manifest import ModelError, resolve_model
from livepose.inference.multi_worker import MultiInstances
from livepose.inference.preprocess import Preprocessor
from livepose.inference.topdown import TopDown
from livepose.inference.track_crops import crop_engine, crops_supported
from livepose.kit.process import StageContext
from livepose.transport import codec, shmring
from livepose.transport.framefeed import FrameFeed

log = logging.getLogger(__name__)

WARMUP_RUNS = 5

POLL_MS = 100
MAX_DRAIN = 10_000  # messages taken in per loop turn at most
MAX_PENDING = 32  # frame-sets the assembler keeps
RCV_BUDGET = 256 * 1024 * 1024  # bytes of queued frames per camera connection, roughly
MAX_ENGINE_FAILURES = 20  # consecutive failed model calls before the worker gives up
RATE_PERIOD_S = 1.0


def preflight(cfg: Config) -> None:
    """Check the model before any process starts (run by the supervisor).

    Resolves the model and manifest, opens the model once on CPU and runs a dummy batch to
    check names and shapes, checks the configured execution providers are available and,
    for simulated cameras, that the frame size fits the model.

    Raises
    ------
    UserError
        Anything wrong with the model, its manifest or the ``model`` config.
    """
    path, manifest = resolve_model(cfg.model)
    if manifest.two_stage:  # both ONNX files open, names checked
        cpu = cfg.model.model_copy(update={"providers": ["CPUExecutionProvider"],
                                           "intra_op_threads": 1})
        TopDown(path, manifest, cpu, len(cfg.cameras))
        return
    name = engine_name(cfg.model, path)
    if name not in ENGINES:
        raise ModelError(f"model.engine: {name!r} is not available; known: {sorted(ENGINES)}")
    select_providers(cfg.model.providers, available_providers(), cfg.model.allow_cpu_fallback)
    spec = manifest.input
    resampled = spec.resize != "none" or cfg.model.crop.enabled  # any frame size then
    if cfg.is_sim and not resampled and (cfg.sim.width, cfg.sim.height) != (spec.width,
                                                                          spec.height):
        raise ModelError(
            f"sim frames are {cfg.sim.width}×{cfg.sim.height} but model {manifest.name!r} "
            f"needs {spec.width}×{spec.height} (input.resize: {spec.resize}); set sim.width "
            "and sim.height to match"
        )
    pre = Preprocessor(spec, len(cfg.cameras))
    engine = OrtEngine(path, manifest, providers=["CPUExecutionProvider"], intra_op_threads=1)
    check_output(engine.run(pre.batch(len(cfg.cameras))), manifest, len(cfg.cameras))
    m = cfg.fusion.multi
    if m.enabled and m.crops and crops_supported(engine):  # the crops' model, as the worker
        on_cpu = cfg.model_copy(deep=True)  # will open it (multi_worker.py), on CPU here
        on_cpu.model.providers, on_cpu.model.intra_op_threads = ["CPUExecutionProvider"], 1
        crop_engine(on_cpu, engine, manifest)


class _Worker:
    """State of one running worker (split from :func:`main` for readability)."""

    def __init__(self, ctx: StageContext) -> None:
        cfg = ctx.cfg
        self.ctx = ctx
        self.k = int(ctx.args.get("worker", 0))
        self.cams = cfg.camera_names
        path, self.manifest = resolve_model(cfg.model)
        # a two-stage model (detector + keypoint model on rotated crops) has its own engine
        self.topdown = TopDown(path, self.manifest, cfg.model, len(self.cams)) \
            if self.manifest.two_stage else None
        self.engine: Engine  # single-stage models only
        if self.topdown is None:
            warm = _WARM.pop((str(path), len(self.cams)), None)  # built by prewarm()
            self.engine = warm if warm is not None else create_engine(
                engine_name(cfg.model, path), path, self.manifest, cfg.model)
        self.provider: str = self.engine.provider if self.topdown is None else \
            self.topdown.provider
        self.engine_label = "onnxruntime (two-stage)" if self.topdown is not None else \
            self.engine.name
        self.pre = Preprocessor(self.manifest.input, len(self.cams))
        self.pre.warm_up()
        fs = cfg.frameset
        self.assembler = FrameSetAssembler(
            self.cams, self.k, cfg.model.workers, max_pending=MAX_PENDING,
            start_id=ctx.args.get("start_frame_id"),
            desync_tolerance_ms=cfg.desync_tolerance_ms,
            deadline_ns=round(fs.deadline_frames * 1e9 / cfg.fps) if len(self.cams) > 1
            else None,
            gone_after=fs.gone_after_sets,
        )
        spec = self.manifest.input
        fw, fh = (max(spec.width, cfg.sim.width), max(spec.height, cfg.sim.height)) \
            if cfg.is_sim else (spec.width, spec.height)
        frame_bytes = fw * fh * spec.channels * 2  # at most (uint16)
        self.rcv_hwm = int(min(1000, max(cfg.transport.frame_hwm, RCV_BUDGET // frame_bytes)))
        if shmring.frames_in_shm(cfg.transport):  # pixels wait in the camera's ring, not the queue:
            # a backlog longer than the ring would only hold frames already overwritten
            self.rcv_hwm = min(self.rcv_hwm, cfg.transport.ring_slots(cfg.fps))
        # frames in a ring are read in place (checked with shmring.intact after use)
        self.decoder = codec.Decoder(
            protocol.Limits(max_array_bytes=cfg.limits.max_frame_bytes), expect=["frame"],
            copy_shared=False,
        )
        self.crops = CropPlanner.from_config(
            cfg, ctx.args.get("calibration"), (spec.width, spec.height)
        ) if cfg.model.crop.enabled else None
        # two-stage models: a lost view re-acquired from the fused pose (roi.reproject)
        self.guide: PoseTrack | None = None
        self.guide_cams: CameraGroup | None = None
        calib = ctx.args.get("calibration") or (str(cfg.calibration) if cfg.calibration else None)
        roi = self.manifest.roi
        if self.topdown is not None and roi is not None and roi.reproject and calib:
            self.guide = PoseTrack(cfg.fps, cfg.model.crop.max_age_s)
            self.guide_cams = read_calibration(calib, self.cams)
        # several animals (fusion.multi): every instance of every view (multi_worker.py)
        self.multi: MultiInstances | None = MultiInstances(
            cfg, self.manifest, path, None if self.topdown is not None else self.engine,
            self.cams, calib) if cfg.fusion.multi.enabled else None
        self.pose_sub: zmq.Socket[Any] | None = None  # fusion's pose3d (crops), set by main
        self.feed: FrameFeed  # the cameras' frames, set by main
        self.pose_decoder = codec.Decoder(expect=["pose3d"])
        self.failures = 0
        self._last_log: dict[str, float] = {}
        self._rate_t = time.monotonic()
        self._rate_n = 0
        self._infer_ms: list[float] = []

    def warm_up(self) -> None:
        """Dummy batches (load kernels, grow ONNX Runtime's memory arena, JIT-compile the
        decoder, check the output) so that the first real frame-set is not slow: one run
        left pulse 0 at ~5× the steady inference time."""
        n = len(self.cams)
        if self.topdown is not None:
            for _ in range(WARMUP_RUNS):
                self.topdown.warm_up()
            return
        for _ in range(WARMUP_RUNS):
            outs = self.engine.run(self.pre.batch(n))
            check_output(outs, self.manifest, n)
            self._decode(outs)

    def _decode(self, outs: list[np.ndarray]) -> np.ndarray:
        """Raw outputs (``manifest.output.tensor_names()`` order) → ``(N, J, 3)`` in
        model-input pixels, by the manifest's ``output.type``."""
        return decode_outputs(outs, self.manifest)

    def _failed_call(self, exc: Exception, frame_id: int, n: int) -> np.ndarray:
        """Count and report a failed model call; NaN points ``(n, J, 3)`` for the set. The
        worker gives up (re-raises) after ``MAX_ENGINE_FAILURES`` in a row."""
        self.failures += 1
        self.ctx.counters["infer_errors"] += 1
        self._warn("engine", f"model call failed on frame {frame_id}: {exc!r}"[:300])
        if self.failures >= MAX_ENGINE_FAILURES:
            raise exc
        return np.full((n, len(self.manifest.keypoints), 3), np.nan, dtype=np.float32)

    def _warn(self, key: str, message: str) -> None:
        """Record an error, logging at most once per second per kind."""
        self.ctx.last_error = message
        now = time.monotonic()
        if now - self._last_log.get(key, 0.0) > 1.0:
            self._last_log[key] = now
            log.warning("%s: %s", self.ctx.name, message)

    def wait_ms(self) -> int:
        """How long to sleep for frames: until the oldest waiting set's deadline at most."""
        due = self.assembler.next_deadline_ns()
        if due is None:
            return POLL_MS
        return max(0, min(POLL_MS, -(-(due - time.time_ns()) // 1_000_000)))

    def drain(self) -> int:
        """Take in every frame available without blocking (socket and followed rings);
        return how many messages."""
        n = 0
        for msg, t in self.feed.drain():
            n += 1
            if isinstance(msg, protocol.Frame):
                self.assembler.add(msg, t)
        return n

    def drain_poses(self) -> None:
        """Take in every fused pose available (crops), without blocking."""
        if self.pose_sub is None or (self.crops is None and self.guide is None
                                     and self.multi is None):
            return
        for _ in range(MAX_DRAIN):
            try:
                parts = self.pose_sub.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            msg = self.pose_decoder.decode(parts)
            if isinstance(msg, protocol.Pose3d):
                if self.crops is not None:
                    self.crops.update(msg.frame_id, msg.xyz)  # xyz: at the frame's instant
                if self.guide is not None:
                    self.guide.update(msg.frame_id, msg.xyz)
                if self.multi is not None:
                    self.multi.update(msg)

    def plan_crops(self, popped: Popped) -> CropPlan | None:
        """Each view's region (``None`` without crops); the whole frames if planning
        fails (counted ``crop_errors``)."""
        if self.crops is None:
            return None
        known = [(int(f.image.shape[1]), int(f.image.shape[0])) for f in popped.views]
        sizes = [(int(f.image.shape[1]), int(f.image.shape[0])) if f is not None else known[0]
                 for f in popped.frames]
        try:
            self.drain_poses()
            plan = self.crops.plan(popped.frame_id, sizes)
        except Exception as exc:  # never stop the loop over a crop
            self.ctx.counters["crop_errors"] += 1
            self._warn("crop", f"crop planning failed on frame {popped.frame_id}: {exc!r}")
            plan = CropPlan([(0, 0, w, h) for w, h in sizes], ["error"] * len(sizes))
        c = self.ctx.counters
        for key, val in self.crops.counters.items():  # totals (counters is a Counter)
            c[key] = val
        return plan

    def infer(self, popped: Popped) -> protocol.Kp2d:
        """Preprocess (crops when enabled), run, decode one frame-set; points in full-frame
        pixels."""
        t0 = time.time_ns()
        if self.multi is not None:
            return self.infer_multi(popped, t0)
        if self.topdown is not None:
            return self._kp2d(popped, self.infer_topdown(popped), t0)
        bad = []
        plan = self.plan_crops(popped)
        for i, f in enumerate(popped.frames):
            if f is None:  # missing or desynced view: NaN, named in kp2d.missing/desynced
                bad.append(i)
                self.pre.blank(i)
                continue
            try:
                self.pre.fill(i, f.image, f.pixel_format, None if plan is None else plan.rois[i])
            except ValueError as exc:
                bad.append(i)
                self.pre.blank(i)
                self.ctx.counters["bad_frames"] += 1
                self._warn("bad_frame", f"bad frame {f.cam}#{f.frame_id}: {exc}")
                continue
            if not shmring.intact(f.image):  # the camera reused its ring slot meanwhile
                bad.append(i)
                self.pre.blank(i)
                self.ctx.counters["shm_overrun"] += 1
                self._warn("shm_overrun", f"frame {f.cam}#{f.frame_id} was overwritten in its "
                           "ring before inference read it (raise transport.shm_slots)")
        n = len(popped.frames)
        try:
            points = self.pre.to_frame_pixels(self._decode(self.engine.run(self.pre.batch(n))))
            self.failures = 0
        except Exception as exc:  # a failed model call must not end the run at once
            points = self._failed_call(exc, popped.frame_id, n)
        if bad:
            points[bad] = np.nan
        return self._kp2d(popped, points, t0)

    def infer_multi(self, popped: Popped, t0: int) -> protocol.Kp2d:
        """Several animals: every instance of every view (``inst_points``, ``inst_cams``);
        ``points`` NaN. A failed call or a frame overwritten in its ring gives no
        instances for the set (or that view)."""
        assert self.multi is not None
        frames = [None if f is None else (f.image, f.pixel_format) for f in popped.frames]
        try:
            pts, cams = self.multi(frames)
            owner = self.multi.last_owner
            self.failures = 0
        except Exception as exc:  # a failed model call must not end the run at once
            self._failed_call(exc, popped.frame_id, len(frames))
            pts, cams = np.zeros((0, len(self.manifest.keypoints), 3), np.float32), \
                np.zeros(0, np.uint8)
            owner = np.zeros(0, np.int32)
        if len(owner) != len(cams):
            owner = np.full(len(cams), -1, np.int32)
        bad = [i for i, f in enumerate(popped.frames) if f is not None
               and not shmring.intact(f.image)]
        if bad:
            self.ctx.counters["shm_overrun"] += len(bad)
            keep = ~np.isin(cams, bad)
            pts, cams, owner = pts[keep], cams[keep], owner[keep]
        self.ctx.counters["instances"] += len(cams)
        if self.multi.crops is not None:  # totals (counters is a Counter)
            for key, val in self.multi.crops.counters.items():
                self.ctx.counters[f"multi/{key}"] = val
        msg = self._kp2d(popped, np.full((len(frames), len(self.manifest.keypoints), 3),
                                         np.nan, np.float32), t0)
        msg.inst_points, msg.inst_cams = pts, cams
        if (owner >= 0).any():  # the crops' individuals: fusion skips their association
            msg.inst_owner = np.ascontiguousarray(owner, dtype=np.int32)
            self.ctx.counters["instances_owned"] += int((owner >= 0).sum())
        return msg

    def infer_topdown(self, popped: Popped) -> np.ndarray:
        """A two-stage model's keypoints ``(C, J, 3)`` for one frame-set (full-frame
        pixels); a frame overwritten in its ring meanwhile becomes a NaN view."""
        td = self.topdown
        assert td is not None
        views = [None if f is None else (f.image, f.pixel_format) for f in popped.frames]

        def guide() -> np.ndarray | None:
            """The fused pose at this frame-set, projected into every view (C, J, 2)."""
            if self.guide is None or self.guide_cams is None:
                return None
            self.drain_poses()
            xyz, _ = self.guide.predict(popped.frame_id)
            if xyz is None or xyz.shape[0] != len(self.manifest.keypoints):
                return None
            ok = np.isfinite(xyz).all(1)
            uv = np.full((len(self.cams), len(xyz), 2), np.nan)
            for c, cam in enumerate(self.guide_cams.cameras):
                uv[c, ok] = cam.project(xyz[ok]).reshape(-1, 2)
            return uv

        try:
            points = td.run(views, popped.frame_id, guide)
            self.failures = 0
        except ValueError as exc:  # a frame it cannot read (pixel format, shape)
            self.ctx.counters["bad_frames"] += 1
            self._warn("bad_frame", f"bad frame-set {popped.frame_id}: {exc}")
            points = np.full((len(views), len(self.manifest.keypoints), 3), np.nan, np.float32)
        except Exception as exc:  # a failed model call must not end the run at once
            points = self._failed_call(exc, popped.frame_id, len(views))
        for i, f in enumerate(popped.frames):
            if f is not None and not shmring.intact(f.image):
                points[i] = np.nan
                td.rois[i] = None  # its ROI came from the wrong pixels
                self.ctx.counters["shm_overrun"] += 1
        for key, val in td.counters.items():
            self.ctx.counters[key] = val
        return points

    def _kp2d(self, popped: Popped, points: np.ndarray, t0: int) -> protocol.Kp2d:
        """The kp2d message of a frame-set's keypoints (full-frame pixels)."""
        t1 = time.time_ns()
        trig = [f.t_trigger_ns for f in popped.views if f.t_trigger_ns is not None]
        return protocol.Kp2d(
            frame_id=popped.frame_id, cams=self.cams, model=self.manifest.name, points=points,
            t_trigger_ns=min(trig) if trig else None,
            t_grab_ns=[f.t_grab_ns for f in popped.views], t_set_ns=popped.t_set_ns,
            t_infer_start_ns=t0, t_infer_end_ns=t1, worker=self.k,
            skipped=popped.skipped, incomplete=popped.incomplete,
            missing=popped.missing, desynced=popped.desynced,
            sizes=[[int(f.image.shape[1]), int(f.image.shape[0])] if f is not None else [0, 0]
                   for f in popped.frames],
        )

    def publish(self, pub: zmq.Socket[Any], msg: protocol.Kp2d) -> None:
        """Stamp ``t_pub_ns`` and send (a PUB socket never blocks)."""
        self._infer_ms.append((msg.t_infer_end_ns - msg.t_infer_start_ns) / 1e6)
        msg.t_pub_ns = time.time_ns()
        pub.send_multipart(protocol.encode(msg), copy=False)
        self.ctx.counters["inferred"] += 1

    def poll_control(self, ctl: zmq.Socket[Any]) -> None:
        """Apply a reshard from the supervisor (another worker died), without blocking."""
        while True:
            try:
                parts = ctl.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            msg = decode_reshard(parts)
            if msg is None:
                self.ctx.counters["bad_control"] += 1
                continue
            alive, from_id = msg
            if self.k not in alive:
                continue
            self.assembler.reshard(alive.index(self.k), len(alive), from_id)
            self.ctx.counters["takeovers"] += 1
            log.warning("%s: workers %s share the frame-sets from frame %d on", self.ctx.name,
                        alive, from_id)

    def update_health(self) -> None:
        """Copy assembler and decoder counts into the health counters; update rates."""
        c = self.ctx.counters
        for key, val in self.assembler.counters.items():
            c[key] = val
        c["max_spread_us"] = self.assembler.max_spread_ns // 1000  # cross-camera, per set
        c["rejected"] = self.decoder.rejected
        for key, val in self.feed.counters.items():
            c[key] = val
        for reason, val in self.decoder.errors.items():
            c[f"rejected/{reason}"] = val
        now = time.monotonic()
        if now - self._rate_t >= RATE_PERIOD_S:
            self.ctx.rates["inferred_per_s"] = (c["inferred"] - self._rate_n) / (now - self._rate_t)
            if self._infer_ms:
                self.ctx.rates["infer_ms"] = float(np.mean(self._infer_ms))
                self._infer_ms.clear()
            self._rate_t, self._rate_n = now, c["inferred"]
        self.ctx.tick_health()


#: engines a warm spare built and warmed up, by (model path, cameras), for :class:`_Worker`
_WARM: dict[tuple[str, int], Engine] = {}


def prewarm(cfg: Config, args: dict[str, Any]) -> None:
    """In a warm spare (livepose/runtime/spares.py): load the model and run the warm-up
    batches once; the engine is kept for the worker this process becomes."""
    path, manifest = resolve_model(cfg.model)
    n = len(cfg.camera_names)
    if manifest.two_stage or cfg.realtime:
        # realtime: ONNX Runtime's threads must be born after the worker enters SCHED_FIFO
        # (they inherit it), so the engine is made by the worker itself
        return
    engine = create_engine(engine_name(cfg.model, path), path, manifest, cfg.model)
    pre = Preprocessor(manifest.input, n)
    pre.warm_up()
    for _ in range(WARMUP_RUNS):
        outs = engine.run(pre.batch(n))
        check_output(outs, manifest, n)
        decode_outputs(outs, manifest)
    _WARM[(str(path), n)] = engine


def main(ctx: StageContext) -> None:
    """Run inference worker ``ctx.args["worker"]`` until asked to stop."""
    w = _Worker(ctx)
    w.warm_up()
    k = w.k
    sub = ctx.socket(
        zmq.SUB, connect=[ctx.endpoints[f"frame/{c}"] for c in w.cams],
        subscribe=[b"frame/" + c.encode() for c in w.cams], hwm=w.rcv_hwm,
    )
    # same-host cameras' frames are then taken from their rings, woken by their doorbells
    w.feed = FrameFeed(sub, w.cams, w.decoder, follow=ctx.cfg.transport.follow_rings)
    pub = ctx.socket(zmq.PUB, bind=ctx.endpoints[f"kp2d/{k}"], hwm=1000)
    zero = ["frames", "sets", "inferred", "skipped", "incomplete", "late", "bad_frames",
            "rejected", *(f"gaps/{c}" for c in w.cams)]
    ctx.counters.update(dict.fromkeys(zero, 0))
    if w.topdown is not None:  # detector_runs: views the detector ran on
        ctx.counters.update(w.topdown.counters)
    if w.crops is not None or w.guide is not None or w.multi is not None:  # fusion's poses
        # (3D-guided crops; a two-stage model re-acquiring a lost view; several animals'
        # blobs split by the individuals), drained without blocking
        w.pose_sub = ctx.socket(zmq.SUB, connect=ctx.endpoints["pose3d"], subscribe=b"pose3d",
                                hwm=1000)
        if w.crops is not None:
            ctx.counters.update(dict.fromkeys(w.crops.counters, 0))
    ctx.ready(provider=w.provider, model=w.manifest.name, engine=w.engine_label,
              worker=k, keypoints=len(w.manifest.keypoints))
    log.info("%s: %s on %s", ctx.name, w.manifest.name, w.provider)
    ctl_ep = ctx.endpoints.get("record")  # the supervisor's control PUB (sharding.py)
    ctl = ctx.socket(zmq.SUB, connect=ctl_ep, subscribe=WORKERS_TOPIC) if ctl_ep else None
    while not ctx.stopping:
        w.update_health()
        w.drain_poses()
        if ctl is not None:
            w.poll_control(ctl)
        if (not w.assembler.has_ready() and not w.feed.wait(w.wait_ms())
                and not w.assembler.has_ready()):  # nothing arrived, no deadline expired
            continue
        w.drain()
        popped = w.assembler.pop_ready()
        if popped is None:
            continue
        w.publish(pub, w.infer(popped))
        del popped  # release the received frames
    w.update_health()
