"""Camera frames → the model's float32 input batch, in place.

A frame is ``(H, W)`` mono or ``(H, W, 3)`` colour, uint8 or uint16; its ``pixel_format``
(GenICam names, case-insensitive: ``Mono8``, ``Mono12``, ``RGB8``, ``BGR8``…; empty: guess
from the shape) says how to read it. uint16 pixels of an ``N``-bit format are first brought
to the 8-bit range (× 255 / (2^N - 1)); then channel ``c`` gets
``(v * scale - mean[c]) / std[c]`` (manifest ``input``). Mono frames fill every channel of a
3-channel model; colour frames are reordered to the model's RGB/BGR, or turned to grey
(ITU-R 601 luma) for a mono model.

Only ``resize: none`` is supported so far: a frame must have the model's exact size.
"""

from __future__ import annotations

import re

import numba as nb
import numpy as np

from livepose.inference.manifest import InputSpec, ModelError

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # R, G, B
_FORMAT = re.compile(r"^(mono|rgb|bgr)(\d+)?(p|packed)?$")


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
    """

    def __init__(self, spec: InputSpec, batch: int) -> None:
        if spec.resize != "none":
            raise ModelError(
                f"manifest input.resize: {spec.resize!r} is not supported yet; use 'none' "
                f"(frames must be {spec.width}×{spec.height})"
            )
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self.spec = spec
        c, h, w = spec.channels, spec.height, spec.width
        shape = (batch, c, h, w) if spec.layout == "NCHW" else (batch, h, w, c)
        self.buffer = np.zeros(shape, dtype=np.float32)
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
        }
        self._luma = {"rgb": _LUMA, "bgr": _LUMA[::-1].copy()}
        if spec.color == "mono" and c == 3:
            for k in self._perm:
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

    def fill(self, i: int, image: np.ndarray, pixel_format: str = "") -> None:
        """Preprocess one frame into slot ``i`` of :attr:`buffer`.

        Parameters
        ----------
        i
            Slot (view index in the frame-set).
        image
            ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` uint8/uint16 (may be read-only).
        pixel_format
            The frame's pixel format (see module docstring).

        Raises
        ------
        ValueError
            Wrong size, dtype or pixel format (the slot is then left unchanged).
        """
        spec = self.spec
        if image.shape[:2] != (spec.height, spec.width):
            raise ValueError(
                f"frame is {image.shape[1]}×{image.shape[0]}, the model needs "
                f"{spec.width}×{spec.height} (input.resize: none)"
            )
        order, bits = parse_pixel_format(pixel_format, image)
        coef = self._coef_for(bits)
        if order == "mono":
            _mono_nb(image if image.ndim == 2 else image[:, :, 0], coef, self._dst(i))
        else:
            _colour_nb(image, self._perm[order], self._luma[order], coef, self._dst(i))

    def blank(self, i: int) -> None:
        """Zero slot ``i`` (a view that could not be read)."""
        self.buffer[i] = 0.0

    def batch(self, n: int) -> np.ndarray:
        """The first ``n`` slots (a view of :attr:`buffer`)."""
        return self.buffer[:n]

    def __call__(self, images: list[np.ndarray], pixel_formats: list[str]) -> np.ndarray:
        """Fill slots ``0..n-1`` and return the batch view (raises on the first bad frame)."""
        for i, (img, fmt) in enumerate(zip(images, pixel_formats, strict=True)):
            self.fill(i, img, fmt)
        return self.batch(len(images))


def to_frame_pixels(points: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Map keypoints from model-input pixels to full-frame pixels, in place.

    ``points`` is ``(..., 3)`` (x, y, confidence). With ``resize: none`` the two coincide.
    """
    if spec.resize != "none":
        raise NotImplementedError(f"input.resize {spec.resize!r}")
    return points
