"""``livepose bench cluster``: the pipeline and the reanalysis on a local 2-node Ray cluster.

Part 1 (**reanalyse**): ``sessions`` short sim sessions are recorded with the live pipeline
(FFV1, different sim seeds), re-analysed by one process (the reference) and on the cluster
with 1 and 2 workers; the 3D of every run must equal the reference (``max_abs_diff`` ≤ 1e-6
of the unit), and a ``kill -9`` of a worker during a run must be redone (``redone`` ≥ 1,
results still equal).

Part 2 (**live**): the same sim rig run once on this host (the reference) and once with
every stage a Ray actor on a 2-node local cluster — cameras and the inference worker on
node A (``camera:<name>`` resources), fusion and the consumers on node B
(``livepose:fusion``), tcp between them — reporting each stage's node (``stage_nodes``),
``transport``, ``frame_accounting_ok`` and the overhead p99 of both (``overhead_p99_delta_ms``),
then ``kill -9`` of a camera's actor and the time until it is back (``restart_s``).
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from livepose.bench.cluster_live import HEIGHT, WIDTH


def record_sessions(root: Path, n: int, pulses: int, cameras: int = 3, fps: float = 20.0,
                    model: Path | None = None, filter: str = "ekf") -> list[Path]:
    """Record ``n`` sim sessions of ``pulses`` frame-sets (seed ``k`` each) under ``root``
    (``filter``: ``fusion.filter``)."""
    from livepose.bench.record import bench_config, pool_model, record_run

    model = model or pool_model(root / "model", WIDTH, HEIGHT, 4)
    out = []
    for k in range(n):
        cfg = bench_config(root / "sessions", model, fps, "ffv1", cameras, WIDTH, HEIGHT)
        cfg.sim.seed = k
        cfg.recording.name = f"sim{k}"
        cfg.frameset.deadline_frames = 10.0
        cfg.fusion.filter = filter  # type: ignore[assignment]
        run = record_run(cfg, pulses)
        out.append(Path(run["session"]["path"]))
    return out


def max_diff(a: list[Any], b: list[Any]) -> float:
    """The largest |difference| between two runs' 3D (sessions in order; NaN must match)."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if not np.array_equal(x.frame_ids, y.frame_ids):
            return float("inf")
        if not np.array_equal(np.isnan(x.xyz), np.isnan(y.xyz)):
            return float("inf")
        ok = np.isfinite(x.xyz)
        if ok.any():
            worst = max(worst, float(np.max(np.abs(x.xyz[ok] - y.xyz[ok]))))
    return worst


def bench_reanalyse(work: Path, sessions: int = 4, pulses: int = 60) -> dict[str, Any]:
    """Part 1 (module docstring); needs a Ray cluster this process is connected to."""
    from livepose.cluster.reanalyse import run_local, run_ray

    paths = record_sessions(work, sessions, pulses)
    model = str(work / "model" / "model.onnx")
    ref = run_local(paths, model, work / "out-local")
    runs: dict[str, Any] = {"local": ref.summary()}
    diffs: dict[str, float] = {}
    for w in (1, 2):
        r = run_ray(paths, model, work / f"out-ray{w}", workers=w)
        runs[f"ray_{w}"] = r.summary()
        diffs[f"ray_{w}"] = max_diff(ref.sessions, r.sessions)
    killed = run_ray(paths, model, work / "out-kill", workers=2, kill_first=True)
    runs["ray_2_kill"] = killed.summary()
    diffs["ray_2_kill"] = max_diff(ref.sessions, killed.sessions)
    fps = {k: v["frames_per_s"] for k, v in runs.items()}
    return {
        "sessions": sessions, "frames": ref.frames, "runs": runs,
        "max_abs_diff": diffs, "identical": all(d <= 1e-6 for d in diffs.values()),
        "redone_after_kill": killed.redone,
        "frames_per_s": fps,
        "scaling_2_over_1": round(fps["ray_2"] / fps["ray_1"], 2)
        if fps.get("ray_1") and fps.get("ray_2") else None,
    }


def run_bench(json_path: Path | None = None, sessions: int = 4, pulses: int = 60,
              live_s: float = 6.0, parts: tuple[str, ...] = ("reanalyse", "live")
              ) -> dict[str, Any]:
    """Both parts on a local 2-node cluster (node A: cameras + worker, node B: fusion)."""
    from livepose.cluster.raycluster import local_cluster

    work = Path(tempfile.mkdtemp(prefix="livepose-bench-cluster-"))
    cams = [f"cam{i}" for i in range(3)]
    node_a = {"num_cpus": 2, "resources": {f"camera:{c}": 1 for c in cams}}
    node_b = {"num_cpus": 2, "resources": {"livepose:fusion": 1}}
    out: dict[str, Any] = {"machine": {"platform": platform.platform(),
                                       "cpus": os.cpu_count()}}
    try:
        with local_cluster([node_a, node_b]):
            if "reanalyse" in parts:
                out["reanalyse"] = bench_reanalyse(work, sessions, pulses)
            if "live" in parts:
                from livepose.bench.cluster_live import bench_live

                out.update(bench_live(work, cams, live_s))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if json_path is not None:
        import json

        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(out, indent=2, default=str))
    return out

