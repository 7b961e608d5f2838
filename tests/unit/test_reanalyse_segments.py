"""Re-analysis (livepose/cluster/reanalyse.py, in-process, no Ray) reads every segment of
a camera's recording by its frame tables: a session whose encoder was restarted (frames
in ``cam0`` and ``cam0.1``, one frame lost between them) gives, frame id by frame id, the
same keypoints as the same frames in one segment — a real ONNX Runtime session of the
bundled model on sim renders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from session_files import frame_table, write_video

from livepose.core.config import load_default_config

pytestmark = pytest.mark.skipif(importlib.util.find_spec("av") is None, reason="PyAV not installed")


def _renders(n: int) -> list[np.ndarray]:
    from livepose.acquisition.sim.backend import make_rig, scene_function
    from livepose.acquisition.sim.render import SimRenderer

    cfg = load_default_config()
    cam = make_rig(cfg.sim, cfg.camera_names)[0]
    r = SimRenderer(cam, cfg.sim, cfg.sim.arena_diameter_mm / 2)
    scene = scene_function(cfg)
    out = []
    for k in range(n):
        spheres, albedo, _ = scene(k)
        out.append(r.render(spheres, albedo, k))
    return out


def _session(root: Path, parts: list[list[int]], frames: list[np.ndarray]) -> Path:
    (root / "video").mkdir(parents=True)
    for s, ids in enumerate(parts):
        stem = "cam0" if s == 0 else f"cam0.{s}"
        write_video(root / "video" / f"{stem}.mkv", [frames[k] for k in ids])
        rows = [(k, i, 1) for i, k in enumerate(ids)]
        if s + 1 < len(parts) and parts[s + 1][0] > ids[-1] + 1:
            rows += [(k, 0, 0) for k in range(ids[-1] + 1, parts[s + 1][0])]
        frame_table(root / "video" / f"{stem}_frames.csv", rows)
    return root


def test_every_segment_is_reanalysed_by_frame_id(tmp_path: Path) -> None:
    from livepose.cluster.reanalyse import InferWorker, Unit, _frame_table, model_config

    frames = _renders(7)
    whole = _session(tmp_path / "whole", [[0, 1, 2, 3, 4, 5, 6]], frames)
    split = _session(tmp_path / "split", [[0, 1, 2], [4, 5, 6]], frames)  # 3 lost
    assert _frame_table(split, "cam0").tolist() == [0, 1, 2, 4, 5, 6]
    cfg = load_default_config()
    worker = InferWorker(model_config(cfg, str(cfg.model.path)), batch=4)
    a = worker.run_unit(Unit(str(whole), "cam0", 7))
    b = worker.run_unit(Unit(str(split), "cam0", 6))
    assert b.frame_ids.tolist() == [0, 1, 2, 4, 5, 6]
    assert np.isfinite(b.points).all()
    np.testing.assert_allclose(b.points, a.points[[0, 1, 2, 4, 5, 6]], atol=1e-3)
    assert np.abs(np.diff(a.points[:, :, :2], axis=0)).max() > 0  # the animal moves


def test_fusion_weighs_the_new_models_2d_with_that_models_noise(tmp_path: Path) -> None:
    """A session recorded with another model (its σ, 8.5 px, in the session's config)
    re-fused from a new model's 2D: the σ is the new model's (the bundled default's 1 px),
    as a session recorded with that model fuses — not the recorded run's."""
    from livepose.acquisition.sim.animal import KEYPOINTS, Rodent
    from livepose.acquisition.sim.backend import make_rig
    from livepose.cluster.reanalyse import SessionPlan, Unit, UnitResult, fuse_session, model_config
    from livepose.core.calibration import write_calibration

    cfg = load_default_config()
    rig = make_rig(cfg.sim, cfg.camera_names)
    (tmp_path / "s").mkdir()
    write_calibration(tmp_path / "s" / "calibration.toml", list(rig.cameras), units="mm")
    animal = Rodent(seed=0, arena_radius_mm=200.0, speed_mm_s=120.0)
    rng = np.random.default_rng(0)
    results = {}
    for cam in rig.cameras:
        xy = np.stack([cam.project(animal.keypoints(k / 60)) for k in range(40)])
        pts = np.concatenate([xy + rng.normal(0, 2.0, xy.shape),
                              np.full((*xy.shape[:2], 1), 0.9)], -1).astype(np.float32)
        results[cam.name] = UnitResult(Unit("s", cam.name, 40), np.arange(40), pts, (320, 256))

    def fused(noise: float, model: dict | None) -> np.ndarray:  # type: ignore[type-arg]
        c = cfg.model_copy(deep=True)
        c.fusion.pixel_noise_px = noise
        plan = SessionPlan(tmp_path / "s", c)
        return fuse_session(plan, results, list(KEYPOINTS), tmp_path / f"o{noise}{bool(model)}",
                            model).xyz

    new_model = model_config(cfg, "default")
    as_recorded_with_it = fused(1.0, None)
    reanalysed = fused(8.5, new_model)  # the session says 8.5 px: another model's
    np.testing.assert_allclose(reanalysed, as_recorded_with_it, atol=1e-9, equal_nan=True)
    assert np.nanmax(np.abs(fused(8.5, None) - as_recorded_with_it)) > 0.1  # σ matters
