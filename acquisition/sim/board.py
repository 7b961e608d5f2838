"""A calibration board on the sim rig: a board texture on a plane, rendered through each
camera's lens distortion at scripted poses, with what real collections have: motion blur,
uneven light and sensor noise.

The renderer knows nothing of ChArUco: it draws any texture (``(Ht, Wt)`` grey, uint8) that
covers a rectangle of the board plane. Board frame: ``x`` along the texture's columns, ``y``
along its rows, ``z = x × y`` (into the board, away from a camera that sees its face);
world → camera as in :mod:`livepose.core.camera`. Ray casting uses the exact undistortion of
every pixel (:meth:`CameraModel.undistort`), so a board point projected with
:meth:`CameraModel.project` lands where it is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba as nb
import numpy as np

from livepose.core.board import Board
from livepose.core.camera import CameraModel, rodrigues


@dataclass(frozen=True)
class BoardPose:
    """Board → world pose: ``X_w = R @ p + t`` for a board point ``p`` (``z = 0``)."""

    R: np.ndarray
    t: np.ndarray


def scripted_board_poses(n: int, seed: int = 0, center: tuple[float, float, float] = (0, 0, 0),
                         board_size: tuple[float, float] = (200.0, 280.0),
                         spread_mm: float = 70.0, max_tilt_deg: float = 35.0) -> list[BoardPose]:
    """``n`` poses of a board held face up over the arena (the sim rig looks down on it).

    The board's centre wanders within ``spread_mm`` of ``center`` (height 10–90 mm above
    it), tilts up to ``max_tilt_deg`` about a random horizontal axis and turns freely in its
    plane. Deterministic given the arguments.
    """
    rng = np.random.default_rng([seed, 4242])
    poses = []
    w, h = board_size
    for _ in range(n):
        yaw = rng.uniform(-np.pi, np.pi)
        # face up: board z (into the board) points down in the world
        Rz = rodrigues(np.array([0.0, 0.0, yaw]))
        flip = np.diag([1.0, -1.0, -1.0])
        ax = rng.uniform(0, 2 * np.pi)
        tilt = np.radians(max_tilt_deg) * np.sqrt(rng.random())
        Rt = rodrigues(tilt * np.array([np.cos(ax), np.sin(ax), 0.0]))
        R = Rt @ Rz @ flip
        c = np.asarray(center, float) + np.array(
            [*rng.uniform(-spread_mm, spread_mm, 2), rng.uniform(10.0, 90.0)])
        t = c - R @ np.array([w / 2.0, h / 2.0, 0.0])
        poses.append(BoardPose(R=R, t=t))
    return poses


@nb.njit(cache=True, nogil=True)
def _render_board_nb(xy: np.ndarray, Rb: np.ndarray, tb: np.ndarray, tex: np.ndarray,
                     px_per_unit: float, origin: np.ndarray, r0: int, r1: int, c0: int, c1: int,
                     blur: np.ndarray, img: np.ndarray) -> None:
    """Blend the board into ``img`` ``(H, W)`` float32 over rows ``r0:r1``, cols ``c0:c1``.

    ``xy`` ``(H, W, 2)``: undistorted normalised coordinates of pixel centres; ``Rb, tb``:
    board → camera; ``blur`` ``(2,)``: motion during the exposure in pixels (a segment
    sampled ``max(1, ceil(|blur|))`` times), each sample 2 × 2 supersampled.
    """
    H, W = xy.shape[0], xy.shape[1]
    Ht, Wt = tex.shape[0], tex.shape[1]
    n_x, n_y, n_z = Rb[0, 2], Rb[1, 2], Rb[2, 2]
    nt = n_x * tb[0] + n_y * tb[1] + n_z * tb[2]
    L = np.sqrt(blur[0] ** 2 + blur[1] ** 2)
    nm = max(1, int(np.ceil(L)))
    for r in range(r0, r1):
        for c in range(c0, c1):
            acc = 0.0
            hit = 0.0
            tot = 0
            for m in range(nm):
                f = (m + 0.5) / nm - 0.5
                for a in range(2):
                    for b in range(2):
                        yy = r + (a - 0.5) * 0.5 + f * blur[1]
                        xx = c + (b - 0.5) * 0.5 + f * blur[0]
                        tot += 1
                        y0 = min(max(int(np.floor(yy)), 0), H - 2)
                        x0 = min(max(int(np.floor(xx)), 0), W - 2)
                        fy, fx = yy - y0, xx - x0
                        x = ((1 - fy) * ((1 - fx) * xy[y0, x0, 0] + fx * xy[y0, x0 + 1, 0])
                             + fy * ((1 - fx) * xy[y0 + 1, x0, 0] + fx * xy[y0 + 1, x0 + 1, 0]))
                        y = ((1 - fy) * ((1 - fx) * xy[y0, x0, 1] + fx * xy[y0, x0 + 1, 1])
                             + fy * ((1 - fx) * xy[y0 + 1, x0, 1] + fx * xy[y0 + 1, x0 + 1, 1]))
                        den = n_x * x + n_y * y + n_z
                        if den <= 1e-12:
                            continue
                        s = nt / den
                        if s <= 0:
                            continue
                        dx, dy, dz = s * x - tb[0], s * y - tb[1], s - tb[2]
                        pu = Rb[0, 0] * dx + Rb[1, 0] * dy + Rb[2, 0] * dz
                        pv = Rb[0, 1] * dx + Rb[1, 1] * dy + Rb[2, 1] * dz
                        tu = (pu - origin[0]) * px_per_unit - 0.5
                        tv = (pv - origin[1]) * px_per_unit - 0.5
                        if tu < 0 or tv < 0 or tu > Wt - 1.001 or tv > Ht - 1.001:
                            continue
                        iu, iv = int(tu), int(tv)
                        gu, gv = tu - iu, tv - iv
                        val = ((1 - gv) * ((1 - gu) * tex[iv, iu] + gu * tex[iv, iu + 1])
                               + gv * ((1 - gu) * tex[iv + 1, iu] + gu * tex[iv + 1, iu + 1]))
                        acc += val
                        hit += 1.0
            if hit > 0:
                img[r, c] = (img[r, c] * (tot - hit) + acc) / tot


class BoardRenderer:
    """Renders a board texture into one camera's images.

    Parameters
    ----------
    camera
        The camera (intrinsics, distortion, extrinsics).
    texture
        The board's grey image ``(Ht, Wt)`` uint8.
    px_per_unit
        Texture pixels per board length unit.
    origin
        Board-plane coordinates ``(2,)`` of the texture's top-left corner (a negative
        margin puts a white border around the squares).
    seed
        Seeds the background, the light and the noise.
    """

    def __init__(self, camera: CameraModel, texture: np.ndarray, px_per_unit: float,
                 origin: tuple[float, float], seed: int = 0) -> None:
        w, h = camera.size
        self.camera = camera
        self.tex = np.ascontiguousarray(texture, dtype=np.float32)
        self.px_per_unit = float(px_per_unit)
        self.origin = np.asarray(origin, dtype=np.float64)
        u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
        self.xy = camera.undistort(np.stack([u.ravel(), v.ravel()], 1)).reshape(h, w, 2)
        self.rng = np.random.default_rng([seed, 17])
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        self._yy, self._xx = yy / h - 0.5, xx / w - 0.5
        self.background = (70.0 + 25.0 * np.sin(7.0 * self._xx + 3.0 * self._yy)).astype(
            np.float32)

    def render(self, pose: BoardPose, blur_px: tuple[float, float] = (0.0, 0.0),
               light: tuple[float, float, float] = (1.0, 0.0, 0.0),
               noise_std: float = 2.0) -> np.ndarray:
        """One image ``(H, W)`` uint8 of the board at ``pose`` (board → world).

        ``blur_px``: motion during the exposure ``(dx, dy)`` pixels; ``light``: gain, and
        its gradient across the image in x and y (``gain · (1 + gx·x + gy·y)`` with ``x, y``
        in ``[-0.5, 0.5]``), times a vignette; ``noise_std``: sensor noise in grey levels.
        """
        cam = self.camera
        Rb = cam.R @ pose.R
        tb = cam.R @ pose.t + cam.tvec
        th, tw = self.tex.shape
        u0, v0 = self.origin
        corners = np.array([[u0 + a * tw / self.px_per_unit, v0 + b * th / self.px_per_unit, 0]
                            for a in np.linspace(0, 1, 9) for b in np.linspace(0, 1, 9)])
        uv = cam.project(corners @ pose.R.T + pose.t)
        img = self.background.copy()
        w, h = cam.size
        if np.all(np.isfinite(uv)):
            pad = 3 + int(np.ceil(np.hypot(*blur_px)))
            c0 = max(int(np.floor(uv[:, 0].min())) - pad, 0)
            c1 = min(int(np.ceil(uv[:, 0].max())) + pad, w)
            r0 = max(int(np.floor(uv[:, 1].min())) - pad, 0)
            r1 = min(int(np.ceil(uv[:, 1].max())) + pad, h)
            if c1 > c0 and r1 > r0:
                _render_board_nb(self.xy, Rb, tb, self.tex, self.px_per_unit, self.origin,
                                 r0, r1, c0, c1, np.asarray(blur_px, np.float64), img)
        gain, gx, gy = light
        vign = 1.0 - 0.35 * (self._xx ** 2 + self._yy ** 2) * 4.0 / 2.0
        img *= gain * (1.0 + gx * self._xx + gy * self._yy) * vign
        if noise_std > 0:
            img += self.rng.normal(0.0, noise_std, img.shape).astype(np.float32)
        return np.clip(img, 0, 255).astype(np.uint8)


def _unit(a: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(a), np.sin(a)], 1)


class BoardScene:
    """A board moved through scripted poses in front of a rig: what the sim's board cameras
    see and what the calibration benchmark renders (one script, one renderer).

    Pose ``i`` (of ``n_poses``, :func:`scripted_board_poses`) has its own motion blur (up to
    ``blur_px`` along a random direction), light (gain 0.7–1.3, gradients ±0.6) and, with
    ``false_corners`` > 0, false corners: that fraction of the board's corners seen in an
    image get a small saddle pattern (what a glint or a finger over the print makes) 3–6 px
    beside them, which pulls the detector's sub-pixel corner onto it.

    Parameters
    ----------
    cameras
        The rig's cameras.
    texture
        The board's grey image ``(Ht, Wt)`` uint8 (``Board.image``).
    px_per_unit, origin
        Texture pixels per board unit, board-plane coordinates of its top-left pixel.
    board_size
        Board width and height (squares) in its unit.
    corners
        Board-plane corners ``(N, 2)`` (``Board.object_points()[:, :2]``): where false
        corners are put.
    n_poses, seed, blur_px, false_corners
        The script.
    """

    def __init__(self, cameras: list[CameraModel], texture: np.ndarray, px_per_unit: float,
                 origin: tuple[float, float], board_size: tuple[float, float],
                 corners: np.ndarray, n_poses: int, seed: int = 0, blur_px: float = 3.0,
                 false_corners: float = 0.0, center: tuple[float, float, float] = (0, 0, 0)
                 ) -> None:
        self.cameras = list(cameras)
        self.poses = scripted_board_poses(n_poses, seed=seed, board_size=board_size,
                                          center=center)
        rng = np.random.default_rng([seed, 99])
        self.blur = rng.uniform(0, blur_px, n_poses)[:, None] * _unit(
            rng.uniform(0, 2 * np.pi, n_poses))
        self.light = np.stack([rng.uniform(0.7, 1.3, n_poses), rng.uniform(-0.6, 0.6, n_poses),
                               rng.uniform(-0.6, 0.6, n_poses)], 1)
        self.corners = np.c_[np.asarray(corners, np.float64)[:, :2], np.zeros(len(corners))]
        self.false_corners = float(false_corners)
        self._tex, self._ppu, self._origin = texture, px_per_unit, origin
        self._seed = seed
        self._renderers: dict[int, BoardRenderer] = {}
        self._false_rng = np.random.default_rng([seed, 31])

    @classmethod
    def from_board(cls, board: Board, cameras: list[CameraModel], n_poses: int, seed: int = 0,
                   px_per_square: int = 60, **kw: Any) -> BoardScene:
        """The scene of ``board`` (its print: ``Board.image`` with half a square of white
        margin) held in front of ``cameras``; ``kw`` as in the constructor."""
        L = board.length
        first = 0.5 if board.kind == "charuco" else 1.5  # checkerboard: first corner at 0
        return cls(cameras, board.image(px_per_square, 0.5), px_per_square / L,
                   (-first * L, -first * L), board.size, board.object_points(), n_poses,
                   seed=seed, **kw)

    def renderer(self, c: int) -> BoardRenderer:
        """Camera ``c``'s renderer (made on first use: it holds a per-pixel ray table)."""
        r = self._renderers.get(c)
        if r is None:
            r = BoardRenderer(self.cameras[c], self._tex, self._ppu, self._origin,
                              seed=self._seed + c)
            self._renderers[c] = r
        return r

    def render(self, c: int, i: int) -> np.ndarray:
        """Camera ``c``'s image ``(H, W)`` uint8 of pose ``i``."""
        pose = self.poses[i]
        img = self.renderer(c).render(pose, tuple(self.blur[i]), tuple(self.light[i]))
        if self.false_corners > 0:
            self._add_false(c, pose, img)
        return img

    def _add_false(self, c: int, pose: BoardPose, img: np.ndarray) -> None:
        cam = self.cameras[c]
        uv = cam.project(self.corners @ pose.R.T + pose.t)
        w, h = cam.size
        seen = np.flatnonzero(np.isfinite(uv).all(1) & (uv[:, 0] > 8) & (uv[:, 1] > 8)
                              & (uv[:, 0] < w - 9) & (uv[:, 1] < h - 9))
        rng = self._false_rng
        n = int(rng.binomial(seen.size, self.false_corners)) if seen.size else 0
        for k in rng.choice(seen, size=n, replace=False) if n else ():
            p = uv[k] + rng.uniform(3.0, 6.0) * _unit(rng.uniform(0, 2 * np.pi, 1))[0]
            _saddle(img, p, rng.uniform(0, np.pi / 2))

    def truth(self, i: int) -> np.ndarray:
        """The board corners of pose ``i`` in the world ``(N, 3)``."""
        p = self.poses[i]
        return self.corners @ p.R.T + p.t


def _saddle(img: np.ndarray, p: np.ndarray, angle: float, radius: int = 4) -> None:
    """Paint a small X-junction (two dark and two bright quadrants) centred at ``p``."""
    x0, y0 = round(float(p[0])), round(float(p[1]))
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1].astype(np.float64)
    dx, dy = xx + x0 - p[0], yy + y0 - p[1]
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = ca * dx + sa * dy, -sa * dx + ca * dy
    disc = dx ** 2 + dy ** 2 <= radius ** 2
    val = np.where(u * v > 0, 35, 215).astype(np.uint8)
    sub = img[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
    sub[disc] = val[disc]
