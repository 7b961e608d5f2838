"""``livepose export nwb SESSION OUT.nwb``: a recorded session as NWB (pynwb + ndx-pose;
extra ``nwb``).

In processing module ``behavior``:

- ``pose3d_id<k>`` (several animals, a session with ``pose3d_individuals.csv``): one
  ``PoseEstimation`` per individual (track id ``k``), a ``PoseEstimationSeries`` per keypoint;
- ``pose3d``: an ``ndx_pose.MultiCameraPoseEstimation`` with one ``PoseEstimationSeries``
  per keypoint (named after it): ``(T, 3)`` positions in the calibration's unit, confidence =
  the mean likelihood of the views used (``pose3d.csv`` ``_score``), NaN where not fused;
  inside it ``pose2d_<cam>``, one ``PoseEstimation`` per camera, ``(T, 2)`` pixels,
  confidence = the model's, its device the camera's ``CalibratedCamera`` (intrinsics,
  rotation, translation, distortion from the session's calibration);
- the skeleton (nodes and edges from the model's manifest) in ``Skeletons``.

Timestamps are the frame tables' trigger times (``video/<cam>_frames.csv`` of every segment, seconds from the
first frame's), per frame id the earliest over the cameras; frames without a row are placed
at ``frame_id / fps``. A session of replayed videos (``livepose track``) uses the videos'
timeline, ``frame_id / fps`` (its trigger times are when the pipeline got to each frame). Subject and session fields come from the config's ``metadata``; unset
ones say so (``"unset (config metadata.subject_id)"``).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np

from livepose.core.calibration import read_calibration, read_calibration_units
from livepose.core.errors import UserError
from livepose.core.modelinfo import model_keypoints
from livepose.formats.anipose3d import read_anipose3d
from livepose.formats.dlc import read_dlc_csv
from livepose.kit.session import pose2d_path, pose3d_path, read_events, recorded_segments
from livepose.recording.tools import session_config

EXTRA = "nwb"
UNITS = {"mm": "millimeters", "m": "meters", "cm": "centimeters"}


def _unset(field: str) -> str:
    return f"unset (config metadata.{field})"


def frame_times(session: Path, cams: list[str], fps: float,
                n: int) -> tuple[np.ndarray, float | None]:
    """``(n,)`` seconds of frame ids ``0…n-1`` from the frame tables (earliest trigger time
    over the cameras, relative to frame 0's), ``frame_id / fps`` where no table has one; and
    frame 0's trigger time (seconds since the epoch; ``None`` without frame tables)."""
    t = np.full(n, np.inf)
    for cam in cams:
        for seg in recorded_segments(session, cam):  # every segment (<cam>.1 …)
            ok = (seg.trigger_ids >= 0) & (seg.trigger_ids < n)
            np.minimum.at(t, seg.trigger_ids[ok], seg.t_trigger_ns[ok] / 1e9)
    ids = np.arange(n)
    known = np.isfinite(t)
    if not known.any():
        return np.asarray(ids / fps), None
    t0 = float(t[known][0] - ids[known][0] / fps)
    t = np.where(known, t - t0, ids / fps)
    return np.asarray(np.maximum.accumulate(t)), t0  # timestamps never go back


def session_start(session: Path, frame0_s: float | None) -> dt.datetime:
    """NWB's ``session_start_time`` (UTC), the zero of every timestamp written: frame 0's
    trigger time when the frame tables have it, else the session's ``session_start`` event,
    else the folder's modification time (a session without either)."""
    if frame0_s is not None:
        return dt.datetime.fromtimestamp(frame0_s, dt.UTC)
    start = next((e for e in read_events(session) if e.get("kind") == "session_start"), None)
    if start is not None and isinstance(start.get("t_ns"), int):
        return dt.datetime.fromtimestamp(start["t_ns"] / 1e9, dt.UTC)
    return dt.datetime.fromtimestamp(session.stat().st_mtime, dt.UTC)


def export_nwb(session: Path, out: Path) -> dict[str, Any]:
    """Write ``out`` (NWB 2) from ``session``; return what was written.

    Raises
    ------
    UserError
        Missing extra, or a session without predictions.
    """
    try:
        import pynwb
        from ndx_pose import (
            CalibratedCamera,
            MultiCameraPoseEstimation,
            PoseEstimation,
            PoseEstimationSeries,
            Skeleton,
            Skeletons,
        )
    except ImportError:
        raise UserError(f"export nwb needs pynwb and ndx-pose: pip install 'livepose[{EXTRA}]'"
                        ) from None
    cfg = session_config(session)
    p3 = pose3d_path(session)
    if not p3.is_file():
        raise UserError(f"{session}: no pose3d.csv (was the session recorded with predictions?)")
    table = read_anipose3d(p3)
    names = list(table.keypoints)
    _, edges = model_keypoints(cfg)
    cams = cfg.camera_names
    n = int(np.max(table.fnum)) + 1 if len(table.fnum) else 0
    replayed = all(c.backend == "video" for c in cfg.cameras)  # the videos' own timeline
    times, frame0_s = frame_times(session, cams, cfg.fps, n)
    if replayed:
        times = np.arange(n) / cfg.fps
    unit = read_calibration_units(session / "calibration.toml") or "mm"
    md = cfg.metadata
    start = session_start(session, frame0_s)
    # NWB validates species and age: unset ones are left out and named in the description
    unset = [f for f in ("species", "age") if getattr(md, f) is None]
    nwb = pynwb.NWBFile(
        session_description=md.session_description or _unset("session_description"),
        identifier=session.name, session_start_time=start,
        experimenter=md.experimenter or None, lab=md.lab or _unset("lab"),
        institution=md.institution or _unset("institution"),
        subject=pynwb.file.Subject(
            subject_id=md.subject_id or _unset("subject_id"), species=md.species,
            sex=md.sex or "U", age=md.age,
            description="from the livepose config's metadata" + (
                f"; {', '.join(_unset(f) for f in unset)}" if unset else "")),
    )
    behavior = nwb.create_processing_module("behavior", "livepose: 2D and 3D pose")
    skeleton = Skeleton(name="skeleton", nodes=names, edges=np.array(
        [[names.index(a), names.index(b)] for a, b in edges if a in names and b in names],
        dtype=np.uint8).reshape(-1, 2))
    behavior.add(Skeletons(skeletons=[skeleton]))
    devices = []
    group = read_calibration(session / "calibration.toml", cams)
    for cm in group.cameras:  # the calibration: intrinsics, extrinsics (world → camera)
        dev = CalibratedCamera(
            name=cm.name, description=f"camera {cm.name}, {cm.size[0]}×{cm.size[1]} px",
            intrinsic_matrix=np.asarray(cm.matrix, float),
            rotation_matrix=np.asarray(cm.R, float),
            translation_vector=np.asarray(cm.tvec, float).reshape(3),
            distortion_coefficients=np.asarray(cm.dist, float).reshape(-1))
        nwb.add_device(dev)
        devices.append(dev)
    xyz = np.full((n, len(names), 3), np.nan)
    score = np.full((n, len(names)), np.nan)
    xyz[table.fnum] = table.xyz
    score[table.fnum] = table.score
    series: list[Any] = []
    for j, k in enumerate(names):  # one copy of the timestamps, the others link to it
        series.append(PoseEstimationSeries(
            name=k, description=f"3D {k}", data=xyz[:, j], unit=UNITS.get(unit, unit),
            reference_frame="the calibration's world frame",
            timestamps=series[0] if series else times, confidence=np.nan_to_num(score[:, j]),
            confidence_definition="mean likelihood of the views fused"))
    written = {"pose3d": n}
    per_camera = []
    for cam, dev in zip(cams, devices, strict=True):
        p2 = pose2d_path(session, cam)
        if not p2.is_file():
            continue
        pose = read_dlc_csv(p2)
        rows = np.array([int(i) for i in pose.index], dtype=np.int64)
        pts = np.full((n, len(names), 3), np.nan)
        ok = rows < n
        idx = [pose.keypoints.index(k) for k in names]
        pts[rows[ok]] = pose.points[ok][:, idx]
        if not np.isfinite(pts[..., :2]).any():  # several animals: 2D is per individual
            continue
        s2 = [PoseEstimationSeries(
            name=k, description=f"2D {k} in {cam}", data=pts[:, j, :2], unit="pixels",
            reference_frame="image: (0, 0) top-left pixel centre, x right, y down",
            timestamps=series[0], confidence=np.nan_to_num(pts[:, j, 2]),
            confidence_definition="the model's confidence") for j, k in enumerate(names)]
        per_camera.append(PoseEstimation(
            name=f"pose2d_{cam}", pose_estimation_series=s2, description=f"2D in {cam}",
            scorer=cfg.model.path, source_software="livepose", skeleton=skeleton,
            device=dev))
        written[f"pose2d_{cam}"] = int(ok.sum())
    behavior.add(MultiCameraPoseEstimation(
        name="pose3d", pose_estimation_series=series, pose_estimations=per_camera,
        description="livepose: per-camera 2D and their fused 3D", scorer=cfg.model.path,
        source_software="livepose", skeleton=skeleton))
    ind_csv = session / "pose3d_individuals.csv"
    if ind_csv.is_file():  # several animals: one PoseEstimation per individual (track id)
        from livepose.formats.dlc_multi import read_dlc_multi_csv

        pts, inds, kps, _ = read_dlc_multi_csv(ind_csv)
        rows = np.arange(len(pts)) + (int(np.min(table.fnum)) if len(table.fnum) else 0)
        ok = rows < n
        for i, name in enumerate(inds):
            data = np.full((n, len(kps), 3), np.nan)
            data[rows[ok]] = pts[ok, i]
            if not np.isfinite(data).any():
                continue
            s3 = [PoseEstimationSeries(
                name=k, description=f"3D {k} of individual {name}", data=data[:, j],
                unit=UNITS.get(unit, unit), reference_frame="the calibration's world frame",
                timestamps=series[0],
                confidence=np.isfinite(data[:, j]).all(axis=1).astype(float),
                confidence_definition="1 where the individual's track has the keypoint")
                for j, k in enumerate(kps)]
            behavior.add(PoseEstimation(
                name=f"pose3d_{name}", pose_estimation_series=s3, skeleton=skeleton,
                description=f"livepose: fused 3D of individual {name} (track id)",
                scorer=cfg.model.path, source_software="livepose"))
            written[f"pose3d_{name}"] = int(np.isfinite(data).all(axis=2).any(axis=1).sum())
    out.parent.mkdir(parents=True, exist_ok=True)
    with pynwb.NWBHDF5IO(str(out), "w") as io:
        io.write(nwb)
    return {"path": str(out), "frames": n, "keypoints": len(names), "series": written}
