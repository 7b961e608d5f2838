"""The fusion stage: ``kp2d`` from every inference worker → triangulation → Kalman filter →
``pose3d``.

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
from typing import Any

import numpy as np
import zmq

from livepose import protocol
from livepose.calibration import read_calibration
from livepose.camera import CameraGroup
from livepose.config import Config
from livepose.fusion.kalman import KeypointKalman
from livepose.fusion.triangulate import Triangulator
from livepose.process import StageContext

POLL_MS = 100
MAX_BATCH = 256  # messages drained per loop turn before health is ticked again
RATE_PERIOD_S = 1.0


class FusionInputError(ValueError):
    """A well-formed kp2d message that fusion cannot use (unknown cameras, wrong shape)."""


class Fuser:
    """Turns kp2d messages into pose3d messages.

    Parameters
    ----------
    cameras
        The calibrated cameras, in the config's camera order.
    cfg
        The run's config (``fps``, ``fusion``).

    Attributes
    ----------
    counters
        ``fused``, ``late``, ``gated`` (keypoint measurements rejected by the filter gate),
        ``resets`` (filter resets after a restart of frame ids or a change of J).
    """

    def __init__(self, cameras: CameraGroup, cfg: Config) -> None:
        self.names = list(cameras.names)
        self.fps = float(cfg.fps)
        self.fcfg = cfg.fusion
        self.kcfg = cfg.fusion.kalman
        self.triangulator = Triangulator(cameras, cfg.fusion)
        self.lead_s = float(cfg.fusion.lead_ms) / 1000.0
        self.use_zvar = self.kcfg.measurement_variance == "triangulation"
        self.restart_frames = max(2, round(self.kcfg.max_gap_s * self.fps))
        self.kf: KeypointKalman | None = None
        self.last_fid: int | None = None
        self.counters = {"fused": 0, "late": 0, "gated": 0, "resets": 0}
        self._orders: dict[tuple[str, ...], np.ndarray] = {}

    def warmup(self) -> None:
        """Compile (or load from numba's cache) every kernel of the hot path."""
        self.triangulator.warmup()
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

    def fuse(self, msg: protocol.Kp2d, t_recv_ns: int) -> protocol.Pose3d:
        """Fuse one frame-set (raises :class:`FusionInputError` for unusable input)."""
        tri = self.triangulator.triangulate(self.points(msg))
        J = tri.xyz.shape[0]
        fid = msg.frame_id
        xyz, var = tri.xyz, tri.cov
        gated = np.zeros(J, dtype=np.uint16)
        lead_ns = 0
        if self.kcfg.enabled:
            if self.kf is None or self.kf.n_keypoints != J:
                if self.kf is not None:
                    self.counters["resets"] += 1
                self.kf = KeypointKalman(J, self.kcfg)
                self.last_fid = None
            if self.last_fid is not None and fid <= self.last_fid - self.restart_frames:
                self.kf.reset()
                self.counters["resets"] += 1
                self.last_fid = None
            if self.last_fid is None or fid > self.last_fid:
                dt = 0.0 if self.last_fid is None else (fid - self.last_fid) / self.fps
                xyz, var = self.kf.step(tri.xyz, tri.cov if self.use_zvar else None, dt)
                if self.kf.gated.any():
                    gated = np.where(self.kf.gated, tri.views, 0).astype(np.uint16)
                    self.counters["gated"] += int(np.count_nonzero(self.kf.gated))
                if self.lead_s > 0.0:
                    xyz, var = self.kf.predict_ahead(self.lead_s)
                    lead_ns = round(self.lead_s * 1e9)
                self.last_fid = fid
            else:
                self.counters["late"] += 1
        self.counters["fused"] += 1
        return protocol.Pose3d(
            frame_id=fid, xyz=xyz, variance=var, reproj=tri.reproj, views=tri.views,
            raw_xyz=tri.xyz, gated=gated, cams=list(self.names),
            t_trigger_ns=msg.t_trigger_ns, t_grab_ns=list(msg.t_grab_ns), t_set_ns=msg.t_set_ns,
            t_infer_start_ns=msg.t_infer_start_ns, t_infer_end_ns=msg.t_infer_end_ns,
            t_kp2d_pub_ns=msg.t_pub_ns, t_fuse_recv_ns=t_recv_ns, lead_ns=lead_ns,
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
    decoder = protocol.Decoder(expect=["kp2d"])
    fuser.warmup()
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    for key in ("received", "fused", "late", "rejected", "gated", "dropped"):
        ctx.counters[key] += 0
    ctx.ready(cameras=fuser.names, kalman=cfg.fusion.kalman.enabled, lead_ms=cfg.fusion.lead_ms)
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
