"""Instances per view through the single-animal full-frame model: one masked image per blob
(:mod:`livepose.inference.blobs`), every blob of every view in one batched model call."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from livepose.inference.blobs import Blob, BlobDetector
from livepose.inference.decode import decode_outputs
from livepose.inference.engine import Engine
from livepose.inference.manifest import Manifest
from livepose.inference.preprocess import Preprocessor


@dataclass(slots=True)
class ViewInstances:
    """One view's instances: ``points`` ``(K, J, 3)`` x, y (frame px), confidence, one row
    per kept blob; ``blobs`` the kept blobs; ``dropped`` blobs flagged merged."""

    points: np.ndarray
    blobs: list[Blob] = field(default_factory=list)
    dropped: int = 0


class MaskedInstances:
    """Runs the model once per blob of every view, batched.

    Parameters
    ----------
    engine, manifest
        The single-animal model (full frame, e.g. the bundled sim model).
    detectors
        One :class:`BlobDetector` per camera (backgrounds learnt).
    max_instances
        Blobs per view kept at most (largest first).
    """

    def __init__(self, engine: Engine, manifest: Manifest, detectors: list[BlobDetector],
                 max_instances: int = 6) -> None:
        self.engine = engine
        self.manifest = manifest
        self.detectors = detectors
        self.max_instances = int(max_instances)
        self.J = len(manifest.keypoints)
        self.pre = Preprocessor(manifest.input, len(detectors) * self.max_instances)
        self.pre.warm_up()
        self._scratch: np.ndarray | None = None

    def __call__(self, frames: list[np.ndarray],
                 expected: list[np.ndarray | None] | None = None) -> list[ViewInstances]:
        """Instances of one frame-set.

        Parameters
        ----------
        frames
            ``C`` mono uint8 frames ``(H, W)``, camera order.
        expected
            Per view, the live tracks' projected keypoints ``(T, J, 2)`` or ``None``
            (:meth:`BlobDetector.detect`).

        Returns
        -------
        list[ViewInstances]
            Per view, in camera order.
        """
        views: list[ViewInstances] = []
        slots: list[tuple[int, int]] = []
        n = 0
        for c, (frame, det) in enumerate(zip(frames, self.detectors, strict=True)):
            blobs = det.detect(frame, None if expected is None else expected[c])
            kept = [b for b in blobs if not b.merged][: self.max_instances]
            views.append(ViewInstances(np.empty((0, self.J, 3), np.float32), kept,
                                       len(blobs) - len([b for b in blobs if not b.merged])))
            if self._scratch is None or self._scratch.shape != frame.shape:
                self._scratch = np.empty(frame.shape, dtype=np.uint8)
            for k, b in enumerate(kept):
                if len(blobs) == 1:
                    self.pre.fill(n, frame, "Mono8")
                else:
                    self.pre.fill(n, det.masked(frame, blobs, b, self._scratch), "Mono8")
                slots.append((c, k))
                n += 1
        if n == 0:
            return views
        pts = self.pre.to_frame_pixels(decode_outputs(self.engine.run(self.pre.batch(n)),
                                                      self.manifest))
        pts = pts.astype(np.float32, copy=False)
        for i, (c, k) in enumerate(slots):  # keypoints off their own blob are guesses
            on = self.detectors[c].inside(pts[i], views[c].blobs[k])
            pts[i, ~on, 2] = 0.0
        start = 0
        for c, v in enumerate(views):
            k = sum(1 for s in slots if s[0] == c)
            v.points = pts[start:start + k]
            start += k
        return views
