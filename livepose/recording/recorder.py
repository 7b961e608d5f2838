"""The recorder process: writes a session's 2D and 3D predictions as they stream.

It subscribes to every inference worker's ``kp2d``, to fusion's ``pose3d`` and to the
supervisor's ``record`` control topic, and appends rows (flushed every 0.25 s, so a killed
process leaves files that parse) to

- ``pose2d/<cam>.csv``: DeepLabCut / Lightning Pose layout (:mod:`livepose.formats.dlc`),
- ``pose3d.csv`` + ``pose3d_var.csv``: Anipose 3D layout (:mod:`livepose.formats.anipose3d`),
- with ``fusion.multi``: ``pose2d_individuals/<cam>.csv`` (each individual's 2D instance
  per camera, by the id fusion gave it) and ``pose3d_individuals.csv``, every individual's
  3D in DeepLabCut's
  multi-animal layout (:mod:`livepose.formats.dlc_multi`; column group ``id<k>`` = track id
  ``k``, ids up to ``individuals`` or ``max_tracks``),

one row per frame_id from the recording's first frame: frame-sets that were skipped or
incomplete get an empty (NaN) row, so row ``k`` is frame ``first + k`` in every file — what
``movement``, EKS and Anipose assume. Rows are held ``REORDER`` frames back so that several
inference workers may answer out of order. ``pose3d.trc`` is written when recording stops
(TRC needs the frame count in its header), or by ``livepose session repair``.

``ctx.args``: ``keypoints`` (names), ``record`` (``{"session", "frame"}`` to record from
launch).
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import IO

import numpy as np
import zmq

from livepose.core import protocol
from livepose.core.control import RECORD_TOPIC, decode_record_control
from livepose.formats import anipose3d, dlc, dlc_multi
from livepose.kit.process import StageContext
from livepose.kit.session import (
    EventLog,
    pose2d_path,
    pose3d_path,
)
from livepose.transport import codec

log = logging.getLogger(__name__)

REORDER = 64
FLUSH_S = 0.25
class _Rows:
    """Dense, in-order rows from ``first``: a reorder buffer in front of a CSV file."""

    def __init__(self, path: Path, header: list[list[str]], first: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f: IO[str] = path.open("w", newline="")
        self.w = csv.writer(self.f, lineterminator="\n")
        self.w.writerows(header)
        self.f.flush()
        self.next = first
        self.pending: dict[int, list[str]] = {}

    def put(self, frame_id: int, row: list[str]) -> None:
        if frame_id >= self.next:
            self.pending[frame_id] = row
        while self.pending and max(self.pending) - self.next >= REORDER:
            self._emit_next()

    def _emit_next(self) -> None:
        row = self.pending.pop(self.next, None)
        self.w.writerow(row if row is not None else self.empty(self.next))
        self.next += 1

    def empty(self, frame_id: int) -> list[str]:
        raise NotImplementedError

    def close(self, last: int | None) -> None:
        end = max([*self.pending, (last if last is not None else self.next - 1)], default=-1)
        while self.next <= end:
            self._emit_next()
        self.f.close()


class IndividualsRows(_Rows):
    """Rows of several animals' poses in DeepLabCut's multi-animal layout
    (:mod:`livepose.formats.dlc_multi`), one column group per track id:
    ``pose3d_individuals.csv`` (``x, y, z``) or, per camera,
    ``pose2d_individuals/<cam>.csv`` (``x, y, likelihood``: each individual's 2D instance
    that fusion measured it with)."""

    def __init__(self, path: Path, keypoints: list[str], n: int, first: int,
                 coords: tuple[str, str, str] = ("x", "y", "z")) -> None:
        self.J, self.N = len(keypoints), n
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(path, dlc_multi.multi_header([f"id{i}" for i in range(n)], keypoints,
                                                      coords), first)
        self.dropped = 0  # individuals whose id is past the columns (free mode)

    def empty(self, frame_id: int) -> list[str]:
        return dlc_multi.multi_row(frame_id, np.full((self.N, self.J, 3), np.nan))

    def add(self, frame_id: int, ids: np.ndarray, xyz: np.ndarray) -> None:
        """``ids`` ``(M,)`` track ids and their points ``xyz`` ``(M, J, 3)``."""
        out = np.full((self.N, self.J, 3), np.nan)
        for i, x in zip(ids, xyz, strict=False):
            if 0 <= int(i) < self.N and x.shape == (self.J, 3):
                out[int(i)] = x
            else:
                self.dropped += 1
        self.put(frame_id, dlc_multi.multi_row(frame_id, out))


class Dlc2dRows(_Rows):
    """Rows of one camera's DeepLabCut CSV (:mod:`livepose.formats.dlc`)."""

    def __init__(self, path: Path, keypoints: list[str], scorer: str, first: int) -> None:
        self.J = len(keypoints)
        super().__init__(path, dlc.header(keypoints, scorer), first)

    def empty(self, frame_id: int) -> list[str]:
        return dlc.row(frame_id, None, self.J)

    def add(self, frame_id: int, pts: np.ndarray) -> None:
        """``pts`` ``(J, 3)`` x, y, likelihood."""
        self.put(frame_id, dlc.row(frame_id, pts, self.J))


class Anipose3dRows(_Rows):
    """Rows of the Anipose 3D CSV (:mod:`livepose.formats.anipose3d`)."""

    def __init__(self, path: Path, keypoints: list[str], first: int) -> None:
        self.J = len(keypoints)
        super().__init__(path, [anipose3d.header(keypoints)], first)

    def empty(self, frame_id: int) -> list[str]:
        return anipose3d.empty_row(frame_id, self.J)

    def add(self, frame_id: int, xyz: np.ndarray, err: np.ndarray, ncams: np.ndarray,
            score: np.ndarray) -> None:
        """``xyz`` ``(J, 3)``, ``err``/``ncams``/``score`` ``(J,)``."""
        self.put(frame_id, anipose3d.row(frame_id, xyz, err, ncams, score))


class VarRows(_Rows):
    """Rows of the variance sidecar ``pose3d_var.csv``."""

    def __init__(self, path: Path, keypoints: list[str], first: int) -> None:
        self.J = len(keypoints)
        super().__init__(path, [anipose3d.var_header(keypoints)], first)

    def empty(self, frame_id: int) -> list[str]:
        return anipose3d.var_row(frame_id, None, self.J)

    def add(self, frame_id: int, var: np.ndarray) -> None:
        self.put(frame_id, anipose3d.var_row(frame_id, var, self.J))


class StatusRows(_Rows):
    """Rows of the status sidecar ``pose3d_status.csv`` (per keypoint status and views)."""

    def __init__(self, path: Path, keypoints: list[str], first: int) -> None:
        self.J = len(keypoints)
        super().__init__(path, [anipose3d.status_header(keypoints)], first)

    def empty(self, frame_id: int) -> list[str]:
        return anipose3d.status_row(frame_id, None, None, False, self.J)

    def add(self, frame_id: int, status: np.ndarray, views: np.ndarray, late: bool) -> None:
        names = [protocol.STATUS_NAMES.get(int(s), "missing") for s in status]
        self.put(frame_id, anipose3d.status_row(frame_id, names, views, late, self.J))


def _popcount(views: np.ndarray) -> np.ndarray:
    v = views.astype(np.uint32)
    return np.array([bin(int(x)).count("1") for x in v], dtype=np.int64)


class PredictionWriter:
    """All prediction files of one session (2D per camera, 3D, variance)."""

    def __init__(self, session: Path, cams: list[str], keypoints: list[str], first: int,
                 scorer: str = "livepose", individuals: int = 0) -> None:
        self.session, self.cams, self.first = session, cams, first
        self.d2 = {c: Dlc2dRows(pose2d_path(session, c), keypoints, scorer, first) for c in cams}
        p3 = pose3d_path(session)
        self.d3 = Anipose3dRows(p3, keypoints, first)
        self.var = VarRows(anipose3d.var_path(p3), keypoints, first)
        self.status = StatusRows(anipose3d.status_path(p3), keypoints, first)
        #: several animals (``fusion.multi``): ``pose3d_individuals.csv``, ids 0..n-1, and
        #: ``pose2d_individuals/<cam>.csv``: the 2D instances by the id fusion gave them
        self.ind = IndividualsRows(session / "pose3d_individuals.csv", keypoints,
                                   individuals, first) if individuals else None
        self.ind2d = {c: IndividualsRows(session / "pose2d_individuals" / f"{c}.csv",
                                         keypoints, individuals, first,
                                         ("x", "y", "likelihood"))
                      for c in cams} if individuals else {}
        self.conf: dict[int, np.ndarray] = {}  # frame_id -> (C, J) confidence
        self.last: int | None = None
        self._flushed = time.monotonic()

    def on_kp2d(self, msg: protocol.Kp2d) -> None:
        pts = np.asarray(msg.points, dtype=np.float64)
        for i, c in enumerate(msg.cams):
            if c in self.d2:
                self.d2[c].add(msg.frame_id, pts[i])
        self.conf[msg.frame_id] = pts[:, :, 2]
        for k in [k for k in self.conf if k < msg.frame_id - 4 * REORDER]:
            del self.conf[k]
        self._seen(msg.frame_id)

    def on_pose3d(self, msg: protocol.Pose3d) -> None:
        views = np.asarray(msg.views)
        ncams = _popcount(views)
        conf = self.conf.get(msg.frame_id)
        score = np.zeros(len(views))
        if conf is not None:
            C = conf.shape[0]
            used = ((views[None, :].astype(np.int64) >> np.arange(C)[:, None]) & 1).astype(bool)
            tot = np.where(used, np.nan_to_num(conf), 0.0).sum(axis=0)
            score = np.where(ncams > 0, tot / np.maximum(ncams, 1), 0.0)
        self.d3.add(msg.frame_id, np.asarray(msg.xyz), np.asarray(msg.reproj, np.float64),
                    ncams, score)
        self.var.add(msg.frame_id, np.asarray(msg.variance))
        self.status.add(msg.frame_id, np.asarray(msg.status), views, msg.late)
        if self.ind is not None and msg.ind_ids is not None and msg.ind_xyz is not None:
            ids = np.asarray(msg.ind_ids)
            self.ind.add(msg.frame_id, ids, np.asarray(msg.ind_xyz))
            p2 = msg.ind_points2d
            if p2 is not None and p2.shape[:2] == (len(ids), len(msg.cams)):
                for i, c in enumerate(msg.cams):
                    if c in self.ind2d:
                        self.ind2d[c].add(msg.frame_id, ids, np.asarray(p2[:, i], np.float64))
        self._seen(msg.frame_id)

    def _seen(self, frame_id: int) -> None:
        self.last = frame_id if self.last is None else max(self.last, frame_id)
        now = time.monotonic()
        if now - self._flushed >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        self._flushed = time.monotonic()
        for rows in self._all():
            rows.f.flush()

    def _all(self) -> list[_Rows]:
        return [*self.d2.values(), self.d3, self.var, self.status,
                *([self.ind] if self.ind is not None else []), *self.ind2d.values()]

    def close(self, fps: float, units: str = "mm") -> None:
        """Write out held rows, close the files and write the TRC."""
        for rows in self._all():
            rows.close(self.last)
        write_trc_from_csv(self.session, fps, units)


def session_units(session: Path, configured: str | None) -> str:
    """The length unit of a session's poses: its calibration copy's, else the config's, else
    mm (sessions recorded before units were explicit)."""
    from livepose.core.calibration import read_calibration_units

    try:
        return read_calibration_units(session / "calibration.toml") or configured or "mm"
    except ValueError:  # a missing or unreadable copy: what the config says
        return configured or "mm"


def write_trc_from_csv(session: Path, fps: float, units: str = "mm") -> Path | None:
    """``pose3d.trc`` from ``pose3d.csv`` (frames numbered from the first frame_id + 1)."""
    from livepose.formats import FormatError
    from livepose.formats.anipose3d import read_anipose3d
    from livepose.formats.trc import write_trc

    src = pose3d_path(session)
    try:
        table = read_anipose3d(src)
    except FormatError as exc:
        log.warning("no TRC written: %s", exc)
        return None
    first = int(table.fnum[0]) + 1 if len(table.fnum) else 1
    return write_trc(session / "pose3d.trc", table.xyz, table.keypoints, fps, units=units,
                     first_frame=first)


def main(ctx: StageContext) -> None:
    """Recorder process main."""
    keypoints = list(ctx.args["keypoints"])
    cams = ctx.cfg.camera_names
    sub = ctx.socket(zmq.SUB, connect=[ctx.endpoints[f"kp2d/{k}"]
                                       for k in range(ctx.cfg.model.workers)]
                     + [ctx.endpoints["pose3d"]], subscribe=[b"kp2d", b"pose3d"], hwm=100_000)
    ctl = ctx.socket(zmq.SUB, connect=ctx.endpoints["record"], subscribe=RECORD_TOPIC)
    decoder = codec.Decoder(expect=["kp2d", "pose3d"])
    writer: PredictionWriter | None = None
    events: EventLog | None = None
    stop_after: int | None = None
    start = 0

    def open_(session: Path, frame: int | None) -> None:
        nonlocal writer, events, stop_after, start
        close_()
        start, stop_after = frame or 0, None
        m = ctx.cfg.fusion.multi
        writer = PredictionWriter(session, cams, keypoints, start, individuals=(
            (m.individuals or m.max_tracks) if m.enabled else 0))
        events = EventLog(session / "events.jsonl", ctx.name)
        events.emit("predictions_start", first_frame=start)

    def close_() -> None:
        nonlocal writer
        if writer is not None:
            writer.close(ctx.cfg.fps, session_units(writer.session, ctx.cfg.calibration_units))
            (writer.session / "predictions.done").write_text(str(writer.last))
            if events is not None:
                events.emit("predictions_stop", last_frame=writer.last)
            writer = None

    launch = ctx.args.get("record")
    if launch:
        open_(Path(launch["session"]), launch.get("frame"))
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    poller.register(ctl, zmq.POLLIN)
    ctx.ready()
    ctx.set_state("running")
    try:
        while not ctx.stopping:
            ctx.tick_health()
            ready = dict(poller.poll(100))
            if ctl in ready:
                body = decode_record_control(ctl.recv_multipart())
                if body is not None and body["cmd"] == "start":
                    open_(Path(body["session"]), body["frame"])
                elif body is not None:
                    stop_after = body["frame"]
                    if stop_after is None:
                        close_()
            if sub not in ready:
                continue
            while True:
                try:
                    parts = sub.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                msg = decoder.decode(parts)
                fid = getattr(msg, "frame_id", None)
                if writer is None or fid is None or fid < start:
                    continue
                if stop_after is not None and fid > stop_after:
                    close_()
                    continue
                try:
                    if isinstance(msg, protocol.Kp2d):
                        writer.on_kp2d(msg)
                    elif isinstance(msg, protocol.Pose3d):
                        writer.on_pose3d(msg)
                except OSError as exc:
                    ctx.counters["rec_errors"] += 1
                    ctx.error(f"prediction files: {exc}")
                    if events is not None:
                        events.emit("writer_error", error=str(exc))
                    writer = None
                ctx.counters["rec_rows"] += 1
    finally:
        close_()
