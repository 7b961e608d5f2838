"""Two-stage (top-down) inference: detector → rotated ROI per view → keypoint model on the
crops of all views in one batched call → keypoints in full-frame pixels.

A view runs the detector only while it has no ROI: at the start, and after the keypoint
model's presence score (``roi.presence``) fell below ``roi.min_presence``. Otherwise its ROI
comes from its own previous keypoints (``roi.keypoint_points``, One-Euro smoothed when
``roi.smoothing`` is set: the model's own tracking rule, which its crops were trained on).
With ``roi.reproject`` and a ``guide`` (the fused 3D pose projected into the views), a view
that lost its target is re-acquired from the guide instead (``reacquired_3d``); the detector
runs for it only when it has never been tracked, the guide has no usable keypoints there, or
a guided ROI failed on the previous frame-set.
``detector_runs`` counts the views the detector ran on, ``detector_sets`` the frame-sets it
ran in; ``locked_sets`` counts the frame-sets after lock-on (every view has had a ROI once)
and ``redetect_sets`` those of them in which the detector ran again.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from livepose.core.config import ModelConfig
from livepose.inference.detector import SsdDecoder
from livepose.inference.engine import available_providers, select_providers
from livepose.inference.manifest import Manifest, ModelError
from livepose.inference.providers import provider_options
from livepose.inference.roi import (
    Cropper,
    OneEuro,
    Roi,
    letterbox_roi,
    refine_heatmap_nb,
    roi_from_points,
    smooth_points,
    to_frame,
)

log = logging.getLogger(__name__)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(x, -80.0, 80.0))))


def open_session(path: Path, cfg: ModelConfig, input_name: str, outputs: list[str]) -> Any:
    """An ONNX Runtime session with the worker's options (no spinning, configured
    providers); checks the named input and outputs exist.

    Raises
    ------
    ModelError
        File missing, not loadable, or names absent from the graph.
    """
    if not path.is_file():
        raise ModelError(f"{path}: model file not found (manifest)")
    chosen = select_providers(cfg.providers, available_providers(), cfg.allow_cpu_fallback)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = cfg.intra_op_threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts,
                                    providers=provider_options(chosen, cfg))
    except Exception as exc:  # ORT raises its own exception types
        first = (str(exc).strip().splitlines() or [repr(exc)])[0][:300]
        raise ModelError(f"{path}: cannot load the ONNX model ({first})") from None
    have_in = [i.name for i in sess.get_inputs()]
    have_out = [o.name for o in sess.get_outputs()]
    if input_name not in have_in:
        raise ModelError(f"{path}: manifest input {input_name!r} is not an input ({have_in})")
    missing = [o for o in outputs if o not in have_out]
    if missing:
        raise ModelError(f"{path}: manifest outputs {missing} are not outputs ({have_out})")
    return sess


class TopDown:
    """Detector + keypoint model over the views of a rig, with per-view tracking.

    Parameters
    ----------
    model_path
        The keypoint model (``manifest.file``); the detector is ``detector.file`` beside it.
    manifest
        A two-stage manifest (``detector`` and ``roi`` sections).
    cfg
        The ``model`` config (providers, threads).
    n_views
        Cameras in a frame-set.
    """

    def __init__(self, model_path: Path, manifest: Manifest, cfg: ModelConfig,
                 n_views: int) -> None:
        if manifest.detector is None or manifest.roi is None:
            raise ModelError(f"{manifest.name}: not a two-stage model (no detector section)")
        self.m = manifest
        self.det_spec, self.roi_spec, out = manifest.detector, manifest.roi, manifest.output
        self.n = n_views
        self.n_kp = len(manifest.keypoints)
        self.values = out.values or 3
        self.conf_col = out.confidence_index if out.confidence_index is not None else \
            (2 if self.values >= 3 else None)
        self._det_out = [self.det_spec.boxes, self.det_spec.scores]
        self._lm_out = [out.name] + [n for n in (self.roi_spec.presence, out.heatmap) if n]
        self.det = open_session(model_path.parent / self.det_spec.file, cfg,
                                self.det_spec.input.name, self._det_out)
        self.lm = open_session(model_path, cfg, manifest.input.name, self._lm_out)
        self.provider: str = self.lm.get_providers()[0]
        self.decoder = SsdDecoder(self.det_spec)
        self.det_crop = Cropper(self.det_spec.input, self.det_spec.border)
        self.lm_crop = Cropper(manifest.input, self.roi_spec.border)
        self.rois: list[Roi | None] = [None] * n_views
        self.filters: list[OneEuro | None] = [None] * n_views
        self.presence = np.full(n_views, np.nan, np.float32)
        self.counters: Counter[str] = Counter(detector_runs=0, detector_sets=0, lost=0,
                                              no_detection=0, locked_sets=0, redetect_sets=0,
                                              reacquired_3d=0)
        self._seen = np.zeros(n_views, bool)  # views that have had a ROI
        self._guided = np.zeros(n_views, bool)  # the view's ROI came from the guide
        self._guide_failed = np.zeros(n_views, bool)  # … and the model lost it again
        rp = self.roi_spec.reproject
        names = list(manifest.keypoints)
        self._rp = None if rp is None else (
            [names.index(k) for k in rp.centre], [names.index(k) for k in rp.toward], rp.length)

    def reset(self) -> None:
        """Forget every view's ROI (the detector runs on the next frame-set)."""
        self.rois = [None] * self.n
        self.filters = [None] * self.n
        self._seen[:] = False
        self._guided[:] = False
        self._guide_failed[:] = False

    def detect(self, images: list[tuple[int, np.ndarray, str]]) -> None:
        """Run the detector on the given views (one batched call) and set their ROIs from
        the best detection; views without one keep no ROI."""
        if not images:
            return
        x = self.det_crop.batch(len(images))
        sizes = []
        for j, (_, img, fmt) in enumerate(images):
            h, w = img.shape[:2]
            sizes.append((w, h))
            self.det_crop.fill(x, j, img, fmt, letterbox_roi(w, h))
        boxes, scores = self.det.run(self._det_out, {self.det_spec.input.name: x})
        self.counters["detector_sets"] += 1
        self.counters["detector_runs"] += len(images)
        p0, p1 = self.roi_spec.detector_points
        for j, (i, _, _) in enumerate(images):
            dets = self.decoder(boxes[j], scores[j], sizes[j])
            if not len(dets):
                self.counters["no_detection"] += 1
                continue
            wh = np.asarray(sizes[j], np.float64)
            d = dets[0]
            self.rois[i] = roi_from_points(d[4 + 2 * p0:6 + 2 * p0] * wh,
                                           d[4 + 2 * p1:6 + 2 * p1] * wh, self.roi_spec)
            self.filters[i] = None

    def guided_roi(self, uv: np.ndarray, size: tuple[int, int]) -> Roi | None:
        """The ROI from projected keypoints ``uv`` ``(J, 2)`` by ``roi.reproject``; ``None``
        when its keypoints are unknown or its centre falls outside the frame ``size``."""
        if self._rp is None:
            return None
        ci, ti, length = self._rp
        pts = uv[ci + ti]
        if not np.isfinite(pts).all():
            return None
        p0 = uv[ci].mean(0)
        p1 = p0 + length * (uv[ti].mean(0) - p0)
        if not (0 <= p0[0] < size[0] and 0 <= p0[1] < size[1]):
            return None
        return roi_from_points(p0, p1, self.roi_spec)

    def _reacquire(self, frames: list[tuple[np.ndarray, str] | None],
                   guide: Callable[[], np.ndarray | None] | None) -> None:
        """ROIs from the guide for views that lost their target after being tracked."""
        want = [i for i, f in enumerate(frames) if f is not None and self.rois[i] is None
                and self._seen[i] and not self._guide_failed[i]]
        if not want or guide is None or self._rp is None:
            return
        uv = guide()
        if uv is None:
            return
        for i in want:
            img = frames[i][0]  # type: ignore[index]
            roi = self.guided_roi(uv[i], (img.shape[1], img.shape[0]))
            if roi is not None:
                self.rois[i] = roi
                self._guided[i] = True
                self.counters["reacquired_3d"] += 1

    def run(self, frames: list[tuple[np.ndarray, str] | None], frame_id: int,
            guide: Callable[[], np.ndarray | None] | None = None) -> np.ndarray:
        """One frame-set → keypoints.

        Parameters
        ----------
        frames
            Per view ``(image, pixel_format)``, or ``None`` for a missing view.
        frame_id
            The frame-set's id (times the ROI smoother: ``frame_id / rate_hz``).
        guide
            Called (only when a tracked view lost its target) for the fused 3D pose at this
            frame-set projected into every view, ``(n_views, J, 2)`` pixels, or ``None``.

        Returns
        -------
        np.ndarray
            ``(n_views, J, 3)`` float32 x, y (full-frame pixels), confidence; NaN rows for
            views without a ROI, a missing frame or a lost target.
        """
        self._reacquire(frames, guide)
        need = [(i, f[0], f[1]) for i, f in enumerate(frames)
                if f is not None and self.rois[i] is None]
        locked = bool(self._seen.all())
        self.counters["locked_sets"] += locked
        self.counters["redetect_sets"] += locked and bool(need)
        self.detect(need)
        for i, _, _ in need:
            self._guide_failed[i] = False
        self._seen |= [r is not None for r in self.rois]
        have = [i for i, f in enumerate(frames) if f is not None and self.rois[i] is not None]
        out = np.full((self.n, self.n_kp, 3), np.nan, np.float32)
        self.presence[:] = np.nan
        if not have:
            return out
        x = self.lm_crop.batch(len(have))
        for j, i in enumerate(have):
            img, fmt = frames[i]  # type: ignore[misc]
            roi = self.rois[i]
            assert roi is not None
            self.lm_crop.fill(x, j, img, fmt, roi)
        res = self.lm.run(self._lm_out, {self.m.input.name: x})
        for j, i in enumerate(have):
            self._view(i, j, res, out, frame_id)
        return out

    def _view(self, i: int, j: int, res: list[np.ndarray], out: np.ndarray,
              frame_id: int) -> None:
        """Decode crop ``j`` (view ``i``) into ``out[i]`` and set the view's next ROI."""
        spec, ospec = self.roi_spec, self.m.output
        k = 1
        if spec.presence:
            p = float(np.asarray(res[k][j]).reshape(-1)[0])
            k += 1
            self.presence[i] = _sigmoid(np.asarray(p)) if spec.presence_activation == "sigmoid" \
                else p
            if not self.presence[i] >= spec.min_presence:
                self.rois[i] = None
                self.filters[i] = None
                self.counters["lost"] += 1
                self._guide_failed[i] = bool(self._guided[i])  # then the detector, once
                self._guided[i] = False
                return
            self._guided[i] = False
        rows = np.asarray(res[0][j], np.float64).reshape(-1, self.values)
        w, h = self.m.input.width, self.m.input.height
        xy = rows[:, :2] / np.array([w, h]) if ospec.coords != "normalized" else rows[:, :2].copy()
        if ospec.heatmap:
            heat = np.asarray(res[k][j])
            refine_heatmap_nb(xy, heat, ospec.heatmap_kernel or 9,
                              0.5 if ospec.heatmap_min_confidence is None
                              else ospec.heatmap_min_confidence)
        roi = self.rois[i]
        assert roi is not None
        px = to_frame(xy, roi)
        out[i, :, :2] = px[:self.n_kp]
        if self.conf_col is None:
            out[i, :, 2] = 1.0
        else:
            c = rows[:self.n_kp, self.conf_col]
            out[i, :, 2] = _sigmoid(c) if ospec.activation == "sigmoid" else np.clip(c, 0, 1)
        self._track(i, px, frame_id)

    def _track(self, i: int, px: np.ndarray, frame_id: int) -> None:
        """The view's next ROI from its keypoint rows ``roi.keypoint_points``."""
        spec = self.roi_spec
        if spec.keypoint_points is None:  # no tracking rule: detect every frame
            self.rois[i] = None
            return
        a, b = spec.keypoint_points
        pts = px[[a, b]].astype(np.float64)
        if not np.isfinite(pts).all():
            self.rois[i] = None
            return
        if spec.smoothing is not None:
            if self.filters[i] is None:
                self.filters[i] = OneEuro(spec.smoothing)
            filt = self.filters[i]
            assert filt is not None
            pts = smooth_points(filt, frame_id / spec.smoothing.rate_hz, pts)
        self.rois[i] = roi_from_points(pts[0], pts[1], spec)

    def warm_up(self) -> None:
        """Load kernels and JIT-compile (detector and keypoint model on blank batches, the
        crop and heatmap kernels on a blank frame); leaves no ROI behind."""
        n = self.n
        self.det.run(self._det_out, {self.det_spec.input.name: self.det_crop.batch(n)})
        self.lm.run(self._lm_out, {self.m.input.name: self.lm_crop.batch(n)})
        blank = np.zeros((8, 8, 3), np.uint8)
        x = self.lm_crop.batch(1)
        self.lm_crop.fill(x, 0, blank, "RGB8", (4.0, 4.0, 8.0, 8.0, 0.3))
        self.lm_crop.fill(x, 0, blank[:, :, 0], "Mono8", (4.0, 4.0, 8.0, 8.0, 0.3))
        refine_heatmap_nb(np.full((1, 2), 0.5), np.zeros((4, 4, 1), np.float32), 3, 0.5)
        self.reset()
