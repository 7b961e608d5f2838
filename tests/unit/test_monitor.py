"""The run monitor (livepose/runtime/monitor.py) over real ZeroMQ sockets: poses of a model
whose keypoints are not the sim animal's (BlazePose's 33 on the sim rodent's 14) are counted
as not scored, with a warning, instead of ending the run with a broadcasting error."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import zmq

from livepose.core import protocol
from livepose.runtime.monitor import Monitor


def _pose(fid: int, J: int) -> protocol.Pose3d:
    return protocol.Pose3d(frame_id=fid, xyz=np.zeros((J, 3)), variance=np.ones((J, 3)),
                           reproj=np.zeros(J, np.float32), views=np.ones(J, np.uint16),
                           status=np.ones(J, np.uint8), t_fused_ns=time.time_ns())


def test_poses_of_other_keypoints_are_not_scored() -> None:
    zctx: zmq.Context[Any] = zmq.Context()
    pubs = {}
    for role in ("trigger", "pose3d"):
        pubs[role] = zctx.socket(zmq.PUB)
        pubs[role].bind(f"inproc://monitor-{role}")
    mon = Monitor({r: f"inproc://monitor-{r}" for r in pubs}, zctx)
    try:
        time.sleep(0.2)  # slow joiner
        truth = np.random.default_rng(0).normal(0, 50, (14, 3))
        for fid in range(3):
            pubs["trigger"].send_multipart(protocol.encode(
                protocol.Truth(frame_id=fid, xyz=truth, t_trigger_ns=1)))
        pubs["pose3d"].send_multipart(protocol.encode(_pose(0, 14)))  # the sim's keypoints
        pubs["pose3d"].send_multipart(protocol.encode(_pose(1, 33)))  # another model's
        pubs["pose3d"].send_multipart(protocol.encode(_pose(2, 33)))
        deadline = time.monotonic() + 5
        while len(mon.fused) < 3 and time.monotonic() < deadline:
            mon.poll(50)
        assert mon.fused == [0, 1, 2]
        assert mon.unscored == 2 and len(mon.errors) == 1
        assert mon.error_stats()["median"] == float(np.median(np.linalg.norm(truth, axis=1)))
    finally:
        mon.close()
        for s in pubs.values():
            s.close(0)
        zctx.term()
