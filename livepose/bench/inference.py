"""``livepose bench inference``: what one frame-set costs the inference worker.

For every engine/provider available here (ONNX Runtime's providers best first; the torch
engine when a ``.pt``/``.pt2`` model is given) and batch sizes ``1…C``, on frames rendered
by the sim rig (the default model's own input), the wall time of:

- ``infer``: one ``Engine.run`` over ``b`` views (median, p99) and the views per second;
- ``pre``: filling the ``C`` input slots from camera frames (:class:`Preprocessor`);
- ``decode``: network outputs → keypoints for ``C`` views (:func:`decode_outputs`);
- ``period_share``: ``(pre + infer(C) + decode) / (1 / fps)``, the share of a frame period
  at the rig's rate a worker is busy.

``summary``: ``provider`` (best provider measured), ``cpu_batched_speedup`` (``C`` single-
view calls ÷ one batched call of ``C`` views, on CPU; the two are timed alternately, ``runs``
times, and the medians divided), ``decode_share`` (``(pre + decode) /
infer(C)`` on the best provider), and the same figures per provider.
Timings are ``time.perf_counter_ns`` around each call, after a warm-up.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from livepose.bench.results import write_json
from livepose.core.config import Config, ModelConfig, load_default_config

CPU = "CPUExecutionProvider"


def _stats(ns: list[int]) -> dict[str, float]:
    a = np.asarray(ns, dtype=np.float64) / 1e6
    return {"median_ms": float(np.median(a)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean())}


def _time(fn: Callable[[], object], runs: int, warmup: int) -> list[int]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        out.append(time.perf_counter_ns() - t0)
    return out


def _interleaved(engine: Any, x: np.ndarray, runs: int) -> tuple[list[int], list[int]]:
    """``C`` single-view calls and one ``C``-view call, alternated ``runs`` times, so that
    whatever else the machine does weighs on both alike (the batched speedup is the ratio
    of their medians)."""
    views = [np.ascontiguousarray(x[i : i + 1]) for i in range(x.shape[0])]
    for _ in range(5):
        engine.run(x)
    singles, batched = [], []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        for v in views:
            engine.run(v)
        t1 = time.perf_counter_ns()
        engine.run(x)
        t2 = time.perf_counter_ns()
        singles.append(t1 - t0)
        batched.append(t2 - t1)
    return singles, batched


def sim_frames(cfg: Config, width: int, height: int) -> list[np.ndarray]:
    """One frame per camera of the sim rig at ``width``×``height`` (uint8 mono)."""
    from livepose.acquisition.sim.backend import make_animal
    from livepose.acquisition.sim.render import SimRenderer
    from livepose.acquisition.sim.rig import arena_of, make_rig

    sim = cfg.sim.model_copy(update={"width": width, "height": height})
    rig = make_rig(sim, cfg.camera_names)
    spheres, albedo, _ = make_animal(cfg).pose(3.0)
    return [SimRenderer(c, sim, arena_of(sim).radius_mm).render(spheres, albedo, 0)
            for c in rig.cameras]


def engine_variants(model: ModelConfig, path: Path) -> list[tuple[str, ModelConfig]]:
    """(label, model config) per engine/provider to measure, best first."""
    from livepose.inference.engine import available_providers, engine_name

    name = engine_name(model, path)
    if name == "onnxruntime":
        order = ("TensorrtExecutionProvider", "CUDAExecutionProvider", CPU)
        have = available_providers()
        return [(p, model.model_copy(update={"providers": [p], "engine": "onnxruntime"}))
                for p in order if p in have]
    return [(name, model.model_copy(update={"engine": name}))]


def measure(label: str, model: ModelConfig, path: Path, frames: list[np.ndarray], fps: float,
            runs: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """Time preprocessing, every batch size, and decoding for one engine/provider."""
    from livepose.inference.decode import decode_outputs
    from livepose.inference.engine import create_engine
    from livepose.inference.manifest import resolve_model
    from livepose.inference.preprocess import Preprocessor

    path, manifest = resolve_model(model)
    engine = create_engine(model.engine, path, manifest, model)
    c = len(frames)
    pre = Preprocessor(manifest.input, c)

    def fill() -> None:
        for i, f in enumerate(frames):
            pre.fill(i, f, "Mono8" if f.ndim == 2 else "RGB8")

    fill()
    pre_ns = _time(fill, runs, 5)
    batches: dict[str, Any] = {}
    for b in range(1, c + 1):
        x = np.ascontiguousarray(pre.batch(c)[:b])

        def call(x: np.ndarray = x) -> object:
            return engine.run(x)

        ns = _time(call, runs, 10)
        st = _stats(ns)
        st["views_per_s"] = b / (st["median_ms"] / 1e3)
        batches[str(b)] = st
        progress(f"{label} batch {b}: {st['median_ms']:.2f} ms median")
    outs = engine.run(pre.batch(c))
    dec_ns = _time(lambda: decode_outputs(outs, manifest), runs, 5)
    infer_c = batches[str(c)]["median_ms"]
    pre_ms, dec_ms = _stats(pre_ns)["median_ms"], _stats(dec_ns)["median_ms"]
    singles, batched = _interleaved(engine, np.ascontiguousarray(pre.batch(c)), runs)
    return {
        "engine": engine.name, "provider": engine.provider, "views": c,
        "batches": batches, "preprocess": _stats(pre_ns), "decode": _stats(dec_ns),
        "singles_vs_batched_ms": {"singles": _stats(singles), "batched": _stats(batched)},
        "batched_speedup": float(np.median(singles) / np.median(batched)),
        "decode_share": (pre_ms + dec_ms) / infer_c,
        "frameset_ms": pre_ms + infer_c + dec_ms,
        "period_share": (pre_ms + infer_c + dec_ms) * fps / 1e3,
    }


def main(json_path: Path | None = None, model_path: str | None = None, views: int = 4,
         runs: int = 200, threads: int | None = None,
         progress: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Run the benchmark; return (and write, if ``json_path``) the results."""
    from livepose.core.config import SimCameraConfig
    from livepose.inference.manifest import resolve_model

    cfg = load_default_config()
    cfg.cameras = [SimCameraConfig(backend="sim", name=f"cam{i}") for i in range(views)]
    model = cfg.model.model_copy()
    if model_path is not None:
        model.path = model_path
    if threads is not None:
        model.intra_op_threads = threads
    path, manifest = resolve_model(model)
    spec = manifest.input
    frames = sim_frames(cfg, spec.width, spec.height)
    if spec.color != "mono":
        frames = [np.repeat(f[:, :, None], 3, axis=2) for f in frames]
    results = {label: measure(label, m, path, frames, cfg.fps, runs, progress)
               for label, m in engine_variants(model, path)}
    best = next(iter(results.values()))
    cpu = results.get(CPU)
    summary = {
        "model": manifest.name, "input": f"{spec.width}x{spec.height}x{spec.channels}",
        "views": views, "fps": cfg.fps, "provider": best["provider"],
        "frameset_ms": round(best["frameset_ms"], 3),
        "cpu_batched_speedup": round(cpu["batched_speedup"], 3) if cpu else None,
        "decode_share": round(best["decode_share"], 4),
        "period_share": round(best["period_share"], 3),
        "per_provider": {k: {"infer_ms": round(v["batches"][str(views)]["median_ms"], 3),
                             "infer_p99_ms": round(v["batches"][str(views)]["p99_ms"], 3),
                             "batched_speedup": round(v["batched_speedup"], 3),
                             "decode_share": round(v["decode_share"], 4)}
                         for k, v in results.items()},
    }
    out = {"summary": summary, "results": results,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "python": platform.python_version()}}
    return write_json(out, json_path)
