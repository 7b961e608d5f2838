"""Live measurement of a running pipeline: frame accounting, per-stage latency, 3D error.

The monitor subscribes to the trigger clock (``trigger`` and, on a sim rig, ``truth``) and
to ``pose3d``. Because every ``pose3d`` carries the frame-ids the inference workers skipped
or abandoned, one subscriber can account for every triggered frame-set: each one must end
up exactly once as *fused*, *skipped* or *incomplete* (a camera's frame missing).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from typing import Any

import numpy as np
import zmq

from livepose.core import protocol
from livepose.core.latency import STAGES, stage_latencies_ms
from livepose.transport import codec, security

WINDOW = 300


log = logging.getLogger(__name__)

def pct(values: Any, q: float) -> float | None:
    """Percentile of a sequence, ``None`` if empty."""
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(np.percentile(a, q)) if a.size else None


class Monitor:
    """Collects what a run produced.

    Parameters
    ----------
    endpoints
        The run's endpoints (``trigger``, ``pose3d``).
    zctx
        ZeroMQ context of the calling process.
    keys
        CURVE keys for tcp endpoints (the supervisor's :attr:`keys`).
    """

    def __init__(self, endpoints: dict[str, str], zctx: zmq.Context[Any],
                 keys: security.CurveKeys | None = None, faulty_views: int = 0) -> None:
        self.sub = zctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 1_000_000)
        #: this monitor's hello name for the trigger clock (``Supervisor.start_trigger``'s
        #: ``subscribers``): pulse 0 waits until its subscription reached the clock
        self.hello = f"@monitor-{os.getpid()}-{id(self):x}"
        for t in (b"trigger", b"truth", b"pose3d", protocol.clock_hello(self.hello)):
            self.sub.setsockopt(zmq.SUBSCRIBE, t)
        security.connect(self.sub, endpoints["trigger"], keys)
        security.connect(self.sub, endpoints["pose3d"], keys)
        self.decoder = codec.Decoder(expect=["trigger", "truth", "pose3d"])
        self.triggered: set[int] = set()
        self.t_first_trigger: int | None = None
        self.t_last_trigger: int | None = None
        self.truth: dict[int, np.ndarray] = {}
        self.fused: list[int] = []
        self.skipped: list[int] = []
        self.incomplete: list[int] = []
        self.latency: dict[str, list[float]] = {s: [] for s in STAGES}
        self.overhead: list[float] = []
        self.errors: list[np.ndarray] = []  # per fused frame: (J,) error in mm
        #: fused frame-sets not scored: the model's keypoints are not the sim animal's
        self.unscored = 0
        self.recent_err: deque[float] = deque(maxlen=WINDOW)
        self.recent_lat: dict[str, deque[float]] = {s: deque(maxlen=WINDOW) for s in STAGES}
        self.fused_times: deque[int] = deque(maxlen=WINDOW)
        self._pending_pose: dict[int, np.ndarray] = {}
        self.keypoints: int | None = None
        #: bitmask of cameras known (ground truth of an injected fault) to be desynced
        self.faulty_views = faulty_views
        self.faulty_fused = 0
        #: frame_id → bitmask of the cameras any keypoint of its pose used
        self.views_of: dict[int, int] = {}
        self.partial = 0
        self.views_missing: dict[str, int] = {}
        self.views_desynced: dict[str, int] = {}
        self.status: dict[int, int] = {}
        self.t_kill_ns: int | None = None
        self._after_kill: list[tuple[int, float | None]] = []  # (frame_id, total latency)

    def poll(self, timeout_ms: int = 0) -> int:
        """Take in everything available; return the number of messages handled."""
        n = 0
        if not self.sub.poll(timeout_ms):
            return 0
        while True:
            try:
                parts = self.sub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return n
            n += 1
            msg = self.decoder.decode(parts)
            if isinstance(msg, protocol.Trigger):
                self.triggered.add(msg.frame_id)
                self.t_first_trigger = self.t_first_trigger or msg.t_trigger_ns
                self.t_last_trigger = msg.t_trigger_ns
            elif isinstance(msg, protocol.Truth):
                self.truth[msg.frame_id] = np.array(msg.xyz)
                pose = self._pending_pose.pop(msg.frame_id, None)
                if pose is not None:
                    self._score(msg.frame_id, pose)
            elif isinstance(msg, protocol.Pose3d):
                self._on_pose(msg)

    def _on_pose(self, msg: protocol.Pose3d) -> None:
        self.fused.append(msg.frame_id)
        self.views_of[msg.frame_id] = int(np.bitwise_or.reduce(msg.views)) if msg.views.size \
            else 0
        if msg.missing or msg.desynced:
            self.partial += 1
        for c in msg.missing:
            self.views_missing[c] = self.views_missing.get(c, 0) + 1
        for c in msg.desynced:
            self.views_desynced[c] = self.views_desynced.get(c, 0) + 1
        if self.faulty_views and bool((np.asarray(msg.views) & self.faulty_views).any()):
            self.faulty_fused += 1
        for s, n in zip(*np.unique(msg.status, return_counts=True), strict=True):
            self.status[int(s)] = self.status.get(int(s), 0) + int(n)
        self.skipped.extend(msg.skipped)
        self.incomplete.extend(msg.incomplete)
        self.fused_times.append(msg.t_fused_ns)
        self.keypoints = msg.xyz.shape[0]
        lat = stage_latencies_ms(msg)
        for k, v in lat.items():
            self.latency[k].append(v)
            self.recent_lat[k].append(v)
        if "total" in lat and "inference" in lat:
            self.overhead.append(lat["total"] - lat["inference"])
        if self.t_kill_ns is not None and (msg.t_trigger_ns or 0) > self.t_kill_ns:
            self._after_kill.append((msg.frame_id, lat.get("total")))
        xyz = np.array(msg.xyz)
        if msg.frame_id in self.truth:
            self._score(msg.frame_id, xyz)
        else:
            self._pending_pose[msg.frame_id] = xyz

    def _score(self, frame_id: int, xyz: np.ndarray) -> None:
        truth = self.truth[frame_id]
        if truth.shape[-2:] != xyz.shape:  # a model of other keypoints than the sim's
            if not self.unscored:
                log.warning("the model's %d keypoints are not the sim animal's %d: poses are "
                            "not scored against the ground truth", len(xyz), truth.shape[-2])
            self.unscored += 1
            return
        if truth.ndim == 3:  # a sim herd: score against the animal the pose is nearest to
            d = np.linalg.norm(xyz[None] - truth, axis=-1)
            with np.errstate(all="ignore"):
                med = np.nanmedian(np.where(np.isfinite(d), d, np.nan), axis=1)
            truth = truth[int(np.argmin(np.where(np.isfinite(med), med, np.inf)))]
        err = np.linalg.norm(xyz - truth, axis=1)
        self.errors.append(err)
        finite = err[np.isfinite(err)]
        if finite.size:
            self.recent_err.append(float(np.median(finite)))

    # ------------------------------------------------------------------ results
    def accounted(self) -> set[int]:
        """Frame-ids that reached a final state."""
        return set(self.fused) | set(self.skipped) | set(self.incomplete)

    def accounting_ok(self) -> bool:
        """Every triggered frame-set fused, skipped or incomplete — exactly once."""
        all_ids = self.fused + self.skipped + self.incomplete
        return len(all_ids) == len(set(all_ids)) and set(all_ids) == self.triggered

    def status_counts(self) -> dict[str, int]:
        """Keypoints fused so far by status (``measured``, ``predicted``, ``missing``)."""
        return {protocol.STATUS_NAMES[s]: n for s, n in sorted(self.status.items())}

    def after_kill_stats(self, fps: float) -> dict[str, Any]:
        """Frame-sets fused after a scripted camera loss: their rate and total latency."""
        ids = [f for f, _ in self._after_kill]
        lat = [v for _, v in self._after_kill if v is not None]
        span = (max(ids) - min(ids) + 1) / fps if ids else 0.0
        return {"fused_after": len(ids),
                "fused_fps_after": round(len(ids) / span, 2) if span > 0 else None,
                "total_ms_after": {"p50": pct(lat, 50), "p99": pct(lat, 99)}}

    def fused_rate(self) -> float:
        """Recent fused frame-sets per second."""
        if len(self.fused_times) < 2:
            return 0.0
        span = (self.fused_times[-1] - self.fused_times[0]) / 1e9
        return (len(self.fused_times) - 1) / span if span > 0 else 0.0

    def error_stats(self) -> dict[str, float | None]:
        """3D error over all fused keypoints with ground truth (mm)."""
        if not self.errors:
            return {"median": None, "p95": None, "max": None, "nan_fraction": None}
        e = np.concatenate(self.errors)
        finite = e[np.isfinite(e)]
        return {
            "median": pct(finite, 50),
            "p95": pct(finite, 95),
            "max": float(finite.max()) if finite.size else None,
            "nan_fraction": float(1 - finite.size / e.size),
        }

    def latency_stats(self) -> dict[str, dict[str, float | None]]:
        """p50/p99 per stage (ms)."""
        return {k: {"p50": pct(v, 50), "p99": pct(v, 99)} for k, v in self.latency.items()}

    def overhead_stats(self) -> dict[str, float | None]:
        """Pipeline overhead = total − inference, per frame-set (ms)."""
        ov = self.overhead
        return {"p50": pct(ov, 50), "p99": pct(ov, 99), "max": pct(ov, 100)}

    def close(self) -> None:
        """Close the socket."""
        self.sub.close(0)
