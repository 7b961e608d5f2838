"""Heatmap decoder: sub-pixel peaks, borders, confidence, activation."""

from __future__ import annotations

import numpy as np
import pytest

from livepose.inference.decode import decode_heatmaps


def gaussian(
    h: int, w: int, cx: float, cy: float, sigma: float = 1.5, peak: float = 1.0
) -> np.ndarray:
    """``(h, w)`` Gaussian centred on cell (cx, cy)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    return (peak * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))).astype(np.float32)


def test_subpixel_peaks_recovered() -> None:
    rng = np.random.default_rng(1)
    h, w, stride, offset = 64, 80, 4.0, 1.5
    n, j = 3, 5
    centres = np.stack([rng.uniform(2, w - 3, (n, j)), rng.uniform(2, h - 3, (n, j))], -1)
    peaks = rng.uniform(0.2, 1.0, (n, j))
    hm = np.zeros((n, j, h, w), np.float32)
    for b in range(n):
        for k in range(j):
            hm[b, k] = gaussian(h, w, centres[b, k, 0], centres[b, k, 1], peak=peaks[b, k])
    out = decode_heatmaps(hm, stride, offset)
    assert out.shape == (n, j, 3) and out.dtype == np.float32
    cells = (out[..., :2] - offset) / stride
    assert np.abs(cells - centres).max() < 0.05
    # confidence = peak value of the heatmap (the arg-max cell)
    np.testing.assert_allclose(out[..., 2], hm.reshape(n, j, -1).max(-1), rtol=1e-6)


def test_pixel_mapping_stride_offset() -> None:
    hm = gaussian(16, 16, 5.0, 9.0)[None, None]
    out = decode_heatmaps(hm, stride=8, offset=3.5)
    np.testing.assert_allclose(out[0, 0, :2], [3.5 + 5 * 8, 3.5 + 9 * 8], atol=1e-3)


@pytest.mark.parametrize(("cx", "cy"), [(0.0, 7.3), (15.0, 4.6), (6.2, 0.0), (0.0, 15.0)])
def test_border_peaks(cx: float, cy: float) -> None:
    hm = gaussian(16, 16, cx, cy)[None, None]
    out = decode_heatmaps(hm, stride=1, offset=0)
    assert np.isfinite(out).all()
    # the axis touching the border stays on the border cell; the other is refined
    assert abs(out[0, 0, 0] - cx) < 0.05
    assert abs(out[0, 0, 1] - cy) < 0.05
    assert 0 <= out[0, 0, 0] <= 15 and 0 <= out[0, 0, 1] <= 15


def test_confidence_clamped_and_flat_maps() -> None:
    hm = np.zeros((1, 3, 8, 8), np.float32)
    hm[0, 0, 3, 4] = 1.7  # above 1 → clamped
    hm[0, 1] = -0.2  # flat negative → 0
    out = decode_heatmaps(hm, 1, 0)
    assert out[0, 0, 2] == 1.0 and tuple(out[0, 0, :2]) == (4.0, 3.0)
    assert out[0, 1, 2] == 0.0 and out[0, 2, 2] == 0.0
    assert np.isfinite(out).all()


def test_sigmoid_activation() -> None:
    p = gaussian(32, 32, 12.3, 20.6, sigma=2.0, peak=0.9)
    logits = np.log(p / (1 - p)).astype(np.float32)[None, None]
    out = decode_heatmaps(logits, 1, 0, activation="sigmoid")
    np.testing.assert_allclose(out[0, 0], [12.3, 20.6, p.max()], atol=0.05)
    with pytest.raises(ValueError, match="activation"):
        decode_heatmaps(logits, 1, 0, activation="softmax")


def test_rejects_bad_rank() -> None:
    with pytest.raises(ValueError, match="N, J, h, w"):
        decode_heatmaps(np.zeros((2, 8, 8), np.float32), 1, 0)


def test_nan_map_gives_nan_row() -> None:
    hm = np.stack([gaussian(8, 8, 3.0, 4.0), gaussian(8, 8, 2.0, 2.0)])[None]
    hm[0, 1, 5, 5] = np.nan
    out = decode_heatmaps(hm, 1, 0)
    assert np.isnan(out[0, 1]).all()
    np.testing.assert_allclose(out[0, 0], [3.0, 4.0, 1.0], atol=1e-3)
