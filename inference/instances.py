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
    per kept blob (a merged blob: one per track in it); ``blobs`` those blobs; ``dropped``
    merged blobs without tracks."""

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
        slots: list[tuple[int, int, np.ndarray | None]] = []
        n = 0
        for c, (frame, det) in enumerate(zip(frames, self.detectors, strict=True)):
            exp = None if expected is None else expected[c]
            blobs = det.detect(frame, exp)
            kept: list[Blob] = []
            for b in blobs:  # a merged blob with tracks: one instance per track in it
                if not b.merged:
                    kept.append(b)
                elif exp is not None and b.tracks:
                    kept += [Blob(b.label, b.area, b.box, True, (t,)) for t in b.tracks]
            kept = kept[: self.max_instances]
            views.append(ViewInstances(np.empty((0, self.J, 3), np.float32), kept,
                                       sum(1 for b in blobs if b.merged and not b.tracks)))
            for k, b in enumerate(kept):
                if len(blobs) == 1 and not b.merged:
                    self.pre.fill(n, frame, "Mono8")
                    own = None
                else:
                    img = det.masked(frame, blobs, b, np.empty(frame.shape, dtype=np.uint8))
                    own = None
                    if b.merged:
                        src = next(x for x in blobs if x.label == b.label)
                        assert exp is not None
                        own = det.split(img, src, exp, b.tracks[0])
                    self.pre.fill(n, img, "Mono8")
                slots.append((c, k, own))
                n += 1
        if n == 0:
            return views
        pts = self.pre.to_frame_pixels(decode_outputs(self.engine.run(self.pre.batch(n)),
                                                      self.manifest))
        pts = pts.astype(np.float32, copy=False)
        for i, (c, k, own) in enumerate(slots):  # keypoints off their own blob are guesses
            b = views[c].blobs[k]
            on = self.detectors[c].inside(pts[i], b)
            if own is not None:  # a split blob: only its share, at half confidence
                x0, y0 = b.box[0], b.box[1]
                ix = np.clip(np.nan_to_num(pts[i, :, 0]).astype(int) - x0, 0, own.shape[1] - 1)
                iy = np.clip(np.nan_to_num(pts[i, :, 1]).astype(int) - y0, 0, own.shape[0] - 1)
                on &= own[iy, ix]
                pts[i, :, 2] *= 0.5
            pts[i, ~on, 2] = 0.0
        start = 0
        for c, v in enumerate(views):
            k = sum(1 for s in slots if s[0] == c)
            v.points = pts[start:start + k]
            start += k
        return views
