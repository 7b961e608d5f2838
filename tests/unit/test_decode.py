"""Decoders: heatmap (sub-pixel peaks, borders, confidence, activation, DeepLabCut locref),
SimCC and regression, directly and through small ONNX graphs run by the engine."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from livepose.inference.decode import (
    decode_heatmaps,
    decode_outputs,
    decode_regression,
    decode_simcc,
)
from livepose.inference.engine import OrtEngine
from livepose.inference.manifest import Manifest


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


# --------------------------------------------------------------------------- locref (DLC)


def test_locref_offsets_added_at_peak() -> None:
    """x = cell centre + locref_x * locref_std, read at the arg-max cell; x/y interleaved."""
    j, h, w, stride, offset, std = 3, 10, 12, 8.0, 3.5, 7.2801
    hm = np.zeros((2, j, h, w), np.float32)
    lr = np.full((2, 2 * j, h, w), 9.0, np.float32)  # wrong everywhere but at the peaks
    cells = [[(2, 3), (7, 1), (11, 9)], [(0, 0), (5, 5), (4, 8)]]  # (col, row)
    want = np.zeros((2, j, 3))
    rng = np.random.default_rng(3)
    for b in range(2):
        for k, (c, r) in enumerate(cells[b]):
            peak = rng.uniform(0.3, 0.9)
            hm[b, k, r, c] = peak
            lx, ly = rng.uniform(-0.6, 0.6, 2)
            lr[b, 2 * k, r, c], lr[b, 2 * k + 1, r, c] = lx, ly
            want[b, k] = [offset + c * stride + lx * std, offset + r * stride + ly * std, peak]
    out = decode_heatmaps(hm, stride, offset, locref=lr, locref_std=std)
    np.testing.assert_allclose(out, want, atol=1e-4)


def test_locref_shape_and_nan() -> None:
    hm = gaussian(8, 8, 3.0, 4.0)[None, None]
    with pytest.raises(ValueError, match=r"locref must be \(N, 2J, h, w\)"):
        decode_heatmaps(hm, 1, 0, locref=np.zeros((1, 1, 8, 8), np.float32))
    lr = np.zeros((1, 2, 8, 8), np.float32)
    lr[0, 1, 4, 3] = np.nan  # the y offset at the peak
    assert np.isnan(decode_heatmaps(hm, 1, 0, locref=lr)).all()


# --------------------------------------------------------------------------- SimCC


def test_simcc_argmax_over_split_ratio_and_min_confidence() -> None:
    rng = np.random.default_rng(5)
    n, j, k, width, height = 2, 4, 2.0, 40, 30
    sx = rng.uniform(0, 0.2, (n, j, int(width * k))).astype(np.float32)
    sy = rng.uniform(0, 0.2, (n, j, int(height * k))).astype(np.float32)
    ix = rng.integers(0, sx.shape[2], (n, j))
    iy = rng.integers(0, sy.shape[2], (n, j))
    px = rng.uniform(0.3, 0.95, (n, j))
    py = rng.uniform(0.3, 0.95, (n, j))
    for b in range(n):
        for q in range(j):
            sx[b, q, ix[b, q]] = px[b, q]
            sy[b, q, iy[b, q]] = py[b, q]
    out = decode_simcc(sx, sy, k)
    np.testing.assert_allclose(out[..., 0], ix / k)
    np.testing.assert_allclose(out[..., 1], iy / k)
    np.testing.assert_allclose(out[..., 2], np.minimum(px, py), rtol=1e-6)  # mmpose: min


def test_simcc_sigmoid_nan_and_clamp() -> None:
    sx = np.full((1, 3, 10), -5.0, np.float32)
    sy = np.full((1, 3, 8), -5.0, np.float32)
    sx[0, 0, 4], sy[0, 0, 6] = 2.0, 1.0
    sx[0, 1, 2] = np.nan
    sx[0, 2, 7], sy[0, 2, 3] = 3.0, 0.5
    out = decode_simcc(sx, sy, 2.0, "sigmoid")
    np.testing.assert_allclose(out[0, 0], [2.0, 3.0, 1 / (1 + np.exp(-1.0))], rtol=1e-6)
    assert np.isnan(out[0, 1]).all()
    raw = decode_simcc(sx, sy, 2.0)  # no activation: confidence clamped to [0, 1]
    assert raw[0, 0, 2] == 1.0 and raw[0, 2, 2] == 0.5
    with pytest.raises(ValueError, match="SimCC outputs"):
        decode_simcc(sx, sy[:, :2], 2.0)


# --------------------------------------------------------------------------- regression


def test_regression_pixels_normalized_confidence() -> None:
    xy = np.array([[[10.0, 20.0], [0.0, 5.5]]], np.float32)
    out = decode_regression(xy, 64, 48)
    np.testing.assert_allclose(out[0], [[10, 20, 1], [0, 5.5, 1]])
    norm = np.array([[[0.5, 0.25, 0.7], [0.0, 1.0, 3.0], [np.inf, 0.1, 0.9]]], np.float32)
    out = decode_regression(norm, 64, 48, normalized=True)
    # 0 and 1 are the image edges: pixel k covers [k - 0.5, k + 0.5]
    np.testing.assert_allclose(out[0, :2], [[31.5, 11.5, 0.7], [-0.5, 47.5, 1.0]], rtol=1e-6)
    assert np.isnan(out[0, 2]).all()
    sig = decode_regression(norm[:, :2], 64, 48, normalized=True, activation="sigmoid")
    np.testing.assert_allclose(sig[0, :, 2], 1 / (1 + np.exp(-norm[0, :2, 2])), rtol=1e-6)
    with pytest.raises(ValueError, match=r"\(N, J, 2\) or \(N, J, 3\)"):
        decode_regression(np.zeros((1, 2, 4), np.float32), 64, 48)


# --------------------------------------------------------------------------- through ONNX
# Each graph reshapes its input into the outputs the decoder reads, so the test writes the
# heatmaps / SimCC vectors / coordinates itself and knows the keypoints by construction.


def _save(path: Path, nodes: list, in_shape: list, outputs: dict[str, list],
          inits: list | None = None) -> Path:
    graph = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info("image", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in outputs.items()],
        initializer=inits or [],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _i64(name: str, vals: list[int]) -> Any:
    return helper.make_tensor(name, TensorProto.INT64, [len(vals)], vals)


def _manifest(width: int, height: int, j: int, output: dict[str, Any]) -> Manifest:
    return Manifest.model_validate({
        "format": "livepose-model/1", "name": "t", "keypoints": [f"k{i}" for i in range(j)],
        "input": {"name": "image", "width": width, "height": height, "channels": 1,
                  "color": "mono"},
        "output": output,
    })


def _slices(n_parts: dict[str, tuple[int, list[int]]]) -> tuple[list, list]:
    """Flatten ``image`` to (N, -1), then output ``name`` = the next ``size`` values reshaped
    to ``(N, *shape)``, in order."""
    nodes = [helper.make_node("Reshape", ["image", "flat_shape"], ["flat"])]
    inits = [_i64("flat_shape", [0, -1]), _i64("axes", [1])]
    start = 0
    for name, (size, shape) in n_parts.items():
        inits += [_i64(f"{name}_s", [start]), _i64(f"{name}_e", [start + size]),
                  _i64(f"{name}_shape", [0, *shape])]
        nodes += [helper.make_node("Slice", ["flat", f"{name}_s", f"{name}_e", "axes"],
                                   [f"{name}_flat"]),
                  helper.make_node("Reshape", [f"{name}_flat", f"{name}_shape"], [name])]
        start += size
    return nodes, inits


def test_heatmap_model_through_engine(tmp_path: Path) -> None:
    """(N, 1, 32, 40) → Reshape → heatmaps (N, 4, 16, 20): stride 2, J = 4."""
    n, j, h, w, stride, offset = 3, 4, 16, 20, 2.0, 0.5
    path = _save(tmp_path / "m.onnx", [helper.make_node("Reshape", ["image", "s"], ["hm"])],
                 ["N", 1, 2 * h, 2 * w], {"hm": ["N", j, h, w]}, [_i64("s", [0, j, h, w])])
    m = _manifest(2 * w, 2 * h, j, {"name": "hm", "type": "heatmap", "stride": stride,
                                    "offset": offset})
    eng = OrtEngine(path, m)
    rng = np.random.default_rng(7)
    centres = np.stack([rng.uniform(1, w - 2, (n, j)), rng.uniform(1, h - 2, (n, j))], -1)
    hm = np.stack([np.stack([gaussian(h, w, *centres[b, k]) for k in range(j)])
                   for b in range(n)])
    outs = eng.run(hm.reshape(n, 1, 2 * h, 2 * w))
    assert len(outs) == 1 and outs[0].shape == (n, j, h, w)
    pts = decode_outputs(outs, m)
    np.testing.assert_allclose(pts[..., :2], offset + centres * stride, atol=0.1)
    np.testing.assert_allclose(pts[..., 2], hm.reshape(n, j, -1).max(-1), rtol=1e-6)


def test_heatmap_locref_model_through_engine(tmp_path: Path) -> None:
    """(N, 1, 24, 30) → Reshape (N, 9, 8, 10) → Split [3, 6] → heatmap (J=3), locref (2J)."""
    n, j, h, w, stride = 2, 3, 8, 10, 3.0
    nodes = [helper.make_node("Reshape", ["image", "s"], ["all"]),
             helper.make_node("Split", ["all", "parts"], ["hm", "lr"], axis=1)]
    path = _save(tmp_path / "m.onnx", nodes, ["N", 1, 3 * h, 3 * w],
                 {"hm": ["N", j, h, w], "lr": ["N", 2 * j, h, w]},
                 [_i64("s", [0, 3 * j, h, w]), _i64("parts", [j, 2 * j])])
    m = _manifest(3 * w, 3 * h, j, {"name": "hm", "type": "heatmap", "stride": stride,
                                    "locref": "lr", "locref_std": 5.0})
    assert m.output.tensor_names() == ["hm", "lr"]
    eng = OrtEngine(path, m)
    rng = np.random.default_rng(11)
    allmaps = rng.uniform(-1, 0, (n, 3 * j, h, w)).astype(np.float32)
    want = np.zeros((n, j, 2))
    for b in range(n):
        for k in range(j):
            r, c = rng.integers(0, h), rng.integers(0, w)
            allmaps[b, k, r, c] = 4.0  # logit of the peak
            lx, ly = rng.uniform(-0.5, 0.5, 2)
            allmaps[b, j + 2 * k, r, c], allmaps[b, j + 2 * k + 1, r, c] = lx, ly
            want[b, k] = [1.0 + c * stride + 5.0 * lx, 1.0 + r * stride + 5.0 * ly]
    m = m.model_copy(update={"output": m.output.model_copy(update={"activation": "sigmoid"})})
    outs = eng.run(allmaps.reshape(n, 1, 3 * h, 3 * w))
    pts = decode_outputs(outs, m)
    np.testing.assert_allclose(pts[..., :2], want, atol=1e-4)  # offset (3 - 1) / 2 = 1
    np.testing.assert_allclose(pts[..., 2], 1 / (1 + np.exp(-4.0)), rtol=1e-5)


def test_simcc_model_through_engine(tmp_path: Path) -> None:
    """(N, 1, 16, 24) → slices → simcc_x (N, 3, 48), simcc_y (N, 3, 32), split ratio 2."""
    n, j, H, W, k = 2, 3, 16, 24, 2
    nodes, inits = _slices({"sx": (j * W * k, [j, W * k]), "sy": (j * H * k, [j, H * k])})
    path = _save(tmp_path / "m.onnx", nodes, ["N", 1, H, W],
                 {"sx": ["N", j, W * k], "sy": ["N", j, H * k]}, inits)
    m = _manifest(W, H, j, {"name": "sx", "name_y": "sy", "type": "simcc"})
    eng = OrtEngine(path, m)
    rng = np.random.default_rng(2)
    sx = rng.uniform(0, 0.1, (n, j, W * k)).astype(np.float32)
    sy = rng.uniform(0, 0.1, (n, j, H * k)).astype(np.float32)
    ix, iy = rng.integers(0, W * k, (n, j)), rng.integers(0, H * k, (n, j))
    vx, vy = rng.uniform(0.4, 0.9, (n, j)), rng.uniform(0.4, 0.9, (n, j))
    for b in range(n):
        for q in range(j):
            sx[b, q, ix[b, q]], sy[b, q, iy[b, q]] = vx[b, q], vy[b, q]
    flat = np.zeros((n, H * W), np.float32)
    flat[:, : sx[0].size] = sx.reshape(n, -1)
    flat[:, sx[0].size : sx[0].size + sy[0].size] = sy.reshape(n, -1)
    outs = eng.run(flat.reshape(n, 1, H, W))
    assert [o.shape for o in outs] == [(n, j, W * k), (n, j, H * k)]
    pts = decode_outputs(outs, m)
    np.testing.assert_allclose(pts[..., 0], ix / k)
    np.testing.assert_allclose(pts[..., 1], iy / k)
    np.testing.assert_allclose(pts[..., 2], np.minimum(vx, vy), rtol=1e-6)


def test_regression_model_through_engine(tmp_path: Path) -> None:
    """(N, 1, 8, 8) → slice → coords (N, 5, 3) normalized, confidence as logits."""
    n, j, H, W = 3, 5, 8, 8
    nodes, inits = _slices({"kp": (j * 3, [j, 3])})
    path = _save(tmp_path / "m.onnx", nodes, ["N", 1, H, W], {"kp": ["N", j, 3]}, inits)
    m = _manifest(W, H, j, {"name": "kp", "type": "regression", "coords": "normalized",
                            "activation": "sigmoid"})
    eng = OrtEngine(path, m)
    rng = np.random.default_rng(4)
    kp = rng.uniform(0, 1, (n, j, 3)).astype(np.float32)
    flat = np.zeros((n, H * W), np.float32)
    flat[:, : j * 3] = kp.reshape(n, -1)
    pts = decode_outputs(eng.run(flat.reshape(n, 1, H, W)), m)
    np.testing.assert_allclose(pts[..., 0], kp[..., 0] * W - 0.5, atol=1e-5)
    np.testing.assert_allclose(pts[..., 1], kp[..., 1] * H - 0.5, atol=1e-5)
    np.testing.assert_allclose(pts[..., 2], 1 / (1 + np.exp(-kp[..., 2])), rtol=1e-5)


def test_decode_outputs_needs_every_output() -> None:
    m = _manifest(16, 16, 2, {"name": "sx", "name_y": "sy", "type": "simcc"})
    with pytest.raises(ValueError, match=r"needs outputs \['sx', 'sy'\], got 1"):
        decode_outputs([np.zeros((1, 2, 32), np.float32)], m)


def test_decode_is_fast() -> None:
    """4 views × 14 keypoints, each decoder: the median stays far below 1 ms."""
    rng = np.random.default_rng(0)
    cases = [
        ([rng.random((4, 14, 64, 80), dtype=np.float32)],
         _manifest(320, 256, 14, {"name": "a", "type": "heatmap", "stride": 4})),
        ([rng.random((4, 14, 64, 80), dtype=np.float32),
          rng.random((4, 28, 64, 80), dtype=np.float32)],
         _manifest(320, 256, 14, {"name": "a", "type": "heatmap", "stride": 4, "locref": "b"})),
        ([rng.random((4, 14, 640), dtype=np.float32), rng.random((4, 14, 512), dtype=np.float32)],
         _manifest(320, 256, 14, {"name": "a", "name_y": "b", "type": "simcc"})),
        ([rng.random((4, 14, 3), dtype=np.float32)],
         _manifest(320, 256, 14, {"name": "a", "type": "regression"})),
    ]
    for outs, m in cases:
        decode_outputs(outs, m)  # compile
        times = []
        for _ in range(50):
            t = time.perf_counter()
            decode_outputs(outs, m)
            times.append(time.perf_counter() - t)
        assert np.median(times) < 1e-3, (m.output.type, np.median(times))
