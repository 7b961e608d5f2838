"""Config sections of the pipeline stages: sim rig, trigger, model, fusion."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from livepose.core.config._base import _Model


class FrameSetConfig(_Model):
    """The frame-set policy (docs/inference.md, "Frame-set policy"): when a set goes to the
    model without every view, when a camera is gone, and how few cameras a run survives."""

    deadline_frames: float = Field(
        0.5, gt=0, le=1000, description="a set goes out with the views it has this many frame "
        "periods after its first view arrived (replaying videos paced: seconds' worth)")
    gone_after_sets: int = Field(
        3, ge=1, le=1000, description="a camera missing from this many consecutive sets is "
        "gone (not waited for) until it delivers again")
    min_cameras: int | None = Field(
        None, ge=1, le=16, description="the run ends when fewer camera processes remain "
        "(default: fusion.min_views)")


class SimBoardConfig(_Model):
    """The sim rig's board scene (``sim.scene: board``): a calibration board moved through
    scripted poses, rendered through each camera's lens distortion (docs/calibration.md)."""

    file: Path | None = Field(None, description="board description TOML (`calibrate board`); "
                              "default: 5x7 ChArUco, 40 mm squares, 30 mm markers, DICT_4X4_50")
    poses: int = Field(60, ge=1, le=100_000, description="scripted board poses, then again")
    hold_frames: int = Field(3, ge=1, le=10_000, description="frames each pose is held")
    blur_px: float = Field(3.0, ge=0, le=50, description="largest motion blur of a pose")
    false_corners: float = Field(0.02, ge=0, le=0.5, description="fraction of seen corners "
                                 "given a false corner 3-6 px beside them")
    px_per_square: int = Field(60, ge=8, le=400, description="texture resolution")
    seed: int = 0


class SimConfig(_Model):
    """The simulated rig: an articulated rodent in a round arena, seen by the sim cameras;
    or, with ``scene: board``, a calibration board held in front of them."""

    seed: int = 0
    width: int = Field(320, ge=64, le=4096)
    height: int = Field(256, ge=64, le=4096)
    arena_diameter_mm: float = Field(400.0, gt=50)
    camera_distance_mm: float = Field(520.0, gt=100)
    camera_elevation_deg: float = Field(48.0, gt=5, lt=90)
    focal_px: float | None = Field(None, gt=10, description="default: ~0.95 × width")
    distortion_k1: float = -0.18
    noise_std: float = Field(2.0, ge=0, description="sensor noise, grey levels")
    speed_mm_s: float = Field(120.0, ge=0, description="typical running speed")
    animals: int = Field(
        1, ge=1, le=8, description="rodents in the arena (each its own path; ground-truth "
        "identities in order); more than 1 needs fusion.multi for 3D per individual"
    )
    avoid: bool = Field(
        True, description="several animals: they steer around each other's bodies (real "
        "rodents do not pass through each other); false: they can pass through each other")
    size_spread: float = Field(
        0.06, ge=0.0, le=0.3, description="several animals: body scale of animals 1.. drawn "
        "in 1 ± this (animal 0: 1), as cage-mates differ by a few percent")
    scene: Literal["animal", "board"] = Field(
        "animal", description="what the sim cameras see: the rodent, or a calibration board")
    board: SimBoardConfig = SimBoardConfig()


class TriggerConfig(_Model):
    """Where trigger pulses come from. ``software``: livepose's own clock process;
    ``serial``: a trigger box (``firmware/triggerbox``) on a serial port emits the pulses
    at ``fps`` and the cameras are hardware-triggered."""

    source: Literal["software", "serial"] = "software"
    port: str | None = Field(None, description="serial: the device, e.g. /dev/ttyACM0")
    baud: int = Field(115200, gt=0)
    pulse_width_us: int = Field(100, ge=1, le=100_000)
    timeout_s: float = Field(2.0, gt=0, description="serial: reply timeout")
    paced: bool = Field(
        False, description="software clock: hold each pulse until fusion has accounted for "
        "all but in_flight of the frame-sets already triggered (replaying videos: every "
        "frame-set processed, at the pipeline's pace; fps is then an upper bound)"
    )
    in_flight: int = Field(2, ge=1, le=64, description="paced: frame-sets in the pipeline")
    pace_timeout_s: float = Field(
        60.0, gt=0, description="paced: a pulse held this long goes out anyway (a frame-set "
        "lost with a crashed stage must not stall the replay; one released early makes the "
        "worker skip a set, counted as pace_timeouts)")

    @model_validator(mode="after")
    def _port_for_serial(self) -> TriggerConfig:
        if self.source == "serial" and not self.port:
            raise ValueError("trigger.port is required when trigger.source is 'serial'")
        if self.source == "serial" and self.paced:
            raise ValueError("trigger.paced needs trigger.source: software")
        return self


# --------------------------------------------------------------------------- stages


class CropConfig(_Model):
    """3D-guided crops (docs/inference.md): each view gets a crop of ``size`` frame pixels
    around the fused pose predicted to its frame time and projected into the camera; the
    whole (resized) frame while the track is lost."""

    enabled: bool = False
    size: tuple[int, int] | None = Field(
        None, description="[width, height] in frame pixels; default: the model input size "
        "(native resolution)"
    )
    margin: float = Field(
        16.0, ge=0, description="frame pixels added on every side of the projected keypoints' "
        "bounding box (a crop grows, keeping its aspect, when the box does not fit)"
    )
    max_age_s: float = Field(
        0.25, gt=0, description="full frame when the last fused pose is older than this"
    )
    min_keypoints: int = Field(
        3, ge=1, description="full frame when fewer fused keypoints are known (or, per view, "
        "project inside the frame)"
    )

    @field_validator("size")
    @classmethod
    def _positive_size(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and (v[0] < 8 or v[1] < 8):
            raise ValueError(f"crop size must be at least 8×8 pixels, got {list(v)}")
        return v


class ModelConfig(_Model):
    """The 2D keypoint model run by the inference workers."""

    path: str = Field(
        "default", description="'default' (bundled sim-rig model), 'blazepose' (bundled "
        "human model), a model folder, an .onnx file, a TensorRT engine (.engine/.plan) or a TorchScript/exported program (.pt/.pt2)"
    )
    manifest: Path | None = Field(None, description="default: manifest.yaml next to the model")
    engine: Literal["auto", "onnxruntime", "tensorrt", "torch"] = Field(
        "auto", description="auto: by the model file's suffix (.onnx → onnxruntime, "
        ".engine/.plan → tensorrt, .pt/.pt2 → torch)"
    )
    providers: list[str] | Literal["auto"] = Field(
        ["CPUExecutionProvider"], description="onnxruntime execution providers, best first, or "
        "'auto' (TensorRT, CUDA, CPU: the best available)"
    )
    allow_cpu_fallback: bool = Field(
        False, description="run on CPU when a requested GPU provider/device is missing"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="torch engine: auto = CUDA when present, else CPU"
    )
    fp16: bool = Field(True, description="TensorRT (provider and native engine): build in fp16")
    cache_dir: Path | None = Field(
        None, description="TensorRT engine and timing cache (default: ~/.cache/livepose/trt)"
    )
    intra_op_threads: int = Field(2, ge=0, description="0 = ONNX Runtime's default")
    workers: int = Field(1, ge=1, le=16)
    crop: CropConfig = CropConfig()


class KalmanConfig(_Model):
    """Motion model and track life of the per-keypoint filters. Lengths are in mm whatever
    the calibration's unit (fusion converts them); times in s, or in frames where a delay
    must be a whole number of frame-sets at any rate. The linear filter (``fusion.filter:
    kf``) uses all of it; the EKF (``ekf``) uses the motion model, ``max_gap_s``,
    ``reinit_after_frames``, ``init_speed_mm_s`` and ``init_accel_mm_s2`` (its measurement
    side is ``fusion.ekf``)."""

    enabled: bool = Field(True, description="false = no filter (same as fusion.filter: none)")
    model: Literal["cv", "ca"] = Field(
        "cv", description="constant velocity (white acceleration) or constant acceleration "
        "(white jerk)"
    )
    accel_noise_mm_s2: float = Field(
        3.0e5, gt=0, description="cv: white-acceleration spectral density (mm²/s³)"
    )
    jerk_noise_mm_s3: float = Field(
        2.0e8, gt=0, description="ca: white-jerk spectral density (mm²/s⁵)"
    )
    init_accel_mm_s2: float = Field(
        20000.0, gt=0, description="ca: σ of the unknown acceleration at (re-)initialisation"
    )
    meas_noise_mm: float = Field(2.5, gt=0, description="σ of a triangulated point")
    max_gap_s: float = Field(0.5, gt=0, description="re-initialise after this long without data")
    reinit_after_frames: float | None = Field(
        3, ge=0, description="re-initialise when the measurement (kf: the triangulated "
        "point; ekf: the triangulation's views, which agree among themselves) disagreed with the "
        "track for this many consecutive frame-sets; null: only after max_gap_s"
    )
    gate_sigma: float = Field(6.0, gt=0, description="reject measurements beyond this many σ")
    init_speed_mm_s: float = Field(
        1000.0, gt=0, description="σ of the unknown velocity when a keypoint is (re-)initialised"
    )
    measurement_variance: Literal["fixed", "triangulation"] = Field(
        "triangulation",
        description="R per axis: 'fixed' = meas_noise_mm²; 'triangulation' = the triangulation's "
        "own variance estimate (geometry, views used, reprojection error)",
    )


class EKFConfig(_Model):
    """The EKF's measurement side: every 2D view is a measurement with σ = pixel_noise_px /
    confidence (plus the ensemble variance offline), tested against the prediction."""

    gate_sigma: float = Field(
        5.0, gt=0, description="drop a view whose innovation exceeds this Mahalanobis distance"
    )
    inflate_sigma: float = Field(
        4.0, gt=0, description="inflate a view's variance by (d / inflate_sigma)² beyond this"
    )
    consensus_after_frames: float = Field(
        2, ge=0, description="when the triangulation (views that agree among themselves) "
        "disagrees with the track for this many consecutive frame-sets, update with its views "
        "instead of gating them"
    )


class LiftConfig(_Model):
    """``fusion.mode: lift``: one camera's 2D lifted to 3D by a trained lifter
    (docs/lifting.md)."""

    path: Path | None = Field(None, description="the lifter folder (lifter.onnx + lifter.yaml)")
    camera: str | None = Field(None, description="the camera lifted (default: the first)")
    plane: Literal["floor", "point"] = Field(
        "floor", description="floor: the root's ray meets the plane z = height_mm; point: the "
        "root is at point_mm (a head-fixed animal)")
    height_mm: float | None = Field(
        None, description="floor: the root's height above z = 0 (default: the lifter's)")
    point_mm: tuple[float, float, float] | None = Field(
        None, description="point: the root's world position (mm)")

    @model_validator(mode="after")
    def _point_given(self) -> LiftConfig:
        if self.plane == "point" and self.point_mm is None:
            raise ValueError("fusion.lift.point_mm is required when fusion.lift.plane is 'point'")
        return self


class MultiConfig(_Model):
    """Several animals at once (docs/multi-animal.md): instances per view, cross-view
    association per frame-set, 3D tracks with identities."""

    enabled: bool = False
    individuals: int | None = Field(
        None, ge=1, le=16, description="fixed number of individuals (ids 0..N-1, the usual "
        "lab case); null: free (ids counted up as tracks are born)"
    )
    max_tracks: int = Field(8, ge=1, le=16, description="free mode: tracks alive at most")
    epipolar_px: float = Field(
        12.0, gt=0, description="association: largest confidence-weighted mean epipolar "
        "distance (px) for two views' instances to be the same individual"
    )
    min_keypoints: int = Field(
        4, ge=1, description="association: keypoints two instances must share (both "
        "above the likelihood threshold) for their distance to count"
    )
    gate_mm: float = Field(
        30.0, gt=0, description="tracking: largest median 3D distance (mm) between a "
        "track's prediction and an associated instance (scaled by its uncertainty)"
    )
    confirm_frames: int = Field(
        5, ge=1, description="a tentative track becomes an individual after this many "
        "frame-sets matched in a row"
    )
    timeout_s: float = Field(1.0, gt=0, description="a track dies after this long unmatched")
    min_motion_mm: float = Field(
        0.0, ge=0, description="a tentative track must move this much (largest keypoint "
        "path over its confirmation) to be born: static figures never become tracks"
    )
    min_depth_ratio: float = Field(
        0.0, ge=0, le=1, description="a tentative track whose keypoints are this flat "
        "(smallest / largest principal extent) is a picture, never born"
    )
    size_weight: float = Field(
        0.0, ge=0.0, description="tracking: weight of the body-size cue in the (track, "
        "cluster) matching cost (3D keypoint distances learnt while a track is alone); 0: "
        "off (it did not help on the sim benchmark: docs/benchmarks.md)"
    )
    background_frames: int = Field(
        25, ge=3, description="live, single-animal model: the worker learns each camera's "
        "background from this many frames (per-pixel median) before it finds instances"
    )
    background_every: int = Field(
        10, ge=1, description="… one frame-set in this many (the animals move in between)"
    )
    crops: bool = Field(
        True, description="single-stage model with a dynamic input size: once individuals "
        "are known, one 3D-guided crop per individual per view (docs/multi-animal.md); "
        "false: the masked full frame per blob"
    )
    crop_px: int = Field(
        96, ge=32, le=1024, description="crop side (frame pixels); a crop grows (and is "
        "resampled to this) where the projected animal needs more"
    )
    crop_model: str = Field(
        "auto", description="crops: the model run on the 3D-guided crops, in model.path's "
        "syntax (a bundled name, a folder or a model file) — a model trained on crops with "
        "neighbouring animals; 'auto': the bundled default-crops when model.path is "
        "'default', else the main model; 'main': the main model"
    )
    body_radius_mm: float = Field(
        0.0, ge=0.0, le=500.0, description="crops: half-width of an animal's body (mm); "
        "> 0: where two animals overlap in a view, a pixel inside both bodies (capsules of "
        "this radius along the skeleton's bones) goes to the one nearer the camera; 0: to "
        "the nearest projected keypoint (docs/multi-animal.md compares them)"
    )
    reacquire_every: int = Field(
        15, ge=1, description="crops: full-frame blob detection (new animals, lost tracks) "
        "at least one frame-set in this many"
    )


class FusionConfig(_Model):
    """Triangulation and filtering."""

    mode: Literal["triangulate", "lift"] = Field(
        "triangulate", description="triangulate: every camera's views; lift: one camera's 2D "
        "through fusion.lift's lifter, then the linear filter")
    lift: LiftConfig = LiftConfig()

    min_views: int = Field(
        2, ge=1, description="views a keypoint needs to be triangulated (≥ 2); 1 only with "
        "mode: lift (one camera's 2D lifted to 3D)")
    likelihood_threshold: float = Field(0.3, ge=0, le=1)
    reproj_threshold_px: float = Field(12.0, gt=0)
    pixel_noise_px: float | None = Field(
        None, gt=0, description="σ of a 2D keypoint at confidence 1 (floor of the 3D variance); "
        "default: the model manifest's noise.sigma_px (1.0 if it has none)"
    )
    filter: Literal["none", "kf", "ekf"] = Field(
        "ekf",
        description="none: triangulation only; kf: linear Kalman filter on the triangulated "
        "points; ekf: extended Kalman filter on the 2D observations (see docs/fusion.md)",
    )
    kalman: KalmanConfig = KalmanConfig()
    ekf: EKFConfig = EKFConfig()
    lead_ms: float = Field(0.0, ge=0, le=500)
    multi: MultiConfig = MultiConfig()

    @model_validator(mode="after")
    def _lifter_given(self) -> FusionConfig:
        if self.mode == "lift" and self.lift.path is None:
            raise ValueError("fusion.lift.path is required when fusion.mode is 'lift'")
        if self.mode != "lift" and self.min_views < 2:
            raise ValueError(f"fusion.min_views={self.min_views}: triangulation needs 2 views "
                             "or more; one camera: fusion.mode: lift (docs/lifting.md)")
        return self
