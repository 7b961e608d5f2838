"""The fusion stage: ``kp2d`` from every inference worker → triangulation → filter (none,
linear Kalman filter, or EKF on the 2D views: ``fusion.filter``) → ``pose3d``.

:class:`Fuser` holds the logic (no sockets, testable on its own); :func:`main` is the stage
process around it.

Frame order: several workers publish interleaved frame-sets, so a message can arrive after
a newer one was fused. Such a *late* frame-set is triangulated and published unfiltered
(``xyz`` = the raw triangulation) without touching the filter, and counted. A frame id far
below the last one (more than ``max_gap_s`` of frames) means acquisition restarted: the
filter is reset and fusion goes on from there.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from livepose.core import protocol
from livepose.core.calibration import (
    MM_PER_UNIT,
    CalibrationError,
    calibration_units,
    read_calibration,
)
from livepose.core.camera import CameraGroup
from livepose.core.config import Config
from livepose.core.control import IDS_TOPIC
from livepose.core.geometry import Geometry, fit_geometry
from livepose.core.modelinfo import fusion_noise_px
from livepose.fusion.drift import DriftEvent, DriftMonitor
from livepose.fusion.ekf import KeypointEKF
from livepose.fusion.idfix import drain_id_commands
from livepose.fusion.kalman import KeypointKalman
from livepose.fusion.pulses import PulseTimes
from livepose.kit.process import StageContext
from livepose.transport import codec

#: millimetres per length unit of a calibration

log = logging.getLogger(__name__)

POLL_MS = 100
MAX_BATCH = 256  # messages drained per loop turn before health is ticked again
RATE_PERIOD_S = 1.0


class FusionInputError(ValueError):
    """A well-formed kp2d message that fusion cannot use (unknown cameras, wrong shape)."""


def camera_geometry(cam_cfg: object) -> Geometry:
    """The ROI offset and binning a camera config sets (machine-vision backends)."""
    roi = getattr(cam_cfg, "roi", None)
    offset = (int(roi.offset_x), int(roi.offset_y)) if roi is not None else (0, 0)
    return Geometry(offset=offset, binning=int(getattr(cam_cfg, "binning", 1)))


@dataclass(slots=True)
class Fused:
    """One fused frame-set (``J`` keypoints).

    Attributes
    ----------
    xyz, var
        ``(J, 3)`` positions and per-axis variances at the frame-set's instant (calibration
        units): filtered or, without a filter, the triangulation.
    raw_xyz
        ``(J, 3)`` the triangulation.
    reproj
        ``(J,)`` float32 the triangulation's mean reprojection error (px) over its views.
    views, gated
        ``(J,)`` uint16 bitmasks: the views used (by the triangulation, or by the EKF's
        update) and the views the filter gated out (the linear filter gates the whole
        triangulated point, so all its views).
    status
        ``(J,)`` uint8 :data:`~livepose.core.protocol.MEASURED` (views used in this set),
        :data:`~livepose.core.protocol.PREDICTED` (a track coasting) or
        :data:`~livepose.core.protocol.MISSING`.
    xyz_lead
        ``(J, 3)`` positions predicted ``lead_ns`` ahead (``None`` without a lead).
    lead_ns
        How far ahead ``xyz_lead`` is predicted.
    late
        The frame-set arrived after a newer one: triangulated, not filtered.
    lifted
        ``fusion.mode: lift``: one camera's 2D lifted to 3D (fusion/lift.py).
    """

    xyz: np.ndarray
    var: np.ndarray
    raw_xyz: np.ndarray
    reproj: np.ndarray
    views: np.ndarray
    gated: np.ndarray
    status: np.ndarray
    xyz_lead: np.ndarray | None = None
    lead_ns: int = 0
    late: bool = False
    lifted: bool = False


def keypoint_status(xyz: np.ndarray, views: np.ndarray) -> np.ndarray:
    """``(J,)`` uint8 status of each keypoint from its estimate ``xyz`` ``(J, 3)`` and the
    views that measured it in this set ``views`` ``(J,)``: measured, predicted (finite
    without a view: a coasting track) or missing."""
    known = np.isfinite(xyz).all(axis=1)
    return np.where(known & (views != 0), protocol.MEASURED,
                    np.where(known, protocol.PREDICTED, protocol.MISSING)).astype(np.uint8)


class Fuser:
    """Turns 2D frame-sets (kp2d messages) into fused 3D poses.

    Parameters
    ----------
    cameras
        The calibrated cameras, in the config's camera order.
    cfg
        The run's config (``fps``, ``fusion``).
    units
        The calibration's length unit (``mm``, ``cm``, ``m``): poses come out in it, and the
        config's length settings (in mm) are converted to it.
    pixel_noise_px
        σ of a 2D keypoint at confidence 1 (px), to override the run's
        (:func:`~livepose.core.modelinfo.fusion_noise_px`: ``fusion.pixel_noise_px``, else the
        model manifest's ``noise.sigma_px``, else 1 px).

    The filter is ``cfg.fusion.filter`` (``none``, ``kf``, ``ekf``); ``fusion.kalman.enabled:
    false`` means ``none`` whatever ``filter`` says.

    Attributes
    ----------
    counters
        ``fused``, ``late``, ``gated`` (keypoints whose measurement — the triangulated point,
        or with the EKF one or more views — the filter's gate rejected), ``resets`` (filter resets after a restart of frame ids or a
        change of J).
    """

    def __init__(self, cameras: CameraGroup, cfg: Config, units: str = "mm",
                 pixel_noise_px: float | None = None) -> None:
        if units not in MM_PER_UNIT:
            raise ValueError(f"units {units!r} not one of {sorted(MM_PER_UNIT)}")
        self.names = list(cameras.names)
        self.cameras = cameras
        self.fps = float(cfg.fps)
        self.units = units
        #: the calibration's unit per mm: the config's mm settings are scaled by it
        self.length_scale = 1.0 / MM_PER_UNIT[units]
        self.pixel_noise_px = (float(pixel_noise_px) if pixel_noise_px is not None
                               else fusion_noise_px(cfg))
        self.calibrated = cameras  # as calibrated; ``cameras`` is fitted to the live frames
        self.geometry = ([camera_geometry(c) for c in cfg.cameras]
                         if len(cfg.cameras) == len(cameras) else [Geometry()] * len(cameras))
        self.sizes: list[tuple[int, int] | None] = [None] * len(cameras)
        #: what the geometry check did, per camera (for the health info and the log)
        self.geometry_notes: dict[str, str] = {}
        self.fcfg = cfg.fusion
        self.kcfg = cfg.fusion.kalman
        self.filter = cfg.fusion.filter if self.kcfg.enabled else "none"
        self.lead_s = float(cfg.fusion.lead_ms) / 1000.0
        self.use_zvar = self.kcfg.measurement_variance == "triangulation"
        self.restart_frames = max(2, round(self.kcfg.max_gap_s * self.fps))
        self.kf: KeypointKalman | None = None
        # the EKF's compiled kernel triangulates for every filter (run_filter=False for
        # none/kf): one undistortion, the same results as Triangulator
        self.ekf: KeypointEKF | None = None
        self.n_keypoints: int | None = None
        self.last_fid: int | None = None
        self.counters = {"fused": 0, "late": 0, "gated": 0, "resets": 0}
        self._orders: dict[tuple[str, ...], np.ndarray] = {}
        self.drift = DriftMonitor(cameras, self.fps)  # calibration drift (fusion/drift.py)
        self._drift_in: tuple[int, np.ndarray, np.ndarray] | None = None
        self._drift_source = "associated"  # the multi tracker's (MultiTracker.drift_source)
        self._drift_multi: int | None = None  # the multi tracker's last frame-set, unchecked
        #: ``fusion.multi``: several individuals (fusion/multitrack.py), made at the first
        #: message (its J)
        self.multi_cfg = cfg.fusion.multi
        self.tracker: Any = None
        #: ``fusion.mode: lift``: one camera's 2D lifted to 3D (fusion/lift.py)
        self.lift: Any = None
        if cfg.fusion.mode == "lift":
            from livepose.fusion.lift import LiftFusion

            self.lift = LiftFusion(cameras, cfg, MM_PER_UNIT[units])

    def warmup(self) -> None:
        """Compile (or load from numba's cache) every kernel of the hot path."""
        self._ekf(1).warmup()
        if self.multi_cfg.enabled:
            from livepose.fusion.multitrack import MultiTracker

            MultiTracker(self.cameras, 1, self.fcfg, self.fps, self.length_scale).warmup()
        if self.filter == "kf":
            KeypointKalman(1, self.kcfg, self.fps, self.length_scale).warmup()

    def _ekf(self, J: int) -> KeypointEKF:
        return KeypointEKF(self.cameras, J, self.fcfg, self.fps, length_scale=self.length_scale,
                           pixel_noise_px=self.pixel_noise_px)

    def _order(self, cams: list[str]) -> np.ndarray:
        key = tuple(cams)
        idx = self._orders.get(key)
        if idx is None:
            unknown = [c for c in cams if c not in self.names]
            if unknown or len(set(cams)) != len(cams):
                raise FusionInputError(
                    f"kp2d cams {cams} do not match the calibration's {self.names}"
                )
            idx = np.array([self.names.index(c) for c in cams], dtype=np.intp)
            if len(self._orders) < 64:
                self._orders[key] = idx
        return idx

    def points(self, msg: protocol.Kp2d) -> np.ndarray:
        """``msg.points`` as ``(C, J, 3)`` float32 rows in calibration order (missing
        cameras NaN)."""
        pts = msg.points
        if pts.ndim != 3 or pts.shape[0] != len(msg.cams) or pts.shape[2] != 3:
            raise FusionInputError(
                f"kp2d points shape {pts.shape} does not match {len(msg.cams)} cams × J × 3"
            )
        idx = self._order(msg.cams)
        C = len(self.names)
        if idx.size == C and np.array_equal(idx, np.arange(C)):
            return pts
        out = np.full((C, pts.shape[1], 3), np.nan, dtype=np.float32)
        out[idx] = pts
        return out

    def _new_filters(self, J: int) -> None:
        if self.n_keypoints is not None:
            self.counters["resets"] += 1
        self.n_keypoints = J
        self.kf = (KeypointKalman(J, self.kcfg, self.fps, self.length_scale)
                   if self.filter == "kf" else None)
        self.ekf = self._ekf(J)
        self.last_fid = None

    def step(self, points: np.ndarray, frame_id: int, zvar: np.ndarray | None = None) -> Fused:
        """Fuse one frame-set.

        Parameters
        ----------
        points
            ``(C, J, 3)`` x, y (distorted px), confidence, in calibration order; NaN = no
            view.
        frame_id
            The trigger pulse index (sets ``dt`` and detects late frame-sets).
        zvar
            Optional ``(C, J, 2)`` extra 2D variance per view (px²), e.g. an ensemble's: the
            measurement noise of the EKF and the weights of the triangulation (∝ 1/σ).
        """
        C = len(self.names)
        if points.ndim != 3 or points.shape[0] != C or points.shape[2] != 3:
            raise FusionInputError(f"points must have shape ({C}, J, 3), got {points.shape}")
        if self.lift is not None:
            return Fused(**self.lift.step(points, frame_id))
        J = points.shape[1]
        if self.ekf is None or self.n_keypoints != J:
            self._new_filters(J)
        assert self.ekf is not None
        tracking = self.filter != "none"
        if (tracking and self.last_fid is not None
                and frame_id <= self.last_fid - self.restart_frames):
            if self.kf is not None:
                self.kf.reset()
            self.ekf.reset()
            self.counters["resets"] += 1
            self.last_fid = None
        late = tracking and self.last_fid is not None and frame_id <= self.last_fid
        dt = 0.0 if self.last_fid is None or late else (frame_id - self.last_fid) / self.fps
        gated = np.zeros(J, dtype=np.uint16)
        lead_ns = 0
        xyz_lead = None
        out = self.ekf.step(points, dt, zvar, run_filter=self.filter == "ekf" and not late)
        tri = out.raw
        self._drift_in = None if late else (frame_id, points, tri.xyz)
        xyz, var, reproj, views = tri.xyz, tri.var, tri.reproj, tri.views
        if self.filter == "ekf" and not late:
            xyz, var, views, gated = out.xyz, out.var, out.views, out.gated
        elif self.kf is not None and not late:
            # the linear filter runs per axis: it takes the covariance's diagonal
            xyz, var = self.kf.step(tri.xyz, tri.var if self.use_zvar else None, dt)
            if self.kf.gated.any():
                gated = np.where(self.kf.gated, tri.views, 0).astype(np.uint16)
                views = np.where(self.kf.gated, 0, tri.views).astype(np.uint16)
        if tracking and not late:
            self.counters["gated"] += int(np.count_nonzero(gated))
            if self.lead_s > 0.0:
                if self.kf is not None:
                    xyz_lead, _ = self.kf.predict_ahead(self.lead_s)
                else:
                    xyz_lead, _ = self.ekf.predict_ahead(self.lead_s)
                lead_ns = round(self.lead_s * 1e9)
            self.last_fid = frame_id
        if late:
            self.counters["late"] += 1
        self.counters["fused"] += 1
        return Fused(xyz=xyz, var=var, raw_xyz=tri.xyz, reproj=reproj, views=views,
                     gated=gated, status=keypoint_status(xyz, views), xyz_lead=xyz_lead,
                     lead_ns=lead_ns, late=late)

    def check_geometry(self, msg: protocol.Kp2d) -> None:
        """Fit each camera's model to its live frame size (ROI, binning, padding) when the
        size first appears or changes; filters restart on a new geometry.

        Raises
        ------
        CalibrationError
            Frames that the calibrated geometry cannot explain (fatal for the run).
        """
        if len(msg.sizes) != len(msg.cams):
            return
        idx = self._order(msg.cams)
        changed = False
        cams = list(self.cameras.cameras)
        for i, (w, h) in zip(idx, msg.sizes, strict=True):
            if w <= 0 or h <= 0 or self.sizes[i] == (w, h):
                continue
            cam, note = fit_geometry(self.calibrated.cameras[i], (w, h), self.geometry[i])
            self.sizes[i] = (w, h)
            if note is not None:
                self.geometry_notes[cam.name] = note
                log.warning("%s", note)
            changed = changed or cam is not cams[i]
            cams[i] = cam
        if changed:
            self.cameras = CameraGroup(cams)
            if self.n_keypoints is not None:
                self._new_filters(self.n_keypoints)

    def check_drift(self) -> list[DriftEvent]:
        """Feed the last frame-set to the drift monitor (after publishing: off the latency
        path); returns new :class:`~livepose.fusion.drift.DriftEvent` s."""
        if self._drift_in is not None:
            self.drift.update(*self._drift_in)
            self._drift_in = None
        if self._drift_multi is not None:  # several animals: one individual's views
            fid, self._drift_multi = self._drift_multi, None
            if self.tracker.drift_source != self._drift_source:  # crops took over: their model
                self._drift_source = self.tracker.drift_source
                self.drift.restart()
            sample = self.tracker.drift_sample() if self.drift.due(fid) else None
            if sample is not None:
                self.drift.update(fid, *sample)
        return self.drift.pop_events()

    def fuse(self, msg: protocol.Kp2d, t_recv_ns: int) -> protocol.Pose3d:
        """Fuse one kp2d message (raises :class:`FusionInputError` for unusable input and
        :class:`~livepose.core.calibration.CalibrationError` for a geometry the calibration
        cannot explain)."""
        self.check_geometry(msg)
        if self.multi_cfg.enabled:
            return self.fuse_multi(msg, t_recv_ns)
        f = self.step(self.points(msg), msg.frame_id)
        return protocol.Pose3d(
            frame_id=msg.frame_id, xyz=f.xyz, variance=f.var, reproj=f.reproj, views=f.views,
            status=f.status, raw_xyz=f.raw_xyz, gated=f.gated, xyz_lead=f.xyz_lead,
            late=f.late, lifted=f.lifted, units=self.units, cams=list(self.names),
            t_trigger_ns=msg.t_trigger_ns, t_grab_ns=list(msg.t_grab_ns), t_set_ns=msg.t_set_ns,
            t_infer_start_ns=msg.t_infer_start_ns, t_infer_end_ns=msg.t_infer_end_ns,
            t_kp2d_pub_ns=msg.t_pub_ns, t_fuse_recv_ns=t_recv_ns, lead_ns=f.lead_ns,
            skipped=list(msg.skipped), incomplete=list(msg.incomplete),
            missing=list(msg.missing), desynced=list(msg.desynced),
        )

    def fuse_multi(self, msg: protocol.Kp2d, t_recv_ns: int) -> protocol.Pose3d:
        """Several animals (``fusion.multi``): the message's instances through the
        :class:`~livepose.fusion.multitrack.MultiTracker` → ``pose3d`` with individuals."""
        from livepose.fusion.multitrack import MultiTracker, pose3d_fields

        J = msg.points.shape[1] if msg.points.ndim == 3 else 0
        pts, cams = msg.inst_points, msg.inst_cams
        if pts is None or cams is None:
            pts, cams = np.zeros((0, J, 3), np.float32), np.zeros(0, np.uint8)
        if pts.ndim != 3 or pts.shape[1:] != (J, 3) or cams.shape != (len(pts),) or (
                len(cams) and int(cams.max()) >= len(msg.cams)):
            raise FusionInputError(f"kp2d instances {pts.shape} / cams {cams.shape} do not "
                                   f"match {len(msg.cams)} cams × J={J} × 3")
        if self.tracker is None or self.tracker.J != J:
            self.tracker = MultiTracker(self.cameras, J, self.fcfg, self.fps,
                                        self.length_scale, self.pixel_noise_px)
            self.tracker.warmup()
        rows = self._order(msg.cams)[cams.astype(np.int64)]  # calibration row of each
        views = [np.ascontiguousarray(pts[rows == c]) for c in range(len(self.names))]
        own = msg.inst_owner
        if own is not None and own.shape != cams.shape:
            raise FusionInputError(f"kp2d inst_owner {own.shape} does not match the "
                                   f"{len(cams)} instances")
        owners = None if own is None else [own[rows == c] for c in range(len(self.names))]
        ind = self.tracker.step(views, msg.frame_id / self.fps, owners)
        self._drift_multi = msg.frame_id  # its sample is picked after publishing
        self.counters["fused"] += 1
        return protocol.Pose3d(
            frame_id=msg.frame_id, **pose3d_fields(ind, J), units=self.units,
            cams=list(self.names), t_trigger_ns=msg.t_trigger_ns, t_grab_ns=list(msg.t_grab_ns),
            t_set_ns=msg.t_set_ns, t_infer_start_ns=msg.t_infer_start_ns,
            t_infer_end_ns=msg.t_infer_end_ns, t_kp2d_pub_ns=msg.t_pub_ns,
            t_fuse_recv_ns=t_recv_ns, skipped=list(msg.skipped),
            incomplete=list(msg.incomplete), missing=list(msg.missing),
            desynced=list(msg.desynced),
        )


def prewarm(cfg: Config, args: dict[str, Any]) -> None:
    """In a warm spare (livepose/runtime/spares.py): build a fuser of the run's calibration
    and run its warm-up once, so numba's target and kernels are loaded when this process
    becomes fusion."""
    calib = args["calibration"]
    fuser = Fuser(read_calibration(calib, cfg.camera_names), cfg,
                  calibration_units(calib, cfg.calibration_units))
    fuser.warmup()


def main(ctx: StageContext) -> None:
    """The fusion process (see the module docstring)."""
    cfg = ctx.cfg
    cameras = read_calibration(ctx.args["calibration"], cfg.camera_names)
    fuser = Fuser(cameras, cfg, calibration_units(ctx.args["calibration"], cfg.calibration_units))
    pub = ctx.socket(zmq.PUB, bind=ctx.endpoints["pose3d"])
    connect = [ctx.endpoints[f"kp2d/{k}"] for k in range(cfg.model.workers)]
    topics = [b"kp2d"]
    pulses: PulseTimes | None = None
    if cfg.trigger.source == "serial" and "trigger" in ctx.endpoints:  # a trigger box's times
        pulses = PulseTimes(cfg.fps)
        connect.append(ctx.endpoints["trigger"])
        topics.append(b"trigger")
    sub = ctx.socket(zmq.SUB, connect=connect, subscribe=topics)
    decoder = codec.Decoder(expect=["kp2d", "trigger"])
    fuser.warmup()
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    ids_ep = ctx.endpoints.get("record") if cfg.fusion.multi.enabled else None
    ctl = ctx.socket(zmq.SUB, connect=ids_ep, subscribe=IDS_TOPIC) if ids_ep else None
    if ctl is not None:  # a user's fixes of identities (the supervisor's control PUB)
        poller.register(ctl, zmq.POLLIN)
        ctx.counters["id_fixes"] += 0
        ctx.counters["id_rejected"] += 0
    for key in ("received", "fused", "late", "rejected", "gated", "dropped"):
        ctx.counters[key] += 0
    ctx.ready(cameras=fuser.names, filter=fuser.filter, model=cfg.fusion.kalman.model,
              lead_ms=cfg.fusion.lead_ms)
    rate_t0, rate_n0 = time.monotonic(), 0
    last_err_log = 0.0

    def report(message: str) -> None:
        nonlocal last_err_log
        now = time.monotonic()
        if now - last_err_log > 1.0:  # ctx.error logs every call: rate-limit the flood
            last_err_log = now
            ctx.error(message)
        else:
            ctx.counters["errors"] += 1
            ctx.last_error = message

    while not ctx.stopping:
        ctx.tick_health()
        now = time.monotonic()
        if now - rate_t0 >= RATE_PERIOD_S:
            ctx.rates["fused"] = (fuser.counters["fused"] - rate_n0) / (now - rate_t0)
            rate_t0, rate_n0 = now, fuser.counters["fused"]
        if not poller.poll(POLL_MS):
            continue
        if ctl is not None:
            drain_id_commands(ctx, fuser.tracker, ctl, report)
        batch: list[tuple[int, protocol.Kp2d]] = []
        while len(batch) < MAX_BATCH:
            try:
                parts: Any = sub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            t_recv = time.time_ns()
            ctx.counters["received"] += 1
            msg = decoder.decode(parts)
            if isinstance(msg, protocol.Kp2d):
                batch.append((t_recv, msg))
            elif isinstance(msg, protocol.Trigger) and pulses is not None:
                pulses.add(msg)
        ctx.counters["rejected"] = decoder.rejected
        batch.sort(key=lambda item: item[1].frame_id)  # several workers interleave
        for t_recv, msg in batch:
            try:
                pose = fuser.fuse(msg, t_recv)
                if pulses is not None:  # the box's time of this pulse, and its uncertainty
                    hit = pulses.get(msg.frame_id)
                    if hit is not None:
                        if pose.t_trigger_ns is None:
                            pose.t_trigger_ns = hit[0]
                        pose.t_trigger_sigma_ns = hit[1]
                pose.t_fused_ns = time.time_ns()
                pub.send_multipart(protocol.encode(pose), flags=zmq.NOBLOCK, copy=False)
                for ev in fuser.check_drift():
                    ctx.counters["drift_warnings"] += 1
                    # structured for the dashboard's banner (health info), and the message
                    ctx.info.setdefault("drift", {})[ev.camera] = ev.info()
                    report(ev.message)
            except zmq.Again:
                ctx.counters["dropped"] += 1
            except FusionInputError as exc:
                ctx.counters["dropped"] += 1
                report(f"frame {msg.frame_id}: {exc}")
            except CalibrationError:
                raise  # a geometry the calibration cannot explain: the run must stop
            except Exception as exc:  # one bad message must never kill the loop
                ctx.counters["dropped"] += 1
                report(f"frame {msg.frame_id}: {type(exc).__name__}: {exc}")
        for key in ("fused", "late", "gated", "resets"):
            ctx.counters[key] = fuser.counters[key]
        if fuser.tracker is not None:  # several animals: the tracks' lives, in health
            for key, n in fuser.tracker.counters.items():
                ctx.counters[f"multi/{key}"] = n
        if fuser.geometry_notes:
            ctx.info["geometry"] = dict(fuser.geometry_notes)
