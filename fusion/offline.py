"""``livepose fuse``: the online fusion run over recorded 2D predictions.

Inputs are DeepLabCut / Lightning Pose CSVs (:mod:`livepose.formats.dlc`), given as files or
folders; each file belongs to the camera whose name it contains (as EKS matches them; the
longest matching name wins). Several files of one camera are an *ensemble*: per frame and
keypoint the view is the median ``x, y`` of the members with the mean likelihood, and the
members' variance (px²) is the view's extra measurement noise (:meth:`Fuser.step`'s
``zvar``). Frames then go through :class:`~livepose.fusion.process.Fuser` — the live code —
strictly in order, one at a time.

Output (``OUT_DIR``): ``pose3d.csv`` (Anipose layout, :mod:`livepose.formats.anipose3d`;
``_error`` = mean reprojection error of the written point in the views used, ``_ncams`` =
views used, 0 where the point is NaN or coasting, ``_score`` = their mean likelihood),
``pose3d_var.csv`` (per-axis variance) and ``pose3d.trc``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from livepose.core.calibration import calibration_units, read_calibration
from livepose.core.config import Config, FusionConfig, SimCameraConfig
from livepose.core.errors import UserError
from livepose.formats.anipose3d import var_path, write_anipose3d
from livepose.formats.dlc import Pose2D, read_dlc_csv
from livepose.formats.trc import write_trc
from livepose.fusion.process import Fuser


class FuseInputError(UserError):
    """The inputs of ``livepose fuse`` do not fit together."""


def assign_files(inputs: Sequence[str | Path], camera_names: Sequence[str]) -> dict[str, list[Path]]:
    """Map every CSV to the camera whose name it contains.

    Folders contribute their ``*.csv`` files (those matching no camera are skipped); a file
    named explicitly must match a camera. Raises :class:`FuseInputError` for a missing path,
    an unmatched or ambiguous file, or a camera without files.
    """
    names = list(camera_names)
    if not names:
        raise FuseInputError("no camera names given (--camera-names)")
    if len(set(names)) != len(names):
        raise FuseInputError(f"camera names repeat: {names}")
    out: dict[str, list[Path]] = {n: [] for n in names}
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files, explicit = sorted(p.glob("*.csv")), False
            if not files:
                raise FuseInputError(f"{p}: folder has no .csv files")
        elif p.is_file():
            files, explicit = [p], True
        else:
            raise FuseInputError(f"{p}: no such file or folder")
        for f in files:
            hits = [n for n in names if n in f.name]
            if not hits:
                if explicit:
                    raise FuseInputError(f"{f}: file name contains none of the camera names {names}")
                continue
            longest = max(len(h) for h in hits)
            best = [h for h in hits if len(h) == longest]
            if len(best) > 1:
                raise FuseInputError(f"{f}: file name matches several cameras {best}")
            if f not in out[best[0]]:
                out[best[0]].append(f)
    empty = [n for n, fs in out.items() if not fs]
    if empty:
        raise FuseInputError(
            f"no CSV for camera(s) {empty} (camera names must be substrings of the file names)"
        )
    return out


def load_views(files: dict[str, list[Path]]) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Read and combine the CSVs of every camera.

    Returns
    -------
    points, zvar, keypoints
        ``(C, T, J, 3)`` median x, y and mean likelihood per camera; ``(C, T, J, 2)`` the
        ensemble variance (px²; 0 for single files) or ``None`` when no camera has an
        ensemble; ``J`` keypoint names (the first file's order).
    """
    first: Pose2D | None = None
    first_path: Path | None = None
    per_cam = []
    for paths in files.values():
        members = []
        for p in paths:
            pose = read_dlc_csv(p)
            if first is None:
                first, first_path = pose, p
            if sorted(pose.keypoints) != sorted(first.keypoints):
                extra = sorted(set(pose.keypoints) - set(first.keypoints))
                lack = sorted(set(first.keypoints) - set(pose.keypoints))
                raise FuseInputError(
                    f"{p}: keypoints differ from {first_path} (extra {extra}, missing {lack})"
                )
            if len(pose.points) != len(first.points):
                raise FuseInputError(
                    f"{p}: {len(pose.points)} frames, but {first_path} has {len(first.points)}"
                )
            order = [pose.keypoints.index(k) for k in first.keypoints]
            members.append(pose.points[:, order])
        per_cam.append(np.stack(members))  # (M, T, J, 3)
    assert first is not None
    C = len(per_cam)
    T, J = first.points.shape[:2]
    points = np.empty((C, T, J, 3))
    zvar = np.zeros((C, T, J, 2))
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices → NaN, on purpose
        for c, m in enumerate(per_cam):
            points[c, ..., :2] = np.nanmedian(m[..., :2], axis=0)
            points[c, ..., 2] = np.nanmean(m[..., 2], axis=0)
            if m.shape[0] > 1:
                zvar[c] = np.nan_to_num(np.nanvar(m[..., :2], axis=0), nan=0.0)
    has_ensemble = any(m.shape[0] > 1 for m in per_cam)
    return points, (zvar if has_ensemble else None), list(first.keypoints)


def _popcount16(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.int64)
    return np.asarray(sum((v >> b) & 1 for b in range(16)))


def fuse_files(
    calibration: str | Path, camera_names: Sequence[str], inputs: Sequence[str | Path],
    out_dir: str | Path, filter: str = "ekf", fps: float | None = None,
    fusion: FusionConfig | None = None, progress: bool = True, units: str | None = None,
) -> dict[str, Any]:
    """Fuse recorded 2D predictions into 3D (see the module docstring).

    Parameters
    ----------
    calibration
        Anipose calibration TOML with every camera of ``camera_names``.
    camera_names
        Camera names, in the order wanted; each must occur in the names of its CSVs.
    inputs
        CSV files and/or folders of CSVs.
    out_dir
        Output folder (created).
    filter
        ``none``, ``kf`` or ``ekf`` (overrides ``fusion.filter``).
    fps
        Frame rate of the recording (the filters' time step). DLC / Lightning Pose CSVs do
        not record it, so it must be given.
    units
        The calibration's length unit when its file does not say (``[metadata] units``).
    fusion
        Fusion settings (default: the config defaults).
    progress
        Show a progress bar on stderr.

    Returns
    -------
    dict
        ``frames``, ``keypoints``, ``files`` per camera, ``mean_reproj_px``,
        ``measured_pct`` and the output paths.
    """
    if fps is None:
        raise FuseInputError("the 2D CSVs do not say their frame rate: pass --fps (the "
                             "filters' time step and the TRC's rate depend on it)")
    if not fps > 0:
        raise FuseInputError(f"--fps must be > 0, got {fps}")
    if filter not in ("none", "kf", "ekf"):
        raise FuseInputError(f"--filter must be none, kf or ekf, got {filter!r}")
    names = list(camera_names)
    files = assign_files(inputs, names)
    cameras = read_calibration(calibration, names)
    unit = calibration_units(calibration, units)
    points, zvar, keypoints = load_views(files)
    fcfg = (fusion or FusionConfig()).model_copy(deep=True)
    fcfg.filter = filter  # type: ignore[assignment]
    fcfg.kalman.enabled = True
    if fcfg.min_views > len(names):
        raise FuseInputError(f"min_views={fcfg.min_views} exceeds the {len(names)} cameras")
    cfg = Config(cameras=[SimCameraConfig(backend="sim", name=f"c{i}") for i in range(len(names))],
                 fps=fps, fusion=fcfg)
    fuser = Fuser(cameras, cfg, unit)
    T, J = points.shape[1:3]
    xyz = np.empty((T, J, 3))
    var = np.empty((T, J, 3))
    views = np.zeros((T, J), dtype=np.uint16)
    frames = range(T)
    bar = None
    if progress:
        from rich.console import Console
        from rich.progress import Progress

        bar = Progress(console=Console(stderr=True), transient=True)
        bar.start()
        task = bar.add_task("fusing", total=T)
    try:
        for t in frames:
            zv = None if zvar is None else np.ascontiguousarray(zvar[:, t])
            f = fuser.step(np.ascontiguousarray(points[:, t]), t, zv)
            xyz[t], var[t], views[t] = f.xyz, f.var, f.views
            if bar is not None and (t % 256 == 0 or t == T - 1):
                bar.update(task, completed=t + 1)
    finally:
        if bar is not None:
            bar.stop()
    known = np.isfinite(xyz).all(axis=2)
    views[~known] = 0
    err, score = reprojection(cameras, xyz, points, views)
    out = Path(out_dir)
    csv_path = write_anipose3d(out / "pose3d.csv", xyz, keypoints, error=err,
                               ncams=_popcount16(views), score=score, var=var)
    trc_path = write_trc(out / "pose3d.trc", xyz, keypoints, fps, units=unit)
    measured = views > 0
    return {
        "frames": T, "keypoints": keypoints, "filter": filter, "units": unit,
        "files": {n: [str(p) for p in fs] for n, fs in files.items()},
        "mean_reproj_px": float(np.nanmean(err[measured])) if measured.any() else float("nan"),
        "measured_pct": float(100.0 * measured.mean()),
        "known_pct": float(100.0 * known.mean()),
        "csv": str(csv_path), "var_csv": str(var_path(csv_path)), "trc": str(trc_path),
    }


def reprojection(
    cameras: Any, xyz: np.ndarray, points: np.ndarray, views: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean reprojection error (px) of ``xyz`` ``(T, J, 3)`` against ``points``
    ``(C, T, J, 3)`` over the views in ``views`` ``(T, J)`` and their mean likelihood;
    NaN error and score 0 where no view is used."""
    C, T, J, _ = points.shape
    tot = np.zeros((T, J))
    sc = np.zeros((T, J))
    n = np.zeros((T, J))
    flat = xyz.reshape(-1, 3)
    for c in range(C):
        use = ((views >> c) & 1).astype(bool)
        uv = cameras[c].project(np.where(np.isfinite(flat), flat, 0.0)).reshape(T, J, 2)
        d = np.linalg.norm(uv - points[c, ..., :2], axis=2)
        tot += np.where(use, d, 0.0)
        sc += np.where(use, np.nan_to_num(points[c, ..., 2]), 0.0)
        n += use
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, tot / n, np.nan), np.where(n > 0, sc / n, 0.0)
