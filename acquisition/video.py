"""The ``video`` camera backend: a recorded video replayed as a live camera (PyAV).

``path`` is a video file, or a folder of per-camera videos (a recorded session, or any
multi-view set) in which the camera's file is the one whose name contains the camera name
as a whole word (``cam1`` matches ``run_cam1.mkv``, not ``run_cam10.mkv``).

Software-triggered (default): pulse ``frame_id`` shows frame index ``frame_id`` of the video,
so ``frame_id`` means the same instant in every view and run the trigger clock at the
recorded rate (:func:`probe_rate`) for real time, or faster. ``free_run``: frames are decoded
and published as fast as possible, numbered by index. ``loop``: after the last frame the
video starts again (frame ``k`` shows index ``k mod n``); otherwise the camera reports the
end (``end_of_video``) and delivers nothing more.

A recorded livepose session (``path`` = the session folder, whose ``video/<cam>_frames.csv``
exists) is replayed by its frame tables: pulse ``frame_id`` shows the frame recorded *as*
``frame_id``, across every segment (a restarted encoder's ``<cam>.1.mkv``…), and a frame the
recording lost (a ``recorded=0`` row, a gap between segments) is not delivered at all
(counted ``not_recorded``; the camera process counts the gap as a drop), so the views stay
in step however much each camera's recording lost.

Pixel formats: ``gray`` → Mono8, ``gray16*`` → Mono16, ``yuv420``-family → RGB8 ``(H, W, 3)``,
or Mono8 (the luma plane) when the first frame's chroma is flat (an h264 recording of mono
frames) or ``color: mono``; everything else → RGB8.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from livepose.acquisition.base import Grab
from livepose.core.errors import UserError
from livepose.kit.session import RecordedSegment, recorded_segments, video_dir

VIDEO_SUFFIXES = (".mkv", ".mp4", ".avi", ".mov", ".webm", ".mpg", ".mpeg", ".m4v")


def find_video(path: Path, cam: str) -> Path:
    """The video of camera ``cam``: ``path`` itself, or the one file in folder ``path``
    whose name contains ``cam`` as a whole word (``UserError`` naming the camera otherwise)."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserError(f"camera {cam!r}: path: {path} does not exist")
    word = re.compile(rf"(?<![A-Za-z0-9]){re.escape(cam)}(?![A-Za-z0-9])")
    found = sorted(
        p for p in path.iterdir()
        if p.suffix.lower() in VIDEO_SUFFIXES and word.search(p.stem)
    )
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        there = "" if found else " (videos there: " + (", ".join(sorted(
            p.name for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)) or
            "none") + ")"
        raise UserError(
            f"camera {cam!r}: path: expected one video named after the camera in {path}, "
            f"found {names}{there}"
        )
    return found[0]


def probe_rate(path: Path) -> float:
    """The recorded frame rate of a video (frames per second)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        return float(rate) if rate else 0.0


CHROMA_FLAT = 2.0  # grey levels: chroma this close to neutral everywhere = a mono recording


def _layout(fmt: str, color: str = "mono", first: Any = None) -> tuple[str, str]:
    """``(PyAV output format, pixel_format)`` for a stream pixel format; ``color`` (``auto``,
    ``mono``, ``rgb``) decides yuv420 video, ``auto`` from the chroma of ``first`` (a
    decoded frame)."""
    if fmt in ("gray", "gray8"):
        return "gray", "Mono8"
    if fmt.startswith("gray1"):  # gray10le, gray12le, gray16le…
        return "gray16le", "Mono16"
    if fmt.startswith(("yuv420", "yuvj420", "nv12")):
        if color == "auto" and first is not None:
            yuv = first.to_ndarray(format="yuv420p")
            h = yuv.shape[0] * 2 // 3
            chroma = yuv[h:].astype(np.int16)
            color = "mono" if np.abs(chroma - 128).max() <= CHROMA_FLAT else "rgb"
        if color != "rgb":
            return "gray", "Mono8"
    return "rgb24", "RGB8"


class VideoCamera:
    """One camera's video, decoded frame by frame.

    Parameters
    ----------
    cam_cfg
        A :class:`~livepose.core.config.VideoCameraConfig`.
    cfg, index
        Unused (uniform backend signature).
    """

    counter_bits = 64
    counter_origin: int | None = 0

    def __init__(self, cam_cfg: Any, cfg: Any = None, index: int = 0) -> None:
        self.cc = cam_cfg
        self.name: str = cam_cfg.name
        self.software_triggered = not cam_cfg.free_run
        self.pixel_format = "Mono8"
        self.counters: Counter[str] = Counter()
        self.file: Path | None = None
        self.frames_in_file: int | None = None
        self._container: Any = None
        self._frames: Iterator[Any] | None = None
        self._out_fmt = "gray"
        self._auto = ("gray", "Mono8")  # color: auto's verdict (first open)
        self._next_index = 0  # index in the file of the next decoded frame
        self._count = 0  # frames delivered (free_run counter)
        self._pending: tuple[int, int] | None = None
        self._last: np.ndarray | None = None
        self.ended = False
        # a recorded session: its segments, and frame_id -> (segment, video index)
        self._segs: list[RecordedSegment] = []
        self._where: dict[int, tuple[int, int]] = {}
        self._seg = 0
        self.last_frame_id = -1

    def open(self) -> None:
        """Find and open the video (a session's first segment); read its first frame's
        format."""
        import av

        path = Path(self.cc.path)
        if (video_dir(path) / f"{self.name}_frames.csv").is_file():
            self._open_session(path)
        else:
            self.file = find_video(path, self.name)
        try:
            self._restart()
        except av.FFmpegError as exc:
            self.close()
            raise UserError(f"camera {self.name!r}: path: cannot decode {self.file} ({exc})") from None

    def _open_session(self, session: Path) -> None:
        """Index a recorded session's segments by frame id."""
        self._segs = [s for s in recorded_segments(session, self.name)
                      if s.video is not None and s.video.suffix == ".mkv" and len(s.frame_ids)]
        if not self._segs:
            raise UserError(f"camera {self.name!r}: path: the session {session} has no "
                            f"replayable video (.mkv) of {self.name}")
        for k, seg in enumerate(self._segs):
            for i, fid in enumerate(seg.frame_ids.tolist()):
                self._where.setdefault(int(fid), (k, i))
        self.last_frame_id = max(self._where)
        self.file = self._segs[0].video

    def _session_frame(self, frame_id: int) -> np.ndarray | None:
        """The frame recorded as ``frame_id`` (``None``: not recorded, or past the end)."""
        if self.cc.loop:
            frame_id %= self.last_frame_id + 1
        at = self._where.get(frame_id)
        if at is None:
            if frame_id <= self.last_frame_id:
                self.counters["not_recorded"] += 1
            return None
        seg, index = at
        if seg != self._seg:  # the next (or an earlier) segment's file
            self._seg = seg
            self.file = self._segs[seg].video
            self._restart()
        return self._frame_at(index)

    def _restart(self) -> None:
        import av

        if self._container is not None:
            self._container.close()
        color = getattr(self.cc, "color", "auto")
        if color == "auto" and self._container is None:  # once: the first frame's chroma
            with av.open(str(self.file)) as probe:
                first = next(probe.decode(probe.streams.video[0]), None)
                self._auto = _layout(probe.streams.video[0].codec_context.pix_fmt or "gray",
                                     "auto", first)
        self._container = av.open(str(self.file))
        stream = self._container.streams.video[0]
        self._out_fmt, self.pixel_format = self._auto if color == "auto" else \
            _layout(stream.codec_context.pix_fmt or "gray", color)
        self._frames = iter(self._container.decode(stream))
        self._next_index = 0
        self._last = None

    def arm(self) -> None:
        """Nothing to start: frames are decoded on demand."""

    def software_trigger(self, frame_id: int, t_trigger_ns: int) -> None:
        """Pulse ``frame_id`` asks for frame index ``frame_id`` (mod length when looping)."""
        self._pending = (frame_id, t_trigger_ns)

    def _decode(self) -> np.ndarray | None:
        """The next frame of the file (``None`` at its end, whose length is then known)."""
        assert self._frames is not None
        frame = next(self._frames, None)
        if frame is None:
            self.frames_in_file = self._next_index
            return None
        self._next_index += 1
        image: np.ndarray = frame.to_ndarray(format=self._out_fmt)
        self._last = image
        return image

    def _frame_at(self, index: int) -> np.ndarray | None:
        """Frame ``index`` of the file (``mod`` its length when looping): decoded forward,
        re-opening the file when it lies behind; ``None`` past the end."""
        for _ in range(3):
            n = self.frames_in_file
            if self.cc.loop and n:
                index %= n
            if index < self._next_index - 1:
                self._restart()
            if index == self._next_index - 1 and self._last is not None:
                return self._last
            while self._next_index <= index:
                image = self._decode()
                if image is None:
                    break
                if self._next_index - 1 == index:
                    return image
                self.counters["skipped"] += 1
            if not self.cc.loop or not self.frames_in_file:
                return None
        return None

    def _next_frame(self) -> np.ndarray | None:
        """Free run: the next frame (a session's next segment after the end of one), from
        the start again when looping."""
        image = self._decode()
        while image is None and self._segs and self._seg + 1 < len(self._segs):
            self._seg += 1
            self.file = self._segs[self._seg].video
            self._restart()
            image = self._decode()
        if image is None and self.cc.loop and self.frames_in_file:
            if self._segs:
                self._seg = 0
                self.file = self._segs[0].video
            self._restart()
            image = self._decode()
        return image

    def grab(self, timeout_s: float) -> Grab | None:
        """The pending pulse's frame, or (free_run) the next one; ``None`` at the end."""
        if self.software_triggered:
            if self._pending is None:
                time.sleep(min(timeout_s, 0.01))
                return None
            frame_id, t_trig = self._pending
            self._pending = None
            if self._segs:
                image = self._session_frame(frame_id)
                if image is None and frame_id <= self.last_frame_id:
                    return None  # not recorded: a gap in the counter, not the end
            else:
                image = self._frame_at(frame_id)
            counter: int = frame_id
        else:
            t_trig = None
            image = self._next_frame()
            counter = self._count
            if self._segs and image is not None:  # a session: numbered as recorded
                ids = self._segs[self._seg].frame_ids
                counter = int(ids[min(self._next_index - 1, len(ids) - 1)])
        if image is None:
            if not self.ended:
                self.ended = True
                self.counters["end_of_video"] = 1
            time.sleep(min(timeout_s, 0.01))
            return None
        self._count += 1
        # pulse k is frame k of the file: its exposure *is* the pulse's instant (like the
        # sim's sensors), so the timing model never mistakes decoding lag for desync
        return Grab(image=image, counter=counter, t_grab_ns=time.time_ns(), t_trigger_ns=t_trig,
                    t_exposure_ns=t_trig)

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._container is not None:
            self._container.close()
            self._container = None
        self._frames = None
