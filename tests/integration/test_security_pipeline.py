"""The sim pipeline in real processes over tcp + CURVE; health from strangers is ignored."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from livepose.closedloop.client import PoseClient
from livepose.core import protocol
from livepose.core.config import load_default_config
from livepose.runtime.supervisor import Supervisor
from livepose.transport import security

pytestmark = pytest.mark.integration


def _plain(zctx: zmq.Context[Any], kind: int, ep: str) -> zmq.Socket[Any]:
    s = zctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    if kind == zmq.SUB:
        s.setsockopt(zmq.SUBSCRIBE, b"")
    s.connect(ep)  # a stranger: no keys
    return s


def _spoof(pid: int) -> list[bytes]:
    return protocol.encode(protocol.Health(proc="trigger", pid=pid, state="running",
                                           t_ns=time.time_ns(), counters={"pulses": 10**9}))


def test_pipeline_over_tcp_with_curve_serves_only_key_holders(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    security.make_key_pair(keys_dir, "rig")
    client_dir = tmp_path / "laptop"
    security.make_key_pair(client_dir, "laptop")
    security.make_key_pair(tmp_path / "stranger", "stranger")  # valid keys, not listed
    (keys_dir / "allowed" / "laptop.key").write_bytes((client_dir / "laptop.key").read_bytes())
    cfg = load_default_config()
    cfg.transport.kind = "tcp"
    cfg.transport.keys_dir = keys_dir
    cfg.transport.key_name = "rig"
    cfg.dashboard.port = 0
    zctx: zmq.Context[Any] = zmq.Context()
    with Supervisor(cfg, dashboard=True) as sup:
        sup.launch()
        assert sup.keys is not None
        mine = security.client_keys(client_dir / "laptop.key_secret", keys_dir / "rig.key")
        client = PoseClient(sup.endpoints["pose3d"], latest_only=False, timeout_s=30, keys=mine)
        spy_frames = _plain(zctx, zmq.SUB, sup.endpoints["frame/cam0"])
        spy_poses = _plain(zctx, zmq.SUB, sup.endpoints["pose3d"])
        unlisted = zctx.socket(zmq.SUB)
        unlisted.setsockopt(zmq.LINGER, 0)
        unlisted.setsockopt(zmq.SUBSCRIBE, b"")
        security.connect(unlisted, sup.endpoints["pose3d"], security.client_keys(
            tmp_path / "stranger" / "stranger.key_secret", keys_dir / "rig.key"))
        rogue = _plain(zctx, zmq.PUB, sup.endpoints["health"])
        rogue_ctl = _plain(zctx, zmq.REQ, sup.endpoints["control"])
        rogue_ctl.send(b'{"cmd": "record_start", "name": "pwned"}')
        sup.start_trigger()
        got = []
        try:
            for pose in client:
                got.append(pose)
                rogue.send_multipart(_spoof(sup.procs["trigger"].pid or 0))
                sup.poll(0)
                if len(got) == 30:
                    break
            assert len(got) == 30 and np.isfinite(got[-1].xyz).any()  # the key holder: poses
            assert not spy_frames.poll(200) and not spy_poses.poll(0)  # strangers: nothing
            assert not unlisted.poll(0)
            assert not rogue_ctl.poll(0)  # the control socket never answered the stranger
            assert sup.recording.session is None
            assert sup.health["trigger"].counters.get("pulses", 0) < 10**9  # never decoded
            # the dashboard, a key holder: its subscriptions and its control REQ over CURVE
            assert _dash_sees_the_run(sup)
        finally:
            client.close()
            deadline = time.monotonic() + 5
            while not sup.counters("fusion").get("curve_refused") and time.monotonic() < deadline:
                sup.poll(0.1)
            for s in (spy_frames, spy_poses, unlisted, rogue, rogue_ctl):
                s.close(0)
            zctx.term()
        assert sup.counters("fusion").get("curve_refused", 0) >= 1  # counted at the binder


def _dash_sees_the_run(sup: Supervisor) -> bool:
    req = urllib.request.Request(f"{sup.dashboard_url}api/status",
                                 headers={"Authorization": f"Bearer {sup.dashboard_token}"})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        sup.poll(0.1)
        with urllib.request.urlopen(req, timeout=5) as r:
            st = json.load(r)
        if st["frames"]["fused"] > 0 and st["recording"].get("available") and \
                "fusion" in st["processes"]:
            return True
    return False


def test_health_from_a_process_the_supervisor_did_not_start_is_ignored() -> None:
    cfg = load_default_config()  # ipc: filesystem permissions only, so the pid check matters
    zctx: zmq.Context[Any] = zmq.Context()
    with Supervisor(cfg) as sup:
        sup.start()
        rogue = _plain(zctx, zmq.PUB, sup.endpoints["health"])
        try:
            deadline = time.monotonic() + 10
            while sup.foreign_health < 3 and time.monotonic() < deadline:
                rogue.send_multipart(_spoof(os.getpid()))
                sup.poll(0.05)
            assert sup.foreign_health >= 3
            h = sup.health["trigger"]
            assert h.pid == sup.procs["trigger"].pid and h.counters.get("pulses", 0) < 10**9
        finally:
            rogue.close(0)
            zctx.term()
