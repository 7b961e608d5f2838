"""Rotated regions of interest for two-stage models: the ROI rule, the crop, and back.

A ROI is ``(cx, cy, w, h, angle)``: centre and size in frame pixels, angle in radians
(image y down; the crop's local offset ``(u - 0.5, v - 0.5)`` in ROI units maps to the frame
through ``R(angle) = [[c, -s], [s, c]]``), MediaPipe's convention. The crop maps the ROI's
corners onto the corners ``(0, 0)…(size, size)`` of the model input, sampled bilinearly
(OpenCV ``warpAffine`` convention: integer coordinates are pixel centres).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numba as nb
import numpy as np

from livepose.inference.manifest import InputSpec, OneEuroSpec, RoiSpec
from livepose.inference.preprocess import parse_pixel_format

Roi = tuple[float, float, float, float, float]


def roi_from_points(p0: np.ndarray, p1: np.ndarray, spec: RoiSpec) -> Roi:
    """The ROI from two alignment points (MediaPipe's ``AlignmentPointsRects`` followed by
    ``RectTransformation`` with ``square_long`` and ``scale``).

    Parameters
    ----------
    p0, p1
        ``(2,)`` frame pixels: centre and scale point.

    Returns
    -------
    Roi
        Size ``2·|p1 − p0|·scale`` (square), rotated so that ``p1 − p0`` points at
        ``target_angle_deg`` (0 without a target).
    """
    d = np.asarray(p1, np.float64) - np.asarray(p0, np.float64)
    size = 2.0 * float(np.hypot(d[0], d[1])) * spec.scale
    if spec.target_angle_deg is None:
        ang = 0.0
    else:
        ang = math.radians(spec.target_angle_deg) - math.atan2(-d[1], d[0])
        ang -= 2 * math.pi * math.floor((ang + math.pi) / (2 * math.pi))
    return (float(p0[0]), float(p0[1]), size, size, ang)


def letterbox_roi(width: int, height: int) -> Roi:
    """The whole frame centred in a square of its long side (a detector's letterbox)."""
    side = float(max(width, height))
    return (width / 2.0, height / 2.0, side, side, 0.0)


def crop_matrix(roi: Roi, out_w: int, out_h: int) -> np.ndarray:
    """``(2, 3)`` affine map from frame pixels to crop pixels (ROI corners → crop corners)."""
    cx, cy, w, h, a = roi
    c, s = math.cos(a), math.sin(a)
    sx, sy = out_w / w, out_h / h
    m = np.array([[sx * c, sx * s, 0.0], [-sy * s, sy * c, 0.0]])
    m[:, 2] = np.array([out_w / 2.0, out_h / 2.0]) - m[:, :2] @ np.array([cx, cy])
    return m


def to_frame(xy_norm: np.ndarray, roi: Roi) -> np.ndarray:
    """Crop coordinates normalised to 0..1 ``(K, 2)`` → frame pixels ``(K, 2)`` (inverse
    of :func:`crop_matrix`; MediaPipe's ``LandmarkProjectionCalculator``)."""
    cx, cy, w, h, a = roi
    c, s = math.cos(a), math.sin(a)
    u, v = (xy_norm[:, 0] - 0.5) * w, (xy_norm[:, 1] - 0.5) * h
    return np.stack([cx + c * u - s * v, cy + s * u + c * v], -1)


@nb.njit(cache=True, nogil=True)
def _tap(src: np.ndarray, y: int, x: int, k: int, replicate: bool) -> float:
    h, w, _ = src.shape
    if replicate:
        y = min(max(y, 0), h - 1)
        x = min(max(x, 0), w - 1)
    elif y < 0 or y >= h or x < 0 or x >= w:
        return 0.0
    return float(src[y, x, k])


@nb.njit(cache=True, nogil=True)
def _warp_nb(
    src: np.ndarray, inv: np.ndarray, perm: np.ndarray, coef: np.ndarray, replicate: bool,
    dst: np.ndarray,
) -> None:
    """``dst[v, u, c]`` (any strides) = source channel ``perm[c]`` sampled bilinearly at
    ``inv @ (u, v, 1)``, then ``* coef[0, c] + coef[1, c]``; outside the frame: the edge
    pixel (``replicate``) or 0."""
    hm, wm, nc = dst.shape
    for v in range(hm):
        for u in range(wm):
            x = inv[0, 0] * u + inv[0, 1] * v + inv[0, 2]
            y = inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]
            x0 = math.floor(x)
            y0 = math.floor(y)
            fx = x - x0
            fy = y - y0
            for c in range(nc):
                k = perm[c]
                top = (1.0 - fx) * _tap(src, y0, x0, k, replicate) \
                    + fx * _tap(src, y0, x0 + 1, k, replicate)
                bot = (1.0 - fx) * _tap(src, y0 + 1, x0, k, replicate) \
                    + fx * _tap(src, y0 + 1, x0 + 1, k, replicate)
                dst[v, u, c] = np.float32(((1.0 - fy) * top + fy * bot) * coef[0, c] + coef[1, c])


class Cropper:
    """Writes rotated crops of frames into a model's input batch, normalised.

    Parameters
    ----------
    spec
        The model input (size, layout, colour order, normalisation).
    border
        ``replicate`` (edge pixels) or ``zero`` (pixel value 0) outside the frame.
    """

    def __init__(self, spec: InputSpec, border: str) -> None:
        self.spec = spec
        self.replicate = border == "replicate"
        scale = spec.scale
        self.coef = np.array([[scale / s for s in spec.channel_std()],
                              [-m / s for m, s in zip(spec.channel_mean(), spec.channel_std(),
                                                      strict=True)]], np.float64)

    def batch(self, n: int) -> np.ndarray:
        """A zeroed input batch for ``n`` crops, ``(n, …)`` in the model's layout."""
        s = self.spec
        shape = (n, s.height, s.width, s.channels) if s.layout == "NHWC" else \
            (n, s.channels, s.height, s.width)
        return np.zeros(shape, np.float32)

    def _slot(self, batch: np.ndarray, i: int) -> np.ndarray:
        return batch[i] if self.spec.layout == "NHWC" else batch[i].transpose(1, 2, 0)

    def fill(self, batch: np.ndarray, i: int, image: np.ndarray, pixel_format: str,
             roi: Roi) -> None:
        """Crop ``roi`` of ``image`` ``(H, W)`` or ``(H, W, 3)`` into slot ``i``.

        Raises
        ------
        ValueError
            An unsupported pixel format (:func:`parse_pixel_format`).
        """
        order, bits = parse_pixel_format(pixel_format, image)
        src = image if image.ndim == 3 else image[:, :, None]
        nc = self.spec.channels
        if order == "mono":
            perm = np.zeros(nc, np.int64)
        elif nc == 1:  # colour into a mono model: the green channel, close to luma
            perm = np.array([1], np.int64)
        else:
            want = self.spec.color if self.spec.color != "mono" else "rgb"
            perm = np.array([0, 1, 2] if want == order else [2, 1, 0], np.int64)
        coef = self.coef if bits == 8 else self.coef * np.array([[255.0 / (2**bits - 1)], [1.0]])
        m = crop_matrix(roi, self.spec.width, self.spec.height)
        inv = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))[:2]
        _warp_nb(src, inv, perm, coef, self.replicate, self._slot(batch, i))


@nb.njit(cache=True, nogil=True)
def refine_heatmap_nb(xy: np.ndarray, heat: np.ndarray, kernel: int, min_conf: float) -> None:
    """MediaPipe's ``RefineLandmarksFromHeatmapCalculator``, in place.

    Parameters
    ----------
    xy
        ``(R, 2)`` crop coordinates normalised to 0..1; each is replaced by the
        sigmoid-weighted mean cell position in the ``kernel``-wide window around it when the
        window's best confidence reaches ``min_conf``.
    heat
        ``(h, w, R)`` heatmap logits.
    """
    hh, hw, nr = heat.shape
    off = (kernel - 1) // 2
    for k in range(min(nr, xy.shape[0])):
        if not (np.isfinite(xy[k, 0]) and np.isfinite(xy[k, 1])):
            continue
        cc = int(xy[k, 0] * hw)
        cr = int(xy[k, 1] * hh)
        if cc < 0 or cc >= hw or cr < 0 or cr >= hh:
            continue
        tot = 0.0
        sx = 0.0
        sy = 0.0
        best = 0.0
        for r in range(max(0, cr - off), min(hh, cr + off + 1)):
            for c in range(max(0, cc - off), min(hw, cc + off + 1)):
                p = 1.0 / (1.0 + math.exp(-heat[r, c, k]))
                tot += p
                sx += c * p
                sy += r * p
                best = max(best, p)
        if best >= min_conf and tot > 0:
            xy[k, 0] = sx / hw / tot
            xy[k, 1] = sy / hh / tot


class OneEuro:
    """MediaPipe's One-Euro filter (``one_euro_filter.cc``), element-wise.

    Parameters
    ----------
    spec
        Cut-offs and the nominal rate.
    """

    def __init__(self, spec: OneEuroSpec) -> None:
        self.spec = spec
        self.freq = spec.rate_hz
        self.last_t: float | None = None
        self.x_raw: np.ndarray | None = None
        self.x_prev: np.ndarray | None = None
        self.dx_prev: np.ndarray | None = None

    def _alpha(self, cutoff: float | np.ndarray) -> np.ndarray:
        tau = 1.0 / (2 * math.pi * np.asarray(cutoff))
        return np.asarray(1.0 / (1.0 + tau * self.freq))

    def __call__(self, t: float, value_scale: float, value: np.ndarray) -> np.ndarray:
        """Filter ``value`` (any shape) at time ``t`` (s); ``value_scale``: 1 / object size."""
        value = np.asarray(value, np.float64)
        if self.last_t is not None and t <= self.last_t:
            return value
        if self.last_t is not None:
            self.freq = 1.0 / (t - self.last_t)
        self.last_t = t
        dval = np.zeros_like(value) if self.x_raw is None else \
            (value - self.x_raw) * value_scale * self.freq
        a_d = self._alpha(self.spec.derivate_cutoff)
        edval = dval if self.dx_prev is None else a_d * dval + (1 - a_d) * self.dx_prev
        self.dx_prev = edval
        a = self._alpha(self.spec.min_cutoff + self.spec.beta * np.abs(edval))
        out = value if self.x_prev is None else a * value + (1 - a) * self.x_prev
        self.x_raw, self.x_prev = value, out
        return out


def smooth_points(filt: OneEuro, t: float, pts: np.ndarray) -> np.ndarray:
    """Smooth two alignment points ``(2, 2)`` px; object scale = ``2·|p1 − p0|``
    (MediaPipe's ``PoseLandmarkFiltering`` of the auxiliary landmarks)."""
    scale = 2.0 * float(np.hypot(*(pts[1] - pts[0])))
    if scale < 1e-6:
        return pts
    return filt(t, 1.0 / scale, pts)


def rois_valid(rois: Sequence[Roi | None]) -> list[int]:
    """Indices of the views that have a usable ROI (finite, non-zero size)."""
    return [i for i, r in enumerate(rois)
            if r is not None and all(math.isfinite(v) for v in r) and r[2] > 1 and r[3] > 1]
