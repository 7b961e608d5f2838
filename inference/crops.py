"""3D-guided crops: where to look in each view, from the fused 3D pose.

A camera far from a small animal sees it at a few percent of the frame; resizing the whole
frame to the model input shrinks it below what the model was trained on. With
``model.crop.enabled`` the worker keeps the latest fused poses (fusion's ``pose3d`` stream),
predicts the pose at the frame-set's time (constant velocity from the last two poses),
projects it into every camera (:class:`~livepose.core.camera.CameraGroup`, distortion included),
and cuts a crop of ``model.crop.size`` frame pixels (default: the model input size, i.e.
native resolution) centred on the projected keypoints' bounding box grown by ``margin``.
A box that does not fit makes the crop grow (keeping its aspect; the preprocessor then
resamples it to the model input); a crop is moved inside the frame (clamped), and never
exceeds it.

A view falls back to the full frame (resized) when the track is lost. Reasons, counted:

- ``no_pose``: no fused pose received yet;
- ``stale``: the last pose is more than ``max_age_s`` from the frame-set (frame time);
- ``few_keypoints``: fewer than ``min_keypoints`` keypoints of the pose are known;
- ``outside``: fewer than ``min_keypoints`` of them project inside this view's frame;
- ``size_mismatch``: the frame's size differs from the calibration's for this camera.

Times are frame times, ``frame_id / fps`` (plus a pose's ``lead_ns``), like fusion's.
Nothing here blocks or allocates more than a few small arrays per frame-set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from livepose.core.calibration import read_calibration
from livepose.core.camera import CameraGroup
from livepose.core.config import Config
from livepose.core.errors import UserError

REASONS = ("no_pose", "stale", "few_keypoints", "outside", "size_mismatch")
"""Why a view was given the full frame."""

Box = tuple[int, int, int, int]
"""``(x0, y0, w, h)`` frame pixels: columns ``x0 … x0 + w - 1``, rows ``y0 … y0 + h - 1``."""


def place_crop(
    uv: np.ndarray, frame_size: tuple[int, int], crop_size: tuple[int, int], margin: float
) -> Box:
    """The crop around projected keypoints.

    Parameters
    ----------
    uv
        ``(K, 2)`` pixel positions (finite, ``K >= 1``).
    frame_size
        ``(width, height)`` of the frame.
    crop_size
        ``(width, height)`` of the crop before it grows.
    margin
        Pixels added on every side of the bounding box of ``uv``.

    Returns
    -------
    Box
        Integer ``(x0, y0, w, h)`` inside the frame: centred on the box (pixel centres:
        pixel ``k`` covers ``[k - 0.5, k + 0.5]``) unless that would leave the frame; ``w,
        h`` = ``crop_size``, grown by one factor for both axes when the box plus margin
        does not fit, each capped at the frame.
    """
    fw, fh = frame_size
    lo = uv.min(axis=0) - margin
    hi = uv.max(axis=0) + margin
    cw, ch = crop_size
    grow = max(1.0, (hi[0] - lo[0]) / cw, (hi[1] - lo[1]) / ch)
    w = min(fw, math.ceil(cw * grow - 1e-9))
    h = min(fh, math.ceil(ch * grow - 1e-9))
    cx, cy = 0.5 * (lo[0] + hi[0]), 0.5 * (lo[1] + hi[1])
    x0 = min(max(round(cx - 0.5 * (w - 1)), 0), fw - w)
    y0 = min(max(round(cy - 0.5 * (h - 1)), 0), fh - h)
    return int(x0), int(y0), int(w), int(h)


class PoseTrack:
    """The latest fused poses and a constant-velocity prediction.

    Parameters
    ----------
    fps
        Frame-sets per second (frame time = ``frame_id / fps``).
    max_age_s
        A pose further than this from the predicted time is stale.
    """

    def __init__(self, fps: float, max_age_s: float) -> None:
        self.fps = float(fps)
        self.max_age_s = float(max_age_s)
        self.frame_id: int | None = None
        self._t = np.full(2, np.nan)  # previous, latest
        self._xyz: list[np.ndarray | None] = [None, None]

    def reset(self) -> None:
        """Forget every pose."""
        self.frame_id = None
        self._t[:] = np.nan
        self._xyz = [None, None]

    def update(self, frame_id: int, xyz: np.ndarray, lead_ns: int = 0) -> bool:
        """Take a fused pose ``xyz`` ``(J, 3)`` (NaN = unknown). A pose older than the latest
        is ignored (False) unless it is so much older that acquisition restarted."""
        if self.frame_id is not None and frame_id <= self.frame_id:
            if (self.frame_id - frame_id) / self.fps <= self.max_age_s:
                return False
            self.reset()
        t = frame_id / self.fps + lead_ns * 1e-9
        xyz = np.array(xyz, dtype=np.float64)
        if self._xyz[1] is not None and self._xyz[1].shape != xyz.shape:
            self.reset()
        self._t[0], self._t[1] = self._t[1], t
        self._xyz[0], self._xyz[1] = self._xyz[1], xyz
        self.frame_id = frame_id
        return True

    def velocity(self) -> np.ndarray | None:
        """``(J, 3)`` mm/s from the last two poses (0 where either is unknown); ``None``
        when there is no usable pair."""
        a, b = self._xyz
        dt = self._t[1] - self._t[0]
        if a is None or b is None or not 0.0 < dt <= self.max_age_s:
            return None
        v = (b - a) / dt
        v[~np.isfinite(v)] = 0.0
        return v

    def predict(self, frame_id: int) -> tuple[np.ndarray | None, str | None]:
        """The pose ``(J, 3)`` at frame ``frame_id``'s time, or ``(None, reason)``
        (``no_pose`` or ``stale``)."""
        xyz = self._xyz[1]
        if xyz is None:
            return None, "no_pose"
        dt = frame_id / self.fps - self._t[1]
        if abs(dt) > self.max_age_s:
            return None, "stale"
        v = self.velocity()
        return (xyz if v is None else xyz + v * dt), None


@dataclass(slots=True)
class CropPlan:
    """Regions for one frame-set.

    Attributes
    ----------
    rois
        Per view ``(x0, y0, w, h)``: the crop, or the whole frame.
    reasons
        Per view ``None`` (cropped) or why it got the whole frame (:data:`REASONS`).
    """

    rois: list[Box] = field(default_factory=list)
    reasons: list[str | None] = field(default_factory=list)


class CropPlanner:
    """Plans the crops of every frame-set from the fused pose stream.

    Parameters
    ----------
    cameras
        The calibrated cameras, in the order of the frame-set's views.
    crop_size
        ``(width, height)`` frame pixels.
    margin, max_age_s, min_keypoints
        See ``model.crop`` (:class:`~livepose.core.config.CropConfig`).
    fps
        Frame-sets per second.

    Attributes
    ----------
    counters
        ``crops`` and ``full_frame_fallbacks`` (views), ``fallback/<reason>`` (views),
        ``late_poses`` (poses older than the latest, ignored).
    """

    def __init__(self, cameras: CameraGroup, crop_size: tuple[int, int], margin: float,
                 max_age_s: float, min_keypoints: int, fps: float) -> None:
        self.cameras = cameras
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.margin = float(margin)
        self.min_keypoints = int(min_keypoints)
        self.track = PoseTrack(fps, max_age_s)
        self.counters: dict[str, int] = {"crops": 0, "full_frame_fallbacks": 0,
                                         "late_poses": 0}
        self.counters.update({f"fallback/{r}": 0 for r in REASONS})
        cameras.project(np.zeros((1, 3)))  # compile (or load) the projection kernel now

    @classmethod
    def from_config(cls, cfg: Config, calibration: str | None,
                    model_size: tuple[int, int]) -> CropPlanner:
        """The planner of ``cfg.model.crop`` for ``cfg``'s cameras.

        Parameters
        ----------
        cfg
            The run's config.
        calibration
            The calibration TOML fusion uses (the supervisor passes the sim rig's);
            ``None``: ``cfg.calibration``.
        model_size
            ``(width, height)`` of the model input: the default crop size.

        Raises
        ------
        UserError
            No calibration, or one that lacks a configured camera.
        """
        path = calibration or (str(cfg.calibration) if cfg.calibration else None)
        if not path:
            raise UserError("model.crop.enabled needs a calibration (config 'calibration', "
                            "or the sim rig's, passed by the supervisor)")
        cameras = read_calibration(path, cfg.camera_names)
        c = cfg.model.crop
        return cls(cameras, c.size or model_size, c.margin, c.max_age_s, c.min_keypoints,
                   cfg.fps)

    def update(self, frame_id: int, xyz: np.ndarray, lead_ns: int = 0) -> None:
        """Take a fused pose (``pose3d``'s ``frame_id``, ``xyz`` ``(J, 3)``, ``lead_ns``)."""
        if not self.track.update(frame_id, xyz, lead_ns):
            self.counters["late_poses"] += 1

    def plan(self, frame_id: int, frame_sizes: Sequence[tuple[int, int]]) -> CropPlan:
        """Regions for frame-set ``frame_id`` whose views have ``frame_sizes`` ``(w, h)``
        (one per camera, in camera order)."""
        if len(frame_sizes) != len(self.cameras):
            raise ValueError(f"{len(frame_sizes)} frames for {len(self.cameras)} cameras")
        out = CropPlan()
        xyz, reason = self.track.predict(frame_id)
        known = np.empty((0, 3))
        if xyz is not None:
            known = xyz[np.isfinite(xyz).all(axis=1)]
            if len(known) < self.min_keypoints:
                xyz, reason = None, "few_keypoints"
        for cam, (fw, fh) in zip(self.cameras, frame_sizes, strict=True):
            view_reason = reason
            roi: Box | None = None
            if xyz is not None:
                if cam.size != (fw, fh):
                    view_reason = "size_mismatch"
                else:
                    uv = cam.project(known)
                    uv = uv[np.isfinite(uv).all(axis=1)]
                    inside = ((uv[:, 0] >= -0.5) & (uv[:, 0] <= fw - 0.5)
                              & (uv[:, 1] >= -0.5) & (uv[:, 1] <= fh - 0.5))
                    if np.count_nonzero(inside) < self.min_keypoints:
                        view_reason = "outside"
                    else:
                        roi = place_crop(uv, (fw, fh), self.crop_size, self.margin)
            if roi is None:
                assert view_reason is not None
                out.rois.append((0, 0, int(fw), int(fh)))
                out.reasons.append(view_reason)
                self.counters["full_frame_fallbacks"] += 1
                self.counters[f"fallback/{view_reason}"] += 1
            else:
                out.rois.append(roi)
                out.reasons.append(None)
                self.counters["crops"] += 1
        return out
