"""Decoders: network outputs → keypoints in model-input pixel coordinates.

Coordinate convention (used by training and inference alike): pixel ``k`` covers
``[k - 0.5, k + 0.5]``; heatmap cell ``i`` has its centre at input pixel
``offset + i * stride`` (``offset = (stride - 1) / 2`` for a network that downsamples by
``stride`` with aligned convolutions).
"""

from __future__ import annotations

import numba as nb
import numpy as np

_EPS = 1e-10


@nb.njit(cache=True, nogil=True)
def _decode_heatmaps_nb(hm: np.ndarray, stride: float, offset: float, out: np.ndarray) -> None:
    n, j, h, w = hm.shape
    for b in range(n):
        for k in range(j):
            m = hm[b, k]
            best = -np.inf
            bi = 0
            bj = 0
            for y in range(h):
                for x in range(w):
                    v = m[y, x]
                    if v > best:
                        best = v
                        bi = y
                        bj = x
            dx = 0.0
            dy = 0.0
            if 0 < bj < w - 1:
                lm = np.log(max(m[bi, bj - 1], _EPS))
                l0 = np.log(max(best, _EPS))
                lp = np.log(max(m[bi, bj + 1], _EPS))
                den = lm - 2.0 * l0 + lp
                if den < 0.0:
                    dx = min(0.5, max(-0.5, 0.5 * (lm - lp) / den))
            if 0 < bi < h - 1:
                lm = np.log(max(m[bi - 1, bj], _EPS))
                l0 = np.log(max(best, _EPS))
                lp = np.log(max(m[bi + 1, bj], _EPS))
                den = lm - 2.0 * l0 + lp
                if den < 0.0:
                    dy = min(0.5, max(-0.5, 0.5 * (lm - lp) / den))
            out[b, k, 0] = offset + (bj + dx) * stride
            out[b, k, 1] = offset + (bi + dy) * stride
            out[b, k, 2] = min(1.0, max(0.0, best))


def decode_heatmaps(heatmaps: np.ndarray, stride: float, offset: float) -> np.ndarray:
    """Heatmaps → keypoints with sub-pixel refinement.

    The peak is refined per axis by fitting a parabola to the log of the three values around
    the arg-max (exact for a Gaussian peak), clamped to ±half a cell.

    Parameters
    ----------
    heatmaps
        ``(N, J, h, w)`` float32, values in [0, 1] (a confidence-like peak height).
    stride, offset
        Cell → input pixel mapping: ``x = offset + col * stride``.

    Returns
    -------
    np.ndarray
        ``(N, J, 3)`` float32: x, y in model-input pixels, confidence = peak value.
    """
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be (N, J, h, w), got shape {heatmaps.shape}")
    hm = np.ascontiguousarray(heatmaps, dtype=np.float32)
    out = np.empty((hm.shape[0], hm.shape[1], 3), dtype=np.float32)
    _decode_heatmaps_nb(hm, float(stride), float(offset), out)
    return out
