"""``livepose bench crops``: small animals in large frames — full frame resized vs 3D-guided
crops at native resolution.

Scenario: the sim rig with cameras of ``width × height`` (1280×1024) placed
``distance_scale`` (2×) as far from an arena ``arena_scale`` (2×) as wide as the default
rig's, with the focal length chosen so that the animal has the same size in pixels as in
the default 320×256 rig the bundled model was trained on (no scale augmentation):
``focal = 0.95 × 320 × distance_scale`` = 608 px (the default rig's 304 px at 520 mm →
0.58 px/mm; here 608 px at 1040 mm → the same). Frames are rendered offline with the sim
renderer (acquisition's), frame by frame:

- ``full_frame``: each frame resized (stretch) to the model's 320×256 input — the animal
  shrinks 4×;
- ``crops``: :class:`~livepose.inference.crops.CropPlanner` places a 320×256 crop per view
  from the fused pose of ``lag_frames`` frame-sets earlier (fusion's output reaches the
  worker after the next frame-set has started in a live run), predicted to this frame;
  full frame (letterboxed) while the track is lost.

Both are fused causally with the live fusion code (:class:`~livepose.fusion.process.Fuser`,
``fusion`` defaults: the EKF). Reported per method: 3D error vs ground truth (filtered and
raw triangulation: median, p95, coverage), 2D error in full-frame pixels (median, p95,
% within 5 px), cost per frame-set (preprocess, model, decode; ms) and, for crops, the
fallback counts by reason and the first frame-set with crops in every view.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from livepose.bench.results import write_json
from livepose.core.config import Config, SimCameraConfig, SimConfig


@dataclass(frozen=True, slots=True)
class CropScenario:
    """The "animal small in the frame" rig."""

    n_cams: int = 4
    width: int = 1280
    height: int = 1024
    distance_scale: float = 2.0
    arena_scale: float = 2.0
    frames: int = 150
    fps: float = 30.0
    lag_frames: int = 1
    seed: int = 0

    def config(self) -> Config:
        """The run's config (sim rig, crops on with their defaults)."""
        base = SimConfig()
        train_focal = 0.95 * base.width  # the default rig's focal (FOCAL_FRACTION × 320)
        sim = SimConfig(
            seed=self.seed, width=self.width, height=self.height,
            camera_distance_mm=base.camera_distance_mm * self.distance_scale,
            focal_px=train_focal * self.distance_scale,
            arena_diameter_mm=base.arena_diameter_mm * self.arena_scale,
        )
        cfg = Config(cameras=[SimCameraConfig(backend="sim", name=f"cam{i}")
                              for i in range(self.n_cams)], sim=sim, fps=self.fps)
        cfg.model.crop.enabled = True
        return cfg


def _stats(err: np.ndarray) -> dict[str, float]:
    e = err[np.isfinite(err)]
    if e.size == 0:
        return {"coverage_pct": 0.0}
    return {"median": float(np.median(e)), "p95": float(np.percentile(e, 95)),
            "coverage_pct": float(100.0 * e.size / err.size)}


class _Method:
    """One way of feeding the model: preprocessor, fuser, and what it measured."""

    def __init__(self, name: str, cfg: Config, spec: Any, cameras: Any, T: int, J: int) -> None:
        from livepose.fusion.process import Fuser
        from livepose.inference.preprocess import Preprocessor

        C = len(cameras)
        self.name = name
        self.pre = Preprocessor(spec, C)
        self.pre.warm_up()
        self.fuser = Fuser(cameras, cfg)
        self.fuser.warmup()
        self.kp2d = np.full((T, C, J, 3), np.nan)
        self.xyz = np.full((T, J, 3), np.nan)
        self.raw = np.full((T, J, 3), np.nan)
        self.ms = np.zeros((T, 3))  # preprocess, model, decode


def run(json_path: Path | None, scenario: CropScenario | None = None,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark; write the JSON to ``json_path`` when given and return it."""
    from livepose.acquisition.sim.animal import Rodent
    from livepose.acquisition.sim.render import SimRenderer
    from livepose.acquisition.sim.rig import make_rig
    from livepose.inference.crops import CropPlanner
    from livepose.inference.decode import decode_outputs
    from livepose.inference.engine import create_engine, engine_name
    from livepose.inference.manifest import resolve_model

    sc = scenario or CropScenario()
    cfg = sc.config()
    say = progress or (lambda _m: None)
    t_start = time.perf_counter()
    say(f"rig: {sc.n_cams} cameras {sc.width}×{sc.height}, focal {cfg.sim.focal_px:.0f} px, "
        f"{cfg.sim.camera_distance_mm:.0f} mm away")
    rig = make_rig(cfg.sim, cfg.camera_names)
    radius = cfg.sim.arena_diameter_mm / 2
    renderers = [SimRenderer(cam, cfg.sim, radius) for cam in rig]
    animal = Rodent(sc.seed, radius, cfg.sim.speed_mm_s)
    path, manifest = resolve_model(cfg.model)
    cfg.model.intra_op_threads = 1
    engine = create_engine(engine_name(cfg.model, path), path, manifest, cfg.model)
    spec = manifest.input
    stretch = spec.model_copy(update={"resize": "stretch"})
    T, C, J = sc.frames, sc.n_cams, len(manifest.keypoints)
    methods = {"full_frame": _Method("full_frame", cfg, stretch, rig, T, J),
               "crops": _Method("crops", cfg, spec, rig, T, J)}
    crop = cfg.model.crop
    planner = CropPlanner(rig, crop.size or (spec.width, spec.height), crop.margin,
                          crop.max_age_s, crop.min_keypoints, cfg.fps)
    pending: deque[tuple[int, np.ndarray]] = deque()
    truth = np.empty((T, J, 3))
    truth2d = np.empty((T, C, J, 2))
    all_cropped_from: int | None = None
    for _ in range(3):  # warm the engine (arena, kernels)
        decode_outputs(engine.run(methods["crops"].pre.batch(C)), manifest)
    say(f"setup {time.perf_counter() - t_start:.1f} s; {T} frame-sets")
    render_s = 0.0
    for t in range(T):
        t0 = time.perf_counter()
        spheres, albedo, kp = animal.pose(t / cfg.fps)
        images = [r.render(spheres, albedo, t) for r in renderers]
        render_s += time.perf_counter() - t0
        truth[t] = kp
        truth2d[t] = rig.project(kp).reshape(C, J, 2)
        while pending and pending[0][0] <= t - sc.lag_frames:  # poses that have arrived
            fid, xyz = pending.popleft()
            planner.update(fid, xyz)
        for name, m in methods.items():
            t0 = time.perf_counter()
            if name == "crops":
                plan = planner.plan(t, [(sc.width, sc.height)] * C)
                if all_cropped_from is None and all(r is None for r in plan.reasons):
                    all_cropped_from = t
                for i, img in enumerate(images):
                    m.pre.fill(i, img, "Mono8", plan.rois[i])
            else:
                for i, img in enumerate(images):
                    m.pre.fill(i, img, "Mono8")
            t1 = time.perf_counter()
            outs = engine.run(m.pre.batch(C))
            t2 = time.perf_counter()
            pts = m.pre.to_frame_pixels(decode_outputs(outs, manifest))
            t3 = time.perf_counter()
            m.ms[t] = (1e3 * (t1 - t0), 1e3 * (t2 - t1), 1e3 * (t3 - t2))
            m.kp2d[t] = pts
            fused = m.fuser.step(np.ascontiguousarray(pts, dtype=np.float32), t)
            m.xyz[t], m.raw[t] = fused.xyz, fused.raw_xyz
            if name == "crops":
                pending.append((t, np.array(fused.xyz)))
        if progress and (t + 1) % 50 == 0:
            say(f"frame-set {t + 1}/{T}")
    out_methods: dict[str, Any] = {}
    for name, m in methods.items():
        e2 = np.linalg.norm(m.kp2d[..., :2] - truth2d, axis=-1)
        res: dict[str, Any] = {
            "error_3d_mm": _stats(np.linalg.norm(m.xyz - truth, axis=-1)),
            "error_3d_raw_mm": _stats(np.linalg.norm(m.raw - truth, axis=-1)),
            "error_2d_px": _stats(e2),
            "within_5px_pct": float(100.0 * np.mean(np.nan_to_num(e2, nan=np.inf) <= 5.0)),
            "cost_ms_per_set": {
                "preprocess": float(np.median(m.ms[:, 0])), "model": float(np.median(m.ms[:, 1])),
                "decode": float(np.median(m.ms[:, 2])), "total": float(np.median(m.ms.sum(1))),
                "total_mean": float(np.mean(m.ms.sum(1))),
            },
        }
        out_methods[name] = res
    out_methods["crops"]["fallbacks"] = dict(planner.counters)
    out_methods["crops"]["all_views_cropped_from_frame"] = all_cropped_from
    out = {
        "benchmark": "crops",
        "scenario": asdict(sc),
        "rig": {"focal_px": cfg.sim.focal_px, "camera_distance_mm": cfg.sim.camera_distance_mm,
                "arena_diameter_mm": cfg.sim.arena_diameter_mm,
                "model_input": [spec.width, spec.height], "model": manifest.name,
                "provider": getattr(engine, "provider", "?")},
        "crop_config": crop.model_dump(mode="json"),
        "methods": out_methods,
        "summary": {
            f"{k}_3d_{q}_mm": out_methods[k][metric].get(q)
            for k in ("full_frame", "crops")
            for metric, q in (("error_3d_mm", "median"), ("error_3d_mm", "p95"))
        } | {
            "full_frame_2d_median_px": out_methods["full_frame"]["error_2d_px"].get("median"),
            "crops_2d_median_px": out_methods["crops"]["error_2d_px"].get("median"),
            "crops_full_frame_fallbacks": planner.counters["full_frame_fallbacks"],
            "crops_views_cropped": planner.counters["crops"],
        },
        "seconds": {"total": round(time.perf_counter() - t_start, 1),
                    "render": round(render_s, 1)},
    }
    return write_json(out, json_path)

