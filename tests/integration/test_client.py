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
        # nothing lost on the way to this client: every frame-set in between is a pose, or
        # one the pipeline said it skipped (a loaded host) or abandoned
        told = {i for q in got[1:] for i in (*q.message.skipped, *q.message.incomplete)}
        assert set(range(ids[0], ids[-1] + 1)) <= set(ids) | told
        p = got[-1]
        assert p.xyz.shape == (p.variance.shape[0], 3) and p.views.dtype == np.uint16
        assert {"total", "inference", "delivery"} <= set(p.latency_ms)
        assert p.latency_ms["total"] > p.latency_ms["inference"] > 0
        assert (p.n_views >= 0).all() and (p.n_views <= len(cfg.cameras)).all()

        latest = PoseClient(sup.endpoints["pose3d"], latest_only=True, context=sup.zctx,
                            timeout_s=5)
        watch = PoseClient(sup.endpoints["pose3d"], latest_only=False, context=sup.zctx,
                           timeout_s=5)
        try:
            first = latest.recv(5)
            assert first is not None
            # let poses pile up unread: 10 at least (a second client sees them published)
            after, until = 0, time.monotonic() + 30
            while after < 10 and time.monotonic() < until:
                sup.poll(0.05)
                q = watch.recv(0.05)
                after += q is not None and q.frame_id > first.frame_id
            newest = latest.recv(5)
            assert newest is not None and newest.frame_id > first.frame_id
            assert latest.skipped >= 5  # stale poses were skipped, not queued
        finally:
            latest.close()
            watch.close()
