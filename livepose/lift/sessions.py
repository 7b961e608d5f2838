"""Read recorded sessions as a lifter's training data: measured 3D, the cameras, the 2D.

Only keypoints whose ``pose3d_status.csv`` status is ``measured`` count; coasted
(``predicted``) and ``missing`` ones, and late frame-sets, are NaN. A session recorded
without the status sidecar is refused (its 3D may be a filter's prediction).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from livepose.core.calibration import MM_PER_UNIT, calibration_units, read_calibration
from livepose.core.camera import CameraModel
from livepose.core.errors import UserError
from livepose.formats.anipose3d import read_anipose3d, status_path
from livepose.formats.dlc import read_dlc_csv
from livepose.kit.session import pose2d_path, pose3d_path


@dataclass(slots=True)
class SessionData:
    """One session's training material, in millimetres.

    Attributes
    ----------
    poses
        ``(T, J, 3)`` measured 3D keypoints (NaN otherwise).
    keypoints
        ``J`` names.
    cameras
        The recorded cameras (extrinsics in mm).
    pose2d
        ``(T, C, J, 3)`` the recorded 2D (``x, y, confidence``; NaN where none), rows aligned
        with ``poses`` by frame id.
    frame_ids
        ``(T,)`` the rows' frame ids (``None``: consecutive).
    fps
        The session's frame rate (its ``config.yaml``; ``None`` if unknown).
    """

    poses: np.ndarray
    keypoints: list[str]
    cameras: list[CameraModel]
    pose2d: np.ndarray
    frame_ids: np.ndarray | None = None
    fps: float | None = None

    def on_grid(self) -> SessionData:
        """The same session with one row per frame id from the first to the last (NaN rows
        for frame ids without a pose), so that consecutive rows are consecutive frames."""
        if self.frame_ids is None or len(self.frame_ids) == 0:
            return self
        f = np.asarray(self.frame_ids, np.int64)
        n = int(f.max() - f.min()) + 1
        if n > 10 * len(f) + 1000:
            raise UserError(f"lift train: frame ids span {n} frames for {len(f)} poses")
        poses = np.full((n, *self.poses.shape[1:]), np.nan)
        pose2d = np.full((n, *self.pose2d.shape[1:]), np.nan)
        poses[f - f.min()] = self.poses
        pose2d[f - f.min()] = self.pose2d
        return SessionData(poses, self.keypoints, self.cameras, pose2d,
                           np.arange(f.min(), f.max() + 1), self.fps)


def read_status(path: Path, keypoints: list[str], n: int) -> np.ndarray:
    """``(n, J)`` bool: the keypoint was measured (and the frame-set was not late)."""
    try:
        with path.open(newline="") as f:
            rows = [r for r in csv.reader(f) if r]
    except OSError:
        raise UserError(f"{path}: cannot read the 3D status (sessions without "
                        "pose3d_status.csv cannot train a lifter: their 3D may be predicted)") from None
    head = rows[0]
    col = {h: i for i, h in enumerate(head)}
    need = [f"{k}_status" for k in keypoints]
    if any(c not in col for c in need) or len(rows) - 1 != n:
        raise UserError(f"{path}: does not match pose3d.csv (keypoints or number of rows)")
    out = np.zeros((n, len(keypoints)), bool)
    for t, r in enumerate(rows[1:]):
        late = r[col["late"]] == "1" if "late" in col else False
        if not late:
            out[t] = [r[col[c]] == "measured" for c in need]
    return out


def _scaled(cam: CameraModel, s: float) -> CameraModel:
    return CameraModel(name=cam.name, size=cam.size, matrix=cam.matrix, dist=cam.dist,
                       rvec=cam.rvec, tvec=cam.tvec * s, fisheye=cam.fisheye)


def read_session(folder: str | Path) -> SessionData:
    """Read a session folder (docs/recording.md) for training; one-line errors."""
    p = Path(folder)
    if not p.is_dir():
        raise UserError(f"{p}: not a session folder")
    calib = p / "calibration.toml"
    if not calib.is_file():
        raise UserError(f"{p}: no calibration.toml")
    s = MM_PER_UNIT[calibration_units(calib, None)]
    group = read_calibration(calib)
    table = read_anipose3d(pose3d_path(p))
    T, J = table.xyz.shape[:2]
    measured = read_status(status_path(pose3d_path(p)), table.keypoints, T)
    poses = np.where(measured[:, :, None], table.xyz * s, np.nan)
    fnum = {int(f): t for t, f in enumerate(table.fnum)}
    pose2d = np.full((T, len(group), J, 3), np.nan)
    for c, cam in enumerate(group):
        f2 = pose2d_path(p, cam.name)
        if not f2.is_file():
            continue
        d = read_dlc_csv(f2)
        if list(d.keypoints) != list(table.keypoints):
            raise UserError(f"{f2}: keypoints differ from pose3d.csv's")
        for k, label in enumerate(d.index):
            try:
                t = fnum.get(int(float(label)))
            except ValueError:
                t = k if k < T else None
            if t is not None:
                pose2d[t, c] = d.points[k]
    fps = None
    try:
        doc = yaml.safe_load((p / "config.yaml").read_text())
        fps = float(doc["fps"]) if isinstance(doc, dict) and doc.get("fps") else None
    except (OSError, yaml.YAMLError, TypeError, ValueError):
        pass
    return SessionData(poses=poses, keypoints=list(table.keypoints),
                       cameras=[_scaled(c, s) for c in group], pose2d=pose2d,
                       frame_ids=np.asarray(table.fnum, np.int64), fps=fps)


def project_all(cameras: list[CameraModel], poses: np.ndarray) -> np.ndarray:
    """``(T, C, J, 2)`` distorted pixels of ``(T, J, 3)`` poses in each camera (NaN stays)."""
    T, J, _ = poses.shape
    flat = np.nan_to_num(poses.reshape(-1, 3))
    bad = ~np.isfinite(poses).all(axis=2)
    out = np.stack([c.project(flat).reshape(T, J, 2) for c in cameras], axis=1)
    out[np.broadcast_to(bad[:, None, :], out.shape[:3])] = np.nan
    return out
