"""The one validated configuration model of livepose.

A config is a YAML file (see ``configs/``). Every default lives here. Loading errors name the
file, the field (dotted path) and what is allowed, and are raised as :class:`ConfigError`,
which the CLI turns into one line and exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from livepose.errors import UserError


class ConfigError(UserError):
    """A configuration file or value is wrong."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_default=True)


# --------------------------------------------------------------------------- cameras


class SimCameraConfig(_Model):
    """A camera of the simulated rig. Its pose comes from the rig (``sim``), by position in
    the camera list."""

    backend: Literal["sim"]
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")


CameraConfig = Annotated[SimCameraConfig, Field(discriminator="backend")]

CAMERA_BACKENDS = ("sim",)


class SimConfig(_Model):
    """The simulated rig: an articulated rodent in a round arena, seen by the sim cameras."""

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


class TriggerConfig(_Model):
    """Where trigger pulses come from. ``software``: livepose's own clock process."""

    source: Literal["software"] = "software"


# --------------------------------------------------------------------------- stages


class ModelConfig(_Model):
    """The 2D keypoint model run by the inference workers."""

    path: str = Field("default", description="'default' (bundled sim-rig model) or an .onnx file")
    manifest: Path | None = Field(None, description="default: manifest.yaml next to the model")
    providers: list[str] | Literal["auto"] = ["CPUExecutionProvider"]
    allow_cpu_fallback: bool = False
    intra_op_threads: int = Field(2, ge=0, description="0 = ONNX Runtime's default")
    workers: int = Field(1, ge=1, le=16)


class KalmanConfig(_Model):
    """Motion model and track life of the per-keypoint filters (units: mm, s). The linear
    filter (``fusion.filter: kf``) uses all of it; the EKF (``ekf``) uses the motion model,
    ``max_gap_s``, ``init_speed_mm_s`` and ``init_accel_mm_s2`` (its measurement side is
    ``fusion.ekf``)."""

    enabled: bool = Field(True, description="false = no filter (same as fusion.filter: none)")
    model: Literal["cv", "ca"] = Field(
        "cv", description="constant velocity (white acceleration) or constant acceleration "
        "(white jerk)"
    )
    accel_noise_mm_s2: float = Field(
        20000.0, gt=0, description="cv: white-acceleration spectral density (mm²/s³)"
    )
    jerk_noise_mm_s3: float = Field(
        2.0e7, gt=0, description="ca: white-jerk spectral density (mm²/s⁵)"
    )
    init_accel_mm_s2: float = Field(
        20000.0, gt=0, description="ca: σ of the unknown acceleration at (re-)initialisation"
    )
    meas_noise_mm: float = Field(2.5, gt=0, description="σ of a triangulated point")
    max_gap_s: float = Field(0.5, gt=0, description="re-initialise after this long without data")
    gate_sigma: float = Field(6.0, gt=0, description="reject measurements beyond this many σ")
    init_speed_mm_s: float = Field(
        1000.0, gt=0, description="σ of the unknown velocity when a keypoint is (re-)initialised"
    )
    measurement_variance: Literal["fixed", "triangulation"] = Field(
        "fixed",
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
        3.0, gt=0, description="inflate a view's variance by (d / inflate_sigma)² beyond this"
    )
    reinit_after_s: float = Field(
        0.05, ge=0, description="re-initialise from the triangulation when every view was "
        "gated this long while the triangulation is valid"
    )


class FusionConfig(_Model):
    """Triangulation and filtering."""

    min_views: int = Field(2, ge=2)
    likelihood_threshold: float = Field(0.3, ge=0, le=1)
    reproj_threshold_px: float = Field(12.0, gt=0)
    pixel_noise_px: float = Field(
        1.0, gt=0, description="σ of a 2D keypoint at confidence 1 (floor of the 3D variance)"
    )
    filter: Literal["none", "kf", "ekf"] = Field(
        "ekf",
        description="none: triangulation only; kf: linear Kalman filter on the triangulated "
        "points; ekf: extended Kalman filter on the 2D observations (see docs/fusion.md)",
    )
    kalman: KalmanConfig = KalmanConfig()
    ekf: EKFConfig = EKFConfig()
    lead_ms: float = Field(0.0, ge=0, le=500)


class PreviewConfig(_Model):
    """The small JPEG preview stream of every camera."""

    fps: float = Field(10.0, gt=0, le=15)
    scale: float = Field(0.5, gt=0, le=1)
    jpeg_quality: int = Field(70, ge=10, le=95)


class TransportConfig(_Model):
    """How processes reach each other. ``ipc`` on one host; ``tcp`` across hosts."""

    kind: Literal["ipc", "tcp"] = "ipc"
    host: str = "127.0.0.1"
    base_port: int = Field(0, ge=0, le=65000, description="0: pick free ports")
    ipc_dir: Path | None = None
    frame_hwm: int = Field(64, ge=1, description="PUB high-water mark for frames (messages)")

    @field_validator("host")
    @classmethod
    def _loopback_unless_asked(cls, v: str) -> str:
        if not v:
            raise ValueError("host must not be empty")
        return v


class RecordingConfig(_Model):
    """Session recording (see docs)."""

    enabled: bool = False
    dir: Path = Path("sessions")


class LimitsConfig(_Model):
    """Upper bounds for decoding messages."""

    max_frame_bytes: int = Field(64 * 1024 * 1024, gt=0)


class Config(_Model):
    """A whole livepose run."""

    name: str = "livepose"
    fps: float = Field(30.0, gt=0, le=2000, description="trigger rate, frame-sets per second")
    trigger: TriggerConfig = TriggerConfig()
    cameras: list[CameraConfig] = Field(min_length=1, max_length=16)
    sim: SimConfig = SimConfig()
    calibration: Path | None = Field(None, description="Anipose TOML; None: the sim rig's own")
    model: ModelConfig = ModelConfig()
    fusion: FusionConfig = FusionConfig()
    preview: PreviewConfig = PreviewConfig()
    transport: TransportConfig = TransportConfig()
    recording: RecordingConfig = RecordingConfig()
    limits: LimitsConfig = LimitsConfig()
    desync_tolerance_ms: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> Config:
        names = [c.name for c in self.cameras]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"camera names must be unique; repeated: {dup}")
        if self.calibration is None and not all(c.backend == "sim" for c in self.cameras):
            raise ValueError("calibration is required unless every camera is a sim camera")
        if self.fusion.min_views > len(self.cameras):
            raise ValueError(
                f"fusion.min_views={self.fusion.min_views} exceeds the {len(self.cameras)} cameras"
            )
        return self

    @property
    def camera_names(self) -> list[str]:
        """Camera names in config order (the order of every per-camera array)."""
        return [c.name for c in self.cameras]

    @property
    def is_sim(self) -> bool:
        """True when every camera is simulated (ground truth is available)."""
        return all(c.backend == "sim" for c in self.cameras)


def _format_errors(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "union_tag_invalid":
            msg = (
                f"{e.get('input', {}).get('backend', '?')!r} is not a known camera backend; "
                f"allowed: {', '.join(CAMERA_BACKENDS)}"
            )
            loc = loc.rsplit(".", 0)[0]
        elif e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "literal_error":
            msg = f"got {e.get('input')!r}; {msg.lower()}"
        where = f"{loc}: " if loc else ""
        lines.append(f"{source}: {where}{msg}")
    return "; ".join(lines)


def parse_config(data: Any, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate a mapping into a :class:`Config`.

    Relative paths (calibration, model, manifest, recording dir) are resolved against
    ``base_dir`` (the config file's folder) when given.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a mapping, got {type(data).__name__}")
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None
    if base_dir is not None:
        if cfg.calibration is not None and not cfg.calibration.is_absolute():
            cfg.calibration = base_dir / cfg.calibration
        if cfg.model.path != "default" and not Path(cfg.model.path).is_absolute():
            cfg.model.path = str(base_dir / cfg.model.path)
        if cfg.model.manifest is not None and not cfg.model.manifest.is_absolute():
            cfg.model.manifest = base_dir / cfg.model.manifest
    return cfg


def load_config(path: str | Path) -> Config:
    """Load and validate a YAML config file."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}:{where} not valid YAML") from None
    return parse_config(data, source=str(p), base_dir=p.parent)


def default_config_path() -> Path:
    """The packaged demo config (``configs/demo.yaml``)."""
    from importlib.resources import files

    return Path(str(files("livepose.configs") / "demo.yaml"))


def load_default_config() -> Config:
    """The demo config: 4 simulated cameras, the bundled model."""
    return load_config(default_config_path())


def to_dict(cfg: Config) -> dict[str, Any]:
    """JSON-able dict of a config (for passing to child processes and session records)."""
    return cfg.model_dump(mode="json")


def from_dict(data: dict[str, Any]) -> Config:
    """Inverse of :func:`to_dict` (already validated; no path resolution)."""
    return Config.model_validate(data)
