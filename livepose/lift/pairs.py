"""Training pairs for a lifter: 3D poses seen through recorded and virtual cameras, with the
2D model's own error (NumPy only: the nearest-neighbour baseline and the tests use it too).

A pair is the lifter's input row (:func:`livepose.fusion.lift.features`) and its target: the
keypoints relative to the root, in the camera's frame (mm). Only keypoints measured in 3D
are targets; a keypoint not measured is also not seen in 2D.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from livepose.core.camera import CameraModel
from livepose.fusion.lift import features, frame_rows


@dataclass(frozen=True)
class NoiseModel:
    """The 2D model's error per keypoint, measured against projected 3D.

    Attributes
    ----------
    sigma_px
        ``(J,)`` robust σ per axis (1.4826 × MAD of the residuals), pixels.
    drop
        ``(J,)`` fraction of frames where the keypoint is unusable (missing, below the
        confidence threshold) or an outlier (residual beyond 5σ).
    """

    sigma_px: np.ndarray
    drop: np.ndarray
    residuals: tuple[np.ndarray, ...] | None = None
    """Per keypoint ``(n_j, 2)`` the measured residuals (pixels) of usable predictions,
    outliers included: with them, training draws each keypoint's 2D error from its own
    measured errors (their heavy tail and bias too) instead of a Gaussian, and drops
    keypoints at the ``missing`` rate only (an outlier is then an error, not a drop)."""
    missing: np.ndarray | None = None
    """``(J,)`` fraction of frames where the keypoint is unusable (missing, below the
    confidence threshold)."""

    def gaussian(self) -> NoiseModel:
        """The Gaussian + drop model of the same measurement (no residuals)."""
        return NoiseModel(self.sigma_px, self.drop)

    def to_dict(self, names: list[str]) -> dict[str, dict[str, float]]:
        out = {n: {"sigma_px": round(float(s), 3), "drop": round(float(d), 4)}
               for n, s, d in zip(names, self.sigma_px, self.drop, strict=True)}
        if self.residuals is not None and self.missing is not None:
            for n, r, m in zip(names, self.residuals, self.missing, strict=True):
                d = np.linalg.norm(r, axis=1) if len(r) else np.full(1, np.nan)
                out[n].update({"missing": round(float(m), 4),
                               "error_p50_px": round(float(np.median(d)), 3),
                               "error_p99_px": round(float(np.percentile(d, 99)), 3),
                               "samples": len(r)})
        return out

    def sample(self, rng: np.random.Generator, shape: tuple[int, int],
               focal_px: float) -> tuple[np.ndarray, np.ndarray]:
        """``(N, J, 2)`` 2D errors in normalised coordinates and ``(N, J)`` bool kept."""
        N, J = shape
        if self.residuals is None or self.missing is None:
            err = rng.standard_normal((N, J, 2)) * (self.sigma_px / focal_px)[None, :, None]
            return err, rng.random((N, J)) >= self.drop[None, :]
        err = np.zeros((N, J, 2))
        for j, r in enumerate(self.residuals):
            if len(r):
                err[:, j] = r[rng.integers(0, len(r), N)] / focal_px
            else:
                err[:, j] = rng.standard_normal((N, 2)) * (self.sigma_px[j] / focal_px)
        return err, rng.random((N, J)) >= self.missing[None, :]


def measure_noise(pred: np.ndarray, proj: np.ndarray, threshold: float) -> NoiseModel:
    """The 2D model's error from its predictions and the projections of measured 3D.

    Parameters
    ----------
    pred
        ``(N, J, 3)`` predicted ``x, y, confidence`` (NaN: none), pooled over views.
    proj
        ``(N, J, 2)`` the 3D projected into the same views (NaN where the 3D was not
        measured: those rows do not count).
    threshold
        Confidence below which a prediction is unusable.
    """
    has = np.isfinite(proj).all(axis=2)
    usable = has & np.isfinite(pred).all(axis=2) & (np.nan_to_num(pred[:, :, 2]) >= threshold)
    res = np.where(usable[:, :, None], pred[:, :, :2] - proj, np.nan)
    J = pred.shape[1]
    sigma, drop, missing = np.full(J, 1.0), np.zeros(J), np.zeros(J)
    kept: list[np.ndarray] = []
    for j in range(J):
        r = res[:, j][usable[:, j]]
        kept.append(r)
        n = int(has[:, j].sum())
        if n == 0:
            continue
        missing[j] = (n - r.shape[0]) / n
        if r.size:
            med = np.median(r, axis=0)
            sigma[j] = max(0.1, float(1.4826 * np.median(np.abs(r - med))))
            out = int((np.linalg.norm(r, axis=1) > 5.0 * sigma[j] * np.sqrt(2.0)).sum())
        else:
            out = 0
        drop[j] = (n - r.shape[0] + out) / n
    return NoiseModel(sigma, drop, tuple(kept), missing)


@dataclass(frozen=True)
class Augment:
    """Virtual cameras around the recorded ones: cameras on a sphere around the poses'
    centre, looking at it (or, with ``aim_deg``, up to that angle beside it).

    Attributes
    ----------
    elevation_deg, distance_mm, azimuth_deg
        Uniform ranges ``(lo, hi)``.
    views
        Virtual views per pose.
    """

    elevation_deg: tuple[float, float] = (20.0, 70.0)
    distance_mm: tuple[float, float] = (360.0, 680.0)
    azimuth_deg: tuple[float, float] = (0.0, 360.0)
    views: int = 4
    aim_deg: float = 0.0
    """Each virtual camera looks up to this far (uniform cone) away from the poses' centre,
    so the subject also appears off the image centre, as in a real rig's views."""

    def to_dict(self) -> dict[str, object]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _look_at(center: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``(N, 3, 3)`` world → camera rotations (x right, y down, z forward, world z up)."""
    fwd = target - center
    fwd /= np.linalg.norm(fwd, axis=1, keepdims=True)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    down = np.cross(fwd, right)
    return np.stack([right, down, fwd], axis=1)


def virtual_views(rng: np.random.Generator, n: int, aug: Augment,
                  target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random cameras: rotations ``(n, 3, 3)`` and translations ``(n, 3)``."""
    az = np.radians(rng.uniform(*aug.azimuth_deg, n))
    el = np.radians(rng.uniform(*aug.elevation_deg, n))
    d = rng.uniform(*aug.distance_mm, n)
    c = target + d[:, None] * np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az),
                                        np.sin(el)], axis=1)
    aim = np.broadcast_to(target, c.shape).copy()
    if aim_deg := aug.aim_deg:  # turn the line of sight off the centre
        off = rng.standard_normal(c.shape)
        off -= (off * (aim - c)).sum(axis=1, keepdims=True) * (aim - c) / d[:, None] ** 2
        off /= np.linalg.norm(off, axis=1, keepdims=True)
        ang = np.radians(aim_deg) * np.sqrt(rng.uniform(0.0, 1.0, n))
        aim = aim + off * (d * np.tan(ang))[:, None]
    R = _look_at(c, aim)
    return R, -np.einsum("nij,nj->ni", R, c)


@dataclass(slots=True)
class Pairs:
    """Training pairs.

    Attributes
    ----------
    x
        ``(N, 3J + 5)`` float32 lifter inputs.
    y
        ``(N, 3J)`` float32 root-relative camera-frame targets (mm; 0 where not measured).
    w
        ``(N, 3J)`` float32 1 where the target was measured.
    """

    x: np.ndarray
    y: np.ndarray
    w: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _see(X: np.ndarray, R: np.ndarray, t: np.ndarray, root: int, height: float,
         noise: NoiseModel, focal_px: float, rng: np.random.Generator
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(N, J, 3)`` world poses through ``N`` cameras with the 2D model's error: noisy
    normalised ``xy`` ``(N, J, 2)``, ``seen`` ``(N, J)``, the noisy root ray's plane depth
    ``(N,)`` (NaN: none), camera-frame points ``(N, J, 3)``, ``meas`` ``(N, J)``."""
    pc = np.einsum("nij,nkj->nki", R, X) + t[:, None, :]
    with np.errstate(invalid="ignore"):
        meas = np.isfinite(pc).all(axis=2) & (pc[:, :, 2] > 1e-6)
        xy = pc[:, :, :2] / pc[:, :, 2:3]
    err, kept = noise.sample(rng, meas.shape, focal_px)
    xy = xy + err
    seen = meas & kept
    seen[:, root] = meas[:, root]  # a pose without its root is never lifted
    N = xy.shape[0]
    depth = np.empty(N)
    for k in range(0, N, 65536):  # plane depth of the noisy root ray, per camera
        sl = slice(k, k + 65536)
        d = np.concatenate([xy[sl, root], np.ones((xy[sl].shape[0], 1))], axis=1)
        dw = np.einsum("nji,nj->ni", R[sl], d)  # Rᵀ d
        cw = -np.einsum("nji,nj->ni", R[sl], t[sl])
        with np.errstate(divide="ignore", invalid="ignore"):
            depth[sl] = (height - cw[:, 2]) / dw[:, 2]
    depth[~(np.isfinite(depth) & (depth > 0) & seen[:, root])] = np.nan
    return xy, seen, depth, pc, meas


def make_pairs(poses: np.ndarray, root: int, height: float, noise: NoiseModel, focal_px: float,
               rng: np.random.Generator, aug: Augment | None,
               cameras: list[CameraModel] | None = None, history: int = 0, step: int = 1,
               every: int = 1, frame_drop: float = 0.0) -> Pairs:
    """Project 3D poses through cameras, add the 2D model's error, build lifter pairs.

    Parameters
    ----------
    poses
        ``(T, J, 3)`` world mm, NaN where not measured; poses without a root are skipped.
        With ``history``, consecutive rows are consecutive frames (NaN rows: frames
        without 3D).
    root
        Root keypoint index.
    height
        The plane height used to find the root's depth (as the live lifter does).
    noise
        2D error to add (σ in pixels of a camera of focal ``focal_px``; drop rates).
    focal_px
        Focal length that converts the pixel noise to normalised coordinates.
    rng
        Random source.
    aug
        Virtual cameras (``views`` per pose); ``None``: none.
    cameras
        Recorded cameras: each pose is also seen by each of them (undistorted).
    history, step
        Previous frames in each input (:func:`livepose.fusion.lift.stack_history`), ``step``
        rows apart, seen by the same camera with their own 2D error.
    every
        Only every ``every``-th row is a pair's current frame (the others serve as history).
    frame_drop
        Probability that a history frame is missing altogether (zeros), as a live camera's
        dropped frames.
    """
    T, J, _ = poses.shape
    anchors = np.flatnonzero(np.isfinite(poses[:, root]).all(axis=1)
                             & (np.arange(T) % max(1, every) == 0))
    A = len(anchors)
    Rs, ts, idx = [], [], []
    if cameras:
        for cam in cameras:
            Rs.append(np.broadcast_to(cam.R, (A, 3, 3)))
            ts.append(np.broadcast_to(cam.tvec, (A, 3)))
            idx.append(anchors)
    if aug is not None and aug.views > 0:
        centre = np.nanmedian(poses[anchors, root], axis=0)
        centre[2] = height
        n = A * aug.views
        R, t = virtual_views(rng, n, aug, centre)
        Rs.append(R)
        ts.append(t)
        idx.append(np.repeat(anchors, aug.views))
    R = np.concatenate(Rs)
    t = np.concatenate(ts)
    ix = np.concatenate(idx)
    xy, seen, depth, pc, meas = _see(poses[ix], R, t, root, height, noise, focal_px, rng)
    ok = np.isfinite(depth)
    up = R[:, :, 2]
    x = features(np.nan_to_num(xy[ok]), seen[ok], depth[ok], up[ok], root)
    if history:
        past = []
        for k in range(1, history + 1):
            jx = ix - k * step
            X = np.where((jx >= 0)[:, None, None], poses[np.maximum(jx, 0)], np.nan)
            hxy, hseen, hdepth, _, _ = _see(X, R, t, root, height, noise, focal_px, rng)
            hok = np.isfinite(hdepth) & (rng.random(len(hdepth)) >= frame_drop)
            hseen &= hok[:, None]
            past.append(frame_rows(np.nan_to_num(hxy[ok]), hseen[ok],
                                   np.where(hok, hdepth, 0.0)[ok], root))
        x = np.concatenate([x, *past], axis=1)
    rel = pc[ok] - pc[ok][:, root : root + 1, :]
    w = np.repeat(meas[ok], 3, axis=1).astype(np.float32)
    y = np.nan_to_num(rel).reshape(-1, 3 * J).astype(np.float32)
    return Pairs(x=x, y=y, w=w)
