"""Subscribe to the live 3D pose stream.

Example
-------
>>> from livepose.closedloop.client import PoseClient
>>> with PoseClient("ipc:///tmp/livepose-xyz/pose3d.sock") as client:   # doctest: +SKIP
...     for pose in client:              # newest pose first: stale ones are skipped
...         print(pose.frame_id, pose.xyz[0], pose.latency_ms["total"])

``latest_only=True`` (the default, what a closed loop wants) drains the socket and yields
only the newest pose, counting the ones it skipped in :attr:`PoseClient.skipped`;
``latest_only=False`` yields every pose in order.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from livepose.core import protocol
from livepose.core.latency import stage_latencies_ms
from livepose.transport import codec, security


@dataclass
class Pose:
    """One received 3D pose.

    Attributes
    ----------
    frame_id
        Trigger pulse index.
    xyz
        ``(J, 3)`` keypoint positions at the frame's instant, in :attr:`units` (the
        calibration's; mm for the sim rig); NaN where nothing is known. A *predicted*
        keypoint (a track coasting, see :attr:`status`) is finite too: use :attr:`measured`.
    status
        ``(J,)`` uint8 per keypoint: ``livepose.core.protocol.MEASURED``, ``PREDICTED`` or
        ``MISSING``.
    units
        Length unit of ``xyz`` (``"mm"``, ``"m"``, …).
    late
        The frame-set was fused after a newer one (triangulated only, not filtered).
    variance
        ``(J, 3)`` per-axis variance.
    reproj
        ``(J,)`` mean reprojection error (px).
    views
        ``(J,)`` bitmask of the cameras used.
    latency_ms
        Per-stage latency (see :func:`stage_latencies_ms`) plus ``delivery``
        (pose3d published → received here).
    t_recv_ns
        Host time this client received it.
    message
        The decoded :class:`~livepose.core.protocol.Pose3d` (all timestamps).
    """

    frame_id: int
    xyz: np.ndarray
    variance: np.ndarray
    reproj: np.ndarray
    views: np.ndarray
    latency_ms: dict[str, float]
    t_recv_ns: int
    message: protocol.Pose3d = field(repr=False)
    status: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    units: str = "mm"
    late: bool = False

    @property
    def measured(self) -> np.ndarray:
        """``(J,)`` bool: keypoints measured in this frame-set."""
        return np.asarray(self.status == protocol.MEASURED)

    @property
    def xyz_measured(self) -> np.ndarray:
        """``(J, 3)`` ``xyz`` with every keypoint that was not measured set to NaN."""
        return np.where(self.measured[:, None], self.xyz, np.nan)

    @property
    def trigger_uncertainty_ms(self) -> float | None:
        """Uncertainty of the pulse time behind ``latency_ms`` (a trigger box's clock fit;
        ``None``: the software clock's own send time, or unknown)."""
        s = self.message.t_trigger_sigma_ns
        return None if s is None else s / 1e6

    @property
    def xyz_lead(self) -> np.ndarray | None:
        """``(J, 3)`` positions predicted ``lead_ms`` ahead (``None`` without a lead)."""
        return self.message.xyz_lead

    @property
    def individuals(self) -> list[IndividualPose]:
        """Several animals (``fusion.multi``): one :class:`IndividualPose` per tracked
        individual, ascending ids; empty in a single-animal run (then use :attr:`xyz`)."""
        return individuals_of(self.message)

    def individual(self, track_id: int) -> IndividualPose | None:
        """The individual with this track id, or ``None`` when it is not tracked now."""
        return next((i for i in self.individuals if i.id == track_id), None)

    @property
    def n_views(self) -> np.ndarray:
        """``(J,)`` number of cameras used per keypoint."""
        bits = np.unpackbits(self.views.astype(">u2").view(np.uint8).reshape(-1, 2), axis=1)
        return bits.sum(axis=1, dtype=np.int32)


@dataclass
class IndividualPose:
    """One individual of a multi-animal pose (``fusion.multi``): its track ``id``,
    ``xyz``/``variance`` ``(J, 3)``, ``status``/``views``/``reproj`` ``(J,)``."""

    id: int
    xyz: np.ndarray
    variance: np.ndarray
    status: np.ndarray
    views: np.ndarray
    reproj: np.ndarray

    @property
    def measured(self) -> np.ndarray:
        """``(J,)`` bool: keypoints measured in this frame-set."""
        return np.asarray(self.status == protocol.MEASURED)


def individuals_of(msg: protocol.Pose3d) -> list[IndividualPose]:
    """The individuals a ``pose3d`` message carries (empty for a single-animal run)."""
    if msg.ind_ids is None or msg.ind_xyz is None:
        return []
    n, J = len(msg.ind_ids), msg.ind_xyz.shape[1] if msg.ind_xyz.ndim == 3 else 0

    def arr(a: np.ndarray | None, shape: tuple[int, ...], fill: float, dt: Any) -> np.ndarray:
        return np.asarray(a) if a is not None and a.shape == shape else np.full(shape, fill, dt)

    var = arr(msg.ind_variance, (n, J, 3), np.nan, np.float64)
    st = arr(msg.ind_status, (n, J), protocol.MISSING, np.uint8)
    vw = arr(msg.ind_views, (n, J), 0, np.uint16)
    rp = arr(msg.ind_reproj, (n, J), np.nan, np.float32)
    return [IndividualPose(int(msg.ind_ids[i]), msg.ind_xyz[i], var[i], st[i], vw[i], rp[i])
            for i in range(n)]


class PoseClient:
    """Iterator over ``pose3d`` messages from an endpoint.

    Parameters
    ----------
    endpoint
        The fusion process's ``pose3d`` endpoint (``ipc://…`` or ``tcp://host:port``).
    latest_only
        Yield only the newest available pose (skip stale ones) instead of every pose.
    timeout_s
        Iteration ends after this long without a pose (``None``: wait forever).
    context
        A ZeroMQ context to use (default: a new one, terminated by :meth:`close`).
    keys
        CURVE keys for a ``tcp://`` endpoint of a run with ``transport.keys_dir``:
        ``livepose.transport.security.client_keys("me.key_secret", "rig.key")`` (this
        host's key pair, whose public key the run lists, and the run host's public key).
        Without them such a run never sends this client anything.

    Guarantees: ``frame_id`` never goes backwards (a pose older than one already yielded is
    dropped and counted in :attr:`out_of_order`); a malformed message is counted
    (:attr:`rejected`) and skipped. Only the timeout or :meth:`close` ends iteration.
    """

    def __init__(
        self,
        endpoint: str,
        latest_only: bool = True,
        timeout_s: float | None = None,
        context: zmq.Context[Any] | None = None,
        keys: security.CurveKeys | None = None,
    ) -> None:
        self._own_ctx = context is None
        self.ctx = context or zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"pose3d")
        security.connect(self.sock, endpoint, keys)
        self.latest_only = latest_only
        self.timeout_s = timeout_s
        self.decoder = codec.Decoder(expect=["pose3d"])
        self.skipped = 0
        self.received = 0
        self.out_of_order = 0
        self._last_fid: int | None = None

    @property
    def rejected(self) -> int:
        """Malformed or unexpected messages dropped."""
        return self.decoder.rejected

    def recv(self, timeout_s: float | None = None) -> Pose | None:
        """The next pose (or the newest, with ``latest_only``); ``None`` on timeout.

        Malformed messages and poses older than the last one yielded are dropped (counted)
        and the wait goes on until ``timeout_s`` has passed in all."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            ms = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not self.sock.poll(ms):
                return None
            newest = self._drain()
            if newest is not None:
                return self._pose(newest)
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _drain(self) -> protocol.Pose3d | None:
        """Take what is queued: the newest pose (``latest_only``) or the next one in order."""
        newest: protocol.Pose3d | None = None
        while True:
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return newest
            msg = self.decoder.decode(parts)
            if not isinstance(msg, protocol.Pose3d):
                continue  # counted by the decoder
            self.received += 1
            floor = newest.frame_id if newest is not None else self._last_fid
            if floor is not None and msg.frame_id <= floor:
                self.out_of_order += 1
                continue
            if newest is not None:
                self.skipped += 1
            newest = msg
            if not self.latest_only:
                return newest

    def _pose(self, msg: protocol.Pose3d) -> Pose:
        self._last_fid = msg.frame_id
        t = time.time_ns()
        lat = stage_latencies_ms(msg)
        if msg.t_fused_ns:
            lat["delivery"] = (t - msg.t_fused_ns) / 1e6
        return Pose(msg.frame_id, msg.xyz, msg.variance, msg.reproj, msg.views, lat, t, msg,
                    status=msg.status, units=msg.units, late=msg.late)

    def __iter__(self) -> Iterator[Pose]:
        while True:
            pose = self.recv(self.timeout_s)
            if pose is None:
                return
            yield pose

    def close(self) -> None:
        """Close the socket (and the context if this client made it)."""
        self.sock.close(0)
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> PoseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
