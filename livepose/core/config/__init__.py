"""The one validated configuration model of livepose.

A config is a YAML file (see ``configs/``). Every default lives here. Loading errors name the
file, the field (dotted path) and what is allowed, and are raised as :class:`ConfigError`,
which the CLI turns into one line and exit code 2.

The sections live in :mod:`.cameras`, :mod:`.stages` and :mod:`.services`; everything is
importable from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from livepose.core.config._base import ConfigError, _Model
from livepose.core.config.cameras import (
    CAMERA_BACKENDS,
    CameraConfig,
    CameraName,
    CameraTriggerConfig,
    FeatureValue,
    GenICamCameraConfig,
    PylonCameraConfig,
    PylonEmulationConfig,
    RoiConfig,
    SimCameraConfig,
    SpinnakerCameraConfig,
    VideoCameraConfig,
    WebcamCameraConfig,
    clock_matched,
    free_run_by_counter,
)
from livepose.core.config.services import (
    DashboardConfig,
    LimitsConfig,
    MetadataConfig,
    PreviewConfig,
    RecordingConfig,
    RestartConfig,
    TransportConfig,
)
from livepose.core.config.stages import (
    CropConfig,
    EKFConfig,
    FrameSetConfig,
    FusionConfig,
    KalmanConfig,
    LiftConfig,
    ModelConfig,
    MultiConfig,
    SimBoardConfig,
    SimConfig,
    TriggerConfig,
)
from livepose.core.yamlfile import read_yaml

__all__ = [
    "CAMERA_BACKENDS",
    "CameraConfig",
    "CameraName",
    "CameraTriggerConfig",
    "Config",
    "ConfigError",
    "CropConfig",
    "DashboardConfig",
    "EKFConfig",
    "FeatureValue",
    "FrameSetConfig",
    "FusionConfig",
    "GenICamCameraConfig",
    "KalmanConfig",
    "LiftConfig",
    "LimitsConfig",
    "MetadataConfig",
    "ModelConfig",
    "MultiConfig",
    "PreviewConfig",
    "PylonCameraConfig",
    "PylonEmulationConfig",
    "RecordingConfig",
    "RestartConfig",
    "RoiConfig",
    "SimBoardConfig",
    "SimCameraConfig",
    "SimConfig",
    "SpinnakerCameraConfig",
    "TransportConfig",
    "TriggerConfig",
    "VideoCameraConfig",
    "WebcamCameraConfig",
    "clock_matched",
    "default_config_path",
    "from_dict",
    "load_config",
    "load_default_config",
    "parse_config",
    "to_dict",
]


class Config(_Model):
    """A whole livepose run."""

    name: str = "livepose"
    fps: float = Field(30.0, gt=0, le=2000, description="trigger rate, frame-sets per second")
    trigger: TriggerConfig = TriggerConfig()
    cameras: list[CameraConfig] = Field(min_length=1, max_length=16)
    sim: SimConfig = SimConfig()
    calibration: Path | None = Field(None, description="Anipose TOML; None: the sim rig's own")
    calibration_units: Literal["m", "cm", "mm"] | None = Field(
        None, description="length unit of the calibration when its file does not say "
        "([metadata] units); a file that says so must agree")
    model: ModelConfig = ModelConfig()
    fusion: FusionConfig = FusionConfig()
    frameset: FrameSetConfig = FrameSetConfig()
    preview: PreviewConfig = PreviewConfig()
    transport: TransportConfig = TransportConfig()
    recording: RecordingConfig = RecordingConfig()
    limits: LimitsConfig = LimitsConfig()
    dashboard: DashboardConfig = DashboardConfig()
    restart: RestartConfig = RestartConfig()
    metadata: MetadataConfig = MetadataConfig()
    desync_tolerance_ms: float = Field(2.0, gt=0)
    realtime: bool = Field(
        False, description="run trigger, cameras, inference and fusion under SCHED_FIFO "
        "(Linux; needs root, CAP_SYS_NICE or an rtprio limit; docs/closed-loop.md)"
    )

    @model_validator(mode="after")
    def _check(self) -> Config:
        names = [c.name for c in self.cameras]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"camera names must be unique; repeated: {dup}")
        if self.calibration is None and not all(c.backend == "sim" for c in self.cameras):
            raise ValueError("calibration is required unless every camera is a sim camera")
        by_counter = [c.name for c in self.cameras if free_run_by_counter(c)]
        if by_counter and len(self.cameras) > 1:
            raise ValueError(
                f"cameras {by_counter} run free with match: counter: each camera's counter "
                "starts at its own instant, so one frame_id would not be one moment in every "
                "camera; use match: clock (frames matched to the trigger clock's pulses by time)"
            )
        matched = [c.name for c in self.cameras if clock_matched(c)]
        if matched and self.trigger.source != "software":
            raise ValueError(
                f"cameras {matched} are matched to the trigger clock by time (match: clock), "
                "which needs trigger.source 'software' (a trigger box publishes no pulse times)"
            )
        if self.frameset.min_cameras is not None and self.frameset.min_cameras > len(self.cameras):
            raise ValueError(f"frameset.min_cameras={self.frameset.min_cameras} exceeds the "
                             f"{len(self.cameras)} cameras")
        k = self.fusion.kalman
        if k.max_gap_s * self.fps < 2:
            raise ValueError(f"fusion.kalman.max_gap_s={k.max_gap_s} is shorter than two frame "
                             f"periods at fps={self.fps}; allowed: >= {2 / self.fps:.3g} s")
        if self.fusion.mode == "lift":
            names = self.camera_names
            if self.fusion.lift.camera is not None and self.fusion.lift.camera not in names:
                raise ValueError(f"fusion.lift.camera={self.fusion.lift.camera!r} is not a "
                                 f"camera; cameras: {', '.join(names)}")
        elif self.fusion.min_views > len(self.cameras):
            raise ValueError(
                f"fusion.min_views={self.fusion.min_views} exceeds the {len(self.cameras)} "
                "cameras" + ("; one camera: fusion.mode: lift with a lifter (docs/lifting.md)"
                             if len(self.cameras) == 1 else "")
            )
        return self

    @property
    def camera_names(self) -> list[str]:
        """Camera names in config order (the order of every per-camera array)."""
        return [c.name for c in self.cameras]

    @property
    def min_cameras(self) -> int:
        """The fewest camera processes a run goes on with (``frameset.min_cameras``, else
        ``fusion.min_views``; 1 with ``fusion.mode: lift``)."""
        if self.frameset.min_cameras:
            return self.frameset.min_cameras
        if self.fusion.mode == "lift":  # the lifted camera alone makes a pose
            return 1
        return min(self.fusion.min_views, len(self.cameras))

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

    Relative paths (calibration, model, manifest, video cameras' paths) are resolved against
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
        bf = cfg.sim.board.file
        if bf is not None and not bf.is_absolute():
            cfg.sim.board.file = base_dir / bf
        if cfg.model.path not in ("default", "blazepose") and not Path(cfg.model.path).is_absolute():
            cfg.model.path = str(base_dir / cfg.model.path)
        if cfg.model.manifest is not None and not cfg.model.manifest.is_absolute():
            cfg.model.manifest = base_dir / cfg.model.manifest
        for cam in cfg.cameras:  # replayed videos
            if isinstance(cam, VideoCameraConfig) and not cam.path.is_absolute():
                cam.path = base_dir / cam.path
        t = cfg.transport
        for key in ("keys_dir", "allowed_keys", "server_key"):
            v = getattr(t, key)
            if v is not None and not v.expanduser().is_absolute():
                setattr(t, key, base_dir / v)
    return cfg


def load_config(path: str | Path) -> Config:
    """Load and validate a YAML config file."""
    p = Path(path)
    data = read_yaml(p, ConfigError, "config file")
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
