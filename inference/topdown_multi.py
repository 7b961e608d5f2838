"""Several people per view with a two-stage model: every detection above the detector's
threshold becomes a rotated ROI, and the keypoint model runs on the ROIs of all views in one
batched call — one instance per detection.

This reuses :class:`~livepose.inference.topdown.TopDown`'s sessions, decoder and croppers;
unlike it, nothing is tracked per view (the detector runs on every frame-set): identities
are the 3D tracks' job (:mod:`livepose.fusion.multitrack`). The detector sees the whole
frame and, with ``tiles``, the squares at both ends of a portrait frame (people far away
are too small in the letterbox), all in one batched call; ``min_score`` can lower the
detector's threshold. An instance whose presence score is below ``roi.min_presence`` is
dropped, and detections whose ROI centres fall within ``dedup`` × the ROI size of a better
one are one person.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from livepose.core.config import ModelConfig
from livepose.inference.detector import SsdDecoder
from livepose.inference.manifest import Manifest
from livepose.inference.roi import Roi, letterbox_roi, refine_heatmap_nb, roi_from_points, to_frame
from livepose.inference.topdown import TopDown, _sigmoid


class MultiTopDown:
    """Detector + keypoint model, every detection of every view.

    Parameters
    ----------
    model_path, manifest, cfg, n_views
        As for :class:`TopDown`.
    max_instances
        Detections per view kept at most (best first).
    dedup
        Two ROIs whose centres are nearer than this × the larger ROI's size are one person.
    """

    def __init__(self, model_path: Path, manifest: Manifest, cfg: ModelConfig, n_views: int,
                 max_instances: int = 6, dedup: float = 0.2, min_score: float | None = None,
                 tiles: bool = True) -> None:
        self.td = TopDown(model_path, manifest, cfg, n_views)
        self.n = n_views
        self.max_instances = int(max_instances)
        self.dedup = float(dedup)
        self.tiles = bool(tiles)
        spec = self.td.det_spec
        if min_score is not None:
            spec = spec.model_copy(update={"min_score": float(min_score)})
        self.decoder = SsdDecoder(spec)
        self.counters = {"detections": 0, "absent": 0, "duplicates": 0}

    @staticmethod
    def _windows(w: int, h: int, tiles: bool) -> list[Roi]:
        """The whole frame (letterboxed), and with ``tiles`` the squares of its short side at
        both ends of its long side (people far from the camera are small in a letterbox)."""
        out = [letterbox_roi(w, h)]
        if tiles and max(w, h) > 1.2 * min(w, h):
            s = float(min(w, h))
            if h > w:
                out += [(w / 2.0, s / 2.0, s, s, 0.0), (w / 2.0, h - s / 2.0, s, s, 0.0)]
            else:
                out += [(s / 2.0, h / 2.0, s, s, 0.0), (w - s / 2.0, h / 2.0, s, s, 0.0)]
        return out

    def _rois(self, images: list[tuple[np.ndarray, str]]) -> list[list[Roi]]:
        td = self.td
        jobs = []  # (view, window)
        for c, (img, _) in enumerate(images):
            h, w = img.shape[:2]
            jobs += [(c, win) for win in self._windows(w, h, self.tiles)]
        x = td.det_crop.batch(len(jobs))
        for j, (c, win) in enumerate(jobs):
            img, fmt = images[c]
            td.det_crop.fill(x, j, img, fmt, win)
        boxes, scores = td.det.run(td._det_out, {td.det_spec.input.name: x})
        p0, p1 = td.roi_spec.detector_points
        found: list[list[tuple[float, Roi]]] = [[] for _ in images]
        for j, (c, win) in enumerate(jobs):
            img = images[c][0]
            h, w = img.shape[:2]
            cx, cy, side = win[0], win[1], win[2]
            if side == max(w, h) and cx == w / 2.0 and cy == h / 2.0:
                dets = self.decoder(boxes[j], scores[j], (w, h))
                ox, oy, sx, sy = 0.0, 0.0, float(w), float(h)
            else:
                dets = self.decoder(boxes[j], scores[j], (int(side), int(side)))
                ox, oy, sx, sy = cx - side / 2.0, cy - side / 2.0, side, side
            for d in dets:
                a = np.array([d[4 + 2 * p0] * sx + ox, d[5 + 2 * p0] * sy + oy])
                b = np.array([d[4 + 2 * p1] * sx + ox, d[5 + 2 * p1] * sy + oy])
                found[c].append((float(d[-1]), roi_from_points(a, b, td.roi_spec)))
        out: list[list[Roi]] = []
        for c in range(len(images)):
            rois: list[Roi] = []
            for _, roi in sorted(found[c], key=lambda f: -f[0]):
                if len(rois) >= self.max_instances:
                    break
                if any(np.hypot(roi[0] - r[0], roi[1] - r[1]) < self.dedup * max(roi[2], r[2])
                       for r in rois):
                    self.counters["duplicates"] += 1
                    continue
                rois.append(roi)
            self.counters["detections"] += len(rois)
            out.append(rois)
        return out

    def __call__(self, frames: list[tuple[np.ndarray, str]]) -> list[np.ndarray]:
        """One frame-set → per view ``(K_c, J, 3)`` float32 instances (x, y full-frame px,
        confidence)."""
        td = self.td
        rois = self._rois(frames)
        slots = [(c, r) for c, rs in enumerate(rois) for r in rs]
        J = td.n_kp
        views: list[list[np.ndarray]] = [[] for _ in range(self.n)]
        if not slots:
            return [np.zeros((0, J, 3), np.float32) for _ in range(self.n)]
        x = td.lm_crop.batch(len(slots))
        for j, (c, roi) in enumerate(slots):
            img, fmt = frames[c]
            td.lm_crop.fill(x, j, img, fmt, roi)
        res = td.lm.run(td._lm_out, {td.m.input.name: x})
        spec, ospec = td.roi_spec, td.m.output
        w, h = td.m.input.width, td.m.input.height
        for j, (c, roi) in enumerate(slots):
            k = 1
            if spec.presence:
                p = float(np.asarray(res[k][j]).reshape(-1)[0])
                k += 1
                pr = float(_sigmoid(np.asarray(p))) if spec.presence_activation == "sigmoid" \
                    else p
                if not pr >= spec.min_presence:
                    self.counters["absent"] += 1
                    continue
            rows = np.asarray(res[0][j], np.float64).reshape(-1, td.values)
            xy = rows[:, :2] / np.array([w, h]) if ospec.coords != "normalized" \
                else rows[:, :2].copy()
            if ospec.heatmap:
                refine_heatmap_nb(xy, np.asarray(res[k][j]), ospec.heatmap_kernel or 9,
                                  0.5 if ospec.heatmap_min_confidence is None
                                  else ospec.heatmap_min_confidence)
            inst = np.empty((J, 3), np.float32)
            inst[:, :2] = to_frame(xy, roi)[:J]
            if td.conf_col is None:
                inst[:, 2] = 1.0
            else:
                cc = rows[:J, td.conf_col]
                inst[:, 2] = _sigmoid(cc) if ospec.activation == "sigmoid" else np.clip(cc, 0, 1)
            views[c].append(inst)
        return [np.stack(v) if v else np.zeros((0, J, 3), np.float32) for v in views]
