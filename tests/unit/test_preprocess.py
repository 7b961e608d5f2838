"""Preprocessing: frames → the model's normalised float32 batch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

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




# --------------------------------------------------------------------------- resampling

cv2 = pytest.importorskip("cv2")  # opencv-python-headless: dev group


def norm01(v: np.ndarray) -> np.ndarray:
    """The normalisation of ``spec(mean=[0], std=[1])``: v / 255."""
    return v.astype(np.float64) / 255.0


def plain(**kw: Any) -> InputSpec:
    return spec(mean=[0.0], std=[1.0], **kw)


@pytest.mark.parametrize("frame_size", [(96, 72), (64, 48), (13, 10), (50, 37), (32, 24)])
def test_stretch_whole_frame_matches_cv2(frame_size: tuple[int, int],
                                         rng: np.random.Generator) -> None:
    fw, fh = frame_size
    img = rng.integers(0, 256, (fh, fw), dtype=np.uint8)
    pre = Preprocessor(plain(resize="stretch"), batch=1)
    pre.fill(0, img, "Mono8")
    ref = cv2.resize(img.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(pre.buffer[0, 0], norm01(ref), atol=1e-5)
    np.testing.assert_allclose(pre.transforms[0], [fw / W, fw / W / 2 - 0.5,
                                                   fh / H, fh / H / 2 - 0.5])


def test_stretch_uint16_colour_to_bgr_matches_cv2(rng: np.random.Generator) -> None:
    img = rng.integers(0, 4096, (61, 77, 3), dtype=np.uint16)
    pre = Preprocessor(plain(resize="stretch", channels=3, color="bgr"), batch=2)
    pre.fill(1, img, "RGB12")
    ref = cv2.resize(img.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR) / 4095.0
    for c in range(3):
        np.testing.assert_allclose(pre.buffer[1, c], ref[..., 2 - c], atol=1e-5)


def test_letterbox_whole_frame_matches_cv2_with_bars(rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, (32, 64), dtype=np.uint8)  # 2:1 into 4:3: bars top and bottom
    pre = Preprocessor(spec(resize="letterbox"), batch=1)  # mean 0.5, std 0.25
    pre.buffer[...] = 7.0
    pre.fill(0, img, "Mono8")
    ref = cv2.resize(img.astype(np.float32), (32, 16), interpolation=cv2.INTER_LINEAR)
    out = pre.buffer[0, 0]
    np.testing.assert_allclose(out[4:20], ref_norm(ref, 1 / 255, 0.5, 0.25), atol=1e-5)
    assert (out[:4] == 0.0).all() and (out[20:] == 0.0).all()  # normalised 0 = the mean
    np.testing.assert_allclose(pre.transforms[0], [2.0, 0.5, 2.0, 0.5 - 8.0])


def test_roi_inside_frame_matches_cv2_on_the_subimage(rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, (80, 100), dtype=np.uint8)
    pre = Preprocessor(plain(resize="stretch"), batch=1)
    pre.fill(0, img, "Mono8", roi=(10, 6, 64, 48))  # ×2 down: every tap inside the ROI
    ref = cv2.resize(img[6:54, 10:74].astype(np.float32), (W, H),
                     interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(pre.buffer[0, 0], norm01(ref), atol=1e-5)


def test_native_size_roi_is_an_exact_copy(rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
    for resize in ("none", "stretch", "letterbox"):
        pre = Preprocessor(plain(resize=resize, channels=3, color="rgb"), batch=2)
        pre.fill(0, img, "RGB8", roi=(17, 40, W, H))
        pre.fill(1, img[40:64, 17:49].copy(), "RGB8")  # a model-sized frame: no resampling
        np.testing.assert_array_equal(pre.buffer[0], pre.buffer[1])
        np.testing.assert_allclose(pre.buffer[0], norm01(img[40:64, 17:49]).transpose(2, 0, 1),
                                   atol=1e-7)
        np.testing.assert_array_equal(pre.transforms[0], [1.0, 17.0, 1.0, 40.0])


def smooth_image(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    return (120 + 60 * np.sin(x / 5.0) * np.cos(y / 7.0) + 0.8 * x - 0.5 * y).astype(np.uint8)


@pytest.mark.parametrize("resize", ["stretch", "letterbox", "none"])
def test_roi_beyond_the_frame_vs_cv2_warp_affine(resize: str) -> None:
    img = smooth_image(60, 90)
    pre = Preprocessor(plain(resize=resize), batch=1)
    pre.buffer[...] = 7.0
    roi = (-9.3, 31.2, 47.5, 41.0)  # reaches beyond the left and bottom edges
    pre.fill(0, img, "Mono8", roi=roi)
    ax, bx, ay, by = pre.transforms[0]
    if resize == "stretch":
        assert ax == pytest.approx(47.5 / W) and ay == pytest.approx(41.0 / H)
    else:  # letterbox (resize: none letterboxes a ROI): one scale
        assert ax == ay == pytest.approx(max(47.5 / W, 41.0 / H))
    M = np.array([[ax, 0.0, bx], [0.0, ay, by]])
    ref = cv2.warpAffine(img.astype(np.float32), M, (W, H),
                         flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    x, y = ax * u + bx, ay * v + by
    x_lo, x_hi = max(roi[0], 0) - 0.5, min(roi[0] + roi[2], 90) - 0.5
    y_lo, y_hi = max(roi[1], 0) - 0.5, min(roi[1] + roi[3], 60) - 0.5
    inside = (x >= x_lo) & (x <= x_hi) & (y >= y_lo) & (y <= y_hi)
    out = pre.buffer[0, 0]
    assert inside.sum() > 0.4 * inside.size and (~inside).sum() > 0.1 * inside.size
    # warpAffine quantises positions to 1/32 px: a tolerance of that times the gradient
    np.testing.assert_allclose(out[inside], norm01(ref)[inside], atol=0.6 / 255)
    assert (out[~inside] == 0.0).all()


@pytest.mark.parametrize("roi", [None, (-9.3, 31.2, 47.5, 41.0), (20, 10, 17, 29),
                                 (5.5, 3.25, 64.0, 48.0)])
@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
def test_transform_is_exact_on_a_linear_ramp(roi: tuple[float, ...] | None, resize: str) -> None:
    """Bilinear interpolation reproduces a linear image exactly, so every model pixel must
    hold the frame's value at the position its transform names (pixel-centre convention)."""
    fh, fw = 60, 90
    y, x = np.mgrid[0:fh, 0:fw]
    img = (250 * x + 600 * y + 1000).astype(np.uint16)  # < 65535
    pre = Preprocessor(plain(resize=resize), batch=1)
    pre.fill(0, img, "Mono16", roi=roi)
    ax, bx, ay, by = pre.transforms[0]
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    xs, ys = ax * u + bx, ay * v + by
    ok = (xs >= 0) & (xs <= fw - 1) & (ys >= 0) & (ys <= fh - 1)
    if roi is not None:
        ok &= (xs >= roi[0] - 0.5) & (xs <= roi[0] + roi[2] - 0.5)
        ok &= (ys >= roi[1] - 0.5) & (ys <= roi[1] + roi[3] - 0.5)
    assert ok.sum() > 100
    expect = (250 * xs + 600 * ys + 1000) / 65535.0
    np.testing.assert_allclose(pre.buffer[0, 0][ok], expect[ok], rtol=2e-6, atol=2e-6)


def blob_image(fw: int, fh: int, cx: float, cy: float, sigma: float) -> np.ndarray:
    y, x = np.mgrid[0:fh, 0:fw]
    g = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    return np.round(65535 * g).astype(np.uint16)


@pytest.mark.parametrize(("resize", "roi", "sigma"), [
    ("stretch", None, 5.0),  # 120×80 → 32×24: ×3.75 / ×3.33 down
    ("letterbox", None, 5.0),
    ("none", (40, 30, W, H), 3.0),  # native crop
    ("stretch", (22.5, 13.0, 60.0, 52.0), 5.0),
    ("letterbox", (45, 33, 20, 18), 2.0),  # ×0.75 up, bars left and right
    ("stretch", (30.5, 20, 120, 80), 5.0),  # beyond the right and bottom edges
])
def test_point_round_trip(resize: str, roi: tuple[float, ...] | None, sigma: float) -> None:
    """A blob at a known frame position, found in the model input, comes back there."""
    cx, cy = 55.3, 41.8
    img = blob_image(120, 80, cx, cy, sigma)
    pre = Preprocessor(plain(resize=resize), batch=3)
    pre.fill(1, img, "Mono16", roi=roi)
    m = pre.buffer[1, 0].astype(np.float64)
    m = np.where(m > 0.02 * m.max(), m, 0.0)
    v, u = np.mgrid[0:H, 0:W]
    found = np.array([[[0.0, 0.0, 1.0], [(m * u).sum() / m.sum(), (m * v).sum() / m.sum(), 1.0],
                       [np.nan, np.nan, np.nan]]]).transpose(1, 0, 2)  # (3, 1, 3)
    pre.to_frame_pixels(found)
    scale = pre.transforms[1, 0]
    assert found[1, 0, :2] == pytest.approx([cx, cy], abs=0.05 * max(scale, 1.0))
    assert found[0, 0, :2] == pytest.approx([0.0, 0.0])  # slot 0: never filled, identity
    assert np.isnan(found[2]).all() and found[1, 0, 2] == 1.0


def test_to_frame_pixels_uses_each_slots_transform() -> None:
    img = np.zeros((80, 120), np.uint8)
    pre = Preprocessor(plain(resize="letterbox"), batch=2)
    pre.fill(0, img, "Mono8", roi=(10, 20, 2 * W, 2 * H))  # ×2: u → 2u + 10.5
    pre.fill(1, img, "Mono8", roi=(3, 4, W, H))  # native crop: u → u + 3
    pts = np.array([[[1.0, 2.0, 0.9]], [[1.0, 2.0, 0.8]]], dtype=np.float32)
    pre.to_frame_pixels(pts)
    np.testing.assert_allclose(pts[:, 0], [[12.5, 24.5, 0.9], [4.0, 6.0, 0.8]], rtol=1e-6)
    with pytest.raises(ValueError, match="points"):
        pre.to_frame_pixels(np.zeros((3, 1, 3)))


@pytest.mark.parametrize("roi", [(0, 0, 0, 10), (0, 0, 10, -1), (0, float("nan"), 4, 4), (1, 2)])
def test_bad_roi_raises_and_leaves_the_slot(roi: tuple[float, ...]) -> None:
    pre = Preprocessor(plain(resize="stretch"), batch=1)
    pre.buffer[...] = 7.0
    with pytest.raises(ValueError, match="roi"):
        pre.fill(0, np.zeros((30, 40), np.uint8), "Mono8", roi=roi)
    assert (pre.buffer == 7.0).all()


def test_nhwc_roi(rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
    pre = Preprocessor(plain(layout="NHWC", channels=3, color="rgb", resize="stretch"), 1)
    pre.fill(0, img, "RGB8", roi=(10, 6, 64, 48))
    ref = cv2.resize(img[6:54, 10:74].astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(pre.buffer[0], norm01(ref), atol=1e-5)


def test_resize_none_still_needs_the_model_size_without_roi() -> None:
    pre = Preprocessor(plain(), batch=1)
    with pytest.raises(ValueError, match="needs 32×24"):
        pre.fill(0, np.zeros((48, 64), np.uint8), "Mono8")
    pre.fill(0, np.zeros((48, 64), np.uint8), "Mono8", roi=(0, 0, 64, 48))  # letterboxed
    np.testing.assert_allclose(pre.transforms[0], [2.0, 0.5, 2.0, 0.5])
