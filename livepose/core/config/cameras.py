"""Config sections of the cameras (one model per backend, chosen by ``backend``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from livepose.core.config._base import _Model


class SimCameraConfig(_Model):
    """A camera of the simulated rig. Its pose comes from the rig (``sim``), by position in
    the camera list."""

    backend: Literal["sim"]
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    frame_offset: int = Field(
        0, ge=-100, le=100, description="fault injection: deliver as frame k the image (and "
        "exposure time) of pulse k - frame_offset, like a camera that lags behind")


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
    color: Literal["auto", "mono", "rgb"] = Field(
        "auto", description="yuv video: auto = RGB8 unless the first frame's chroma is flat "
        "(a recording of mono frames: Mono8, the luma plane)"
    )


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


def free_run_by_counter(cam: Any) -> bool:
    """Whether a camera runs on its own clock and numbers its frames by its own counter
    (``match: counter``): its frame ids then say nothing about other cameras' instants."""
    if isinstance(cam, WebcamCameraConfig):
        return cam.match == "counter"
    trigger = getattr(cam, "trigger", None)
    return (isinstance(trigger, CameraTriggerConfig) and trigger.mode == "free_run"
            and trigger.match == "counter")


def clock_matched(cam: Any) -> bool:
    """Whether a camera's frames are matched to the trigger clock's pulses by timestamp."""
    if isinstance(cam, WebcamCameraConfig):
        return cam.match == "clock"
    trigger = getattr(cam, "trigger", None)
    return isinstance(trigger, CameraTriggerConfig) and trigger.match == "clock"
