"""``livepose.closedloop.client.PoseClient`` against a real running pipeline."""

from __future__ import annotations

import time

import numpy as np
import pytest

from livepose.closedloop.client import PoseClient
from livepose.core.config import load_default_config
from livepose.runtime.supervisor import Supervisor

pytestmark = pytest.mark.integration


def test_every_pose_then_latest_only() -> None:
    cfg = load_default_config()
    with Supervisor(cfg) as sup:
        sup.launch()
        every = PoseClient(sup.endpoints["pose3d"], latest_only=False, context=sup.zctx,
                           timeout_s=30)
        sup.start_trigger()
        got = []
        try:
            for pose in every:
                got.append(pose)
                if len(got) == 60:
                    break
                sup.poll(0)
        finally:
            every.close()
        ids = [p.frame_id for p in got]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert ids[-1] - ids[0] < 70  # nothing much skipped at the default rate
        p = got[-1]
        assert p.xyz.shape == (p.variance.shape[0], 3) and p.views.dtype == np.uint16
        assert {"total", "inference", "delivery"} <= set(p.latency_ms)
        assert p.latency_ms["total"] > p.latency_ms["inference"] > 0
        assert (p.n_views >= 0).all() and (p.n_views <= len(cfg.cameras)).all()

        latest = PoseClient(sup.endpoints["pose3d"], latest_only=True, context=sup.zctx,
                            timeout_s=5)
        try:
            first = latest.recv(5)
            assert first is not None
            until = time.monotonic() + 0.6  # let ~18 poses pile up unread
            while time.monotonic() < until:
                sup.poll(0.05)
            newest = latest.recv(5)
            assert newest is not None and newest.frame_id > first.frame_id
            assert latest.skipped >= 5  # stale poses were skipped, not queued
        finally:
            latest.close()
