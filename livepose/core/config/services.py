"""Config sections of what runs around the stages: preview, transport, recording,
dashboard, limits."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from livepose.core.config._base import _Model

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """True for a loopback name or address (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    h = host.strip("[]").lower()
    if h in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


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
    keys_dir: Path | None = Field(
        None,
        description="tcp: CURVE on every socket with this host's key pair from this folder "
        "(`livepose keys DIR`); required when host is not loopback",
    )
    key_name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$",
        description="which <name>.key_secret in keys_dir (default: the only one)",
    )
    allowed_keys: Path | None = Field(
        None,
        description="folder of public .key files whose holders may connect "
        "(default: <keys_dir>/allowed)",
    )
    server_key: Path | None = Field(
        None,
        description="public .key of the host that binds the run's sockets "
        "(default: this host's own)",
    )

    @model_validator(mode="after")
    def _shm_needs_one_host(self) -> TransportConfig:
        if self.frames == "shm" and self.kind != "ipc":
            raise ValueError("frames: 'shm' needs every process on one host (kind: ipc); "
                             "use 'zmq' or 'auto' with kind: tcp")
        return self

    def ring_slots(self, fps: float) -> int:
        """Slots per camera ring: ``shm_slots``, else half a second of frames (≥ 16)."""
        return self.shm_slots or max(16, min(1024, round(fps / 2)))

    @field_validator("host")
    @classmethod
    def _host_given(cls, v: str) -> str:
        if not v or not v.strip():
            raise ValueError("host must not be empty")
        return v

    @model_validator(mode="after")
    def _loopback_unless_keys(self) -> TransportConfig:
        if self.kind == "tcp" and not is_loopback(self.host) and self.keys_dir is None:
            raise ValueError(
                f"host {self.host!r} is not loopback and tcp has no authentication without "
                "keys: set transport.keys_dir (CURVE keys, `livepose keys DIR`) or use 127.0.0.1"
            )
        if self.keys_dir is None and (self.allowed_keys or self.server_key or self.key_name):
            raise ValueError("allowed_keys, server_key and key_name need transport.keys_dir")
        return self


class RecordingConfig(_Model):
    """Session recording (see docs/recording.md).

    ``codec``: ``ffv1`` (bit-exact lossless, default), ``h264`` (libx264; ``crf`` and
    ``preset``, or ``lossless: true`` for ``qp 0``), ``h264_nvenc``/``hevc_nvenc`` (NVIDIA
    GPU), ``raw`` (frames dumped as they are, for the highest rates) or ``none`` (the frame
    table only, no video: replaying videos that already exist, ``livepose track``).
    """

    enabled: bool = Field(False, description="record from pulse 0 (livepose run --record)")
    dir: Path = Path("sessions")
    name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.\-]+$", description="session name; default: config name"
    )
    codec: Literal["ffv1", "h264", "h264_nvenc", "hevc_nvenc", "raw", "none"] = "ffv1"
    crf: int = Field(18, ge=0, le=51, description="h264: constant rate factor")
    preset: str = Field("ultrafast", description="h264: x264 preset (nvenc: p1…p7)")
    lossless: bool = Field(False, description="h264: qp 0 (lossless), ignores crf")
    threads: int = Field(2, ge=1, le=16, description="encoder threads per camera")
    keyframe_s: float = Field(0.5, gt=0, le=10, description="keyframe interval (crash safety)")
    queue_s: float = Field(2.0, gt=0, le=60, description="how far a camera's encoder may fall "
                           "behind, seconds of frames: the camera's frame ring holds at least "
                           "this much when recording from launch")
    checksum: Literal["xxh3", "crc32", "none"] = "xxh3"
    predictions: bool = Field(True, description="write 2D/3D predictions (recorder process)")


class DashboardConfig(_Model):
    """The web dashboard (see docs/dashboard.md). It binds to loopback unless ``host`` says
    otherwise. Every request needs the run's token (``token``, or a random one made per run
    and printed in the URL); the ``Host`` header and websocket ``Origin`` must name
    a loopback name, the bind address or one of ``allowed_hosts``."""

    enabled: bool = Field(True, description="start it with `livepose run`/`demo`")
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535, description="0: any free port")
    token: str | None = Field(
        None, min_length=16,
        description="a fixed token (scripts, Prometheus); default: a new random one per run",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="more host names/addresses browsers may use to reach it (Host, Origin)",
    )

    @field_validator("allowed_hosts")
    @classmethod
    def _bare_hosts(cls, v: list[str]) -> list[str]:
        for h in v:
            if not h or any(c in h for c in "/ @?#") or h.count(":") == 1:
                raise ValueError(f"{h!r} is not a bare host name or address (no scheme, "
                                 "port or path)")
        return v


class RestartConfig(_Model):
    """Stages that die come back (docs/architecture.md, "Restarts"): the supervisor starts a
    dead camera, inference worker, fusion, video encoder or dashboard again (in a warm spare
    process when ``spares``) after a back-off that
    doubles from ``backoff_s`` up to 1 s, at most ``max_restarts`` times per stage within
    ``window_s``; past that the old rules apply (a camera is lost, a worker's share taken
    over, fusion's death ends the run). The trigger clock is never restarted (its pulse
    numbering is frame identity)."""

    enabled: bool = True
    max_restarts: int = Field(5, ge=0, le=1000)
    window_s: float = Field(60.0, gt=0)
    backoff_s: float = Field(0.1, gt=0, le=1.0, description="first back-off; doubles to 1 s")
    spares: bool = Field(True, description="keep one warm spare process per stage kind "
                         "(imports done) that takes over a dead stage at once")
    spare_cpu: float = Field(0.25, gt=0, le=1.0,
                             description="share of one core a spare may use while it warms "
                             "up during a run (stopped and continued in turn; 1: no limit)")


class LimitsConfig(_Model):
    """Upper bounds for decoding messages."""

    max_frame_bytes: int = Field(64 * 1024 * 1024, gt=0)


class MetadataConfig(_Model):
    """Who and what a session records, for exports (NWB: ``livepose export nwb``). Unset
    fields are written as ``"unset (config metadata.<field>)"``, never guessed."""

    subject_id: str | None = None
    species: str | None = Field(None, description="e.g. 'Homo sapiens', 'Mus musculus'")
    sex: Literal["M", "F", "U", "O"] | None = None
    age: str | None = Field(None, description="ISO 8601 duration, e.g. P90D")
    session_description: str | None = None
    experimenter: list[str] = Field(default_factory=list)
    lab: str | None = None
    institution: str | None = None
