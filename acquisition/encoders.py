"""Video sinks of the recorder: FFV1 / H.264 / NVENC in Matroska through PyAV, or raw frames.

Matroska (``.mkv``) is written with packets flushed to the OS as they are muxed and short
clusters, and keyframes every ``recording.keyframe_s``: a process killed with ``kill -9``
leaves a file that decodes up to its last flushed packet (FFV1 frames carry CRCs per slice).
The raw sink appends each image's bytes to ``<cam>.raw`` (shape and dtype in
``<cam>.raw.json``); it costs no CPU and reads back with :func:`iter_frames`.

Pixel layouts: ``(H, W)`` uint8 → ``gray``; ``(H, W)`` uint16 → ``gray16le`` (FFV1 only);
``(H, W, 3)`` uint8 → ``rgb24`` (stored as ``bgr0`` by FFV1, losslessly).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

from livepose.core.config import RecordingConfig
from livepose.core.errors import UserError

ENCODERS = {"ffv1": "ffv1", "h264": "libx264", "h264_nvenc": "h264_nvenc",
            "hevc_nvenc": "hevc_nvenc"}


class CodecUnavailable(UserError):
    """The configured codec cannot be used here (names the codec and why)."""


class Sink(Protocol):
    """Where the encoder puts frames.

    :meth:`prepare` takes the encoder's private copy of an image (the one copy any encoder
    makes: into an FFmpeg frame, or into bytes); the caller checks that the source — a slot
    of the camera's frame ring — was not overwritten meanwhile, then :meth:`put` encodes and
    writes the copy. :meth:`write` is both in one.
    """

    path: Path

    def prepare(self, image: np.ndarray) -> Any:
        """Copy ``image`` into what :meth:`put` encodes."""

    def put(self, prepared: Any, index: int) -> None:
        """Encode and append a prepared image; ``index`` counts frames from the start."""

    def write(self, image: np.ndarray, index: int) -> None:
        """Append one image (:meth:`prepare` then :meth:`put`)."""

    def close(self) -> None:
        """Flush and finalise the file."""


def _in_format(image: np.ndarray) -> str:
    if image.ndim == 2:
        return "gray" if image.dtype == np.uint8 else "gray16le"
    if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return "rgb24"
    raise ValueError(f"cannot record images of shape {image.shape} and dtype {image.dtype}")


def _stream_format(codec: str, in_fmt: str) -> str:
    if codec == "ffv1":
        return {"gray": "gray", "gray16le": "gray16le", "rgb24": "bgr0"}[in_fmt]
    if in_fmt == "gray16le":
        raise CodecUnavailable(f"codec {codec!r} cannot record 16-bit frames; use ffv1 or raw")
    if codec == "h264":
        return "yuvj420p" if in_fmt == "gray" else "yuv444p"  # full range: luma exact at qp 0
    return "yuv420p" if in_fmt == "gray" else "yuv444p"


def codec_options(rec: RecordingConfig, fps: float) -> dict[str, str]:
    """Encoder options of a recording config."""
    gop = str(max(1, round(rec.keyframe_s * fps)))
    if rec.codec == "ffv1":
        return {"level": "3", "slicecrc": "1", "slices": "4", "g": gop}
    if rec.codec == "h264":
        quality = {"qp": "0"} if rec.lossless else {"crf": str(rec.crf)}
        return {"preset": rec.preset, "g": gop, "bf": "0", **quality}
    return {"preset": rec.preset if rec.preset.startswith("p") else "p1", "tune": "ll",
            "g": gop, "bf": "0", **({"tune": "lossless"} if rec.lossless else {})}


def check_codec(rec: RecordingConfig) -> None:
    """Raise :class:`CodecUnavailable` unless the codec of ``rec`` can encode here.

    Opens a tiny encoder once, so a missing GPU (NVENC) or library is found before a run.
    """
    if rec.codec in ("raw", "none"):
        return
    try:
        import av
    except ImportError:
        raise CodecUnavailable(
            f"codec {rec.codec!r} needs PyAV ('pip install av'); or use recording.codec: raw"
        ) from None
    name = ENCODERS[rec.codec]
    if name not in av.codecs_available:
        raise CodecUnavailable(f"codec {rec.codec!r}: FFmpeg encoder {name!r} is not available")
    try:
        ctx: Any = av.CodecContext.create(name, "w")
        ctx.width, ctx.height, ctx.pix_fmt = 64, 64, _stream_format(rec.codec, "gray")
        ctx.time_base = Fraction(1, 30)
        ctx.open()
    except Exception as exc:  # FFmpeg reports a failed open with several error types
        raise CodecUnavailable(f"codec {rec.codec!r} ({name}) cannot be opened: {exc}") from None


class AvSink:
    """Matroska video through PyAV (opened on the first image)."""

    def __init__(self, path: Path, rec: RecordingConfig, fps: float, image: np.ndarray) -> None:
        import av

        self.path = path
        self.in_fmt = _in_format(image)
        self._av = av
        self.container: Any = cast(Any, av.open(
            str(path), "w", format="matroska",
            options={"flush_packets": "1", "cluster_time_limit": "250"},
        ))
        rate = Fraction(fps).limit_denominator(1000)
        self.stream: Any = cast(Any, self.container.add_stream(ENCODERS[rec.codec], rate=rate))
        self.stream.width, self.stream.height = image.shape[1], image.shape[0]
        self.stream.pix_fmt = _stream_format(rec.codec, self.in_fmt)
        self.stream.time_base = 1 / rate
        self.stream.codec_context.options = codec_options(rec, fps)
        self.stream.codec_context.thread_count = rec.threads
        self.stream.metadata["livepose_input"] = self.in_fmt

    def prepare(self, image: np.ndarray) -> Any:
        return self._av.VideoFrame.from_ndarray(image, format=self.in_fmt)  # copies

    def put(self, prepared: Any, index: int) -> None:
        prepared.pts = index
        for pkt in self.stream.encode(prepared):
            self.container.mux(pkt)

    def write(self, image: np.ndarray, index: int) -> None:
        self.put(self.prepare(image), index)

    def close(self) -> None:
        try:
            for pkt in self.stream.encode(None):
                self.container.mux(pkt)
        finally:
            self.container.close()


class RawSink:
    """Raw frames appended to one file; shape and dtype in a JSON sidecar."""

    def __init__(self, path: Path, image: np.ndarray) -> None:
        self.path = path
        meta = {"shape": list(image.shape), "dtype": image.dtype.str}
        path.with_name(path.name + ".json").write_text(json.dumps(meta))
        self._f = path.open("ab", buffering=0)

    def prepare(self, image: np.ndarray) -> Any:
        return np.ascontiguousarray(image).tobytes()

    def put(self, prepared: Any, index: int) -> None:
        self._f.write(prepared)

    def write(self, image: np.ndarray, index: int) -> None:
        self._f.write(np.ascontiguousarray(image).data.cast("B"))

    def close(self) -> None:
        self._f.close()


def video_path(folder: Path, cam: str, codec: str) -> Path:
    """The video file of a camera."""
    return folder / f"{cam}.{'raw' if codec == 'raw' else 'mkv'}"


def open_sink(folder: Path, cam: str, rec: RecordingConfig, fps: float, image: np.ndarray) -> Sink:
    """Open the sink of one camera for images like ``image``."""
    path = video_path(folder, cam, rec.codec)
    if rec.codec == "raw":
        return RawSink(path, image)
    return AvSink(path, rec, fps, image)


def iter_frames(path: Path) -> Iterator[np.ndarray]:
    """Decode a recorded video (``.mkv`` or ``.raw``) frame by frame, in the recorded layout.

    A truncated file (killed writer) yields every frame that decodes, then stops.
    """
    if path.suffix == ".raw":
        meta = json.loads(path.with_name(path.name + ".json").read_text())
        shape, dtype = tuple(meta["shape"]), np.dtype(meta["dtype"])
        size = int(np.prod(shape)) * dtype.itemsize
        with path.open("rb") as f:
            while len(buf := f.read(size)) == size:
                yield np.frombuffer(buf, dtype=dtype).reshape(shape)
        return
    import av

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        fmt = stream.metadata.get("livepose_input") or stream.metadata.get("LIVEPOSE_INPUT")
        try:
            for frame in c.decode(stream):
                yield frame.to_ndarray(format=fmt or "gray")
        except (av.error.InvalidDataError, av.error.EOFError):
            return
