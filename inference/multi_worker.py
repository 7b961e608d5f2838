"""The inference worker's several-animals path (``fusion.multi.enabled``): every instance of
every view of a frame-set into one ``kp2d`` message (``inst_points``, ``inst_cams``).

- A single-stage (full-frame) model: background-subtraction blobs and the model once per
  blob (:mod:`livepose.inference.blobs`, :mod:`livepose.inference.instances`). The
  background is learnt live: each camera's per-pixel median over
  ``fusion.multi.background_frames`` frames taken one frame-set in
  ``background_every``; until then the worker sends no instances. The blobs are split and
  joined with fusion's individuals (``pose3d.ind_xyz``) projected into the views. With
  ``fusion.multi.crops`` and a model that takes any input size (the bundled one), the
  individuals' 3D-guided crops take over once fusion knows them
  (:class:`~livepose.inference.track_crops.TrackCrops`: one crop per individual per view,
  full-frame blob detection only to re-acquire).
- A two-stage model: every detection (:class:`~livepose.inference.topdown_multi.MultiTopDown`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from livepose.core import protocol
from livepose.core.calibration import MM_PER_UNIT, calibration_units, read_calibration
from livepose.core.camera import CameraGroup
from livepose.core.config import Config
from livepose.inference.blobs import BlobDetector
from livepose.inference.engine import Engine
from livepose.inference.instances import MaskedInstances
from livepose.inference.manifest import Manifest
from livepose.inference.track_crops import (
    TrackCrops,
    crop_engine,
    crops_supported,
    project_individuals,
)


class MultiInstances:
    """Instances of a frame-set for the worker.

    Parameters
    ----------
    cfg
        The run's config (``fusion.multi``, ``model``).
    manifest, model_path
        The model.
    engine
        The single-stage model's engine (``None`` for a two-stage model).
    cams
        Camera names, the worker's order.
    calibration
        The calibration TOML (projects fusion's individuals into the views); optional.
    """

    def __init__(self, cfg: Config, manifest: Manifest, model_path: Path,
                 engine: Engine | None, cams: list[str], calibration: str | None) -> None:
        m = cfg.fusion.multi
        self.cams = cams
        self.J = len(manifest.keypoints)
        self.need, self.every = int(m.background_frames), int(m.background_every)
        self.seen = 0
        self.group: CameraGroup | None = read_calibration(calibration, cams) \
            if calibration else None
        self.known: np.ndarray | None = None  # fusion's individuals (N, J, 3)
        self.ids: np.ndarray | None = None  # and their track keys (N,)
        self.last_owner: np.ndarray = np.zeros(0, np.int32)  # the last call's instances'
        units = (calibration_units(calibration, cfg.calibration_units) if calibration
                 else "mm")
        self.body_radius = m.body_radius_mm / MM_PER_UNIT.get(units, 1.0)
        self.topdown: Any = None
        self.instances: MaskedInstances | None = None
        self.crops: TrackCrops | None = None
        self.detectors = [BlobDetector() for _ in cams]
        self._bg: list[list[np.ndarray]] = [[] for _ in cams]
        if manifest.two_stage:
            from livepose.inference.topdown_multi import MultiTopDown

            self.topdown = MultiTopDown(model_path, manifest, cfg.model, len(cams))
        else:
            assert engine is not None
            BlobDetector.warm_up()  # the blob kernels, for read-only live frames too
            if m.crops and crops_supported(engine):
                c_engine, c_manifest = crop_engine(cfg, engine, manifest)
                self.crops = TrackCrops(c_engine, c_manifest, self.detectors, m.individuals,
                                        size=m.crop_px, reacquire_every=m.reacquire_every)
            else:
                self.instances = MaskedInstances(engine, manifest, self.detectors)

    @property
    def learnt(self) -> bool:
        """Every camera has its background (always true for a two-stage model)."""
        return self.topdown is not None or all(d.background is not None for d in self.detectors)

    def update(self, msg: protocol.Pose3d) -> None:
        """Take fusion's individuals from a ``pose3d`` message."""
        if msg.ind_xyz is not None:
            self.known = np.array(msg.ind_xyz, dtype=np.float64)
            keys = msg.ind_track  # the owners the crops name (kept through id swaps)
            self.ids = (np.array(keys, dtype=np.int64) if keys is not None
                        and len(keys) == len(self.known)
                        else np.full(len(self.known), -1, np.int64))

    def _expected(self) -> tuple[list[np.ndarray | None] | None,
                                 list[np.ndarray | None] | None]:
        """Fusion's individuals in every view: projected keypoints and their depths and
        body radii (:func:`~livepose.inference.track_crops.project_individuals`)."""
        k = self.known
        if self.group is None or k is None or not len(k):
            return None, None
        return project_individuals(self.group.cameras, k, self.body_radius)

    def _learn(self, images: list[np.ndarray | None]) -> None:
        if self.seen % self.every == 0:
            for c, img in enumerate(images):
                if img is not None and len(self._bg[c]) < self.need:
                    self._bg[c].append(np.array(img))
        self.seen += 1
        for c, frames in enumerate(self._bg):
            if len(frames) >= self.need and self.detectors[c].background is None:
                self.detectors[c].learn(frames)
                self._bg[c] = []

    def __call__(self, frames: list[tuple[np.ndarray, str] | None]
                 ) -> tuple[np.ndarray, np.ndarray]:
        """``(M, J, 3)`` float32 instances and ``(M,)`` uint8 camera indices."""
        empty = (np.zeros((0, self.J, 3), np.float32), np.zeros(0, np.uint8))
        if self.topdown is not None:
            blank = np.zeros((8, 8, 3), np.uint8)
            views = self.topdown([f if f is not None else (blank, "RGB8") for f in frames])
        else:
            images = [None if f is None else (f[0] if f[0].ndim == 2 else f[0][:, :, 0])
                      for f in frames]
            if not self.learnt:
                self._learn(images)
                return empty
            filled: list[np.ndarray] = []
            for img, d in zip(images, self.detectors, strict=True):
                bg = d.bg8
                assert bg is not None  # learnt
                filled.append(img if img is not None else bg)
            expected, depths = self._expected()
            if self.crops is not None:
                views = self.crops(filled, expected, depths)
                owner = self.crops.owners(self.ids)
            else:
                assert self.instances is not None
                views = [v.points for v in self.instances(filled, expected)]
                owner = [np.full(len(v), -1) for v in views]
            views = [v if images[c] is not None else v[:0] for c, v in enumerate(views)]
            owner = [o[:len(v)] for o, v in zip(owner, views, strict=True)]
        n = [len(v) for v in views]
        if not sum(n):
            self.last_owner = np.zeros(0, np.int32)
            return empty
        pts = np.ascontiguousarray(np.concatenate([v for v in views if len(v)]),
                                   dtype=np.float32)
        cams = np.repeat(np.arange(len(views), dtype=np.uint8), n)
        self.last_owner = (np.concatenate(owner).astype(np.int32) if self.topdown is None
                           else np.full(len(pts), -1, np.int32))
        return pts, cams
