"""PoseClient over a real socket: frame ids never go backwards, garbage is counted and
skipped without ending iteration, and the per-keypoint status reaches the client."""

from __future__ import annotations

import time

import numpy as np
import zmq

from livepose.closedloop import PoseClient
from livepose.core import protocol


def _pose(fid: int, status: int = protocol.MEASURED) -> list[bytes]:
    msg = protocol.Pose3d(frame_id=fid, xyz=np.full((2, 3), float(fid)),
                          variance=np.ones((2, 3)), reproj=np.zeros(2, np.float32),
                          views=np.ones(2, np.uint16), status=np.full(2, status, np.uint8),
                          units="m", t_fused_ns=time.time_ns())
    return [bytes(p) for p in protocol.encode(msg)]


def _client_and_pub(tmp_path, latest_only: bool) -> tuple[PoseClient, zmq.Socket]:
    ep = f"ipc://{tmp_path}/pose3d.sock"
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(ep)
    client = PoseClient(ep, latest_only=latest_only, timeout_s=0.5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # slow joiner: wait until a probe gets through
        pub.send_multipart(_pose(0))
        if client.recv(0.05) is not None:
            break
    client.recv(0.2)  # probes still on their way: dropped (not newer), then not counted
    client.out_of_order = 0
    return client, pub


def test_in_order_client_drops_older_and_survives_garbage(tmp_path) -> None:
    client, pub = _client_and_pub(tmp_path, latest_only=False)
    try:
        for parts in (_pose(10), [b"pose3d", b"\xc1garbage"], _pose(7), [b"pose3d"], _pose(11),
                      _pose(11), _pose(12, protocol.PREDICTED)):
            pub.send_multipart(parts)
        got = [p for p in client]
        ids = [p.frame_id for p in got]
        assert ids == [10, 11, 12], ids  # 7 (older) and the repeated 11 are dropped
        assert client.out_of_order == 2
        assert client.rejected >= 2  # the two malformed messages, counted, not fatal
        assert got[0].units == "m" and got[0].measured.all()
        assert not got[-1].measured.any() and np.isnan(got[-1].xyz_measured).all()
        assert np.isfinite(got[-1].xyz).all()  # predicted: finite, but not measured
    finally:
        client.close()
        pub.close(0)


def test_latest_only_yields_the_newest_frame_id_not_the_last_to_arrive(tmp_path) -> None:
    client, pub = _client_and_pub(tmp_path, latest_only=True)
    try:
        for fid in (20, 22, 21):  # 21 arrives last but is older than 22
            pub.send_multipart(_pose(fid))
        time.sleep(0.2)
        first = client.recv(1.0)
        assert first is not None and first.frame_id == 22
        pub.send_multipart(_pose(21))
        pub.send_multipart(_pose(23))
        nxt = client.recv(1.0)
        assert nxt is not None and nxt.frame_id == 23
    finally:
        client.close()
        pub.close(0)
