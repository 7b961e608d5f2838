"""``livepose bench cluster``, part 2: the live sim rig on one host and on a 2-node Ray cluster
(see :mod:`livepose.bench.cluster`)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from livepose.core.config import Config, parse_config
from livepose.runtime.monitor import Monitor
from livepose.runtime.supervisor import Supervisor

FPS = 30.0
BACK_WITHIN_S = 5.0
#: the sim rig's frame size in both parts (small: the 2-core VM runs 3 Ray nodes as well)
WIDTH, HEIGHT = 96, 64


def live_config(model: Path, cams: list[str]) -> Config:
    """The benchmark's rig: sim cameras at 96×64, the pooling model, tcp on loopback."""
    return parse_config({
        "name": "bench-cluster", "fps": FPS,
        "cameras": [{"name": c, "backend": "sim"} for c in cams],
        "sim": {"width": WIDTH, "height": HEIGHT},
        "model": {"path": str(model), "intra_op_threads": 1},
        "transport": {"kind": "tcp", "host": "127.0.0.1"},
        "frameset": {"deadline_frames": 10.0},
        "dashboard": {"enabled": False},
    })


def run_live(cfg: Config, seconds: float, launcher: Any = None,
             kill: str | None = None) -> dict[str, Any]:
    """Run the rig for ``seconds``; ``kill``: ``kill -9`` that stage's Ray actor a third of
    the way in and time its return (its new process's health says ``ready``/``running``)."""
    out: dict[str, Any] = {}
    with Supervisor(cfg, launcher=launcher) as sup:
        sup.launch()
        mon = Monitor(sup.endpoints, sup.zctx, sup.keys)
        sup.start_trigger(subscribers=[mon.hello])
        t0 = time.monotonic()
        t_kill: float | None = None
        old_pid: int | None = None
        try:
            while time.monotonic() - t0 < seconds or (t_kill is not None and "back_s" not in out
                                                      and time.monotonic() - t_kill < 20):
                mon.poll(20)
                sup.poll(0)
                now = time.monotonic()
                if kill is not None and t_kill is None and now - t0 > seconds / 3:
                    stage = launcher.started[kill]
                    old_pid = stage.pid
                    os.kill(stage.node["actor_pid"], signal.SIGKILL)  # kill -9 of the actor
                    t_kill = now
                if t_kill is not None and "back_s" not in out:
                    h = sup.health.get(kill or "")
                    if h is not None and h.pid != old_pid and h.state in ("ready", "running"):
                        out["back_s"] = round(now - t_kill, 2)
            sup.stop_trigger()
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and not mon.triggered <= mon.accounted():
                mon.poll(20)
                sup.poll(0)
            out.update(
                frame_accounting_ok=mon.accounting_ok(), triggered=len(mon.triggered),
                fused=len(mon.fused),
                overhead_ms=mon.overhead_stats(), restarts=list(sup.restarts),
                endpoints=dict(sup.endpoints),
            )
        finally:
            mon.close()
    if launcher is not None:
        out["stage_nodes"] = launcher.stage_nodes()
        out["clock"] = launcher.clock_summary()
        launcher.close()
    return out


def bench_live(work: Path, cams: list[str], seconds: float, repeats: int = 3
               ) -> dict[str, Any]:
    """Single host and cluster (cameras + worker on node A, fusion on node B) alternated
    ``repeats`` times (a shared machine's load moves between runs: the medians of the p99s
    are compared), then the cluster with ``kill -9`` of a camera's actor."""
    from livepose.bench.record import pool_model
    from livepose.cluster.live import RayLauncher

    model = pool_model(work / "live-model", WIDTH, HEIGHT, 4)
    cfg = live_config(model, cams)
    singles, clusters = [], []
    for _ in range(max(1, repeats)):
        singles.append(run_live(cfg, seconds))
        clusters.append(run_live(cfg, seconds, RayLauncher(cfg)))
    killed = run_live(cfg, seconds, RayLauncher(cfg), kill=cams[1])

    def med(runs: list[dict[str, Any]], q: str) -> float | None:
        v = sorted(r["overhead_ms"][q] for r in runs if r["overhead_ms"].get(q) is not None)
        return round(v[len(v) // 2], 3) if v else None

    p99 = {"single": med(singles, "p99"), "cluster": med(clusters, "p99")}
    p50 = {"single": med(singles, "p50"), "cluster": med(clusters, "p50")}
    delta = round(p99["cluster"] - p99["single"], 3) \
        if p99["single"] is not None and p99["cluster"] is not None else None
    back = killed.get("back_s")
    last = clusters[-1]
    return {
        "stage_nodes": last["stage_nodes"],
        "transport": {"kind": cfg.transport.kind, "curve": cfg.transport.keys_dir is not None,
                      "endpoints": last["endpoints"]},
        "frame_accounting_ok": all(r["frame_accounting_ok"] for r in singles + clusters),
        "overhead_p99_ms": p99, "overhead_p50_ms": p50,
        "overhead_p99_each_ms": {"single": [r["overhead_ms"]["p99"] for r in singles],
                                 "cluster": [r["overhead_ms"]["p99"] for r in clusters]},
        "overhead_p99_delta_ms": delta,
        "overhead_p99_ok": delta is not None and delta <= 1.0,
        "overhead_p50_delta_ms": round(p50["cluster"] - p50["single"], 3)
        if p50["single"] is not None and p50["cluster"] is not None else None,
        "clock": last["clock"],
        "kill": {"stage": cams[1], "back_s": back, "restarts": len(killed["restarts"]),
                 "ok": back is not None and back <= BACK_WITHIN_S,
                 "frame_accounting_ok": killed["frame_accounting_ok"]},
        "runs": {"single": singles, "cluster": clusters, "kill": killed},
    }
