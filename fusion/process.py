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

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from livepose.core import protocol
from livepose.core.calibration import read_calibration
from livepose.core.camera import CameraGroup
from livepose.core.config import Config
from livepose.fusion.drift import DriftEvent, DriftMonitor
from livepose.fusion.ekf import KeypointEKF
from livepose.fusion.kalman import KeypointKalman
from livepose.kit.process import StageContext
from livepose.transport import codec

POLL_MS = 100
MAX_BATCH = 256  # messages drained per loop turn before health is ticked again
RATE_PERIOD_S = 1.0


class FusionInputError(ValueError):
    """A well-formed kp2d message that fusion cannot use (unknown cameras, wrong shape)."""


@dataclass(slots=True)
class Fused:
    """One fused frame-set (``J`` keypoints).

    Attributes
    ----------
    xyz, var
        ``(J, 3)`` output positions (mm) and per-axis variances (mm²): filtered (and
        predicted ``lead_ms`` ahead) or, without a filter, the triangulation.
    raw_xyz
        ``(J, 3)`` the triangulation.
    reproj
        ``(J,)`` float32 the triangulation's mean reprojection error (px) over its views.
    views, gated
        ``(J,)`` uint16 bitmasks: the views used (by the triangulation, or by the EKF's
        update) and the views the filter gated out (the linear filter gates the whole
        triangulated point, so all its views).
    lead_ns
        How far ahead ``xyz`` is predicted.
    late
        The frame-set arrived after a newer one: triangulated, not filtered.
    """

    xyz: np.ndarray
    var: np.ndarray
    raw_xyz: np.ndarray
    reproj: np.ndarray
    views: np.ndarray
    gated: np.ndarray
    lead_ns: int = 0
    late: bool = False


class Fuser:
    """Turns 2D frame-sets (kp2d messages) into fused 3D poses.

    Parameters
    ----------
    cameras
        The calibrated cameras, in the config's camera order.
    cfg
        The run's config (``fps``, ``fusion``).

    The filter is ``cfg.fusion.filter`` (``none``, ``kf``, ``ekf``); ``fusion.kalman.enabled:
    false`` means ``none`` whatever ``filter`` says.

    Attributes
    ----------
    counters
        ``fused``, ``late``, ``gated`` (keypoints whose measurement — the triangulated point,
        or with the EKF one or more views — the filter's gate rejected), ``resets`` (filter resets after a restart of frame ids or a
        change of J).
    """

    def __init__(self, cameras: CameraGroup, cfg: Config) -> None:
        self.names = list(cameras.names)
        self.cameras = cameras
        self.fps = float(cfg.fps)
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

    def warmup(self) -> None:
        """Compile (or load from numba's cache) every kernel of the hot path."""
        KeypointEKF(self.cameras, 1, self.fcfg).warmup()
        if self.filter == "kf":
            KeypointKalman(1, self.kcfg).warmup()

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
        self.kf = KeypointKalman(J, self.kcfg) if self.filter == "kf" else None
        self.ekf = KeypointEKF(self.cameras, J, self.fcfg)
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
        out = self.ekf.step(points, dt, zvar, run_filter=self.filter == "ekf" and not late)
        tri = out.raw
        self._drift_in = None if late else (frame_id, points, tri.xyz)
        xyz, var, reproj, views = tri.xyz, tri.cov, tri.reproj, tri.views
        if self.filter == "ekf" and not late:
            xyz, var, views, gated = out.xyz, out.var, out.views, out.gated
        elif self.kf is not None and not late:
            xyz, var = self.kf.step(tri.xyz, tri.cov if self.use_zvar else None, dt)
            if self.kf.gated.any():
                gated = np.where(self.kf.gated, tri.views, 0).astype(np.uint16)
                views = np.where(self.kf.gated, 0, tri.views).astype(np.uint16)
        if tracking and not late:
            self.counters["gated"] += int(np.count_nonzero(gated))
            if self.lead_s > 0.0:
                if self.kf is not None:
                    xyz, var = self.kf.predict_ahead(self.lead_s)
                else:
                    xyz, var = self.ekf.predict_ahead(self.lead_s)
                lead_ns = round(self.lead_s * 1e9)
            self.last_fid = frame_id
        if late:
            self.counters["late"] += 1
        self.counters["fused"] += 1
        return Fused(xyz=xyz, var=var, raw_xyz=tri.xyz, reproj=reproj, views=views,
                     gated=gated, lead_ns=lead_ns, late=late)

    def check_drift(self) -> list[DriftEvent]:
        """Feed the last frame-set to the drift monitor (after publishing: off the latency
        path); returns new :class:`~livepose.fusion.drift.DriftEvent` s."""
        if self._drift_in is not None:
            self.drift.update(*self._drift_in)
            self._drift_in = None
        return self.drift.pop_events()

    def fuse(self, msg: protocol.Kp2d, t_recv_ns: int) -> protocol.Pose3d:
        """Fuse one kp2d message (raises :class:`FusionInputError` for unusable input)."""
        f = self.step(self.points(msg), msg.frame_id)
        return protocol.Pose3d(
            frame_id=msg.frame_id, xyz=f.xyz, variance=f.var, reproj=f.reproj, views=f.views,
            raw_xyz=f.raw_xyz, gated=f.gated, cams=list(self.names),
            t_trigger_ns=msg.t_trigger_ns, t_grab_ns=list(msg.t_grab_ns), t_set_ns=msg.t_set_ns,
            t_infer_start_ns=msg.t_infer_start_ns, t_infer_end_ns=msg.t_infer_end_ns,
            t_kp2d_pub_ns=msg.t_pub_ns, t_fuse_recv_ns=t_recv_ns, lead_ns=f.lead_ns,
            skipped=list(msg.skipped), incomplete=list(msg.incomplete),
        )


def main(ctx: StageContext) -> None:
    """The fusion process (see the module docstring)."""
    cfg = ctx.cfg
    cameras = read_calibration(ctx.args["calibration"], cfg.camera_names)
    fuser = Fuser(cameras, cfg)
    pub = ctx.socket(zmq.PUB, bind=ctx.endpoints["pose3d"])
    sub = ctx.socket(
        zmq.SUB,
        connect=[ctx.endpoints[f"kp2d/{k}"] for k in range(cfg.model.workers)],
        subscribe=b"kp2d",
    )
    decoder = codec.Decoder(expect=["kp2d"])
    fuser.warmup()
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
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
        ctx.counters["rejected"] = decoder.rejected
        batch.sort(key=lambda item: item[1].frame_id)  # several workers interleave
        for t_recv, msg in batch:
            try:
                pose = fuser.fuse(msg, t_recv)
                pose.t_fused_ns = time.time_ns()
                pub.send_multipart(protocol.encode(pose), flags=zmq.NOBLOCK, copy=False)
                for ev in fuser.check_drift():
                    ctx.counters["drift_warnings"] += 1
                    report(ev.message)
            except zmq.Again:
                ctx.counters["dropped"] += 1
            except FusionInputError as exc:
                ctx.counters["dropped"] += 1
                report(f"frame {msg.frame_id}: {exc}")
            except Exception as exc:  # one bad message must never kill the loop
                ctx.counters["dropped"] += 1
                report(f"frame {msg.frame_id}: {type(exc).__name__}: {exc}")
        for key in ("fused", "late", "gated", "resets"):
            ctx.counters[key] = fuser.counters[key]
