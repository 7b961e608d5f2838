"""Calibration checked during every run: each camera's reprojection residual against the
fused pose, tracked over time, raises a warning naming a camera that drifted (bumped, zoom
changed) and by how much.

Per frame-set and camera, the residual is the median over keypoints of the observed 2D
point minus the reprojection of the triangulated point (a vector, px). A bumped camera
shifts all its points the same way, so this median moves; noise averages out. It is smoothed
with a time constant of ``tau_s``; the first ``baseline_s`` of the run set each camera's
baseline (what the calibration leaves): the median of its per-frame-set residuals then, so
that a few wild first samples (a track just born, not settled) do not shift it. A camera whose smoothed residual moves farther than
``threshold_px`` from its baseline, and is the one that moved most, for ``hold_s``, is named
once in a :class:`DriftEvent` (again only after it came back under half the threshold).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from livepose.core.camera import CameraGroup

MIN_CONF = 0.3
MIN_POINTS = 3


@dataclass(frozen=True)
class DriftEvent:
    """A camera's calibration no longer matches the others."""

    camera: str
    frame_id: int
    shift_px: float
    angle_deg: float
    """The shift as a rotation of the camera (shift / focal length)."""

    def info(self) -> dict[str, float | int]:
        """The event as fusion's health ``info["drift"][camera]`` (the dashboard's banner)."""
        return {"shift_px": round(self.shift_px, 2), "angle_deg": round(self.angle_deg, 3),
                "frame_id": self.frame_id}

    @property
    def message(self) -> str:
        return (f"calibration drift: camera {self.camera} moved {self.shift_px:.1f} px "
                f"(≈ {self.angle_deg:.2f}°) from the others since the start of the run "
                f"(frame {self.frame_id}); recalibrate it")


class DriftMonitor:
    """Tracks every camera's residual against the fused pose.

    Parameters
    ----------
    cameras
        The calibration (``C`` cameras).
    fps
        Frame rate (turns frame ids into time).
    threshold_px, tau_s, baseline_s, hold_s
        See the module docstring.
    period_s
        At most one frame-set per period is looked at (the others return at once).
    """

    def __init__(self, cameras: CameraGroup, fps: float, threshold_px: float = 3.0,
                 tau_s: float = 0.4, baseline_s: float = 3.0, hold_s: float = 0.25,
                 period_s: float = 0.1) -> None:
        self.period = float(period_s)
        self.cameras = cameras
        self.names = list(cameras.names)
        self.fps = float(fps)
        self.threshold = float(threshold_px)
        self.tau = float(tau_s)
        self.baseline_s = float(baseline_s)
        self.hold_s = float(hold_s)
        self.focal = np.array([0.5 * (c.matrix[0, 0] + c.matrix[1, 1]) for c in cameras])
        C = len(self.names)
        self.smooth = np.full((C, 2), np.nan)
        self.base_samples: list[list[np.ndarray]] = [[] for _ in range(C)]
        self.base = np.full((C, 2), np.nan)
        self.t0: float | None = None
        self.t_last: float | None = None
        self.over_since = np.full(C, np.nan)
        self.latched = np.zeros(C, bool)
        self.drift_px = np.zeros(C)
        self.events: list[DriftEvent] = []

    def restart(self) -> None:
        """Start a new baseline from the next frame-set (the 2D now comes from another
        model: its residuals have another bias, not a moved camera). A named camera stays
        named."""
        C = len(self.names)
        self.smooth = np.full((C, 2), np.nan)
        self.base_samples = [[] for _ in range(C)]
        self.base = np.full((C, 2), np.nan)
        self.t0 = self.t_last = None
        self.over_since = np.full(C, np.nan)
        self.drift_px = np.zeros(C)

    def due(self, frame_id: int) -> bool:
        """Whether :meth:`update` would look at this frame-set (at most one per period), so a
        caller can skip preparing its sample."""
        t = frame_id / self.fps
        return self.t_last is None or t >= self.t_last + self.period - 0.5 / self.fps

    def update(self, frame_id: int, points: np.ndarray, xyz: np.ndarray) -> None:
        """One frame-set: ``points`` ``(C, J, 3)`` observed x, y, confidence; ``xyz``
        ``(J, 3)`` the triangulation. New events are appended to :attr:`events`."""
        t = frame_id / self.fps
        if self.t0 is None:
            self.t0 = t
        if not self.due(frame_id):
            return  # late, or too soon after the last one
        dt = 0.0 if self.t_last is None else t - self.t_last
        self.t_last = t
        ok3 = np.all(np.isfinite(xyz), axis=1)
        if ok3.sum() < MIN_POINTS:
            return
        alpha = 1.0 - math.exp(-dt / self.tau) if dt > 0 else 1.0
        in_base = t - self.t0 < self.baseline_s
        for c, cam in enumerate(self.cameras):
            obs = points[c]
            use = ok3 & np.isfinite(obs[:, 0]) & (obs[:, 2] >= MIN_CONF)
            if use.sum() < MIN_POINTS:
                continue
            r = obs[use, :2] - cam.project(xyz[use])
            m = np.median(r, axis=0)
            if not np.all(np.isfinite(m)):
                continue
            s = self.smooth[c]
            self.smooth[c] = m if np.isnan(s[0]) else s + alpha * (m - s)
            if in_base:
                self.base_samples[c].append(m)
        if in_base:
            return
        for c, samples in enumerate(self.base_samples):
            if samples:  # the baseline closes: each camera's median residual
                self.base[c] = np.median(np.array(samples), axis=0)
                samples.clear()
        d = np.linalg.norm(self.smooth - self.base, axis=1)
        d = np.where(np.isfinite(d), d, 0.0)
        self.drift_px = d
        worst = int(np.argmax(d))
        for c in range(len(self.names)):
            if d[c] > self.threshold and c == worst:
                if np.isnan(self.over_since[c]):
                    self.over_since[c] = t
                if not self.latched[c] and t - self.over_since[c] >= self.hold_s:
                    self.latched[c] = True
                    self.events.append(DriftEvent(
                        camera=self.names[c], frame_id=int(frame_id), shift_px=float(d[c]),
                        angle_deg=math.degrees(math.atan(d[c] / self.focal[c]))))
            else:
                self.over_since[c] = np.nan
                if d[c] < 0.5 * self.threshold:
                    self.latched[c] = False

    def pop_events(self) -> list[DriftEvent]:
        """The events since the last call."""
        ev, self.events = self.events, []
        return ev
