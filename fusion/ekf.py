"""Extended Kalman filter per keypoint whose measurements are the 2D observations.

Each keypoint has a 3D motion state (constant velocity, or constant acceleration:
``KalmanConfig.model``) with a full covariance; the measurements of a frame-set are its
usable 2D views (finite, confidence ≥ ``likelihood_threshold``).

**Measurement model.** A view of camera ``c`` is its pixel undistorted to normalised
coordinates ``z = (x, y)`` (exactly, through the calibrated distortion model — the same
points the triangulation uses) and ``h(p) = (X_c/Z_c, Y_c/Z_c)`` with ``X_c = R_c p + t_c``:
the pinhole projection, whose Jacobian ``H = (1/Z_c) [R₀ - x R₂; R₁ - y R₂]`` is cheap.
The noise of a view of confidence ``w`` is ``σ² = (pixel_noise_px / w)²`` (+ the ensemble
variance when given), divided by ``f_x²`` and ``f_y²`` into normalised units (the local
scale of the distortion is neglected: a few percent at the image corners).

**Step** (frame interval ``dt``):

1. predict ``x ← F x``, ``P ← F P Fᵀ + Q`` (the linear filter's white-acceleration or
   white-jerk model, per axis);
2. gate: every view's squared Mahalanobis distance ``d² = νᵀ S⁻¹ ν`` (``ν = z - h(x⁻)``,
   ``S = H P⁻ Hᵀ + R``) against the *prediction*; a view with ``d > ekf.gate_sigma`` is
   dropped (reported in ``gated``);
3. update once with all accepted views together, in information form: every view's
   Jacobian and innovation, taken at the *prediction* (one linearisation point, no
   re-linearisation between views), are summed into ``Hᵀ R⁻¹ H`` and ``Hᵀ R⁻¹ ν``, and the
   posterior is ``P⁺ = (P⁻⁻¹ + Hᵀ R⁻¹ H)⁻¹``, ``x⁺ = x⁻ + P⁺ Hᵀ R⁻¹ ν``
   (:func:`~livepose.fusion.ekf_model_nb._batch_update`). A view with
   ``d > ekf.inflate_sigma`` has its variance multiplied by ``(d / inflate_sigma)²`` first (a
   Huber-like down-weighting). One view constrains the two directions across its ray, so a
   keypoint seen by a single camera is pulled onto that ray while its depth keeps the
   prediction (and its variance).

**Consensus.** Before the gate, the triangulation of the same views (valid when ≥
``min_views`` views agree within ``reproj_threshold_px``) is compared with the prediction.
If it disagrees (Mahalanobis distance > ``ekf.gate_sigma``) for less than
``ekf.consensus_after_frames``, the views are gated as usual (a one-frame disagreement is
more likely outliers); if longer, the track lags a real maneuver and the triangulation's
views update it ungated; after ``kalman.reinit_after_frames`` the track restarts at the
triangulation. Delays are counted in frame-sets (converted with the run's ``fps``), so the
filter behaves the same at 30 and at 100 fps.

**Units.** The motion model's settings are in mm (``*_mm_s2`` …); ``length_scale`` (the
calibration's unit per mm: 1 for mm, 0.001 for m) converts them, so a calibration in metres
gives the same track, ×0.001, as the same calibration in mm.

**Track life.** A keypoint starts (output NaN) at the first valid triangulation: ``p`` =
that point, covariance = its variance, velocity (and acceleration) zero with
``σ = init_speed_mm_s`` (``init_accel_mm_s2``). Without accepted views it coasts (variance
grows with ``Q``); after ``max_gap_s`` without any, it is dropped (NaN) and restarts at the
next valid triangulation.

Forward prediction by ``lead`` extrapolates the state (the state does not change).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from livepose.core.camera import CameraGroup
from livepose.core.config import FusionConfig
from livepose.fusion.ekf_model_nb import ekf_predict_nb
from livepose.fusion.ekf_nb import fuse_frame_nb
from livepose.fusion.triangulate import TriangulationResult, Triangulator


@dataclass(slots=True)
class FilterOutput:
    """One frame-set through the EKF (``J`` keypoints).

    Attributes
    ----------
    xyz, var
        ``(J, 3)`` filtered positions (mm) and per-axis variances (mm²); NaN where the
        keypoint has no track.
    reproj
        ``(J,)`` float32 mean reprojection error (px) of ``xyz`` in the views used; NaN when
        none was used (coasting or no track) or not asked for (``output_reproj``).
    views, gated
        ``(J,)`` uint16 bitmasks of the views used and of the views gated out.
    raw
        The triangulation of the same frame-set.
    """

    xyz: np.ndarray
    var: np.ndarray
    reproj: np.ndarray
    views: np.ndarray
    gated: np.ndarray
    raw: TriangulationResult


class KeypointEKF:
    """The EKF of ``J`` keypoints seen by a calibrated camera group (module docstring).

    Parameters
    ----------
    cameras
        ``C`` cameras in the order of the rows of the points passed to :meth:`step`.
    n_keypoints
        ``J``.
    cfg
        Triangulation settings, ``cfg.kalman`` (motion model, ``max_gap_s``,
        ``init_speed_mm_s``, ``init_accel_mm_s2``) and ``cfg.ekf`` (gate, inflation,
        re-initialisation).
    output_reproj
        Compute :attr:`FilterOutput.reproj` (about a fifth of the filter's cost); else NaN.

    Attributes
    ----------
    state, cov
        ``(J, 9)`` and ``(J, 9, 9)``; the first ``D = 3·n`` entries are used.
    initialised
        ``(J,)`` bool.
    n_gated
        Views gated out since construction.
    """

    def __init__(
        self, cameras: CameraGroup, n_keypoints: int, cfg: FusionConfig, fps: float,
        output_reproj: bool = False, length_scale: float = 1.0,
        pixel_noise_px: float | None = None,
    ) -> None:
        J = int(n_keypoints)
        if J < 0:
            raise ValueError(f"n_keypoints must be >= 0, got {n_keypoints}")
        self.cameras = cameras
        if not fps > 0 or not length_scale > 0:
            raise ValueError(f"fps and length_scale must be > 0, got {fps}, {length_scale}")
        self.tri = Triangulator(cameras, cfg, pixel_noise_px)
        self.n_keypoints = J
        self.cfg = cfg
        self.fps = float(fps)
        self.length_scale = float(length_scale)
        k, e = cfg.kalman, cfg.ekf
        s2 = self.length_scale ** 2  # the config's mm² → the calibration's unit²
        self.order = 3 if k.model == "ca" else 2
        self.q = float(k.jerk_noise_mm_s3 if k.model == "ca" else k.accel_noise_mm_s2) * s2
        self.max_gap = float(k.max_gap_s)
        self.v0var = float(k.init_speed_mm_s) ** 2 * s2
        self.a0var = float(k.init_accel_mm_s2) ** 2 * s2
        self.gate2 = float(e.gate_sigma) ** 2
        self.infl2 = float(e.inflate_sigma) ** 2
        self.reinit_after = (np.inf if k.reinit_after_frames is None
                             else float(k.reinit_after_frames) / self.fps)
        self.consensus_after = float(e.consensus_after_frames) / self.fps
        self.state = np.zeros((J, 9))
        self.cov = np.zeros((J, 9, 9))
        self.initialised = np.zeros(J, dtype=np.bool_)
        self.since = np.zeros(J)
        self.lost = np.zeros(J)
        self.n_gated = 0
        self.output_reproj = bool(output_reproj)
        self._novar = np.zeros((1, 1, 2))

    def reset(self) -> None:
        """Forget every keypoint."""
        self.initialised[:] = False
        self.since[:] = 0.0
        self.lost[:] = 0.0

    def step(
        self, points: np.ndarray, dt: float, zvar: np.ndarray | None = None,
        run_filter: bool = True,
    ) -> FilterOutput:
        """Triangulate one frame-set and run the filter over it.

        Parameters
        ----------
        points
            ``(C, J, 3)`` x, y (distorted px), confidence; NaN = no view.
        dt
            Seconds since the previous step (>= 0).
        zvar
            Optional ``(C, J, 2)`` extra 2D variance per view (px²), e.g. an ensemble's: it
            adds to the measurement noise and weighs the triangulation (∝ 1/σ).
        run_filter
            ``False``: triangulate only (the filter state is untouched; ``xyz`` etc. are
            NaN) — for frame-sets that arrive late.

        Returns
        -------
        FilterOutput
            New arrays.
        """
        tri = self.tri
        pts = np.asarray(points)
        J = self.n_keypoints
        if pts.shape != (tri.n_cameras, J, 3):
            raise ValueError(f"points must have shape ({tri.n_cameras}, {J}, 3), got {pts.shape}")
        if pts.dtype not in (np.float32, np.float64):
            pts = pts.astype(np.float32)
        if not (pts.flags.c_contiguous and pts.flags.writeable):
            pts = np.array(pts, order="C")
        if not dt >= 0.0:
            raise ValueError(f"dt must be >= 0, got {dt}")
        if zvar is None:
            zv, use = self._novar, False
        else:
            zv, use = np.ascontiguousarray(zvar, dtype=np.float64), True
            if zv.shape != (tri.n_cameras, J, 2):
                raise ValueError(f"zvar must have shape ({tri.n_cameras}, {J}, 2), got {zv.shape}")
        raw = TriangulationResult(
            xyz=np.empty((J, 3)), reproj=np.empty(J, dtype=np.float32),
            views=np.empty(J, dtype=np.uint16), cov=np.empty((J, 3, 3)),
        )
        if run_filter:
            out = FilterOutput(
                xyz=np.empty((J, 3)), var=np.empty((J, 3)), reproj=np.empty(J, dtype=np.float32),
                views=np.zeros(J, dtype=np.uint16), gated=np.zeros(J, dtype=np.uint16), raw=raw,
            )
        else:
            out = FilterOutput(
                xyz=np.full((J, 3), np.nan), var=np.full((J, 3), np.nan),
                reproj=np.full(J, np.nan, dtype=np.float32), views=np.zeros(J, dtype=np.uint16),
                gated=np.zeros(J, dtype=np.uint16), raw=raw,
            )
        self.n_gated += fuse_frame_nb(
            pts, zv, use, tri.P, tri.K, tri.dist, tri.fisheye, tri.likelihood_threshold,
            tri.min_views, tri.reproj_threshold, tri.pixel_noise2,
            run_filter, self.state, self.cov, self.initialised, self.since, self.lost,
            self.order, float(dt), self.q, self.max_gap, self.gate2, self.infl2,
            self.reinit_after, self.consensus_after, self.v0var, self.a0var, self.output_reproj,
            raw.xyz, raw.reproj, raw.views, raw.cov,
            out.xyz, out.var, out.reproj, out.views, out.gated,
        )
        return out

    def predict_ahead(self, lead_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Positions and variances ``lead_s`` seconds after the last step, ``(J, 3)`` each
        (NaN where there is no track); the state is unchanged."""
        J = self.n_keypoints
        xyz, var = np.empty((J, 3)), np.empty((J, 3))
        ekf_predict_nb(self.state, self.cov, self.initialised, self.order, float(lead_s),
                       self.q, xyz, var)
        return xyz, var

    def warmup(self) -> None:
        """Compile (or load from numba's cache) the kernels on a throw-away state."""
        probe = KeypointEKF(self.cameras, 1, self.cfg, self.fps, self.output_reproj,
                            self.length_scale, self.tri.pixel_noise)
        pts = np.full((self.tri.n_cameras, 1, 3), np.nan, dtype=np.float32)
        for p in (pts, pts.astype(np.float64)):
            probe.step(p, 0.0)
            probe.step(p, 0.01, np.zeros((self.tri.n_cameras, 1, 2)))
            probe.step(p, 0.01, run_filter=False)
        probe.predict_ahead(0.01)
