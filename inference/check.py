"""``livepose model check``: load a model with its manifest, run it, decode, time it.

:func:`check_model` opens the model as the worker does (:func:`resolve_model`, the engine
registry, the start-up checks of names and shapes), runs a dummy batch and then the frame-sets
it is given (the CLI renders sim frames; this module knows nothing of the simulator), and
returns a plain dict: input/output names and shapes, provider, the first frame's decoded
keypoints, median timings and, when ground truth comes with the frames, the 2D error.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from livepose.core.config import ModelConfig
from livepose.inference.decode import decode_outputs
from livepose.inference.engine import check_output, create_engine, engine_name
from livepose.inference.manifest import Manifest, ModelError, resolve_model
from livepose.inference.preprocess import Preprocessor

#: Views in the dummy batch when no frames are given (the default rig's camera count).
DUMMY_VIEWS = 4
WARMUP = 3


def _dummy_frame(width: int, height: int, channels: int) -> tuple[np.ndarray, str]:
    """A mid-grey 8-bit frame of the model input size."""
    shape = (height, width) if channels == 1 else (height, width, 3)
    return np.full(shape, 128, np.uint8), "Mono8" if channels == 1 else "RGB8"


def _error_stats(pred: np.ndarray, truth: np.ndarray, names: list[str],
                 truth_names: Sequence[str]) -> dict[str, Any] | None:
    """2D error (frame pixels) over the keypoints both lists name; ``None`` if none."""
    common = [(i, list(truth_names).index(k)) for i, k in enumerate(names) if k in truth_names]
    if not common:
        return None
    mi, ti = (list(v) for v in zip(*common, strict=True))
    d = np.linalg.norm(pred[..., mi, :2] - truth[..., ti, :2], axis=-1)  # (F, C, K)
    ok = np.isfinite(d)
    vals = d[ok]
    per_kp = {names[m]: (float(np.median(d[..., k][ok[..., k]])) if ok[..., k].any()
                         else float("nan")) for k, m in enumerate(mi)}
    return {
        "points": int(d.size), "missing": int((~ok).sum()),
        "median_px": float(np.median(vals)) if vals.size else float("nan"),
        "mean_px": float(vals.mean()) if vals.size else float("nan"),
        "p95_px": float(np.percentile(vals, 95)) if vals.size else float("nan"),
        "max_px": float(vals.max()) if vals.size else float("nan"),
        "per_keypoint_median_px": per_kp,
    }


def check_model(
    cfg: ModelConfig,
    frame_sets: Sequence[Sequence[np.ndarray]] | None = None,
    pixel_format: str = "Mono8",
    truth: np.ndarray | None = None,
    truth_keypoints: Sequence[str] = (),
    repeats: int = 20,
) -> dict[str, Any]:
    """Open, run, decode and time a model.

    Parameters
    ----------
    cfg
        The ``model`` config (``path``, ``manifest``, engine, providers).
    frame_sets
        ``F`` frame-sets of ``C`` frames each (any size the manifest's ``input.resize``
        accepts), or ``None``: a mid-grey dummy batch of :data:`DUMMY_VIEWS` views.
    pixel_format
        The frames' pixel format (e.g. ``Mono8``).
    truth
        ``(F, C, J_t, 2)`` ground-truth keypoints in frame pixels, rows named by
        ``truth_keypoints``; the error is computed over the keypoints the model shares with
        it (by name).
    repeats
        Timed passes (cycling through the frame-sets).

    Returns
    -------
    dict
        ``model``, ``manifest``, ``engine``, ``provider``, ``input`` (name, declared shape,
        layout, size, channels, resize), ``outputs`` (name and actual shape for the batch),
        ``output_type``, ``keypoints``, ``views``, ``frames``, ``first_frame`` (keypoint, x,
        y, confidence of view 0 of the first frame-set, frame pixels), ``timing_ms``
        (medians: preprocess, run, decode, total), ``repeats`` and ``error`` (``None``
        without truth).

    Raises
    ------
    ModelError
        The model, its manifest or a frame disagree (the message names the field).
    """
    path, manifest = resolve_model(cfg)
    if frame_sets is not None and (not frame_sets or not frame_sets[0]):
        raise ModelError("model check: no frames to run")
    if manifest.two_stage:
        return _check_two_stage(cfg, path, manifest, frame_sets, pixel_format, repeats)
    engine = create_engine(engine_name(cfg, path), path, manifest, cfg)
    spec = manifest.input
    if frame_sets is None:
        img, fmt = _dummy_frame(spec.width, spec.height, spec.channels)
        sets: Sequence[Sequence[np.ndarray]] = [[img] * DUMMY_VIEWS]
    else:
        sets, fmt = frame_sets, pixel_format
    n = len(sets[0])
    pre = Preprocessor(spec, n)

    outs = engine.run(pre.batch(n))  # zeros: the start-up check the worker does
    check_output(outs, manifest, n)
    decode_outputs(outs, manifest)

    first: list[np.ndarray] = []
    t_pre, t_run, t_dec = [], [], []
    for r in range(WARMUP + max(repeats, len(sets))):
        f = r % len(sets)
        t0 = time.perf_counter()
        for i, image in enumerate(sets[f]):
            try:
                pre.fill(i, image, fmt)
            except ValueError as exc:
                raise ModelError(f"model check: frame-set {f} view {i}: {exc}") from None
        t1 = time.perf_counter()
        outs = engine.run(pre.batch(n))
        t2 = time.perf_counter()
        pts = pre.to_frame_pixels(decode_outputs(outs, manifest))
        t3 = time.perf_counter()
        if r < len(sets):
            first.append(pts.copy())
        if r >= WARMUP:
            t_pre.append(t1 - t0)
            t_run.append(t2 - t1)
            t_dec.append(t3 - t2)
    pred = np.stack(first)  # (F, C, J, 3)

    def ms(v: list[float]) -> float:
        return float(np.median(v) * 1e3)

    error = None
    if truth is not None:
        truth = np.asarray(truth, dtype=np.float64)
        if truth.shape[:2] != pred.shape[:2] or truth.ndim != 4 or truth.shape[3] < 2:
            raise ModelError(f"model check: truth must be (F, C, J, 2) = {pred.shape[:2]} "
                             f"+ (J, 2), got {truth.shape}")
        error = _error_stats(pred, truth, manifest.keypoints, truth_keypoints)
    return {
        "model": str(path),
        "manifest": manifest.name,
        "engine": engine.name,
        "provider": engine.provider,
        "input": {"name": spec.name, "shape": [d if isinstance(d, int) else str(d)
                                               for d in engine.input_shape],
                  "layout": spec.layout, "size": [spec.width, spec.height],
                  "channels": spec.channels, "resize": spec.resize},
        "outputs": [{"name": k, "shape": list(o.shape)}
                    for k, o in zip(manifest.output.tensor_names(), outs, strict=True)],
        "output_type": manifest.output.type,
        "keypoints": list(manifest.keypoints),
        "views": n,
        "frames": 0 if frame_sets is None else len(sets),
        "first_frame": [
            {"keypoint": k, "x": float(x), "y": float(y), "confidence": float(c)}
            for k, (x, y, c) in zip(manifest.keypoints, pred[0, 0], strict=True)
        ],
        "timing_ms": {"preprocess": ms(t_pre), "run": ms(t_run), "decode": ms(t_dec),
                      "total": ms([a + b + c for a, b, c in zip(t_pre, t_run, t_dec,
                                                                 strict=True)])},
        "repeats": len(t_run),
        "error": error,
    }


def _check_two_stage(
    cfg: ModelConfig, path: Path, manifest: Manifest,
    frame_sets: Sequence[Sequence[np.ndarray]] | None, pixel_format: str, repeats: int,
) -> dict[str, Any]:
    """:func:`check_model` for a two-stage model: detector + keypoint model through
    :class:`~livepose.inference.topdown.TopDown` on the frame-sets (default: mid-grey
    full-HD frames). A view the detector finds nothing in gets a centred ROI (the whole
    frame), so that the keypoint model runs too; ``timing_ms.run`` is the whole step."""
    from livepose.inference.roi import letterbox_roi
    from livepose.inference.topdown import TopDown

    if frame_sets is None:
        sets: Sequence[Sequence[np.ndarray]] = [[np.full((1080, 1920, 3), 128, np.uint8)]
                                                * DUMMY_VIEWS]
        fmt = "RGB8"
    else:
        sets, fmt = frame_sets, pixel_format
    n = len(sets[0])
    td = TopDown(path, manifest, cfg, n)
    td.warm_up()
    first, t_run = [], []
    for r in range(WARMUP + max(repeats, len(sets))):
        f = r % len(sets)
        for i, img in enumerate(sets[f]):  # nothing detected: the whole frame, centred
            if td.rois[i] is None and r > 0:
                td.rois[i] = letterbox_roi(img.shape[1], img.shape[0])
        t0 = time.perf_counter()
        try:
            pts = td.run([(img, fmt) for img in sets[f]], r)
        except ValueError as exc:
            raise ModelError(f"model check: frame-set {f}: {exc}") from None
        t_run.append(time.perf_counter() - t0)
        if r < len(sets):
            first.append(pts.copy())
    runs = t_run[WARMUP:] or t_run
    spec = manifest.input
    med = float(np.median(runs) * 1e3)
    return {
        "model": str(path), "manifest": manifest.name, "engine": "onnxruntime (two-stage)",
        "provider": td.provider,
        "input": {"name": spec.name, "shape": ["N", spec.height, spec.width, spec.channels],
                  "layout": spec.layout, "size": [spec.width, spec.height],
                  "channels": spec.channels, "resize": "rotated ROI"},
        "outputs": [{"name": k, "shape": [n, *[d if isinstance(d, int) else str(d)
                                               for d in o.shape[1:]]]}
                    for k, o in zip(td._lm_out, td.lm.get_outputs(), strict=False)],
        "output_type": manifest.output.type, "keypoints": list(manifest.keypoints),
        "views": n, "frames": 0 if frame_sets is None else len(sets),
        "first_frame": [
            {"keypoint": k, "x": float(x), "y": float(y), "confidence": float(c)}
            for k, (x, y, c) in zip(manifest.keypoints, first[0][0], strict=True)],
        "timing_ms": {"preprocess": 0.0, "run": med, "decode": 0.0, "total": med},
        "repeats": len(runs), "error": None, "detector": dict(td.counters),
    }
