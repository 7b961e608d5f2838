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
