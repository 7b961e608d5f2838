"""Preprocessing: frames → the model's normalised float32 batch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from livepose.errors import UserError
from livepose.inference.manifest import InputSpec
from livepose.inference.preprocess import Preprocessor, parse_pixel_format

H, W = 24, 32


def spec(**kw: Any) -> InputSpec:
    base: dict[str, Any] = dict(name="image", layout="NCHW", width=W, height=H, channels=1,
                                color="mono", scale=1 / 255, mean=[0.5], std=[0.25])
    base.update(kw)
    return InputSpec(**base)


def ref_norm(v: np.ndarray, scale: float, mean: float, std: float) -> np.ndarray:
    return (v.astype(np.float64) * scale - mean) / std


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_mono8_nchw(rng: np.random.Generator) -> None:
    pre = Preprocessor(spec(), batch=4)
    imgs = [rng.integers(0, 256, (H, W), dtype=np.uint8) for _ in range(4)]
    buf_id = id(pre.buffer)
    out = pre(imgs, ["Mono8"] * 4)
    assert out.shape == (4, 1, H, W) and out.dtype == np.float32
    assert np.shares_memory(out, pre.buffer) and id(pre.buffer) == buf_id
    for i in range(4):
        np.testing.assert_allclose(out[i, 0], ref_norm(imgs[i], 1 / 255, 0.5, 0.25), atol=1e-5)


def test_read_only_frame_from_buffer(rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, (H, W), dtype=np.uint8)
    ro = np.frombuffer(img.tobytes(), np.uint8).reshape(H, W)  # like a received zmq frame
    assert not ro.flags.writeable
    pre = Preprocessor(spec(), batch=1)
    pre.fill(0, ro, "Mono8")
    np.testing.assert_allclose(pre.buffer[0, 0], ref_norm(img, 1 / 255, 0.5, 0.25), atol=1e-5)


@pytest.mark.parametrize(("fmt", "bits"), [("Mono16", 16), ("Mono12", 12), ("mono10", 10)])
def test_mono16_brought_to_8bit_range(fmt: str, bits: int, rng: np.random.Generator) -> None:
    img = rng.integers(0, 1 << bits, (H, W), dtype=np.uint16)
    pre = Preprocessor(spec(), batch=1)
    pre.fill(0, img, fmt)
    v8 = img.astype(np.float64) * 255 / ((1 << bits) - 1)
    np.testing.assert_allclose(pre.buffer[0, 0], ref_norm(v8, 1 / 255, 0.5, 0.25), atol=1e-4)


def test_mono_to_three_channels_per_channel_stats(rng: np.random.Generator) -> None:
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    pre = Preprocessor(spec(channels=3, color="rgb", mean=mean, std=std), batch=2)
    img = rng.integers(0, 256, (H, W), dtype=np.uint8)
    pre.fill(1, img, "Mono8")
    for c in range(3):
        np.testing.assert_allclose(pre.buffer[1, c], ref_norm(img, 1 / 255, mean[c], std[c]),
                                   atol=1e-4)


@pytest.mark.parametrize("model_color", ["rgb", "bgr"])
@pytest.mark.parametrize("frame_fmt", ["RGB8", "BGR8"])
def test_colour_order(model_color: str, frame_fmt: str, rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    pre = Preprocessor(spec(channels=3, color=model_color, mean=[0.0], std=[1.0]), batch=1)
    pre.fill(0, img, frame_fmt)
    src_order = frame_fmt[:3].lower()
    for c, name in enumerate(model_color):
        k = src_order.index(name)
        np.testing.assert_allclose(pre.buffer[0, c], img[..., k] / 255.0, atol=1e-6)


def test_colour_to_mono_uses_luma(rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    pre = Preprocessor(spec(mean=[0.0], std=[1.0]), batch=1)
    pre.fill(0, img, "BGR8")
    luma = 0.114 * img[..., 0] + 0.587 * img[..., 1] + 0.299 * img[..., 2]
    np.testing.assert_allclose(pre.buffer[0, 0], luma / 255.0, atol=1e-5)


def test_nhwc_layout(rng: np.random.Generator) -> None:
    pre = Preprocessor(spec(layout="NHWC", channels=3, color="rgb", mean=[0.0], std=[1.0]), 2)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    pre.fill(0, img, "RGB8")
    assert pre.buffer.shape == (2, H, W, 3)
    np.testing.assert_allclose(pre.buffer[0], img / 255.0, atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "dtype", "fmt", "match"),
    [
        ((H + 1, W), np.uint8, "Mono8", "needs"),
        ((H, W), np.float32, "Mono8", "pixel type"),
        ((H, W), np.uint8, "BayerRG8", "not supported"),
        ((H, W, 3), np.uint8, "Mono8", "does not match image shape"),
        ((H, W), np.uint8, "RGB8", "does not match image shape"),
        ((H, W), np.uint8, "Mono12", "does not match pixel type"),
        ((H, W), np.uint16, "Mono8", "does not match pixel type"),
    ],
)
def test_bad_frames_raise_value_error(shape: tuple[int, ...], dtype: Any, fmt: str,
                                      match: str) -> None:
    pre = Preprocessor(spec(), batch=1)
    pre.buffer[...] = 7.0
    with pytest.raises(ValueError, match=match):
        pre.fill(0, np.zeros(shape, dtype), fmt)
    assert (pre.buffer == 7.0).all()  # slot untouched


def test_empty_format_guessed_from_shape() -> None:
    assert parse_pixel_format("", np.zeros((4, 4), np.uint8)) == ("mono", 8)
    assert parse_pixel_format("", np.zeros((4, 4, 3), np.uint16)) == ("rgb", 16)


def test_resize_modes_rejected_clearly() -> None:
    with pytest.raises(UserError, match="resize"):
        Preprocessor(spec(resize="stretch"), batch=1)
