"""One segment of a camera's recording: a video file and its frame table.

Written by the camera's encoder process (:mod:`livepose.acquisition.encoder`), never by the
camera: for each frame the camera published, :meth:`SegmentWriter.frame` checksums the
image where it lies (the camera's frame ring), takes the encoder's one private copy,
checks that the ring slot was not reused meanwhile, encodes it
(:mod:`livepose.acquisition.encoders`) and appends a row to the segment's frame table
``video/<stem>_frames.csv`` (written with one ``write(2)`` per frame, so a killed encoder
leaves the table at most one row behind its video, whose packets are flushed as muxed)::

    frame_id, video_index, recorded, t_trigger_ns, t_exposure_ns, t_grab_ns, t_pub_ns,
    t_write_ns, dropped_before, duplicates_before, desync, checksum

``recorded`` is 1 when the frame is in the video at ``video_index``, 0 when it is not —
loud: counted (``rec_lost``, and why: ``rec_lapped`` the camera's ring overwrote the pixels
before the encoder read them, ``rec_gap`` the encoder never saw the frame, e.g. while it was
restarting, ``rec_errors`` the writer failed), logged, published as the encoder's last error
and written to the event log. A row of a frame the encoder never saw carries only its
``frame_id``. ``desync`` is the camera's timing model's verdict
(:mod:`livepose.acquisition.timing`). ``checksum`` is xxh3-64 (or crc32) of the image bytes
as published, hex (empty when the pixels were gone).

The stem is the camera's name, or ``<cam>.<n>`` for a later segment (the encoder restarted,
or recovered from a write error): nothing recorded is ever overwritten.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from livepose.acquisition.encoders import Sink, open_sink, video_path
from livepose.core import protocol
from livepose.core.config import Config
from livepose.kit.session import EventLog, segments, video_dir
from livepose.transport import shmring

log = logging.getLogger(__name__)

COLUMNS = ["frame_id", "video_index", "recorded", "t_trigger_ns", "t_exposure_ns", "t_grab_ns",
           "t_pub_ns", "t_write_ns", "dropped_before", "duplicates_before", "desync", "checksum"]
#: table bytes held while the disk refuses them (≈ 100 000 rows), then rows are dropped (counted)
MAX_PENDING_BYTES = 16 << 20
#: rows back-filled for one gap at most (a frame_id jump beyond it is a bug upstream)
MAX_GAP_ROWS = 1_000_000


def checksum_fn(kind: str) -> Callable[[memoryview], str]:
    """Frame checksum by name: ``xxh3`` (xxh3-64, falls back to crc32 without xxhash),
    ``crc32`` or ``none``."""
    if kind == "xxh3":
        try:
            import xxhash

            fn: Callable[[memoryview], str] = xxhash.xxh3_64_hexdigest
            return fn
        except ImportError:
            kind = "crc32"
    if kind == "crc32":
        return lambda b: format(zlib.crc32(b), "08x")
    return lambda b: ""


def image_checksum(image: Any, kind: str = "xxh3") -> str:
    """Checksum of an image's bytes (C order), as written in the frame table."""
    return checksum_fn(kind)(np.ascontiguousarray(image).data.cast("B"))


def next_stem(session: Path, cam: str) -> str:
    """The stem of a camera's next segment (``cam``, then ``cam.1``, ``cam.2``…)."""
    have = segments(session, cam)
    if not have:
        return cam
    last = have[-1]
    return f"{cam}.{1 if last == cam else int(last.rsplit('.', 1)[1]) + 1}"


def last_frame_id(session: Path, cam: str) -> int | None:
    """The last frame_id a camera's frame tables account for (``None``: no row yet); a
    torn last line (killed writer) is skipped."""
    for stem in reversed(segments(session, cam)):
        path = video_dir(session) / f"{stem}_frames.csv"
        try:
            with path.open("rb") as f:
                f.seek(max(0, path.stat().st_size - 4096))
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            continue
        for line in reversed(lines):
            cells = line.split(",")
            if len(cells) == len(COLUMNS) and cells[0].isdigit():
                return int(cells[0])
    return None


class SegmentWriter:
    """Writes one segment (video + frame table) of one camera's recording.

    Parameters
    ----------
    session
        The session folder.
    cam
        Camera name.
    cfg
        The run's config (``recording``, ``fps``).
    counters
        The encoder process's health counters.
    on_error
        Called with a message for every loud error (the encoder's ``ctx.error``).
    after
        The last frame_id accounted for before this segment (an earlier segment's), so a
        gap up to the first frame is written as ``recorded=0`` rows; ``None``: no gap.
    held
        Table bytes an earlier segment could not write (disk full), written first.

    Raises
    ------
    OSError
        The frame table cannot be created (full or read-only disk).
    """

    def __init__(self, session: Path, cam: str, cfg: Config, counters: Counter[str],
                 on_error: Callable[[str], None], after: int | None = None,
                 held: bytes = b"") -> None:
        self.session, self.cam, self.cfg = session, cam, cfg
        self.rec = cfg.recording
        self.counters = counters
        self.on_error = on_error
        self.events = EventLog(session / "events.jsonl", f"{cam}.enc")
        self._check = checksum_fn(self.rec.checksum)
        self.failed: str | None = None
        self.recorded = 0
        self.lost = 0
        self.why: Counter[str] = Counter()  # this segment's losses by cause
        self.first: int | None = None
        self.last = after
        self.shape: tuple[tuple[int, ...], str] | None = None
        folder = video_dir(session)
        folder.mkdir(parents=True, exist_ok=True)
        self.stem = next_stem(session, cam)
        self.table_path = folder / f"{self.stem}_frames.csv"
        self._fd = os.open(self.table_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._pending = bytearray((",".join(COLUMNS) + "\n").encode())
        self._flush()
        self._pending += held  # an earlier segment's rows come after this table's header
        self._sink: Sink | None = None
        self._last_loss_log = 0.0
        self.events.emit("record_start", cam=cam, segment=self.stem, codec=self.rec.codec)

    # ------------------------------------------------------------------ frames
    def fits(self, image: np.ndarray) -> bool:
        """Whether ``image`` can go into this segment's video (same shape and dtype as
        the first; a camera restarted with another ROI starts a new segment)."""
        return self.shape is None or image.size == 0 or \
            self.shape == (image.shape, image.dtype.str)

    def frame(self, msg: protocol.Frame) -> bool:
        """Record one published frame; ``msg.image`` holds its pixels (a view of the ring
        slot, or an array; empty: the ring had reused the slot). Returns whether the frame
        is in the video."""
        self._backfill(msg.frame_id, msg.dropped_before)
        img = msg.image
        self.first = msg.frame_id if self.first is None else self.first
        self.last = msg.frame_id if self.last is None else max(self.last, msg.frame_id)
        if img.size == 0:
            self._lost(msg.frame_id, "rec_lapped", "the camera's ring reused its slot before "
                       "the encoder read it (the encoder fell a whole ring behind)")
            self._row(msg, "", "")
            return False
        check = self._check(np.ascontiguousarray(img).data.cast("B"))
        if self.rec.codec == "none":  # frame table only (replayed videos: the source is the video)
            self.counters["rec_table_only"] += 1
            self._row(msg, "", check)
            return False
        index = ""
        if self.failed is None:
            try:
                if self._sink is None:
                    self._sink = open_sink(video_dir(self.session), self.stem, self.rec,
                                           self.cfg.fps, img)
                    self.shape = (img.shape, img.dtype.str)
                prepared = self._sink.prepare(img)  # the encoder's own copy
                if shmring.intact(img):
                    self._sink.put(prepared, self.recorded)
                    index = str(self.recorded)
                    self.recorded += 1
                else:
                    self._lost(msg.frame_id, "rec_lapped", "the camera's ring reused its slot "
                               "while the encoder copied it")
                    self._row(msg, "", "")
                    return False
            except Exception as exc:  # OSError (ENOSPC, EIO) or FFmpeg errors: all loud
                self._fail(f"{self.cam}: video writer failed at frame {msg.frame_id}: {exc}")
        if index == "":
            self._lost(msg.frame_id, None, None)
        else:
            self.counters["rec_frames"] += 1
        self._row(msg, index, check)
        return index != ""

    def _backfill(self, frame_id: int, dropped_before: int) -> None:
        """Rows for the frames between the last one accounted for and ``frame_id`` that
        the camera published (not its own drops) but this encoder never saw."""
        if self.last is None:
            return
        gap = min(MAX_GAP_ROWS, frame_id - self.last - 1 - max(0, dropped_before))
        if gap <= 0:
            return
        for fid in range(self.last + 1, self.last + 1 + gap):
            self._append([fid, "", 0, *[""] * 9])
        self.counters["rec_gap"] += gap
        self.counters["rec_lost"] += gap
        self.why["gap"] += gap
        self.lost += gap
        self._loud(f"{self.cam}: {gap} frame(s) {self.last + 1}…{self.last + gap} never "
                   "reached the encoder: NOT recorded", "rec_gap", first=self.last + 1, n=gap)

    def _lost(self, frame_id: int, why: str | None, text: str | None) -> None:
        self.counters["rec_lost"] += 1
        self.lost += 1
        self.why[why or "rec_errors"] += 1
        if why is not None and text is not None:
            self.counters[why] += 1
            self._loud(f"{self.cam}: frame {frame_id} NOT recorded: {text} "
                       f"({self.counters[why]} so far)", why, frame_id=frame_id)

    def _loud(self, text: str, kind: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._last_loss_log > 1.0:  # at most once a second
            self._last_loss_log = now
            self.on_error(text)
            self.events.emit(kind, cam=self.cam, total=self.counters[kind], **fields)

    def _row(self, msg: protocol.Frame, index: str, check: str) -> None:
        self._append([msg.frame_id, index, int(index != ""), msg.t_trigger_ns,
                      msg.t_exposure_ns, msg.t_grab_ns, msg.t_pub_ns, time.time_ns(),
                      msg.dropped_before, msg.duplicates_before, int(msg.desync), check])
        self._flush()  # one write(2) per frame: the table never lags the flushed video

    def _append(self, row: list[Any]) -> None:
        if len(self._pending) > MAX_PENDING_BYTES:
            self.counters["rec_rows_dropped"] += 1
            return
        self._pending += (",".join("" if v is None else str(v) for v in row) + "\n").encode()

    def _flush(self) -> None:
        while self._pending:
            try:
                n = os.write(self._fd, self._pending)
            except OSError as exc:  # kept: written once the disk takes it again
                self._fail(f"{self.cam}: frame table {self.table_path} write failed: {exc}")
                return
            del self._pending[:n]

    def _fail(self, text: str) -> None:
        self.counters["rec_errors"] += 1
        if self.failed is None:
            self.failed = text
            self.on_error(text)
            self.events.emit("writer_error", cam=self.cam, segment=self.stem, error=text)

    # ------------------------------------------------------------------ end
    def take_pending(self) -> bytes:
        """Hand over the table bytes not written yet (to the next segment)."""
        out, self._pending = bytes(self._pending), bytearray()
        return out

    def close(self) -> None:
        """Finish the video, the table and the segment's summary (``<stem>.json``)."""
        if self._sink is not None:
            try:
                self._sink.close()
            except Exception as exc:  # same as frame(): every failure is reported
                self._fail(f"{self.cam}: closing the video failed: {exc}")
        self._flush()
        os.close(self._fd)
        summary = {
            "cam": self.cam, "segment": self.stem, "codec": self.rec.codec,
            "checksum": self.rec.checksum,
            "video": None if self.rec.codec == "none" else
            video_path(video_dir(self.session), self.stem, self.rec.codec).name,
            "frames_recorded": self.recorded, "frames_lost": self.lost,
            "lapped": self.why["rec_lapped"], "gap": self.why["gap"],
            "write_errors": self.why["rec_errors"],
            "first_frame_id": self.first, "last_frame_id": self.last, "error": self.failed,
            "unwritten_table_bytes": len(self._pending), "closed": True,
        }
        try:
            (video_dir(self.session) / f"{self.stem}.json").write_text(
                json.dumps(summary, indent=2))
        except OSError as exc:
            log.error("%s: cannot write the writer summary: %s", self.cam, exc)
        self.events.emit("record_stop", cam=self.cam, segment=self.stem,
                         frames=self.recorded, lost=self.lost, error=self.failed)
