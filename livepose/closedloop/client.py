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
        ``(J, 3)`` filtered keypoint positions (world units, mm for the sim rig); NaN unknown.
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

    @property
    def n_views(self) -> np.ndarray:
        """``(J,)`` number of cameras used per keypoint."""
        bits = np.unpackbits(self.views.astype(">u2").view(np.uint8).reshape(-1, 2), axis=1)
        return bits.sum(axis=1, dtype=np.int32)


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

    def recv(self, timeout_s: float | None = None) -> Pose | None:
        """The next pose (or the newest, with ``latest_only``); ``None`` on timeout."""
        ms = -1 if timeout_s is None else int(timeout_s * 1000)
        if not self.sock.poll(ms):
            return None
        newest: protocol.Pose3d | None = None
        while True:
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            msg = self.decoder.decode(parts)
            if isinstance(msg, protocol.Pose3d):
                self.received += 1
                if newest is not None:
                    self.skipped += 1
                newest = msg
            if not self.latest_only and newest is not None:
                break
        if newest is None:
            return None
        t = time.time_ns()
        lat = stage_latencies_ms(newest)
        if newest.t_fused_ns:
            lat["delivery"] = (t - newest.t_fused_ns) / 1e6
        return Pose(
            newest.frame_id,
            newest.xyz,
            newest.variance,
            newest.reproj,
            newest.views,
            lat,
            t,
            newest,
        )

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
