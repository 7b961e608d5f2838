"""A real ONNX lifter for tests without torch: linear least squares on sim poses seen
through virtual cameras (``livepose.lift.pairs``), written as an ONNX graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def fit_linear_lifter(folder: Path, history: int = 0, step_s: float = 0.0,
                      poses_n: int = 1200, poses_dt: float = 0.05, views: int = 6,
                      frame_drop: float = 0.0) -> Path:
    """Fit the lifter on ``poses_n`` poses ``poses_dt`` s apart of the sim rodent (seed 0)
    seen by ``views`` virtual cameras each (``history`` previous frames ``step_s`` apart in
    its input, a ``frame_drop`` share of them dropped) and write ``lifter.onnx`` and
    ``lifter.yaml`` into ``folder``; returns ``folder``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from livepose.acquisition.sim.animal import KEYPOINTS, Rodent
    from livepose.fusion.lift import LiftSpec, write_manifest
    from livepose.lift.pairs import Augment, NoiseModel, make_pairs

    root = KEYPOINTS.index("spine_mid")
    animal = Rodent(seed=0, arena_radius_mm=200.0, speed_mm_s=120.0)
    poses = np.stack([animal.keypoints(k * poses_dt) for k in range(poses_n)])
    height = float(np.median(poses[:, root, 2]))
    noise = NoiseModel(np.full(len(KEYPOINTS), 0.5), np.zeros(len(KEYPOINTS)))
    pairs = make_pairs(poses, root, height, noise, 300.0, np.random.default_rng(0),
                       Augment(views=views), history=history, step=1, frame_drop=frame_drop)
    X = np.concatenate([pairs.x, np.ones((len(pairs), 1), np.float32)], axis=1)
    W = np.linalg.lstsq(X.astype(np.float64), pairs.y.astype(np.float64), rcond=None)[0]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["m"]),
         helper.make_node("Add", ["m", "b"], ["rel3d"])],
        "linear_lifter",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", X.shape[1] - 1])],
        [helper.make_tensor_value_info("rel3d", TensorProto.FLOAT, ["batch", W.shape[1]])],
        [numpy_helper.from_array(W[:-1].astype(np.float32), "W"),
         numpy_helper.from_array(W[-1].astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "lifter.onnx"))
    write_manifest(folder, LiftSpec(list(KEYPOINTS), "spine_mid", height, 0.3,
                                    {"held_out_error": {"mean_mm": 6.0}}, history, step_s))
    return folder
