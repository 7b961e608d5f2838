"""The video writer next to each camera: a thread fed by a bounded in-process queue.

The camera loop calls :meth:`FrameRecorder.submit` right after publishing a frame; it never
blocks. The writer thread checksums the image (the same bytes that were published), encodes
it (:mod:`livepose.acquisition.encoders`) and appends a row to the camera's frame table
``video/<cam>_frames.csv`` (flushed after every frame, so a killed process leaves the table
at most one row behind the video, whose packets are flushed as they are muxed)::

    frame_id, video_index, recorded, t_trigger_ns, t_exposure_ns, t_grab_ns, t_pub_ns,
    t_write_ns, dropped_before, duplicates_before, desync, checksum

``recorded`` is 1 when the frame is in the video at ``video_index``; 0 when the queue was full
or the writer had failed — loud: counted (``rec_queue_full``, ``rec_lost``), logged, published
as the camera's last error and written to the event log. ``desync`` is the camera's timing model's
verdict (:mod:`livepose.acquisition.timing`): 1 when the frame does not show the instant of
its ``frame_id``. ``checksum`` is
xxh3-64 (or crc32) of the image bytes, hex.

:class:`RecordHook` is the small piece the camera process holds: it starts a recorder at
launch (``ctx.args["record"]``) or on a run-time ``record`` control message, and stops it.
"""

from __future__ import annotations

import csv
import json
import logging
import queue
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from livepose.acquisition.encoders import Sink, open_sink, video_path
from livepose.core import protocol
from livepose.core.config import Config
from livepose.core.control import RECORD_TOPIC, decode_record_control
from livepose.kit.realtime import leave_realtime
from livepose.kit.session import EventLog, video_dir

log = logging.getLogger(__name__)

COLUMNS = ["frame_id", "video_index", "recorded", "t_trigger_ns", "t_exposure_ns", "t_grab_ns",
           "t_pub_ns", "t_write_ns", "dropped_before", "duplicates_before", "desync", "checksum"]
POLL_S = 0.25  # how often the writer wakes to write rows of frames the queue refused


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


#: rows of lost frames kept while the writer is stalled (a few MB at most, no pixels)
MAX_LOST_ROWS = 100_000
_NO_PIXELS = np.zeros((1, 1), np.uint8)


class FrameRecorder:
    """Writes one camera's frames of one session (video + frame table) on its own thread.

    Parameters
    ----------
    session
        The session folder.
    cam
        Camera name.
    cfg
        The run's config (``recording``, ``fps``, ``desync_tolerance_ms``).
    counters
        The camera process's health counters.
    on_error
        Called with a message for every loud error (the camera's ``ctx.error``).
    """

    def __init__(self, session: Path, cam: str, cfg: Config, counters: Counter[str],
                 on_error: Callable[[str], None]) -> None:
        self.session, self.cam, self.cfg = session, cam, cfg
        self.rec = cfg.recording
        self.counters = counters
        self.on_error = on_error
        self.events = EventLog(session / "events.jsonl", cam)
        self.queue: queue.Queue[tuple[protocol.Frame, int] | None] = queue.Queue(
            maxsize=max(8, round(self.rec.queue_s * cfg.fps)))
        self._check = checksum_fn(self.rec.checksum)
        # frames the queue had no room for: their table rows only (never their pixels, which a
        # stalled disk would pile up in the camera process), at most MAX_LOST_ROWS
        self._lost: list[tuple[protocol.Frame, int, str]] = []
        self._lock = threading.Lock()
        self._dups = 0
        self.failed: str | None = None
        self.recorded = 0
        self.first: int | None = None
        self.last: int | None = None
        self._last_full_log = 0.0
        folder = video_dir(session)
        folder.mkdir(parents=True, exist_ok=True)
        #: the files' stem: the camera's name, or ``<cam>.<n>`` when a camera restarted in
        #: the middle of a session (what it recorded before is never overwritten)
        self.stem = cam
        n = 1
        while (folder / f"{self.stem}_frames.csv").exists():
            self.stem = f"{cam}.{n}"
            n += 1
        self._table_file = (folder / f"{self.stem}_frames.csv").open("w", newline="")
        self._table = csv.writer(self._table_file, lineterminator="\n")
        self._table.writerow(COLUMNS)
        self._table_file.flush()
        self._sink: Sink | None = None
        self._thread = threading.Thread(target=self._run, name=f"recorder-{cam}", daemon=True)
        self._thread.start()
        self.events.emit("record_start", cam=cam, codec=self.rec.codec)

    # ---------------------------------------------------------------- camera thread
    def submit(self, msg: protocol.Frame, duplicates_total: int = 0) -> bool:
        """Queue a published frame (never blocks). Returns False if it was lost (loud)."""
        dups, self._dups = duplicates_total - self._dups, duplicates_total
        try:
            self.queue.put_nowait((msg, dups))
            return True
        except queue.Full:
            pass
        self.counters["rec_queue_full"] += 1
        check = self._check(np.ascontiguousarray(msg.image).data.cast("B"))
        stub = protocol.Frame(cam=msg.cam, frame_id=msg.frame_id, t_grab_ns=msg.t_grab_ns,
                              pixel_format=msg.pixel_format, image=_NO_PIXELS,
                              t_trigger_ns=msg.t_trigger_ns, t_exposure_ns=msg.t_exposure_ns,
                              t_pub_ns=msg.t_pub_ns, dropped_before=msg.dropped_before,
                              desync=msg.desync)
        with self._lock:
            if len(self._lost) < MAX_LOST_ROWS:
                self._lost.append((stub, dups, check))
            else:
                self.counters["rec_lost_rows_dropped"] += 1
        now = time.monotonic()
        if now - self._last_full_log > 1.0:
            self._last_full_log = now
            text = (f"{self.cam}: recording queue full ({self.queue.maxsize} frames): frame "
                    f"{msg.frame_id} NOT recorded ({self.counters['rec_queue_full']} so far)")
            self.on_error(text)
            self.events.emit("queue_full", cam=self.cam, frame_id=msg.frame_id,
                             total=self.counters["rec_queue_full"])
        return False

    def finish(self) -> None:
        """Ask the writer to drain and close (returns at once; see :meth:`join`)."""
        self.queue.put(None)

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the writer to finish; True if it did."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    # ---------------------------------------------------------------- writer thread
    def _run(self) -> None:
        leave_realtime()  # bulk encoding: never ahead of the camera loop
        while True:
            try:
                item = self.queue.get(timeout=POLL_S)
            except queue.Empty:
                item = (None, 0)  # type: ignore[assignment]
            self._write_lost()
            if item is None:
                break
            if item[0] is not None:
                self._write(*item)
            self._flush()  # one write(2) per frame: the table never lags the flushed video
        self._close()

    def _write(self, msg: protocol.Frame, dups: int) -> None:
        img = msg.image
        index = ""
        if self.rec.codec == "none":  # frame table only (replayed videos: the source is the video)
            self.counters["rec_table_only"] += 1
            self.first = msg.frame_id if self.first is None else self.first
            self.last = msg.frame_id
            self._row(msg, dups, "", self._check(np.ascontiguousarray(img).data.cast("B")))
            return
        if self.failed is None:
            try:
                if self._sink is None:
                    self._sink = open_sink(video_dir(self.session), self.stem, self.rec,
                                           self.cfg.fps, img)
                self._sink.write(img, self.recorded)
                index = str(self.recorded)
                self.recorded += 1
            except Exception as exc:  # OSError (ENOSPC, EIO) or FFmpeg errors: all loud
                self._fail(f"{self.cam}: video writer failed at frame {msg.frame_id}: {exc}")
        if index == "":
            self.counters["rec_lost"] += 1
        else:
            self.counters["rec_frames"] += 1
        self.first = msg.frame_id if self.first is None else self.first
        self.last = msg.frame_id
        self._row(msg, dups, index, self._check(np.ascontiguousarray(img).data.cast("B")))

    def _write_lost(self) -> None:
        with self._lock:
            lost, self._lost = self._lost, []
        for msg, dups, check in lost:
            self.counters["rec_lost"] += 1
            self._row(msg, dups, "", check)

    def _row(self, msg: protocol.Frame, dups: int, index: str, check: str) -> None:
        row = [msg.frame_id, index, int(index != ""), msg.t_trigger_ns, msg.t_exposure_ns,
               msg.t_grab_ns, msg.t_pub_ns, time.time_ns(), msg.dropped_before, dups,
               int(msg.desync), check]
        try:
            self._table.writerow(["" if v is None else v for v in row])
        except OSError as exc:
            self._fail(f"{self.cam}: frame table write failed: {exc}")

    def _flush(self) -> None:
        try:
            self._table_file.flush()
        except OSError as exc:
            self._fail(f"{self.cam}: frame table flush failed: {exc}")

    def _fail(self, text: str) -> None:
        self.counters["rec_errors"] += 1
        if self.failed is None:
            self.failed = text
            self.on_error(text)
            self.events.emit("writer_error", cam=self.cam, error=text)

    def _close(self) -> None:
        if self._sink is not None:
            try:
                self._sink.close()
            except Exception as exc:  # same as _write: every failure is reported
                self._fail(f"{self.cam}: closing the video failed: {exc}")
        try:
            self._table_file.close()
        except OSError as exc:
            self._fail(f"{self.cam}: closing the frame table failed: {exc}")
        summary = {
            "cam": self.cam, "codec": self.rec.codec, "checksum": self.rec.checksum,
            "video": None if self.rec.codec == "none" else
            video_path(video_dir(self.session), self.stem, self.rec.codec).name,
            "frames_recorded": self.recorded, "frames_lost": self.counters["rec_lost"],
            "queue_full": self.counters["rec_queue_full"], "first_frame_id": self.first,
            "last_frame_id": self.last, "error": self.failed, "closed": True,
        }
        try:
            (video_dir(self.session) / f"{self.stem}.json").write_text(json.dumps(summary, indent=2))
        except OSError as exc:
            log.error("%s: cannot write the writer summary: %s", self.cam, exc)
        self.events.emit("record_stop", cam=self.cam, frames=self.recorded,
                         lost=self.counters["rec_lost"], error=self.failed)


class RecordHook:
    """What the camera process holds: starts/stops a :class:`FrameRecorder`.

    Recording starts at launch when ``ctx.args["record"]`` is ``{"session": dir, "frame": N}``,
    or on a ``record`` control message from the supervisor (endpoint role ``record``).
    """

    def __init__(self, ctx: Any, cam: str) -> None:
        self.ctx, self.cam = ctx, cam
        self.rec: FrameRecorder | None = None
        self.start_frame = 0
        self.stop_frame: int | None = None
        self._old: list[FrameRecorder] = []
        ep = ctx.endpoints.get("record")
        self.sub = ctx.socket(zmq.SUB, connect=ep, subscribe=RECORD_TOPIC) if ep else None
        launch = ctx.args.get("record")
        if launch:
            self._start(Path(launch["session"]), launch.get("frame"))

    def _start(self, session: Path, frame: int | None) -> None:
        self._stop_now()
        self.rec = FrameRecorder(session, self.cam, self.ctx.cfg, self.ctx.counters,
                                 self.ctx.error)
        self.start_frame = frame or 0
        self.stop_frame = None

    def _stop_now(self) -> None:
        if self.rec is not None:
            self.rec.finish()
            self._old.append(self.rec)
            self.rec = None

    def poll(self) -> None:
        """Take in control messages (cheap; call once per loop)."""
        while self.sub is not None:
            try:
                parts = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            body = decode_record_control(parts)
            if body is None:
                self.ctx.counters["rejected_control"] += 1
            elif body["cmd"] == "start":
                self._start(Path(body["session"]), body["frame"])
            elif body["frame"] is None:
                self._stop_now()
            else:
                self.stop_frame = body["frame"]
        if self.rec is not None:
            self.ctx.rates["rec_queue"] = self.rec.queue.qsize()

    @property
    def recording(self) -> bool:
        """Whether frames are being written now."""
        return self.rec is not None

    def submit(self, msg: protocol.Frame) -> None:
        """Hand a just-published frame to the recorder (if recording covers it)."""
        if self.rec is None or msg.frame_id < self.start_frame:
            return
        if self.stop_frame is not None and msg.frame_id > self.stop_frame:
            self._stop_now()
            return
        self.rec.submit(msg, self.ctx.counters["duplicates"])

    def close(self, timeout_s: float = 60.0) -> None:
        """Finish every recorder and wait for it (at process exit)."""
        self._stop_now()
        for r in self._old:
            if not r.join(timeout_s):
                self.ctx.error(f"{self.cam}: the video writer did not finish in {timeout_s:.0f} s")
        self._old.clear()
