"""Single-camera 3D: a LiftPose3D-style lifter run by ONNX Runtime (docs/lifting.md).

The lifter maps one view's 2D keypoints to 3D keypoints relative to a root keypoint, in the
camera's frame. Its input is built here, the same way for training (``livepose.lift``) and
live use, so the two cannot drift apart:

- each keypoint's undistorted normalised coordinates ``(x, y)`` minus the root's, times the
  root's depth ``Z`` (from a known plane or point, below), divided by :data:`SCALE_MM` — the
  2D pose in millimetres across the optical axis (weak perspective), so a camera further
  away gives the same input;
- a visibility mask per keypoint (missing keypoints are zeros);
- the world's up axis in camera coordinates ``R[:, 2]`` and the root's ray ``(x, y)``: the
  view's elevation and where the animal is in the image, which the 2D alone cannot tell;
- with ``history: K`` in the manifest, the same per-frame part (2D and visibility) of the
  ``K`` *previous* frames ``history_step_s`` apart (causal: no future frame; a frame that
  was dropped or had no root is zeros), newest first (:func:`stack_history`).

Placement: the root's ray is intersected with the horizontal plane ``z = height`` (an arena
floor, the root's usual height above it), or the root is a known world point (a head-fixed
animal); the root-relative 3D is rotated into the world (``Rᵀ``) and added.

The ONNX graph takes ``features`` ``(N, F)`` float32 and returns ``(N, 3J)`` root-relative
camera-frame millimetres; its standardisation is inside the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from livepose.core.camera import CameraModel
from livepose.core.errors import UserError

SCALE_MM = 50.0
"""Length that scales the lifter's inputs and outputs to order 1 (mm)."""

MANIFEST = "lifter.yaml"
MODEL = "lifter.onnx"


class LiftError(UserError, ValueError):
    """A lifter folder, manifest or input that cannot be used (one line)."""


@dataclass(frozen=True)
class LiftSpec:
    """What a lifter was trained on (its manifest ``lifter.yaml``).

    Attributes
    ----------
    keypoints
        ``J`` names, in the order of the 2D input rows.
    root
        The root keypoint: inputs and outputs are relative to it, placement intersects its ray.
    plane_height_mm
        Default height of the root above the floor plane ``z = 0`` (the training data's
        median), used by ``plane: floor`` unless the config gives one.
    likelihood_threshold
        2D keypoints below this confidence are treated as missing.
    extra
        The rest of the manifest (training error, augmentation ranges, sessions).
    """

    keypoints: list[str]
    root: str
    plane_height_mm: float
    likelihood_threshold: float = 0.3
    extra: dict[str, Any] = field(default_factory=dict)
    history: int = 0
    """Previous frames in the input (0: single frame, LiftPose3D's)."""
    history_step_s: float = 0.0
    """Time between those frames (s)."""

    @property
    def root_index(self) -> int:
        return self.keypoints.index(self.root)

    @property
    def n_features(self) -> int:
        return 3 * len(self.keypoints) * (1 + self.history) + 5

    def step_frames(self, fps: float) -> int:
        """The history's step in frames at ``fps`` (at least 1)."""
        return max(1, round(self.history_step_s * float(fps)))


def write_manifest(folder: Path, spec: LiftSpec) -> Path:
    """Write ``folder/lifter.yaml`` for ``spec``."""
    doc = {"format": "livepose-lifter/1", "model": MODEL, "keypoints": list(spec.keypoints),
           "roots": [spec.root], "units": "mm", "scale_mm": SCALE_MM,
           "plane_height_mm": float(spec.plane_height_mm),
           "likelihood_threshold": float(spec.likelihood_threshold),
           "history": int(spec.history), "history_step_s": float(spec.history_step_s),
           "features": "root-relative undistorted xy times root depth / scale_mm (2J), "
                       "visibility (J), world up in camera (3), root ray xy (2); then the "
                       "same 2J + J of each of `history` previous frames, newest first",
           **spec.extra}
    p = Path(folder) / MANIFEST
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def read_manifest(folder: str | Path) -> LiftSpec:
    """Read a lifter folder's manifest; one-line :class:`LiftError` if it is unusable."""
    p = Path(folder)
    if p.suffix == ".onnx":
        p = p.parent
    m = p / MANIFEST
    if not m.is_file():
        raise LiftError(f"lifter: no {MANIFEST} in {p} (train one with `livepose lift train`)")
    try:
        doc = yaml.safe_load(m.read_text())
        kps = [str(k) for k in doc["keypoints"]]
        root = str(doc["roots"][0])
        height = float(doc["plane_height_mm"])
    except (yaml.YAMLError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise LiftError(f"lifter: {m}: malformed manifest ({exc})") from None
    if root not in kps:
        raise LiftError(f"lifter: {m}: root {root!r} is not one of its keypoints")
    if float(doc.get("scale_mm", SCALE_MM)) != SCALE_MM:
        raise LiftError(f"lifter: {m}: scale_mm {doc['scale_mm']} is not {SCALE_MM}")
    try:
        hist, step = int(doc.get("history", 0)), float(doc.get("history_step_s", 0.0))
    except (TypeError, ValueError):
        raise LiftError(f"lifter: {m}: history must be an integer, history_step_s a "
                        "number") from None
    if hist < 0 or (hist > 0 and not step > 0):
        raise LiftError(f"lifter: {m}: history must be >= 0 and history_step_s > 0 with it")
    known = {"keypoints", "roots", "plane_height_mm", "likelihood_threshold", "history",
             "history_step_s"}
    return LiftSpec(kps, root, height, float(doc.get("likelihood_threshold", 0.3)),
                    {k: v for k, v in doc.items() if k not in known}, hist, step)


def plane_depth(cam: CameraModel, root_xy: np.ndarray, height: float) -> np.ndarray:
    """Depth along the optical axis where each root ray meets the plane ``z = height``.

    Parameters
    ----------
    cam
        The camera (world → camera ``R``, ``t``).
    root_xy
        ``(N, 2)`` undistorted normalised coordinates of the root.
    height
        The plane's height (world units).

    Returns
    -------
    np.ndarray
        ``(N,)`` depths; NaN where the ray misses the plane in front of the camera.
    """
    d = np.concatenate([root_xy, np.ones((root_xy.shape[0], 1))], axis=1) @ cam.R  # Rᵀ d_c
    c = cam.center
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (height - c[2]) / d[:, 2]
    return np.where(np.isfinite(s) & (s > 0), s, np.nan)


def features(xy: np.ndarray, valid: np.ndarray, depth: np.ndarray, up: np.ndarray,
             root: int) -> np.ndarray:
    """The lifter's input rows.

    Parameters
    ----------
    xy
        ``(N, J, 2)`` undistorted normalised coordinates (anything where not ``valid``).
    valid
        ``(N, J)`` bool: the keypoint was seen.
    depth
        ``(N,)`` the root's depth (same unit as :data:`SCALE_MM`: mm).
    up
        ``(N, 3)`` or ``(3,)`` the world's up axis in camera coordinates (``R[:, 2]``).
    root
        Index of the root keypoint.

    Returns
    -------
    np.ndarray
        ``(N, 3J + 5)`` float32.
    """
    n = valid.shape[0]
    up = np.broadcast_to(np.asarray(up, float), (n, 3))
    out = np.concatenate([frame_rows(xy, valid, depth, root), up, xy[:, root, :]], axis=1)
    return np.nan_to_num(out).astype(np.float32)


def frame_rows(xy: np.ndarray, valid: np.ndarray, depth: np.ndarray, root: int) -> np.ndarray:
    """The per-frame part of the input (also what a history frame contributes).

    Parameters are as :func:`features`'s. Returns ``(N, 3J)`` float32: the root-relative
    2D times depth / :data:`SCALE_MM` ``(2J)``, then the visibility ``(J)``; zeros where
    not ``valid``.
    """
    n, J = valid.shape
    rel = (xy - xy[:, root : root + 1, :]) * (depth / SCALE_MM)[:, None, None]
    rel = np.where(valid[:, :, None], rel, 0.0)
    out = np.concatenate([rel.reshape(n, 2 * J), valid.astype(float)], axis=1)
    return np.nan_to_num(out).astype(np.float32)


def stack_history(rows: np.ndarray, frame_ids: np.ndarray, history: int,
                  step: int) -> np.ndarray:
    """Each frame's previous frames' rows, newest first (causal).

    Parameters
    ----------
    rows
        ``(N, R)`` per-frame rows (:func:`frame_rows`; zeros for a frame without a root).
    frame_ids
        ``(N,)`` the frames' ids (any order; gaps are dropped frames).
    history, step
        ``K`` previous frames, ``step`` frame ids apart.

    Returns
    -------
    np.ndarray
        ``(N, K·R)``: frame ``f − k·step``'s row for ``k = 1..K``; zeros where that frame
        is not among ``frame_ids`` (dropped, or before the first).
    """
    n, width = rows.shape
    out = np.zeros((n, history, width), np.float32)
    if n == 0 or history == 0:
        return out.reshape(n, 0)
    fid = np.asarray(frame_ids, np.int64)
    order = np.argsort(fid, kind="stable")
    sf = fid[order]
    for k in range(1, history + 1):
        want = fid - k * step
        pos = np.clip(np.searchsorted(sf, want), 0, n - 1)
        hit = sf[pos] == want
        out[hit, k - 1] = rows[order[pos[hit]]]
    return out.reshape(n, history * width)


@dataclass(slots=True)
class Lifted:
    """One view lifted to 3D.

    Attributes
    ----------
    xyz
        ``(N, J, 3)`` world positions (mm); NaN where the root was not seen or its ray
        missed the plane.
    rel
        ``(N, J, 3)`` root-relative positions in the camera's frame (mm).
    seen
        ``(N, J)`` bool: the keypoint's own 2D was used.
    rows
        ``(N, 3J)`` each frame's own input part (a later frame's history).
    """

    xyz: np.ndarray
    rel: np.ndarray
    seen: np.ndarray
    rows: np.ndarray


class Lifter:
    """A trained lifter in an ONNX Runtime CPU session.

    Parameters
    ----------
    folder
        The lifter folder (``lifter.onnx`` + ``lifter.yaml``), or its ``lifter.onnx``.
    threads
        ONNX Runtime intra-op threads (1: one frame is a few matrix-vector products).
    """

    def __init__(self, folder: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        self.spec = read_manifest(folder)
        p = Path(folder)
        onnx = p if p.suffix == ".onnx" else p / str(self.spec.extra.get("model", MODEL))
        if not onnx.is_file():
            raise LiftError(f"lifter: {onnx} does not exist")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(onnx), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types
            raise LiftError(f"lifter: {onnx}: ONNX Runtime cannot load it ({exc})") from None
        inp = self.session.get_inputs()[0]
        if inp.shape[-1] != self.spec.n_features:
            raise LiftError(f"lifter: {onnx} takes {inp.shape[-1]} features, its manifest's "
                            f"{len(self.spec.keypoints)} keypoints need {self.spec.n_features}")
        self.input_name = inp.name

    def run(self, feats: np.ndarray) -> np.ndarray:
        """``(N, F)`` features → ``(N, J, 3)`` root-relative camera-frame mm."""
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(feats, np.float32)})
        return np.asarray(out[0], np.float64).reshape(feats.shape[0], -1, 3)

    def prepare(self, points: np.ndarray, cam: CameraModel, height: float | None = None,
                point: np.ndarray | None = None, frame_ids: np.ndarray | None = None,
                step: int = 1, past: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The lifter's inputs for one camera's 2D keypoints.

        Parameters
        ----------
        points
            ``(N, J, 3)`` distorted pixels ``x, y`` and confidence (NaN: not seen), in the
            manifest's keypoint order.
        cam
            The camera, calibrated in mm.
        height
            ``plane`` placement: the root's height above ``z = 0`` (default: the manifest's).
        point
            ``point`` placement: the root's fixed world position ``(3,)`` (overrides
            ``height``).
        frame_ids, step
            A lifter with history: the rows' frame ids (default ``0..N-1``: consecutive)
            and the history's step in frames (:meth:`LiftSpec.step_frames`); each row's
            history comes from the earlier rows (:func:`stack_history`).
        past
            ``(N, K·3J)`` the history instead (the live path keeps it across calls).

        Returns
        -------
        feats, ok, root_c, seen, rows
            ``(M, F)`` features of the ``M`` rows where ``ok`` ``(N,)`` (root seen, depth
            found); ``(N, 3)`` the root in camera coordinates; ``(N, J)`` keypoints seen;
            ``(N, 3J)`` each frame's own part of the input (:func:`frame_rows`, zeros where
            not ``ok``), which later frames use as history.
        """
        pts = np.asarray(points, np.float64)
        J = len(self.spec.keypoints)
        if pts.ndim != 3 or pts.shape[1:] != (J, 3):
            raise LiftError(f"lifter: points must have shape (N, {J}, 3), got {pts.shape}")
        n, r = pts.shape[0], self.spec.root_index
        with np.errstate(invalid="ignore"):
            seen = (np.isfinite(pts).all(axis=2)
                    & (pts[:, :, 2] >= self.spec.likelihood_threshold) & (pts[:, :, 2] > 0))
        xy = cam.undistort(np.nan_to_num(pts[:, :, :2]).reshape(-1, 2)).reshape(n, J, 2)
        if point is not None:
            pc = cam.R @ np.asarray(point, float) + cam.tvec
            depth = np.full(n, pc[2])
            root_c = np.broadcast_to(pc, (n, 3)).copy()
        else:
            h = self.spec.plane_height_mm if height is None else float(height)
            depth = plane_depth(cam, xy[:, r], h)
            root_c = np.concatenate([xy[:, r], np.ones((n, 1))], axis=1) * depth[:, None]
        ok = seen[:, r] & np.isfinite(depth)
        seen &= ok[:, None]
        rows = frame_rows(xy, seen, np.where(ok, depth, 0.0), r)
        feats = np.concatenate([rows[ok], np.broadcast_to(cam.R[:, 2], (int(ok.sum()), 3)),
                                xy[ok, r]], axis=1).astype(np.float32)
        K = self.spec.history
        if K:
            if past is None:
                fids = np.arange(n) if frame_ids is None else np.asarray(frame_ids)
                past = stack_history(rows, fids, K, step)
            elif past.shape != (n, K * 3 * J):
                raise LiftError(f"lifter: history must have shape ({n}, {K * 3 * J})")
            feats = np.concatenate([feats, past[ok]], axis=1)
        return feats, ok, root_c, seen, rows

    def lift(self, points: np.ndarray, cam: CameraModel, height: float | None = None,
             point: np.ndarray | None = None, frame_ids: np.ndarray | None = None,
             step: int = 1, past: np.ndarray | None = None) -> Lifted:
        """Lift one camera's 2D keypoints and place them in the world (arguments as
        :meth:`prepare`)."""
        feats, ok, root_c, seen, rows = self.prepare(points, cam, height, point, frame_ids,
                                                     step, past)
        n, J = seen.shape
        rel = np.full((n, J, 3), np.nan)
        if ok.any():
            rel[ok] = self.run(feats)
        xyz = (root_c[:, None, :] + rel - cam.tvec) @ cam.R  # camera → world: Rᵀ(p − t)
        return Lifted(xyz=xyz, rel=rel, seen=seen, rows=rows)


class LiftFusion:
    """``fusion.mode: lift``: one camera's 2D → lifted 3D → linear Kalman filter.

    The lifted pose is a 3D measurement, like a triangulated point, so it goes through the
    linear filter (:class:`~livepose.fusion.kalman.KeypointKalman`, ``fusion.kalman``
    settings) with a measurement variance from the lifter's held-out error (4× for keypoints
    the camera did not see, which the lifter inferred from the others). The EKF's model
    (2D views of one 3D point) does not describe a lifted pose: its errors are correlated
    across keypoints and along the ray, not per view.

    Parameters
    ----------
    cameras
        The calibrated cameras (calibration order) and their length unit's mm per unit.
    cfg
        The run's config: ``fusion.lift`` (path, camera, plane/point), ``fusion.kalman``,
        ``fusion.filter`` (``none`` publishes the lifted pose unfiltered), ``fps``.
    mm_per_unit
        Millimetres per calibration unit (the lifter works in mm).
    """

    def __init__(self, cameras: Any, cfg: Any, mm_per_unit: float) -> None:
        from livepose.fusion.kalman import KeypointKalman

        lc = cfg.fusion.lift
        self.lifter = Lifter(lc.path)
        names = list(cameras.names)
        if lc.camera is not None and lc.camera not in names:
            raise LiftError(f"fusion.lift.camera {lc.camera!r} is not one of {names}")
        self.cam_index = names.index(lc.camera) if lc.camera else 0
        cam = cameras[self.cam_index]
        self.s = float(mm_per_unit)
        self.cam = CameraModel(name=cam.name, size=cam.size, matrix=cam.matrix, dist=cam.dist,
                               rvec=cam.rvec, tvec=cam.tvec * self.s, fisheye=cam.fisheye)
        self.height = lc.height_mm
        self.point = np.asarray(lc.point_mm, float) if lc.plane == "point" else None
        held = self.lifter.spec.extra.get("held_out_error") or {}
        sigma = max(1.0, float(held.get("mean_mm") or 5.0) / 1.6)
        self.var_mm2 = sigma**2
        J = len(self.lifter.spec.keypoints)
        self.fps = float(cfg.fps)
        self.kf = (KeypointKalman(J, cfg.fusion.kalman, self.fps, 1.0 / self.s)
                   if cfg.fusion.filter != "none" and cfg.fusion.kalman.enabled else None)
        self.last_fid: int | None = None
        self.step_frames = self.lifter.spec.step_frames(self.fps)
        self.history: dict[int, np.ndarray] = {}
        """Frame id → that frame's input rows, for a lifter with history (the last
        ``history · step`` frames)."""

    def _past(self, frame_id: int) -> np.ndarray | None:
        """``(1, K·3J)`` the previous frames' rows (zeros for frames not received)."""
        K = self.lifter.spec.history
        if not K:
            return None
        width = 3 * len(self.lifter.spec.keypoints)
        out = np.zeros((1, K * width), np.float32)
        for k in range(1, K + 1):
            row = self.history.get(frame_id - k * self.step_frames)
            if row is not None:
                out[0, (k - 1) * width : k * width] = row
        return out

    def step(self, points: np.ndarray, frame_id: int) -> dict[str, Any]:
        """Lift camera ``cam_index``'s row of ``points`` ``(C, J, 3)``; returns the fields
        of a :class:`~livepose.fusion.process.Fused` (calibration units)."""
        from livepose.core import protocol

        J = len(self.lifter.spec.keypoints)
        p = points[self.cam_index]
        if p.shape != (J, 3):
            raise LiftError(f"lifter: {J} keypoints expected, kp2d has {p.shape[0]}")
        if self.last_fid is not None and frame_id < self.last_fid - self.fps:
            self.history.clear()  # the source restarted
        lifted = self.lifter.lift(p[None], self.cam, self.height, self.point,
                                  past=self._past(frame_id))
        if self.lifter.spec.history:
            self.history[frame_id] = lifted.rows[0]
            span = self.lifter.spec.history * self.step_frames
            newest = max(self.history)
            for f in [f for f in self.history if f < newest - span]:
                del self.history[f]
        xyz_mm, seen = lifted.xyz[0], lifted.seen[0]
        var = np.where(seen, self.var_mm2, 4.0 * self.var_mm2)[:, None] * np.ones(3)
        raw = xyz_mm / self.s
        var_u = var / self.s**2
        late = self.last_fid is not None and frame_id <= self.last_fid
        xyz, v = raw, var_u
        if self.kf is not None and not late:
            if self.last_fid is not None and frame_id < self.last_fid - self.fps:
                self.kf.reset()
                self.last_fid = None
            dt = 0.0 if self.last_fid is None else (frame_id - self.last_fid) / self.fps
            xyz, v = self.kf.step(raw, var_u, dt)
            self.last_fid = frame_id
        elif not late:
            self.last_fid = frame_id
        known = np.isfinite(xyz).all(axis=1)
        views = np.where(seen & known, 1 << self.cam_index, 0).astype(np.uint16)
        status = np.where(views != 0, protocol.MEASURED,
                          np.where(known, protocol.PREDICTED, protocol.MISSING)).astype(np.uint8)
        return {"xyz": xyz, "var": v, "raw_xyz": raw, "reproj": np.full(J, np.nan, np.float32),
                "views": views, "gated": np.zeros(J, np.uint16), "status": status,
                "late": late, "lifted": True}
