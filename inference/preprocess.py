"""Camera frames → the model's float32 input batch, in place.

A frame is ``(H, W)`` mono or ``(H, W, 3)`` colour, uint8 or uint16; its ``pixel_format``
(GenICam names, case-insensitive: ``Mono8``, ``Mono12``, ``RGB8``, ``BGR8``…; empty: guess
from the shape) says how to read it. uint16 pixels of an ``N``-bit format are first brought
to the 8-bit range (× 255 / (2^N - 1)); then channel ``c`` gets
``(v * scale - mean[c]) / std[c]`` (manifest ``input``). Mono frames fill every channel of a
3-channel model; colour frames are reordered to the model's RGB/BGR, or turned to grey
(ITU-R 601 luma) for a mono model.

Geometry (manifest ``input.resize``, and an optional region of interest per slot):

- ``none``: the frame must have the model's exact size (copied, no resampling);
- ``stretch``: the frame (or ROI) is resampled to the model size, each axis on its own;
- ``letterbox``: one scale for both axes (the region fits inside the model input), centred,
  the bars filled with the normalised value 0 (the mean grey).

A ROI ``(x0, y0, w, h)`` (frame pixels; it may extend beyond the frame) is resampled the same
way; with ``resize: none`` a ROI is letterboxed (a ROI of exactly the model size is a plain
copy). Resampling is bilinear, fused with the normalisation, written straight into the batch
slot. Pixel-centre convention: pixel ``k`` covers ``[k - 0.5, k + 0.5]``, so a region
``[x0 - 0.5, x0 + w - 0.5]`` maps onto ``[-0.5, W_model - 0.5]`` (OpenCV's ``resize``
convention). Inside the frame, sample positions closer than half a pixel to the frame's edge
use the edge pixel (as OpenCV's ``INTER_LINEAR``); positions outside the frame (a ROI
reaching beyond it) get the normalised value 0, like the letterbox bars.

Each slot keeps its affine map (:attr:`Preprocessor.transforms`), used by
:meth:`Preprocessor.to_frame_pixels` to bring keypoints back to full-frame pixels.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numba as nb
import numpy as np

from livepose.inference.manifest import InputSpec

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # R, G, B
_FORMAT = re.compile(r"^(mono|rgb|bgr)(\d+)?(p|packed)?$")
_EDGE_EPS = 1e-6  # sample positions this close outside the region still count as inside

Roi = Sequence[float]
"""``(x0, y0, w, h)``: the region covering frame pixels ``x0 … x0 + w - 1`` and
``y0 … y0 + h - 1``."""


@nb.njit(cache=True, nogil=True)
def _mono_nb(src: np.ndarray, coef: np.ndarray, dst: np.ndarray) -> None:
    """``dst[c] = src * coef[0, c] + coef[1, c]`` for every channel of ``dst`` ``(C, H, W)``."""
    h, w = src.shape
    for c in range(dst.shape[0]):
        ac = coef[0, c]
        bc = coef[1, c]
        for y in range(h):
            for x in range(w):
                dst[c, y, x] = np.float32(src[y, x]) * ac + bc


@nb.njit(cache=True, nogil=True)
def _colour_nb(
    src: np.ndarray, perm: np.ndarray, luma: np.ndarray, coef: np.ndarray, dst: np.ndarray
) -> None:
    """Channel ``c`` of ``dst`` ``(C, H, W)`` from source channel ``perm[c]``, or from the
    luma-weighted sum of the source channels (``luma`` in source order) when ``perm[c] < 0``;
    then ``* coef[0, c] + coef[1, c]``."""
    h, w, _ = src.shape
    for c in range(dst.shape[0]):
        ac = coef[0, c]
        bc = coef[1, c]
        k = perm[c]
        if k >= 0:
            for y in range(h):
                for x in range(w):
                    dst[c, y, x] = np.float32(src[y, x, k]) * ac + bc
        else:
            l0 = luma[0] * ac
            l1 = luma[1] * ac
            l2 = luma[2] * ac
            for y in range(h):
                for x in range(w):
                    v = (np.float32(src[y, x, 0]) * l0 + np.float32(src[y, x, 1]) * l1
                         + np.float32(src[y, x, 2]) * l2)
                    dst[c, y, x] = v + bc


@nb.njit(cache=True, nogil=True)
def _taps_nb(
    n: int, a: float, b: float, lo: float, hi: float, size: int,
    i0: np.ndarray, i1: np.ndarray, f: np.ndarray, ok: np.ndarray,
) -> None:
    """Bilinear taps along one axis: output ``k`` samples source position ``a * k + b``,
    inside ``[lo, hi]`` (else ``ok`` is False), clamped to ``[0, size - 1]``."""
    for k in range(n):
        x = a * k + b
        ok[k] = x >= lo - _EDGE_EPS and x <= hi + _EDGE_EPS
        xc = min(max(x, 0.0), size - 1.0)
        j = math.floor(xc)
        if j >= size - 1:
            i0[k] = size - 1
            i1[k] = size - 1
            f[k] = 0.0
        else:
            i0[k] = j
            i1[k] = j + 1
            f[k] = xc - j


@nb.njit(cache=True, nogil=True, inline="always")
def _px(src: np.ndarray, y: int, x: int, k: int, luma: np.ndarray) -> float:
    if k >= 0:
        return float(src[y, x, k])
    return (float(src[y, x, 0]) * luma[0] + float(src[y, x, 1]) * luma[1]
            + float(src[y, x, 2]) * luma[2])


@nb.njit(cache=True, nogil=True)
def _resample_nb(
    src: np.ndarray, perm: np.ndarray, luma: np.ndarray, coef: np.ndarray,
    geom: np.ndarray, dst: np.ndarray,
) -> None:
    """Bilinear resampling of ``src`` ``(H, W, K)`` into ``dst`` ``(C, Hm, Wm)``, normalised.

    ``geom`` = ``(ax, bx, ay, by, x_lo, x_hi, y_lo, y_hi)``: output pixel ``(u, v)`` samples
    the source at ``(ax * u + bx, ay * v + by)`` when that lies inside ``[x_lo, x_hi] ×
    [y_lo, y_hi]``, else gets 0. Channel ``c`` reads source channel ``perm[c]`` (luma when
    negative), then ``* coef[0, c] + coef[1, c]``.
    """
    H, W, _ = src.shape
    C, Hm, Wm = dst.shape
    x0 = np.empty(Wm, np.int64)
    x1 = np.empty(Wm, np.int64)
    fx = np.empty(Wm, np.float64)
    okx = np.empty(Wm, np.bool_)
    y0 = np.empty(Hm, np.int64)
    y1 = np.empty(Hm, np.int64)
    fy = np.empty(Hm, np.float64)
    oky = np.empty(Hm, np.bool_)
    _taps_nb(Wm, geom[0], geom[1], geom[4], geom[5], W, x0, x1, fx, okx)
    _taps_nb(Hm, geom[2], geom[3], geom[6], geom[7], H, y0, y1, fy, oky)
    for c in range(C):
        ac = coef[0, c]
        bc = coef[1, c]
        k = perm[c]
        for v in range(Hm):
            if not oky[v]:
                for u in range(Wm):
                    dst[c, v, u] = 0.0
                continue
            ya = y0[v]
            yb = y1[v]
            wy = fy[v]
            for u in range(Wm):
                if not okx[u]:
                    dst[c, v, u] = 0.0
                    continue
                xa = x0[u]
                xb = x1[u]
                wx = fx[u]
                top = (1.0 - wx) * _px(src, ya, xa, k, luma) + wx * _px(src, ya, xb, k, luma)
                bot = (1.0 - wx) * _px(src, yb, xa, k, luma) + wx * _px(src, yb, xb, k, luma)
                dst[c, v, u] = np.float32(((1.0 - wy) * top + wy * bot) * ac + bc)


def parse_pixel_format(pixel_format: str, image: np.ndarray) -> tuple[str, int]:
    """Order (``mono``, ``rgb`` or ``bgr``) and bit depth of a frame.

    Raises
    ------
    ValueError
        Unsupported format (Bayer, YUV…), or a format that disagrees with the array's shape or
        dtype.
    """
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"pixel type {image.dtype} not supported (uint8 or uint16)")
    mono_shape = image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1)
    colour_shape = image.ndim == 3 and image.shape[2] == 3
    name = pixel_format.strip().lower()
    if not name:
        order, bits = ("mono" if mono_shape else "rgb"), None
    else:
        m = _FORMAT.match(name)
        if m is None:
            raise ValueError(f"pixel format {pixel_format!r} not supported (Mono*, RGB*, BGR*)")
        order, bits = m.group(1), int(m.group(2)) if m.group(2) else None
    if (order == "mono" and not mono_shape) or (order != "mono" and not colour_shape):
        raise ValueError(f"pixel format {pixel_format!r} does not match image shape {image.shape}")
    depth = 8 * image.dtype.itemsize
    bits = bits or depth
    if not (bits <= depth and (depth == 8) == (bits == 8)):
        raise ValueError(f"pixel format {pixel_format!r} does not match pixel type {image.dtype}")
    return order, bits


def region_transform(
    roi: Roi, model_size: tuple[int, int], mode: str
) -> tuple[float, float, float, float]:
    """Affine map ``(ax, bx, ay, by)`` from model-input pixels to frame pixels for a region.

    ``x_frame = ax * u + bx``, ``y_frame = ay * v + by`` for model pixel ``(u, v)`` (pixel
    centres; see the module docstring).

    Parameters
    ----------
    roi
        ``(x0, y0, w, h)`` frame pixels, ``w, h > 0``.
    model_size
        ``(width, height)`` of the model input.
    mode
        ``stretch`` or ``letterbox``.
    """
    x0, y0, w, h = (float(v) for v in roi)
    mw, mh = model_size
    sx, sy = w / mw, h / mh
    pad_x = pad_y = 0.0
    if mode == "letterbox":
        sx = sy = max(sx, sy)
        pad_x, pad_y = (mw - w / sx) / 2.0, (mh - h / sy) / 2.0
    return sx, x0 - 0.5 + (0.5 - pad_x) * sx, sy, y0 - 0.5 + (0.5 - pad_y) * sy


class Preprocessor:
    """Fills a preallocated model input batch from frames.

    Parameters
    ----------
    spec
        The manifest's ``input`` section.
    batch
        Number of frames per batch (the number of cameras).

    Attributes
    ----------
    buffer
        float32 ``(batch, C, H, W)`` (NCHW) or ``(batch, H, W, C)`` (NHWC), reused for every
        batch: run the model before filling the next one.
    transforms
        float64 ``(batch, 4)``: per slot ``(ax, bx, ay, by)``, the map from the slot's
        model-input pixels to its frame's pixels (``x = ax * u + bx``, ``y = ay * v + by``),
        set by :meth:`fill`.
    """

    def __init__(self, spec: InputSpec, batch: int) -> None:
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self.spec = spec
        c, h, w = spec.channels, spec.height, spec.width
        shape = (batch, c, h, w) if spec.layout == "NCHW" else (batch, h, w, c)
        self.buffer = np.zeros(shape, dtype=np.float32)
        self.transforms = np.tile(np.array([1.0, 0.0, 1.0, 0.0]), (batch, 1))
        self._roi_mode = "letterbox" if spec.resize == "none" else spec.resize
        std = np.array(spec.channel_std(), dtype=np.float64)
        self._gain = spec.scale / std  # per channel, for 8-bit values
        self._bias = -np.array(spec.channel_mean(), dtype=np.float64) / std
        self._coefs: dict[int, np.ndarray] = {}  # by bit depth: (2, C) float32 gain, bias
        # source channel for each model channel, per source order; -1: luma
        self._perm = {
            "rgb": np.array([-1] if spec.color == "mono" else
                            ([0, 1, 2] if spec.color == "rgb" else [2, 1, 0]), dtype=np.int64),
            "bgr": np.array([-1] if spec.color == "mono" else
                            ([2, 1, 0] if spec.color == "rgb" else [0, 1, 2]), dtype=np.int64),
            "mono": np.zeros(c, dtype=np.int64),
        }
        self._luma = {"rgb": _LUMA, "bgr": _LUMA[::-1].copy(), "mono": _LUMA}
        if spec.color == "mono" and c == 3:
            for k in ("rgb", "bgr"):
                self._perm[k] = np.array([-1, -1, -1], dtype=np.int64)

    def _dst(self, i: int) -> np.ndarray:
        """Slot ``i`` as a ``(C, H, W)`` view."""
        slot = self.buffer[i]
        return slot if self.spec.layout == "NCHW" else slot.transpose(2, 0, 1)

    def _coef_for(self, bits: int) -> np.ndarray:
        coef = self._coefs.get(bits)
        if coef is None:
            gain = self._gain * (255.0 / ((1 << bits) - 1))
            coef = np.stack([gain, self._bias]).astype(np.float32)
            self._coefs[bits] = coef
        return coef

    def _copy(self, i: int, image: np.ndarray, order: str, coef: np.ndarray) -> None:
        """Model-sized ``image`` into slot ``i``, no resampling."""
        if order == "mono":
            _mono_nb(image if image.ndim == 2 else image[:, :, 0], coef, self._dst(i))
        else:
            _colour_nb(image, self._perm[order], self._luma[order], coef, self._dst(i))

    def fill(self, i: int, image: np.ndarray, pixel_format: str = "",
             roi: Roi | None = None) -> None:
        """Preprocess one frame (or a region of it) into slot ``i`` of :attr:`buffer`.

        Parameters
        ----------
        i
            Slot (view index in the frame-set).
        image
            ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` uint8/uint16 (may be read-only).
        pixel_format
            The frame's pixel format (see module docstring).
        roi
            ``(x0, y0, w, h)`` frame pixels to resample to the model input (stretch or
            letterbox per manifest; letterbox with ``resize: none``); may reach beyond the
            frame (padded with the normalised value 0). ``None``: the whole frame.

        Raises
        ------
        ValueError
            Wrong size (``resize: none`` without a ROI), dtype or pixel format, or an empty
            ROI (the slot is then left unchanged).
        """
        spec = self.spec
        fh, fw = image.shape[:2]
        mw, mh = spec.width, spec.height
        if roi is None and (fh, fw) != (mh, mw) and spec.resize == "none":
            raise ValueError(
                f"frame is {fw}×{fh}, the model needs {mw}×{mh} (input.resize: none)"
            )
        order, bits = parse_pixel_format(pixel_format, image)
        coef = self._coef_for(bits)
        if roi is None:
            if (fh, fw) == (mh, mw):
                self._copy(i, image, order, coef)
                self.transforms[i] = (1.0, 0.0, 1.0, 0.0)
                return
            roi = (0, 0, fw, fh)
        if len(roi) != 4 or not all(math.isfinite(float(v)) for v in roi) or not (
                roi[2] > 0 and roi[3] > 0):
            raise ValueError(f"roi must be (x0, y0, w, h) with w, h > 0, got {tuple(roi)}")
        ax, bx, ay, by = region_transform(roi, (mw, mh), self._roi_mode)
        if (ax == 1.0 and ay == 1.0 and bx.is_integer() and by.is_integer() and bx >= 0
                and by >= 0 and bx + mw <= fw and by + mh <= fh):  # a native-size crop
            x, y = int(bx), int(by)
            self._copy(i, image[y:y + mh, x:x + mw], order, coef)
        else:
            x0, y0, w, h = (float(v) for v in roi)
            geom = np.array([ax, bx, ay, by,
                             max(x0, 0.0) - 0.5, min(x0 + w, float(fw)) - 0.5,
                             max(y0, 0.0) - 0.5, min(y0 + h, float(fh)) - 0.5])
            src = image if image.ndim == 3 else image[:, :, None]
            _resample_nb(src, self._perm[order], self._luma[order], coef, geom, self._dst(i))
        self.transforms[i] = (ax, bx, ay, by)

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) the kernels for read-only 8- and 16-bit mono
        frames (as received), whole, cropped and resampled; slot 0 is left zeroed."""
        w, h = self.spec.width, self.spec.height
        for dtype, fmt in ((np.uint8, "Mono8"), (np.uint16, "Mono16")):
            img = np.zeros((h + 2, w + 2), dtype)
            img.setflags(write=False)
            whole = np.zeros((h, w), dtype)
            whole.setflags(write=False)
            for roi in (None, (1, 1, w, h), (0.5, 0.0, w + 1.0, h + 1.0)):
                self.fill(0, whole if roi is None else img, fmt, roi)
        self.blank(0)

    def blank(self, i: int) -> None:
        """Zero slot ``i`` (a view that could not be read)."""
        self.buffer[i] = 0.0
        self.transforms[i] = (1.0, 0.0, 1.0, 0.0)

    def batch(self, n: int) -> np.ndarray:
        """The first ``n`` slots (a view of :attr:`buffer`)."""
        return self.buffer[:n]

    def __call__(self, images: list[np.ndarray], pixel_formats: list[str]) -> np.ndarray:
        """Fill slots ``0..n-1`` and return the batch view (raises on the first bad frame)."""
        for i, (img, fmt) in enumerate(zip(images, pixel_formats, strict=True)):
            self.fill(i, img, fmt)
        return self.batch(len(images))

    def to_frame_pixels(self, points: np.ndarray) -> np.ndarray:
        """Map keypoints of slots ``0..N-1`` from model-input pixels to full-frame pixels,
        in place, with each slot's transform from its last :meth:`fill`.

        Parameters
        ----------
        points
            ``(N, J, 3)`` float x, y, confidence (``N`` ≤ batch; NaN stays NaN).

        Returns
        -------
        np.ndarray
            ``points``.
        """
        n = points.shape[0]
        if points.ndim != 3 or points.shape[2] < 2 or n > len(self.transforms):
            raise ValueError(f"points must be (N ≤ {len(self.transforms)}, J, 3), "
                             f"got {points.shape}")
        t = self.transforms[:n]
        points[..., 0] = points[..., 0] * t[:, 0:1] + t[:, 1:2]
        points[..., 1] = points[..., 1] * t[:, 2:3] + t[:, 3:4]
        return points
