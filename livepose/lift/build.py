"""Build a lifter end to end: pairs → training → ONNX + manifest, with training and
held-out error (``livepose lift train`` and ``livepose bench lift`` both call it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from livepose.core.camera import CameraModel
from livepose.core.errors import UserError
from livepose.fusion.lift import LiftSpec, write_manifest
from livepose.lift.pairs import Augment, NoiseModel, Pairs, make_pairs, measure_noise
from livepose.lift.sessions import SessionData, project_all
from livepose.lift.train import TrainConfig, errors_mm, export, fit, predict

HELD_OUT = 0.15
"""Fraction of each session (its last frames) kept out of training for the held-out error."""


@dataclass(slots=True)
class Built:
    """What :func:`build_lifter` made: the report (also in the manifest) and the pairs."""

    report: dict[str, Any]
    train: Pairs
    held: Pairs
    folder: Path


@dataclass(frozen=True)
class Temporal:
    """A causal window of previous frames in the lifter's input.

    Attributes
    ----------
    history
        Previous frames (0: single frame).
    step
        Rows (frames of the training sequence) between them.
    fps
        The training sequence's frame rate (the manifest stores ``step / fps`` seconds,
        which the live path converts to its own frames).
    every
        Only every ``every``-th row is a pair's current frame.
    frame_drop
        Probability that a history frame is missing in training (dropped frames).
    """

    history: int = 0
    step: int = 1
    fps: float = 100.0
    every: int = 1
    frame_drop: float = 0.0

    @property
    def step_s(self) -> float:
        return self.step / self.fps if self.history else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"history": self.history, "step_s": self.step_s, "every": self.every,
                "frame_drop": self.frame_drop}


def _stats(e: np.ndarray) -> dict[str, float]:
    if e.size == 0:
        return {"median_mm": float("nan"), "mean_mm": float("nan"), "p95_mm": float("nan")}
    return {"median_mm": round(float(np.median(e)), 3), "mean_mm": round(float(e.mean()), 3),
            "p95_mm": round(float(np.percentile(e, 95)), 3)}


def session_noise(sessions: Sequence[SessionData], threshold: float) -> NoiseModel:
    """The 2D model's error in the sessions: recorded 2D against the measured 3D projected
    through the recorded cameras."""
    pred, proj = [], []
    for s in sessions:
        pr = project_all(s.cameras, s.poses)  # (T, C, J, 2)
        pred.append(s.pose2d.reshape(-1, *s.pose2d.shape[2:]))
        proj.append(pr.reshape(-1, *pr.shape[2:]))
    return measure_noise(np.concatenate(pred), np.concatenate(proj), threshold)


def split(poses: np.ndarray, held_out: float = HELD_OUT) -> tuple[np.ndarray, np.ndarray]:
    """The first ``1 − held_out`` of a sequence for training, the rest held out."""
    k = round(poses.shape[0] * (1.0 - held_out))
    return poses[:k], poses[k:]


def build_lifter(train_poses: np.ndarray, held_poses: np.ndarray, keypoints: list[str],
                 root: str, cameras: list[CameraModel], noise: NoiseModel, aug: Augment,
                 cfg: TrainConfig, out: Path, height: float | None = None,
                 threshold: float = 0.3, extra: dict[str, Any] | None = None,
                 progress: Callable[[str], None] | None = None,
                 temporal: Temporal | None = None) -> Built:
    """Train, evaluate and export a lifter.

    Parameters
    ----------
    train_poses, held_poses
        ``(T, J, 3)`` measured world poses (mm; NaN where not measured).
    keypoints, root
        Names, and the root keypoint.
    cameras
        Recorded cameras (each pose is also seen through them).
    noise
        The 2D model's error to simulate.
    aug
        Virtual cameras.
    cfg
        Network and optimisation.
    out
        Folder for ``lifter.onnx`` + ``lifter.yaml``.
    height
        Plane height of the root; default: the median height of the training roots.
    temporal
        Previous frames in the input (default none: single frame); the poses' rows must
        then be consecutive frames at ``temporal.fps``.
    """
    if root not in keypoints:
        raise UserError(f"lift train: root {root!r} is not a keypoint ({', '.join(keypoints)})")
    r = keypoints.index(root)
    if np.isfinite(train_poses[:, r]).all(axis=1).sum() < 50:
        raise UserError(f"lift train: fewer than 50 poses with a measured {root!r}")
    if height is None:
        height = float(np.nanmedian(train_poses[:, r, 2]))
    focal = float(np.median([c.matrix[0, 0] for c in cameras])) if cameras else 500.0
    rng = np.random.default_rng(cfg.seed)
    tp = temporal or Temporal()
    train, held = (make_pairs(p, r, height, noise, focal, rng, aug, cameras, tp.history,
                              tp.step, tp.every, tp.frame_drop)
                   for p in (train_poses, held_poses))
    if progress is not None:
        progress(f"{len(train)} training pairs, {len(held)} held-out pairs")
    trained = fit(train, cfg, progress)
    sub = np.random.default_rng(1).choice(len(train), min(len(train), 20000), replace=False)
    tr = Pairs(train.x[sub], train.y[sub], train.w[sub])
    report = {
        "training_error": _stats(errors_mm(predict(trained.net, tr.x), tr)),
        "held_out_error": _stats(errors_mm(predict(trained.net, held.x), held)) if len(held)
        else None,
        "pairs": {"train": len(train), "held_out": len(held)},
        "augmentation": aug.to_dict(),
        "noise": noise.to_dict(keypoints),
        "network": {"width": cfg.width, "blocks": cfg.blocks, "dropout": cfg.dropout,
                    "weight_decay": cfg.weight_decay, "loss": cfg.loss, "epochs": cfg.epochs,
                    "train_seconds": round(trained.seconds, 1)},
        "temporal": tp.to_dict(),
        "recorded_cameras": [c.name for c in cameras],
        **(extra or {}),
    }
    out.mkdir(parents=True, exist_ok=True)
    export(trained.net, out, train.x)
    write_manifest(out, LiftSpec(keypoints, root, height, threshold, report, tp.history,
                                 tp.step_s))
    return Built(report=report, train=train, held=held, folder=out)
