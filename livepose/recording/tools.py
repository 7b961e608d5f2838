"""Working with a recorded session: repair, replay, export for the offline tools.

- :func:`repair` finalises what a killed run left (``livepose session repair DIR``);
- :func:`replay_config` turns a session into a config whose cameras replay its videos
  (``livepose replay DIR``);
- :func:`export_eks` writes the folder ``eks multicam`` reads (``livepose export eks``).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import yaml

from livepose.core.config import Config, parse_config
from livepose.core.errors import UserError
from livepose.kit.session import (
    EventLog,
    SessionError,
    pose2d_path,
    pose3d_path,
    read_status,
    segments,
    video_dir,
    write_status,
)

log = logging.getLogger(__name__)


def session_config(session: Path) -> Config:
    """The resolved config a session was recorded with."""
    p = session / "config.yaml"
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise SessionError(f"{session}: not a livepose session (no config.yaml)") from None
    return parse_config(data, source=str(p))


def _video_of(session: Path, cam: str) -> Path | None:
    for ext in ("mkv", "raw"):
        p = video_dir(session) / f"{cam}.{ext}"
        if p.exists():
            return p
    return None


def _trim_torn_tail(path: Path) -> int:
    """Cut a last line without its newline (a killed writer); return bytes removed."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep == len(data):
        return 0
    with path.open("r+b") as f:
        f.truncate(keep)
    return len(data) - keep


def count_frames(video: Path) -> int:
    """Frames that decode from a recorded video."""
    from livepose.acquisition.encoders import iter_frames

    return sum(1 for _ in iter_frames(video))


def remux(video: Path) -> None:
    """Rewrite a Matroska file packet by packet (adds the index and duration a killed
    writer never wrote). The original is replaced only once the copy is complete."""
    import av

    tmp = video.with_name(video.name + ".remux.mkv")
    with av.open(str(video)) as inp, av.open(str(tmp), "w", format="matroska") as out:
        s_in = inp.streams.video[0]
        s_out = out.add_stream_from_template(s_in)
        for k, v in s_in.metadata.items():
            s_out.metadata[k] = v
        try:
            for pkt in inp.demux(s_in):
                if pkt.dts is None or pkt.size == 0:
                    continue
                pkt.stream = s_out
                out.mux(pkt)
        except av.error.InvalidDataError:
            pass  # the torn end of a killed writer
    tmp.replace(video)


def _repair_segment(session: Path, cam: str, stem: str) -> dict[str, Any]:
    """Repair one segment's frame table, video and summary (see :func:`repair`)."""
    table = video_dir(session) / f"{stem}_frames.csv"
    _trim_torn_tail(table)
    rows = table.read_text().splitlines()[1:] if table.exists() else []
    recorded = sum(1 for r in rows if r.split(",")[2:3] == ["1"])
    video = _video_of(session, stem)
    decoded = 0
    if video is not None:
        if video.suffix == ".mkv":
            try:
                remux(video)
            except Exception as exc:  # a file too damaged to remux is still reported
                log.warning("%s: not remuxed (%s)", video, exc)
        decoded = count_frames(video)
    summ = video_dir(session) / f"{stem}.json"
    if not summ.exists():
        summ.write_text(json.dumps({"cam": cam, "segment": stem, "frames_recorded": decoded,
                                    "closed": False, "repaired": True}, indent=2))
    return {"video": video.name if video else None, "frames_decodable": decoded,
            "frames_in_table": recorded, "table_rows_not_in_video": max(0, recorded - decoded)}


def repair(session: Path) -> dict[str, Any]:
    """Finalise a session a killed or failed run left behind.

    Cuts torn last lines of every CSV, remuxes each Matroska video (index, duration), writes
    a missing writer summary from what decodes, writes ``pose3d.trc`` from ``pose3d.csv``
    and sets the status (a ``recording`` left open becomes ``incomplete``).

    Returns
    -------
    dict
        Per segment (``cam``, ``cam.1``…): frames decodable and frame-table rows marked
        recorded.
    """
    from livepose.recording.recorder import session_units, write_trc_from_csv

    status = read_status(session)
    cfg = session_config(session)
    report: dict[str, Any] = {}
    for cam in cfg.camera_names:
        # every segment (a restarted encoder continues into <cam>.1, <cam>.2 …)
        for stem in segments(session, cam) or [cam]:
            report[stem] = _repair_segment(session, cam, stem)
    for p in [*sorted((session / "pose2d").glob("*.csv")), pose3d_path(session),
              pose3d_path(session).with_name("pose3d_var.csv")]:
        _trim_torn_tail(p)
    trc = write_trc_from_csv(session, cfg.fps, session_units(session, cfg.calibration_units))
    report["trc"] = trc.name if trc else None
    state, reason = status["state"], status.get("reason")
    if state == "recording":
        state = "incomplete"
        reason = "the recording process ended without closing the session"
    write_status(session, state, reason, repaired=report)
    EventLog(session / "events.jsonl", "repair").emit("repaired", state=state)
    return report


def replay_config(session: Path, fps: float | None = None) -> tuple[Config, int]:
    """A config whose cameras are the session's videos (``video`` backend).

    Returns
    -------
    cfg, frames
        The config (recording off) and the number of pulses to replay (the last frame id
        any camera recorded, + 1).
    """
    from livepose.kit.session import recorded_segments

    cfg = session_config(session)
    data = cfg.model_dump(mode="json")
    cams = []
    frames = 0
    for i, cam in enumerate(cfg.camera_names):
        all_segs = recorded_segments(session, cam)
        segs = [s for s in all_segs
                if s.video is not None and s.video.suffix == ".mkv" and len(s.frame_ids)]
        if not segs:  # a session of `livepose track` (codec none): its source videos
            cams.append(_source_camera(session, data["cameras"][i], cam))
            frames = max(frames, max((int(s.trigger_ids.max()) + 1 for s in all_segs
                                      if len(s.trigger_ids)), default=0))
            continue
        # the video backend replays the session by its frame tables: every segment, and a
        # frame one camera's recording lost is a drop of that view, never a shift
        frames = max(frames, max(int(s.frame_ids.max()) for s in segs) + 1)
        cams.append({"backend": "video", "name": cam, "path": str(session)})
    data["cameras"] = cams
    data["calibration"] = str(session / "calibration.toml")
    data["recording"] = {**data["recording"], "enabled": False}
    if fps is not None:
        data["fps"] = fps
    return parse_config(data, source=str(session / "config.yaml")), int(frames or 0)


def _source_camera(session: Path, spec: dict[str, Any], cam: str) -> dict[str, Any]:
    """The camera of a session that recorded no video but ran from video files (``livepose
    track``): the same file, replayed with the same frame numbering (frame ``k`` is the
    file's index ``k``)."""
    from livepose.acquisition.video import find_video

    if spec.get("backend") != "video" or not spec.get("path"):
        raise SessionError(f"{session}: camera {cam!r} has no replayable video (.mkv): the "
                           f"session recorded none, and the camera was a "
                           f"{spec.get('backend')!r} camera, not a video file")
    try:
        find_video(Path(spec["path"]), cam)
    except UserError as exc:
        raise SessionError(f"{session}: camera {cam!r} recorded no video, and its source "
                           f"video is not there any more: {exc}") from None
    return spec


def export_eks(session: Path, out: Path) -> list[Path]:
    """Write ``out/<session>_<cam>.csv`` (2D per camera) and ``out/calibration.toml``.

    ``eks multicam`` finds each camera's file by its name appearing in the file name, so a
    camera name contained in another (``cam1``/``cam10``) is refused.
    """
    cfg = session_config(session)
    names = cfg.camera_names
    clash = [(a, b) for a in names for b in names if a != b and a in b]
    if clash:
        raise UserError(f"camera name {clash[0][0]!r} is part of {clash[0][1]!r}: eks would "
                        "mix their files; rename the cameras")
    calib = session / "calibration.toml"
    if cfg.fusion.multi.enabled:  # several animals: eks smooths one animal, so one per folder
        return _export_eks_individuals(session, out, names, calib)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for cam in names:
        src = pose2d_path(session, cam)
        if not src.exists():
            raise SessionError(f"{src}: no 2D predictions for camera {cam!r}")
        dst = out / f"{session.name}_{cam}.csv"
        shutil.copyfile(src, dst)
        written.append(dst)
    if not calib.exists():
        raise SessionError(f"{calib}: the session has no calibration")
    shutil.copyfile(calib, out / "calibration.toml")
    return [*written, out / "calibration.toml"]


def _export_eks_individuals(session: Path, out: Path, cams: list[str],
                            calib: Path) -> list[Path]:
    """``out/<id>/<session>_<cam>.csv`` (DeepLabCut single-animal layout) and
    ``out/<id>/calibration.toml`` for every individual with 2D in any camera, from the
    session's ``pose2d_individuals/<cam>.csv`` (the instance fusion measured it with)."""
    import numpy as np

    from livepose.formats.dlc import write_dlc_csv
    from livepose.formats.dlc_multi import read_dlc_multi_csv, read_dlc_multi_labels

    tables = {}
    for cam in cams:
        src = session / "pose2d_individuals" / f"{cam}.csv"
        if not src.exists():
            raise SessionError(f"{src}: no per-individual 2D for camera {cam!r}")
        pts, inds, kps, _ = read_dlc_multi_csv(src)
        tables[cam] = (pts, inds, kps, read_dlc_multi_labels(src))
    ids = [i for i in dict.fromkeys(i for t in tables.values() for i in t[1])
           if any(np.isfinite(t[0][:, t[1].index(i)]).any() for t in tables.values()
                  if i in t[1])]
    if not ids:
        raise SessionError(f"{session}: no individual has 2D in any camera")
    if not calib.exists():
        raise SessionError(f"{calib}: the session has no calibration")
    written = []
    for ind in ids:
        folder = out / ind
        folder.mkdir(parents=True, exist_ok=True)
        for cam, (pts, inds, kps, labels) in tables.items():
            dst = folder / f"{session.name}_{cam}.csv"
            one = pts[:, inds.index(ind)] if ind in inds else np.full(
                (len(pts), len(kps), 3), np.nan)
            write_dlc_csv(dst, one, kps, index=labels)
            written.append(dst)
        shutil.copyfile(calib, folder / "calibration.toml")
        written.append(folder / "calibration.toml")
    return written


def fuse_only_session(session: Path, out: Path | None = None) -> Path:
    """Re-run fusion on a session's recorded 2D (the live fusion code, frame by frame).

    Writes ``pose3d.csv``, ``pose3d_var.csv`` and ``pose3d.trc`` into ``out`` (default
    ``<session>/refused/``) and returns the CSV path. Fusion settings come from the session's
    config; edit ``config.yaml`` there (or copy the session) to try others.
    """
    import time

    import numpy as np

    from livepose.core import protocol
    from livepose.core.calibration import read_calibration
    from livepose.formats.dlc import read_dlc_csv
    from livepose.fusion.process import Fuser
    from livepose.recording.recorder import PredictionWriter, session_units

    cfg = session_config(session)
    if cfg.fusion.multi.enabled:
        raise SessionError(
            f"{session}: a several-animals session: its 2D is per individual "
            "(pose2d_individuals/), and --fuse-only re-fuses one animal's (pose2d/); replay "
            "it in full to re-track the individuals: livepose replay SESSION")
    cams = cfg.camera_names
    tables = [read_dlc_csv(pose2d_path(session, c)) for c in cams]
    T = min(t.points.shape[0] for t in tables)
    if T == 0 or all(np.isnan(t.points[:T, :, :2]).all() for t in tables):
        raise SessionError(f"{session}: no recorded 2D predictions to fuse")
    ids = [int(float(i)) for i in tables[0].index[:T]]
    group = read_calibration(session / "calibration.toml", cams)
    units = session_units(session, cfg.calibration_units)
    fuser = Fuser(group, cfg, units)
    dest = out or session / "refused"
    writer = PredictionWriter(dest, [], tables[0].keypoints, ids[0])
    for k, fid in enumerate(ids):
        pts = np.stack([t.points[k] for t in tables]).astype(np.float32)
        if np.isnan(pts[..., :2]).all():
            continue  # a frame-set the live run skipped
        msg = protocol.Kp2d(frame_id=fid, cams=cams, model="replay", points=pts)
        writer.on_kp2d(msg)  # confidences for the score column
        writer.on_pose3d(fuser.fuse(msg, time.time_ns()))
    writer.close(cfg.fps, units)
    return pose3d_path(dest)
