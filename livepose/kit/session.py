"""A recorded session: its folder, status, event log and run-time control messages.

Layout of ``<recording.dir>/<YYYYmmdd-HHMMSS>_<name>/`` (see docs/recording.md)::

    config.yaml            the resolved config of the run
    versions.json          livepose, Python, libraries, FFmpeg
    calibration.toml       copy of the calibration used
    status.json            recording | complete | incomplete | failed (+ reason)
    events.jsonl           one JSON object per line: start/stop, drops, errors, …
    video/<cam>.mkv        per-camera video (or <cam>.raw for the raw codec)
    video/<cam>_frames.csv per-camera frame table
    video/<cam>.json       per-camera writer summary, written when the writer closed
    pose2d/<cam>.csv       2D predictions (DeepLabCut / Lightning Pose CSV)
    pose3d.csv, pose3d_var.csv, pose3d.trc   3D predictions (Anipose CSV, TRC)

Several processes write into one session: the supervisor (status, start/stop and health
events), each camera (video, frame table, writer events) and the recorder process
(predictions). Events are appended with one ``write`` per line on an ``O_APPEND`` file, so
lines of different processes never interleave.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from livepose import __version__
from livepose.core.config import Config, to_dict
from livepose.core.errors import UserError

log = logging.getLogger(__name__)

STATES = ("recording", "complete", "incomplete", "failed")
NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


class SessionError(UserError):
    """A session cannot be created or read (names the path and why)."""


def video_dir(session: Path) -> Path:
    """Folder of the per-camera videos and frame tables."""
    return session / "video"


def encoder_name(cam: str) -> str:
    """The process name of a camera's video encoder (docs/recording.md)."""
    return f"enc-{cam}"


def segments(session: Path, cam: str) -> list[str]:
    """The file stems of a camera's recorded segments, in order: ``cam``, then ``cam.1``,
    ``cam.2``… (a restarted encoder, or one that recovered from a write error, continues
    into a new video and frame table; nothing is overwritten). Only stems with a frame
    table (``video/<stem>_frames.csv``) count."""
    folder = video_dir(session)
    out: list[tuple[int, str]] = []
    for p in folder.glob(f"{cam}*_frames.csv"):
        stem = p.name[: -len("_frames.csv")]
        if stem == cam:
            out.append((0, stem))
        elif stem.startswith(cam + ".") and stem[len(cam) + 1 :].isdigit():
            out.append((int(stem[len(cam) + 1 :]), stem))
    return [s for _, s in sorted(out)]


@dataclass(frozen=True)
class RecordedSegment:
    """One segment of a camera's recording, read from its frame table.

    Attributes
    ----------
    stem
        ``cam``, ``cam.1``…
    video
        Its video (``.mkv`` or ``.raw``), ``None`` when there is none.
    frame_ids
        ``(n,)`` int64: the frame id of each recorded frame, in video order (video index
        ``i`` shows frame ``frame_ids[i]``).
    t_trigger_ns
        ``(m,)`` int64 and ``trigger_ids`` ``(m,)``: the trigger time of every row that has
        one (recorded or not), by frame id.
    """

    stem: str
    video: Path | None
    frame_ids: Any
    trigger_ids: Any
    t_trigger_ns: Any


def recorded_segments(session: Path, cam: str) -> list[RecordedSegment]:
    """Every segment of a camera's recording, in order, with which frame each video index
    holds — what replay, re-analysis and export read, so a restarted encoder's later
    segments and the frames a lapped or stalled writer lost (``recorded=0`` rows) are
    accounted for alike. A torn last row (a killed writer) is skipped."""
    import csv

    import numpy as np

    out = []
    for stem in segments(session, cam):
        pairs: list[tuple[int, int]] = []
        trig: list[tuple[int, int]] = []
        with (video_dir(session) / f"{stem}_frames.csv").open(newline="") as f:
            for row in csv.DictReader(f):
                try:
                    fid = int(row["frame_id"])
                    if row.get("t_trigger_ns"):
                        trig.append((fid, int(row["t_trigger_ns"])))
                    if int(row["recorded"]) == 1:
                        pairs.append((int(row["video_index"]), fid))
                except (KeyError, TypeError, ValueError):
                    continue
        pairs.sort()
        video = next((p for ext in ("mkv", "raw")
                      if (p := video_dir(session) / f"{stem}.{ext}").exists()), None)
        t = np.array(trig, dtype=np.int64).reshape(-1, 2)
        out.append(RecordedSegment(stem, video, np.array([f for _, f in pairs], dtype=np.int64),
                                   t[:, 0], t[:, 1]))
    return out


def pose2d_path(session: Path, cam: str) -> Path:
    """2D predictions of one camera."""
    return session / "pose2d" / f"{cam}.csv"


def pose3d_path(session: Path) -> Path:
    """3D predictions (Anipose CSV)."""
    return session / "pose3d.csv"


# --------------------------------------------------------------------------- events


class EventLog:
    """Append-only JSON-lines event log, safe to share between processes.

    Parameters
    ----------
    path
        ``events.jsonl``.
    source
        Who writes (``supervisor``, ``cam0``, ``recorder``…), added to every event.
    """

    def __init__(self, path: Path, source: str) -> None:
        self.path = path
        self.source = source
        self.failed = False

    def emit(self, kind: str, **fields: Any) -> None:
        """Append one event ``{"t_ns", "source", "kind", **fields}`` (never raises)."""
        rec = {"t_ns": time.time_ns(), "source": self.source, "kind": kind, **fields}
        line = (json.dumps(rec, default=str) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            if not self.failed:
                log.error("cannot write event log %s: %s", self.path, exc)
            self.failed = True


def read_events(session: Path) -> list[dict[str, Any]]:
    """All events of a session (a torn last line is skipped)."""
    p = session / "events.jsonl"
    if not p.exists():
        return []
    out = []
    for ln in p.read_text(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(ln))
    return out


# --------------------------------------------------------------------------- status


def write_status(session: Path, state: str, reason: str | None = None, **extra: Any) -> None:
    """Write ``status.json`` atomically (temporary file + rename).

    ``pid`` is the writing process, so a reader can tell a live recording from a dead one.
    """
    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}, got {state!r}")
    old = _read_json(session / "status.json") or {}
    data = {**old, **extra, "state": state, "reason": reason, "pid": os.getpid(),
            "t_ns": time.time_ns()}
    tmp = session / f".status.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, session / "status.json")


def _read_json(p: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_status(session: Path) -> dict[str, Any]:
    """The status of a session; a ``recording`` whose writer is gone reads ``incomplete``.

    Raises
    ------
    SessionError
        The folder has no readable ``status.json``.
    """
    data = _read_json(session / "status.json")
    if data is None:
        raise SessionError(f"{session}: not a livepose session (no readable status.json)")
    if data.get("state") == "recording" and not _pid_alive(int(data.get("pid", 0))):
        data = {**data, "state": "incomplete",
                "reason": "the recording process ended without closing the session"}
    return data


# --------------------------------------------------------------------------- creation


def versions() -> dict[str, Any]:
    """Versions of livepose, Python and the libraries a session depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Any] = {
        "livepose": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for pkg in ("numpy", "numba", "pyzmq", "onnxruntime", "av", "xxhash", "pydantic"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    with contextlib.suppress(ImportError):
        import av

        out["ffmpeg"] = {k: ".".join(map(str, v)) for k, v in av.library_versions.items()}
    return out


@dataclass
class Session:
    """An open session folder (created by :func:`create_session`)."""

    path: Path
    name: str

    @property
    def events(self) -> EventLog:
        """The supervisor's event log."""
        return EventLog(self.path / "events.jsonl", "supervisor")


def create_session(
    root: Path, name: str, cfg: Config, calibration: Path | None, now: float | None = None
) -> Session:
    """Create ``root/<YYYYmmdd-HHMMSS>_<name>/`` with config, versions, calibration, status.

    Raises
    ------
    SessionError
        Bad name, ``root`` not writable, or a session of that name exists in ``root``.
    """
    if not NAME_RE.match(name):
        raise SessionError(f"session name {name!r}: use letters, digits, '_', '.', '-'")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    path = root / f"{stamp}_{name}"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SessionError(f"{root}: cannot create the sessions folder ({exc.strerror})") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise SessionError(f"{root}: the sessions folder is not writable")
    clash = sorted(p.name for p in root.glob(f"*_{name}") if p.is_dir()) if root.is_dir() else []
    if path.exists() or clash:
        raise SessionError(
            f"{root / (clash[0] if clash else path.name)}: a session named {name!r} already "
            "exists; pick another name"
        )
    try:
        path.mkdir()
        for sub in ("video", "pose2d"):
            (path / sub).mkdir()
        (path / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        (path / "versions.json").write_text(json.dumps(versions(), indent=2))
        if calibration is not None:
            shutil.copyfile(calibration, path / "calibration.toml")
        write_status(path, "recording", None, name=name, cameras=cfg.camera_names,
                     codec=cfg.recording.codec, fps=cfg.fps)
    except OSError as exc:
        raise SessionError(f"{path}: cannot write the session ({exc.strerror})") from None
    return Session(path=path, name=name)
