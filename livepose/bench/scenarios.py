"""Synthetic 2D detections of the sim animal for the accuracy benchmark.

The truth is the sim rodent's keypoints (:class:`~livepose.acquisition.sim.animal.Rodent`,
mm, at ``fps``), projected through a sim rig of ``n_cams`` cameras
(:func:`~livepose.acquisition.sim.rig.make_rig`, the demo's optics). An *ensemble* of
``M`` detectors (as Lightning Pose / EKS use) reports each view:

- **noise**: confidence ``w ~ U(0.7, 1)``; pixel error ``N(0, (σ·0.85/w)²)`` per axis, 60 %
  of its variance shared by the ensemble members (a model-independent error) and 40 %
  their own — so the ensemble's spread understates the error, as in practice;
- **outliers** (``outlier_rate`` of the views, in runs of 1–6 frames, shared by every
  member, confident ``w ~ U(0.8, 1)``): half are left/right *swaps* (the view reports the
  mirror keypoint; keypoints without a mirror get a misdetection instead), half
  *misdetections* (15–60 px off in a random direction);
- **occlusions** (``occlusion_rate`` of the views, runs of 5–40 frames): confidence
  ``U(0, 0.25)`` and the members scatter independently (σ 8 px) around the truth.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from livepose.core.camera import CameraGroup

SHARED_FRACTION = 0.6


@dataclass(frozen=True, slots=True)
class Scenario:
    """One synthetic recording."""

    name: str
    n_cams: int
    sigma_px: float
    outlier_rate: float = 0.05
    occlusion_rate: float = 0.08
    n_frames: int = 600
    fps: float = 100.0
    members: int = 3
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class SimRecording:
    """A scenario's data.

    Attributes
    ----------
    cameras
        The rig (``C`` cameras).
    truth
        ``(T, J, 3)`` ground truth (mm).
    ensemble
        ``(M, C, T, J, 3)`` x, y (px), confidence of every member.
    keypoints
        ``J`` names.
    outlier, occluded
        ``(C, T, J)`` bool: where outliers and occlusions were put.
    """

    cameras: CameraGroup
    truth: np.ndarray
    ensemble: np.ndarray
    keypoints: list[str]
    outlier: np.ndarray
    occluded: np.ndarray

    def median(self) -> tuple[np.ndarray, np.ndarray]:
        """Ensemble median ``(C, T, J, 3)`` (x, y median; mean confidence) and the ensemble
        variance ``(C, T, J, 2)`` (px², over members)."""
        e = self.ensemble
        med = np.empty(e.shape[1:])
        med[..., :2] = np.median(e[..., :2], axis=0)
        med[..., 2] = np.mean(e[..., 2], axis=0)
        var = np.var(e[..., :2], axis=0) if e.shape[0] > 1 else np.zeros((*e.shape[1:-1], 2))
        return med, var


def _runs(rng: np.random.Generator, shape: tuple[int, int, int], rate: float, lo: int,
          hi: int) -> np.ndarray:
    """``(C, T, J)`` bool with runs of ``lo…hi`` frames covering about ``rate`` of it."""
    C, T, J = shape
    out = np.zeros(shape, dtype=bool)
    if rate <= 0:
        return out
    n_runs = round(rate * C * T * J / ((lo + hi) / 2))
    cs = rng.integers(0, C, n_runs)
    js = rng.integers(0, J, n_runs)
    ts = rng.integers(0, T, n_runs)
    ls = rng.integers(lo, hi + 1, n_runs)
    for c, j, t, n in zip(cs, js, ts, ls, strict=True):
        out[c, t : t + n, j] = True
    return out


def _mirror(names: list[str]) -> np.ndarray:
    """Index of each keypoint's left/right partner (-1 if none)."""
    out = np.full(len(names), -1)
    for j, n in enumerate(names):
        for a, b in (("left_", "right_"), ("right_", "left_")):
            if n.startswith(a) and n.replace(a, b, 1) in names:
                out[j] = names.index(n.replace(a, b, 1))
    return out


def simulate(sc: Scenario) -> SimRecording:
    """Generate a scenario (deterministic given ``sc``)."""
    from livepose.acquisition.sim.animal import KEYPOINTS, Rodent
    from livepose.acquisition.sim.rig import make_rig
    from livepose.core.config import SimConfig

    sim = SimConfig(seed=sc.seed)
    rig = make_rig(sim, [f"cam{i}" for i in range(sc.n_cams)])
    animal = Rodent(sc.seed, 0.5 * sim.arena_diameter_mm, sim.speed_mm_s)
    T, C, M = sc.n_frames, sc.n_cams, sc.members
    truth = np.stack([animal.keypoints(t / sc.fps) for t in range(T)])
    J = truth.shape[1]
    uv = rig.project(truth.reshape(-1, 3)).reshape(C, T, J, 2)
    rng = np.random.default_rng([sc.seed, sc.n_cams, int(sc.sigma_px * 1000), 17])
    conf = rng.uniform(0.7, 1.0, (C, T, J))
    sd = sc.sigma_px * 0.85 / conf
    shared = rng.normal(size=(C, T, J, 2)) * (np.sqrt(SHARED_FRACTION) * sd)[..., None]
    own = rng.normal(size=(M, C, T, J, 2)) * (np.sqrt(1 - SHARED_FRACTION) * sd)[..., None]
    xy = uv[None] + shared[None] + own
    confs = np.broadcast_to(conf, (M, C, T, J)).copy()
    # outliers: runs, shared by the members
    outl = _runs(rng, (C, T, J), sc.outlier_rate, 1, 6)
    mirror = _mirror(list(KEYPOINTS))
    swap = outl & (rng.random((C, T, J)) < 0.5) & (mirror >= 0)[None, None, :]
    mis = outl & ~swap
    c_i, t_i, j_i = np.nonzero(swap)
    xy[:, c_i, t_i, j_i] += (uv[c_i, t_i, mirror[j_i]] - uv[c_i, t_i, j_i])[None]
    c_i, t_i, j_i = np.nonzero(mis)
    ang = rng.uniform(0, 2 * np.pi, len(c_i))
    mag = rng.uniform(15.0, 60.0, len(c_i))
    xy[:, c_i, t_i, j_i] += np.stack([mag * np.cos(ang), mag * np.sin(ang)], axis=1)[None]
    confs[:, outl] = rng.uniform(0.8, 1.0, int(outl.sum()))[None]
    # occlusions: low confidence, members scatter
    occ = _runs(rng, (C, T, J), sc.occlusion_rate, 5, 40) & ~outl
    n_occ = int(occ.sum())
    xy[:, occ] = uv[occ][None] + rng.normal(scale=8.0, size=(M, n_occ, 2))
    confs[:, occ] = rng.uniform(0.0, 0.25, (M, n_occ))
    ens = np.concatenate([xy, confs[..., None]], axis=-1)
    return SimRecording(cameras=rig, truth=truth, ensemble=ens, keypoints=list(KEYPOINTS),
                        outlier=outl, occluded=occ)
