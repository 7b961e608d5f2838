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


CameraName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]+$")]
FeatureValue = str | int | float | bool


class CameraTriggerConfig(_Model):
    """How a machine-vision camera is triggered (see docs/acquisition.md).

    ``software``: one exposure per pulse of livepose's trigger clock; ``hardware``: exposures
    start on an input line (a trigger box, or another camera's output); ``free_run``: the
    camera runs on its own clock at ``frame_rate`` (frames matched by time, not by pulse).
    """

    mode: Literal["software", "hardware", "free_run"] = "software"
    source: str = Field("Line1", description="hardware: the input line (Line1…, FLIR: Line3)")
    selector: str = Field("FrameStart", description="which event the trigger starts")
    activation: Literal["RisingEdge", "FallingEdge", "AnyEdge", "LevelHigh", "LevelLow"] = (
        "RisingEdge"
    )
    first_frame_timeout_s: float = Field(
        10.0, gt=0, description="hardware: error if no frame arrives this long after arming"
    )
    output_line: str | None = Field(
        None, description="camera-as-master: drive this line with ExposureActive"
    )
    match: Literal["counter", "clock"] = Field(
        "counter", description="free_run: frame_id from the camera's counter, or from the "
        "nearest pulse of the trigger clock by timestamp (acquisition/timematch.py)"
    )
    match_tolerance_ms: float | None = Field(
        None, gt=0, description="match: clock: largest |frame − pulse| time; None: a third "
        "of the trigger period"
    )
    match_latency_ms: float = Field(
        0.0, ge=0, description="match: clock: subtracted from the frame's time before matching"
    )

    @model_validator(mode="after")
    def _match_needs_free_run(self) -> CameraTriggerConfig:
        if self.match == "clock" and self.mode != "free_run":
            raise ValueError(
                f"trigger.match 'clock' needs trigger.mode 'free_run', got {self.mode!r}"
            )
        return self


class RoiConfig(_Model):
    """Sensor region of interest, in (binned) pixels."""

    width: int = Field(ge=8, le=16384)
    height: int = Field(ge=8, le=16384)
    offset_x: int = Field(0, ge=0)
    offset_y: int = Field(0, ge=0)


class _MachineVisionConfig(_Model):
    """Fields shared by the GenICam-style backends (pylon, genicam, spinnaker)."""

    name: CameraName
    serial: str | None = Field(None, description="device serial number; None: the only device")
    trigger: CameraTriggerConfig = CameraTriggerConfig()
    exposure_us: float | None = Field(None, gt=0, description="None: leave as configured")
    gain_db: float | None = Field(None, ge=0)
    frame_rate: float | None = Field(None, gt=0, description="free_run: the camera's rate")
    roi: RoiConfig | None = None
    binning: int = Field(1, ge=1, le=8)
    pixel_format: str = "Mono8"
    buffers: int = Field(16, ge=2, le=1024, description="driver buffer count")
    timestamp_tick_ns: float = Field(1.0, gt=0, description="device timestamp tick length")
    features: dict[str, FeatureValue] = Field(
        default_factory=dict, description="raw GenICam features, set last, in order"
    )
    outputs: list[str] = Field(
        default_factory=list, description="output lines closed-loop actions may pulse "
        "(CameraOutput; docs/closed-loop.md): line i is driven by UserOutput{i+1}"
    )

    @model_validator(mode="after")
    def _outputs_free(self) -> _MachineVisionConfig:
        if len(set(self.outputs)) != len(self.outputs):
            raise ValueError(f"outputs must be unique, got {self.outputs}")
        if self.trigger.output_line is not None and self.trigger.output_line in self.outputs:
            raise ValueError(f"{self.trigger.output_line} is trigger.output_line (exposure "
                             "active); it cannot also be in outputs")
        return self


class PylonEmulationConfig(_Model):
    """pylon camera emulation only (``PYLON_CAMEMU``): test images and fault injection."""

    image_dir: Path | None = Field(None, description="serve these PNGs (ImageFilename)")
    fail_buffers_at: list[int] = Field(
        default_factory=list, description="force a failed buffer at these trigger pulses"
    )
    remove_at: list[int] = Field(
        default_factory=list, description="simulate device removal at these trigger pulses"
    )


class PylonCameraConfig(_MachineVisionConfig):
    """A Basler camera through pypylon (extra ``basler``)."""

    backend: Literal["pylon"]
    grab_strategy: Literal["one_by_one", "latest_image_only", "latest_images", "upcoming_image"] = (
        "one_by_one"
    )
    chunks: bool = Field(True, description="enable chunk data (timestamp, counters) if present")
    emulation: PylonEmulationConfig | None = None
    reconnect_timeout_s: float = Field(10.0, ge=0, description="0: do not try to reconnect")


class GenICamCameraConfig(_MachineVisionConfig):
    """Any GenICam camera through a GenTL producer and harvesters (extra ``genicam``)."""

    backend: Literal["genicam"]
    cti: list[str] = Field(
        default_factory=list, description="GenTL producer files; empty: GENICAM_GENTL64_PATH"
    )


class SpinnakerCameraConfig(_MachineVisionConfig):
    """A FLIR camera through PySpin (FLIR's Spinnaker SDK, not on PyPI)."""

    backend: Literal["spinnaker"]
    trigger_overlap: Literal["Off", "ReadOut", "PreviousFrame"] = "ReadOut"


class VideoCameraConfig(_Model):
    """A recorded video replayed as a camera: frame ``frame_id`` is frame index ``frame_id``.

    ``path`` is a video file, or a folder of per-camera videos whose file names contain the
    camera name. Software-triggered by the trigger clock (run it at the recorded rate), or
    ``free_run``: as fast as it decodes.
    """

    backend: Literal["video"]
    name: CameraName
    path: Path
    loop: bool = False
    free_run: bool = False


class WebcamCameraConfig(_Model):
    """A USB webcam, or anything else OpenCV's ``VideoCapture`` opens (a device path, a
    video file, a stream URL), through OpenCV (extra ``webcam``). Free-running: frames are
    matched to the trigger clock's pulses by timestamp (``match: clock``) or numbered by
    their own count (``counter``). See docs/acquisition.md."""

    backend: Literal["webcam"]
    name: CameraName
    device: int | str = Field(
        0, description="index (0: the first camera; a string of digits too), device path "
        "(/dev/video2), video file or stream URL"
    )
    api: Literal["any", "v4l2", "dshow", "msmf", "avfoundation", "ffmpeg", "gstreamer"] = Field(
        "any", description="OpenCV capture backend (cv2.CAP_*)"
    )
    width: int | None = Field(None, ge=8, le=16384, description="requested; None: the default")
    height: int | None = Field(None, ge=8, le=16384)
    fps: float | None = Field(None, gt=0, le=1000, description="requested frame rate")
    fourcc: str | None = Field(
        None, pattern=r"^[A-Za-z0-9 ]{4}$", description="e.g. MJPG (full rate at high "
        "resolution on USB 2), YUYV"
    )
    pixel_format: Literal["Mono8", "RGB8"] = "RGB8"
    buffers: int = Field(1, ge=1, le=32, description="CAP_PROP_BUFFERSIZE; 1: least latency")
    properties: dict[str, float] = Field(
        default_factory=dict, description="cv2.CAP_PROP_<NAME>: value, e.g. {AUTO_EXPOSURE: 1, "
        "EXPOSURE: 100}; set in order, after the above"
    )
    match: Literal["clock", "counter"] = Field(
        "clock", description="frame_id from the nearest trigger pulse, or the frame count"
    )
    match_tolerance_ms: float | None = Field(
        None, gt=0, description="largest |frame − pulse| time; None: a third of the trigger "
        "period"
    )
    match_latency_ms: float = Field(
        0.0, ge=0, description="subtracted from the grab time before matching (the camera's "
        "exposure-to-host delay)"
    )
    lost_after_s: float = Field(2.0, gt=0, description="no frame this long: the device is lost")
    reconnect_timeout_s: float = Field(10.0, ge=0, description="0: do not try to reconnect")

    @model_validator(mode="after")
    def _both_or_neither(self) -> WebcamCameraConfig:
        if (self.width is None) != (self.height is None):
            raise ValueError("width and height go together (set both or neither)")
        return self


CameraConfig = Annotated[
    SimCameraConfig
    | PylonCameraConfig
    | GenICamCameraConfig
    | SpinnakerCameraConfig
    | VideoCameraConfig
    | WebcamCameraConfig,
    Field(discriminator="backend"),
]

CAMERA_BACKENDS = ("sim", "pylon", "genicam", "spinnaker", "video", "webcam")


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
    """Where trigger pulses come from. ``software``: livepose's own clock process;
    ``serial``: a trigger box (``firmware/triggerbox``) on a serial port emits the pulses
    at ``fps`` and the cameras are hardware-triggered."""

    source: Literal["software", "serial"] = "software"
    port: str | None = Field(None, description="serial: the device, e.g. /dev/ttyACM0")
    baud: int = Field(115200, gt=0)
    pulse_width_us: int = Field(100, ge=1, le=100_000)
    timeout_s: float = Field(2.0, gt=0, description="serial: reply timeout")

    @model_validator(mode="after")
    def _port_for_serial(self) -> TriggerConfig:
        if self.source == "serial" and not self.port:
            raise ValueError("trigger.port is required when trigger.source is 'serial'")
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
        "default", description="'default' (bundled sim-rig model), a model folder, an .onnx "
        "file, a TensorRT engine (.engine/.plan) or a TorchScript/exported program (.pt/.pt2)"
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
    reinit_after_s: float | None = Field(
        0.03, ge=0, description="re-initialise when the measurement (kf: the triangulated "
        "point; ekf: the triangulation's views, which agree among themselves) disagreed with the "
        "track this long; null: only after max_gap_s"
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
    consensus_after_s: float = Field(
        0.02, ge=0, description="when the triangulation (views that agree among themselves) "
        "disagrees with the track this long, update with its views instead of gating them"
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
    frames: Literal["auto", "zmq", "shm"] = Field(
        "auto",
        description="how frame pixels travel: 'shm' a frame ring in /dev/shm with headers over "
        "ZeroMQ (one host), 'zmq' inside the messages; 'auto' = shm with kind ipc",
    )
    shm_slots: int | None = Field(
        None, ge=4, le=4096,
        description="frames per camera ring (how far a subscriber may fall behind); "
        "default: half a second of frames, at least 16",
    )
    follow_rings: bool = Field(
        True,
        description="inference workers take same-host frames straight from the rings, woken "
        "by a futex doorbell (Linux), instead of from the ZeroMQ headers; false: headers "
        "over ZeroMQ only",
    )

    @model_validator(mode="after")
    def _shm_needs_one_host(self) -> TransportConfig:
        if self.frames == "shm" and self.kind != "ipc":
            raise ValueError("frames: 'shm' needs every process on one host (kind: ipc); "
                             "use 'zmq' or 'auto' with kind: tcp")
        return self

    def frames_in_shm(self) -> bool:
        """Whether cameras put pixels in a frame ring (``frames`` resolved)."""
        from livepose import shmring

        if self.frames == "zmq" or (self.frames == "auto" and self.kind != "ipc"):
            return False
        if self.frames == "shm" and not shmring.available():
            raise ValueError(f"transport.frames: 'shm' but {shmring.SHM_DIR} is not writable "
                             "on this host; use 'zmq'")
        return shmring.available()

    def ring_slots(self, fps: float) -> int:
        """Slots per camera ring: ``shm_slots``, else half a second of frames (≥ 16)."""
        return self.shm_slots or max(16, min(1024, round(fps / 2)))

    @field_validator("host")
    @classmethod
    def _loopback_unless_asked(cls, v: str) -> str:
        if not v:
            raise ValueError("host must not be empty")
        return v


class RecordingConfig(_Model):
    """Session recording (see docs/recording.md).

    ``codec``: ``ffv1`` (bit-exact lossless, default), ``h264`` (libx264; ``crf`` and
    ``preset``, or ``lossless: true`` for ``qp 0``), ``h264_nvenc``/``hevc_nvenc`` (NVIDIA
    GPU) or ``raw`` (frames dumped as they are, for the highest rates).
    """

    enabled: bool = Field(False, description="record from pulse 0 (livepose run --record)")
    dir: Path = Path("sessions")
    name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.\-]+$", description="session name; default: config name"
    )
    codec: Literal["ffv1", "h264", "h264_nvenc", "hevc_nvenc", "raw"] = "ffv1"
    crf: int = Field(18, ge=0, le=51, description="h264: constant rate factor")
    preset: str = Field("ultrafast", description="h264: x264 preset (nvenc: p1…p7)")
    lossless: bool = Field(False, description="h264: qp 0 (lossless), ignores crf")
    threads: int = Field(2, ge=1, le=16, description="encoder threads per camera")
    keyframe_s: float = Field(0.5, gt=0, le=10, description="keyframe interval (crash safety)")
    queue_s: float = Field(2.0, gt=0, le=60, description="writer queue bound, seconds of frames")
    checksum: Literal["xxh3", "crc32", "none"] = "xxh3"
    predictions: bool = Field(True, description="write 2D/3D predictions (recorder process)")


class DashboardConfig(_Model):
    """The web dashboard (see docs/dashboard.md). It binds to loopback unless ``host`` says
    otherwise, and then a ``token`` is required (clients pass ``?token=…`` or
    ``Authorization: Bearer …``)."""

    enabled: bool = Field(True, description="start it with `livepose run`/`demo`")
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535, description="0: any free port")
    token: str | None = Field(None, min_length=8, description="required off loopback")

    @model_validator(mode="after")
    def _token_off_loopback(self) -> DashboardConfig:
        if self.host not in ("127.0.0.1", "localhost", "::1") and not self.token:
            raise ValueError(
                f"dashboard.host {self.host!r} is not loopback: set dashboard.token "
                "(at least 8 characters) or bind to 127.0.0.1"
            )
        return self


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
    dashboard: DashboardConfig = DashboardConfig()
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
        matched = [c.name for c in self.cameras if clock_matched(c)]
        if matched and self.trigger.source != "software":
            raise ValueError(
                f"cameras {matched} are matched to the trigger clock by time (match: clock), "
                "which needs trigger.source 'software' (a trigger box publishes no pulse times)"
            )
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


def clock_matched(cam: Any) -> bool:
    """Whether a camera's frames are matched to the trigger clock's pulses by timestamp."""
    if isinstance(cam, WebcamCameraConfig):
        return cam.match == "clock"
    trigger = getattr(cam, "trigger", None)
    return isinstance(trigger, CameraTriggerConfig) and trigger.match == "clock"


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
