"""The first stage of a two-stage model: an SSD detector's raw outputs → detections.

MediaPipe's ``SsdAnchorsCalculator``, ``TensorsToDetectionsCalculator`` and weighted
non-maximum suppression, driven by the manifest's ``detector`` section
(:class:`~livepose.inference.manifest.DetectorSpec`). A detection is one row
``(xmin, ymin, xmax, ymax, kp0x, kp0y, …, score)`` in coordinates normalised to the detector
input (0..1), later to the full frame (:func:`remove_letterbox`).
"""

from __future__ import annotations

import math

import numpy as np

from livepose.inference.manifest import AnchorSpec, DetectorSpec


def generate_anchors(spec: AnchorSpec, input_size: int) -> np.ndarray:
    """SSD anchor centres, as MediaPipe's ``SsdAnchorsCalculator`` with fixed anchor size.

    Parameters
    ----------
    spec
        The anchor options.
    input_size
        The detector's (square) input side, pixels.

    Returns
    -------
    np.ndarray
        ``(A, 2)`` float32 normalised ``(x, y)`` centres, in the order y, x, anchor of
        each layer group (layers with equal strides share a grid).
    """
    strides, n = spec.strides, spec.num_layers
    per_ratio = len(spec.aspect_ratios) + (1 if spec.interpolated_scale_aspect_ratio > 0 else 0)
    out = []
    layer = 0
    while layer < n:
        last = layer
        per_loc = 0
        while last < n and strides[last] == strides[layer]:
            per_loc += per_ratio
            last += 1
        fm = math.ceil(input_size / strides[layer])
        ys, xs = np.meshgrid(np.arange(fm), np.arange(fm), indexing="ij")
        c = np.stack([(xs + spec.offset_x) / fm, (ys + spec.offset_y) / fm], -1)
        out.append(np.repeat(c.reshape(-1, 2), per_loc, axis=0))
        layer = last
    return np.concatenate(out).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(x, -80.0, 80.0))))


def decode_ssd(
    raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, spec: DetectorSpec
) -> np.ndarray:
    """One image's SSD outputs → the detections above ``spec.min_score``.

    Parameters
    ----------
    raw_boxes
        ``(A, 4 + 2K)``: box centre and size (``box_order``), then ``K`` keypoints ``(x, y)``;
        ``value / box_scale`` is in units of the input side, centres and keypoints relative
        to the anchor centre (MediaPipe's ``x_scale``…).
    raw_scores
        ``(A,)`` or ``(A, 1)``.
    anchors
        ``(A, 2)`` from :func:`generate_anchors`.

    Returns
    -------
    np.ndarray
        ``(M, 5 + 2K)`` float32, normalised to the detector input.
    """
    k = spec.keypoints
    s = raw_scores.reshape(-1).astype(np.float64)
    if spec.score_activation == "sigmoid":
        s = _sigmoid(np.clip(s, -spec.score_clip, spec.score_clip))
    keep = s >= spec.min_score
    rb = raw_boxes[keep].astype(np.float64) / spec.box_scale
    an = anchors[keep]
    if spec.box_order == "xywh":
        xc, yc, w, h = rb[:, 0], rb[:, 1], rb[:, 2], rb[:, 3]
    else:
        yc, xc, h, w = rb[:, 0], rb[:, 1], rb[:, 2], rb[:, 3]
    xc, yc = xc + an[:, 0], yc + an[:, 1]
    kp = rb[:, 4:4 + 2 * k].reshape(-1, k, 2) + an[:, None, :]
    if spec.box_order == "yxhw":
        kp = kp[:, :, ::-1]
    boxes = np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], -1)
    return np.concatenate([boxes, kp.reshape(-1, 2 * k), s[keep, None]], 1).astype(np.float32)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``(4,)`` box against ``(M, 4)`` boxes (xmin, ymin, xmax, ymax)."""
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(dets: np.ndarray, iou: float, weighted: bool = True) -> np.ndarray:
    """Non-maximum suppression; best first.

    With ``weighted`` (MediaPipe's ``WEIGHTED``) each cluster (IoU > ``iou`` with its best
    box) becomes the score-weighted mean of its boxes and keypoints, with the best score.

    Parameters
    ----------
    dets
        ``(M, D)`` detections, score last.

    Returns
    -------
    np.ndarray
        ``(M', D)`` float32, by descending score.
    """
    rest = dets[np.argsort(-dets[:, -1], kind="stable")]
    out = []
    while len(rest):
        near = _iou(rest[0, :4], rest[:, :4]) > iou
        merged = rest[0].copy()
        cl = rest[near]
        if weighted and len(cl):
            wts = cl[:, -1:]
            merged[:-1] = (cl[:, :-1] * wts).sum(0) / wts.sum()
        out.append(merged)
        rest = rest[~near]
    return np.array(out, np.float32).reshape(-1, dets.shape[1])


def letterbox_pad(width: int, height: int) -> tuple[float, float]:
    """Normalised letterbox padding ``(pad_x, pad_y)`` on each side of a frame centred in
    a square of its long side."""
    side = float(max(width, height))
    return (1.0 - width / side) / 2.0, (1.0 - height / side) / 2.0


def remove_letterbox(dets: np.ndarray, pad: tuple[float, float]) -> np.ndarray:
    """Detections normalised to the letterboxed input → normalised to the frame."""
    px, py = pad
    out = dets.copy()
    n = dets.shape[1] - 1
    out[:, 0:n:2] = (dets[:, 0:n:2] - px) / (1.0 - 2 * px)
    out[:, 1:n:2] = (dets[:, 1:n:2] - py) / (1.0 - 2 * py)
    return out


class SsdDecoder:
    """Decoder of one detector (anchors made once).

    Parameters
    ----------
    spec
        The manifest's ``detector`` section.
    """

    def __init__(self, spec: DetectorSpec) -> None:
        self.spec = spec
        self.anchors = generate_anchors(spec.anchors, spec.input.width)

    def __call__(
        self, boxes: np.ndarray, scores: np.ndarray, frame_size: tuple[int, int]
    ) -> np.ndarray:
        """One image's outputs → detections normalised to the frame, best first.

        Parameters
        ----------
        boxes, scores
            ``(A, 4 + 2K)`` and ``(A, 1)`` raw outputs.
        frame_size
            ``(width, height)`` of the frame that was letterboxed into the input.

        Returns
        -------
        np.ndarray
            ``(M, 5 + 2K)`` float32.
        """
        if boxes.shape[0] != len(self.anchors):
            raise ValueError(f"detector output has {boxes.shape[0]} boxes, anchors "
                             f"{len(self.anchors)} (manifest detector.anchors)")
        dets = decode_ssd(boxes, scores, self.anchors, self.spec)
        dets = nms(dets, self.spec.nms_iou, self.spec.nms == "weighted")
        return remove_letterbox(dets, letterbox_pad(*frame_size))
