"""Stages come back: ``kill -9`` of a camera, the inference worker and fusion in a running
pipeline; the supervisor starts each again after a short back-off and poses resume — with
the restarted camera's views — while the run goes on. Recovery times are printed; the
``livepose bench faults`` numbers in docs/benchmarks.md come from the same mechanism."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time

import numpy as np
import pytest

from livepose.closedloop import PoseClient
from livepose.core.config import load_default_config
from livepose.runtime.supervisor import Supervisor

pytestmark = pytest.mark.integration


def test_killed_stages_are_restarted_and_poses_resume() -> None:
    cfg = load_default_config()
    cfg.realtime = False
    poses: list[tuple[float, int, int]] = []  # (receive time, frame_id, views of keypoint 0)
    with Supervisor(cfg) as sup:
        sup.launch()
        stop = threading.Event()

        def watch() -> None:
            with PoseClient(sup.endpoints["pose3d"], latest_only=False) as client:
                while not stop.is_set():
                    p = client.recv(0.1)
                    if p is not None:
                        poses.append((time.monotonic(), p.frame_id, int(np.bitwise_or.reduce(
                            p.views))))

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        sup.start_trigger()
        kills: dict[str, float] = {}

        def run_for(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                sup.poll(0.05)

        run_for(2.0)
        for victim in ("cam1", "infer0", "fusion"):
            pid = sup.procs[victim].pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            kills[victim] = time.monotonic()
            run_for(4.0)
        stop.set()
        t.join(2)
        restarted = {r["name"]: r for r in sup.restarts}
    assert set(restarted) == {"cam1", "infer0", "fusion"}, sup.restarts
    recovery: dict[str, float] = {}
    for victim, t_kill in kills.items():
        after = [(tr, views) for tr, _, views in poses if tr > t_kill + 0.2]
        if victim == "cam1":  # back when a pose uses cam1's view again
            back = next(tr for tr, views in after if views & 0b10)
        else:  # back when poses flow again after the gap
            gaps = [(b - a, b) for (a, _), (b, _) in itertools.pairwise(after)]
            back = max(gaps)[1] if gaps else after[0][0]
        recovery[victim] = back - t_kill
    print("recovery (s):", {k: round(v, 2) for k, v in recovery.items()})
    assert all(v < 4.0 for v in recovery.values()), recovery  # the bench's bar is 2 s, quiet
