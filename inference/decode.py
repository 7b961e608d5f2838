"""Decoders: network outputs → keypoints in model-input pixel coordinates.

One entry point, :func:`decode_outputs`, picks the decoder from the manifest's
``output.type``: :func:`decode_heatmaps` (with DeepLabCut location refinement when
``output.locref`` is set), :func:`decode_simcc` (RTMPose) or :func:`decode_regression`.

Coordinate convention (used by training and inference alike): pixel ``k`` covers
``[k - 0.5, k + 0.5]``; heatmap cell ``i`` has its centre at input pixel
``offset + i * stride`` (``offset = (stride - 1) / 2`` for a network that downsamples by
``stride`` with aligned convolutions). Confidence is clamped to [0, 1]; a keypoint whose
output holds NaN (a broken view) comes out as a NaN row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba as nb
import numpy as np

from livepose.inference.manifest import DLC_LOCREF_STD, Manifest

_EPS = 1e-10
_ACTIVATIONS = ("none", "sigmoid")
_NO_LOCREF = np.empty((0, 0, 0, 0), dtype=np.float32)


@nb.njit(cache=True, nogil=True)
def _act(v: float, sigmoid: bool) -> float:
    if sigmoid:
        return 1.0 / (1.0 + np.exp(-v))
    return v


@nb.njit(cache=True, nogil=True)
def _decode_heatmaps_nb(
    hm: np.ndarray, argmax: np.ndarray, stride: float, offset: float, sigmoid: bool,
    locref: np.ndarray, locref_std: float, out: np.ndarray,
) -> None:
    """Refine the peaks ``argmax`` ``(N, J)`` (flat cell index) of ``hm`` ``(N, J, h, w)``:
    by ``locref`` ``(N, 2J, h, w)`` when it is not empty, else by a parabola fit."""
    n, j, h, w = hm.shape
    use_locref = locref.shape[0] > 0
    for b in range(n):
        for k in range(j):
            m = hm[b, k]
            bi = argmax[b, k] // w
            bj = argmax[b, k] % w
            best = m[bi, bj]
            dx = 0.0
            dy = 0.0
            if use_locref:  # DeepLabCut: offsets in input pixels / locref_std at the peak
                dx = locref[b, 2 * k, bi, bj] * locref_std / stride
                dy = locref[b, 2 * k + 1, bi, bj] * locref_std / stride
            if np.isnan(best) or np.isnan(dx) or np.isnan(dy):  # a broken output: no view
                out[b, k, 0] = np.nan
                out[b, k, 1] = np.nan
                out[b, k, 2] = np.nan
                continue
            peak = _act(best, sigmoid)
            if not use_locref:
                l0 = np.log(max(peak, _EPS))
                if 0 < bj < w - 1:
                    lm = np.log(max(_act(m[bi, bj - 1], sigmoid), _EPS))
                    lp = np.log(max(_act(m[bi, bj + 1], sigmoid), _EPS))
                    den = lm - 2.0 * l0 + lp
                    if den < 0.0:
                        dx = min(0.5, max(-0.5, 0.5 * (lm - lp) / den))
                if 0 < bi < h - 1:
                    lm = np.log(max(_act(m[bi - 1, bj], sigmoid), _EPS))
                    lp = np.log(max(_act(m[bi + 1, bj], sigmoid), _EPS))
                    den = lm - 2.0 * l0 + lp
                    if den < 0.0:
                        dy = min(0.5, max(-0.5, 0.5 * (lm - lp) / den))
            out[b, k, 0] = offset + (bj + dx) * stride
            out[b, k, 1] = offset + (bi + dy) * stride
            out[b, k, 2] = min(1.0, max(0.0, peak))


def _check_activation(activation: str) -> None:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be 'none' or 'sigmoid', got {activation!r}")


def _finish(out: np.ndarray) -> np.ndarray:
    """Clamp confidence to [0, 1]; a row with a non-finite value becomes all NaN."""
    bad = ~np.isfinite(out).all(axis=-1)
    np.clip(out[..., 2], 0.0, 1.0, out=out[..., 2])
    out[bad] = np.nan
    return out


def decode_heatmaps(
    heatmaps: np.ndarray, stride: float, offset: float, activation: str = "none",
    locref: np.ndarray | None = None, locref_std: float = DLC_LOCREF_STD,
) -> np.ndarray:
    """Heatmaps → keypoints, refined below the cell size.

    Without ``locref`` the peak is refined per axis by fitting a parabola to the log of the
    three values around the arg-max (exact for a Gaussian peak), clamped to ±half a cell; a
    peak on the border is not refined along the axis it touches. With ``locref``
    (DeepLabCut's location refinement, as its ``HeatmapPredictor`` decodes it), the
    position is the arg-max cell's centre plus ``locref * locref_std`` input pixels, read
    at the arg-max cell, and no parabola is fitted.

    Parameters
    ----------
    heatmaps
        ``(N, J, h, w)`` float32, values in [0, 1] (a confidence-like peak height), or logits
        when ``activation`` is ``"sigmoid"`` (applied only to the values the decoder reads).
    stride, offset
        Cell → input pixel mapping: ``x = offset + col * stride``.
    activation
        ``"none"`` or ``"sigmoid"`` (the manifest's ``output.activation``).
    locref
        ``(N, 2J, h, w)``: channel ``2j`` is keypoint ``j``'s x offset, ``2j + 1`` its y
        offset (DeepLabCut's interleaved layout), in units of ``locref_std`` pixels.
    locref_std
        DeepLabCut's ``locref_stdev`` (default 7.2801).

    Returns
    -------
    np.ndarray
        ``(N, J, 3)`` float32: x, y in model-input pixels, confidence = peak value (NaN row
        if the peak or its refinement is NaN).
    """
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be (N, J, h, w), got shape {heatmaps.shape}")
    _check_activation(activation)
    hm = np.ascontiguousarray(heatmaps, dtype=np.float32)
    n, j, h, w = hm.shape
    lr = _NO_LOCREF
    if locref is not None:
        if locref.shape != (n, 2 * j, h, w):
            raise ValueError(
                f"locref must be (N, 2J, h, w) = {(n, 2 * j, h, w)} for heatmaps "
                f"{hm.shape}, got {locref.shape}"
            )
        lr = np.ascontiguousarray(locref, dtype=np.float32)
    out = np.empty((n, j, 3), dtype=np.float32)
    if h and w:
        # NumPy's arg-max is SIMD-vectorised: ~20x faster than a compiled scalar loop
        argmax = hm.reshape(n, j, h * w).argmax(axis=2)
        _decode_heatmaps_nb(hm, argmax, float(stride), float(offset), activation == "sigmoid",
                            lr, float(locref_std), out)
    else:
        out[...] = np.nan
    return out


def decode_simcc(
    simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float = 2.0,
    activation: str = "none",
) -> np.ndarray:
    """SimCC (RTMPose) vectors → keypoints, as mmpose's ``SimCCLabel.decode``.

    Follows mmpose's ``get_simcc_maximum``: ``x = argmax(simcc_x) / split_ratio``,
    ``y = argmax(simcc_y) / split_ratio`` and confidence = the **smaller** of the two peak
    values (mmpose marks a keypoint whose confidence is ≤ 0 invalid; here it keeps its
    position with confidence 0). No sub-bin refinement (mmpose's default).

    Parameters
    ----------
    simcc_x, simcc_y
        ``(N, J, Wx)`` and ``(N, J, Wy)``, ``Wx = round(width * split_ratio)``.
    split_ratio
        Bins per input pixel (the manifest's ``output.split_ratio``).
    activation
        ``"none"`` or ``"sigmoid"``, applied to the two peak values.

    Returns
    -------
    np.ndarray
        ``(N, J, 3)`` float32 x, y (input pixels), confidence in [0, 1]; NaN row where a
        vector holds NaN.
    """
    if simcc_x.ndim != 3 or simcc_y.ndim != 3 or simcc_x.shape[:2] != simcc_y.shape[:2]:
        raise ValueError(
            f"SimCC outputs must be (N, J, Wx) and (N, J, Wy), got {simcc_x.shape} and "
            f"{simcc_y.shape}"
        )
    _check_activation(activation)
    n, j = simcc_x.shape[:2]
    out = np.empty((n, j, 3), dtype=np.float32)
    if simcc_x.shape[2] == 0 or simcc_y.shape[2] == 0:
        out[...] = np.nan
        return out
    ix = simcc_x.argmax(axis=2)
    iy = simcc_y.argmax(axis=2)
    vx = np.take_along_axis(simcc_x, ix[..., None], axis=2)[..., 0]
    vy = np.take_along_axis(simcc_y, iy[..., None], axis=2)[..., 0]
    conf = np.minimum(vx, vy)  # NaN propagates
    if activation == "sigmoid":  # monotonic: the min of the activations
        conf = 1.0 / (1.0 + np.exp(-conf.astype(np.float64)))
    k = float(split_ratio)
    out[..., 0] = ix / k
    out[..., 1] = iy / k
    out[..., 2] = conf
    return _finish(out)


def decode_regression(
    coords: np.ndarray, width: int, height: int, normalized: bool = False,
    activation: str = "none",
) -> np.ndarray:
    """Regressed coordinates → keypoints.

    Parameters
    ----------
    coords
        ``(N, J, 2)`` x, y or ``(N, J, 3)`` x, y, confidence. Input pixels, or with
        ``normalized`` fractions of the input: 0 = left/top edge, 1 = right/bottom edge, so
        ``x = v * width - 0.5`` in the pixel-centre convention.
    width, height
        The model input size (for ``normalized``).
    activation
        ``"none"`` or ``"sigmoid"``, applied to the confidence column.

    Returns
    -------
    np.ndarray
        ``(N, J, 3)`` float32 x, y, confidence (1 without a confidence column); NaN row where
        a value is not finite.
    """
    if coords.ndim != 3 or coords.shape[2] not in (2, 3):
        raise ValueError(f"regression output must be (N, J, 2) or (N, J, 3), got {coords.shape}")
    _check_activation(activation)
    n, j, d = coords.shape
    out = np.empty((n, j, 3), dtype=np.float32)
    out[..., :2] = coords[..., :2]
    if normalized:
        out[..., 0] *= width
        out[..., 1] *= height
        out[..., :2] -= 0.5
    if d == 3:
        c = coords[..., 2].astype(np.float64)
        out[..., 2] = 1.0 / (1.0 + np.exp(-c)) if activation == "sigmoid" else c
    else:
        out[..., 2] = 1.0
    return _finish(out)


def decode_outputs(outputs: Sequence[np.ndarray], manifest: Manifest) -> np.ndarray:
    """The raw outputs of :meth:`Engine.run` → keypoints, by ``manifest.output.type``.

    Parameters
    ----------
    outputs
        In the order of ``manifest.output.tensor_names()``.
    manifest
        The model's manifest.

    Returns
    -------
    np.ndarray
        ``(N, J, 3)`` float32: x, y in model-input pixels, confidence in [0, 1]; NaN rows for
        keypoints whose output is broken (NaN).

    Raises
    ------
    ValueError
        Wrong number of outputs or shapes the decoder cannot read (the engine check at start
        catches a model that disagrees with its manifest; see ``engine.check_output``).
    """
    spec = manifest.output
    want = spec.tensor_names()
    if len(outputs) != len(want):
        raise ValueError(f"decoder {spec.type!r} needs outputs {want}, got {len(outputs)} arrays")
    if spec.type == "heatmap":
        return decode_heatmaps(
            outputs[0], spec.cell_stride, spec.cell_offset, spec.activation,
            locref=outputs[1] if spec.locref is not None else None,
            locref_std=spec.locref_scale,
        )
    if spec.type == "simcc":
        return decode_simcc(outputs[0], outputs[1], spec.simcc_ratio, spec.activation)
    if spec.type == "regression":
        return decode_regression(outputs[0], manifest.input.width, manifest.input.height,
                                 spec.coords == "normalized", spec.activation)
    raise ValueError(f"no decoder for output.type {spec.type!r}")  # the manifest refuses it
