"""Mono renderer of the simulated arena: exact ray–sphere casting through the core camera model.

Every pixel's world ray comes from :meth:`CameraModel.pixel_rays` (distortion included), so a
sphere centre projected with :meth:`CameraModel.project` lands exactly where the renderer
draws it. The static scene (textured floor, clear acrylic wall, the table beyond, lighting and
vignetting) is shaded once per camera; a frame only visits the pixels in each sphere's
bounding box (depth-buffered, so occlusion is right), adds soft contact shadows on the floor,
anti-aliases the animal's silhouette, and adds sensor noise cycled from precomputed fields.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from livepose.acquisition.sim.rig import WALL_HEIGHT_MM
from livepose.core.camera import CameraModel, distort_nb
from livepose.core.config import SimConfig

AMBIENT = 0.38
DIFFUSE = 0.72
_NOISE_FIELDS = 8


@nb.njit(cache=True, nogil=True)
def _project_one(
    c: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray, dist: np.ndarray, fisheye: bool
) -> tuple[float, float, float]:
    X = R[0, 0] * c[0] + R[0, 1] * c[1] + R[0, 2] * c[2] + t[0]
    Y = R[1, 0] * c[0] + R[1, 1] * c[1] + R[1, 2] * c[2] + t[1]
    Z = R[2, 0] * c[0] + R[2, 1] * c[1] + R[2, 2] * c[2] + t[2]
    if Z <= 1e-6:
        return np.nan, np.nan, Z
    xd, yd = distort_nb(X / Z, Y / Z, dist, fisheye)
    return K[0, 0] * xd + K[0, 1] * yd + K[0, 2], K[1, 1] * yd + K[1, 2], Z


@nb.njit(cache=True, nogil=True)
def _render_nb(
    spheres: np.ndarray,
    albedo: np.ndarray,
    origin: np.ndarray,
    rays: np.ndarray,
    bg: np.ndarray,
    vign: np.ndarray,
    floor_xy: np.ndarray,
    wall_t: np.ndarray,
    wall_a: np.ndarray,
    wall_c: float,
    light: np.ndarray,
    spot: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    K: np.ndarray,
    dist: np.ndarray,
    fisheye: bool,
    noise: np.ndarray,
    shift: int,
    depth: np.ndarray,
    shade: np.ndarray,
    shadow: np.ndarray,
    out: np.ndarray,
) -> None:
    h, w = bg.shape
    f = max(K[0, 0], K[1, 1])
    x0, y0, x1, y1 = w, h, -1, -1
    c = np.empty(3)
    # -------- shadows: soft blobs on the floor under each larger sphere
    lx, ly = light[0] / light[2], light[1] / light[2]
    for s in range(spheres.shape[0]):
        r = spheres[s, 3]
        if r < 3.5:
            continue
        cz = spheres[s, 2]
        c[0] = spheres[s, 0] - lx * cz
        c[1] = spheres[s, 1] - ly * cz
        c[2] = 0.0
        sig = 0.75 * r + 0.25 * cz
        strength = 0.5 * np.exp(-cz / 70.0)
        u, v, zc = _project_one(c, R, t, K, dist, fisheye)
        if not zc > 1.0:
            continue
        pr = 1.3 * f * 2.6 * sig / zc + 2.0
        ua, ub = max(int(u - pr), 0), min(int(u + pr) + 1, w - 1)
        va, vb = max(int(v - pr), 0), min(int(v + pr) + 1, h - 1)
        inv = 1.0 / (2.0 * sig * sig)
        for yy in range(va, vb + 1):
            for xx in range(ua, ub + 1):
                dx = floor_xy[yy, xx, 0] - c[0]
                dy = floor_xy[yy, xx, 1] - c[1]
                d2 = (dx * dx + dy * dy) * inv
                if d2 < 3.4:
                    shadow[yy, xx] *= 1.0 - strength * np.exp(-d2)
    # -------- spheres, depth-buffered
    for s in range(spheres.shape[0]):
        c[0], c[1], c[2] = spheres[s, 0], spheres[s, 1], spheres[s, 2]
        r = spheres[s, 3]
        u, v, zc = _project_one(c, R, t, K, dist, fisheye)
        if zc <= 2.0 * r:
            continue
        pr = 1.3 * f * r / np.sqrt(zc * zc - r * r) + 2.0
        ua, ub = max(int(u - pr), 0), min(int(u + pr) + 1, w - 1)
        va, vb = max(int(v - pr), 0), min(int(v + pr) + 1, h - 1)
        if ua > ub or va > vb:
            continue
        x0, y0, x1, y1 = min(x0, ua), min(y0, va), max(x1, ub), max(y1, vb)
        ox, oy, oz = origin[0] - c[0], origin[1] - c[1], origin[2] - c[2]
        r2 = r * r
        a = albedo[s]
        for yy in range(va, vb + 1):
            for xx in range(ua, ub + 1):
                dx, dy, dz = rays[yy, xx, 0], rays[yy, xx, 1], rays[yy, xx, 2]
                b = dx * ox + dy * oy + dz * oz
                qx, qy, qz = ox - b * dx, oy - b * dy, oz - b * dz
                disc = r2 - (qx * qx + qy * qy + qz * qz)
                if disc <= 0.0:
                    continue
                th = -b - np.sqrt(disc)
                if th <= 0.0 or th >= depth[yy, xx]:
                    continue
                depth[yy, xx] = th
                nx = (ox + th * dx) / r
                ny = (oy + th * dy) / r
                nz = (oz + th * dz) / r
                lam = max(0.0, nx * light[0] + ny * light[1] + nz * light[2])
                px, py = origin[0] + th * dx, origin[1] + th * dy
                sp = 1.0 / (1.0 + ((px - spot[0]) ** 2 + (py - spot[1]) ** 2) * spot[2])
                val = a * (AMBIENT + DIFFUSE * lam) * sp * vign[yy, xx]
                if th > wall_t[yy, xx]:
                    val = val * (1.0 - wall_a[yy, xx]) + wall_a[yy, xx] * wall_c
                shade[yy, xx] = val
    # -------- compose: background (with shadow) everywhere, animal where hit
    for yy in range(h):
        for xx in range(w):
            if depth[yy, xx] < np.inf:
                continue
            shade[yy, xx] = bg[yy, xx] * shadow[yy, xx]
    # -------- anti-alias the silhouette: blur pixels next to an edge of the depth mask
    if x1 >= 0:
        xa, xb = max(x0 - 1, 1), min(x1 + 1, w - 2)
        ya, yb = max(y0 - 1, 1), min(y1 + 1, h - 2)
        for yy in range(ya, yb + 1):
            for xx in range(xa, xb + 1):
                hit = depth[yy, xx] < np.inf
                edge = False
                for k in range(-1, 2):
                    for m in range(-1, 2):
                        if (depth[yy + k, xx + m] < np.inf) != hit:
                            edge = True
                if edge:
                    acc = 0.0
                    for k in range(-1, 2):
                        for m in range(-1, 2):
                            wk = (2 - abs(k)) * (2 - abs(m))
                            acc += wk * shade[yy + k, xx + m]
                    shadow[yy, xx] = acc / 16.0
                else:
                    shadow[yy, xx] = -1.0
        for yy in range(ya, yb + 1):
            for xx in range(xa, xb + 1):
                if shadow[yy, xx] >= 0.0:
                    shade[yy, xx] = shadow[yy, xx]
    # -------- sensor: gain to 8 bit, noise, clip
    for yy in range(h):
        for xx in range(w):
            q = shade[yy, xx] * 255.0 + noise[yy, (xx + shift) % noise.shape[1]] + 0.5
            out[yy, xx] = np.uint8(min(255.0, max(0.0, q)))


def _value_noise(
    rng: np.random.Generator, xy: np.ndarray, cell: float, extent: float
) -> np.ndarray:
    """Smooth value noise (bilinear on a random lattice of ``cell`` mm) at points ``(..., 2)``."""
    n = int(np.ceil(2 * extent / cell)) + 3
    g = rng.standard_normal((n, n))
    q = (np.clip(xy, -extent, extent) + extent) / cell
    i = np.floor(q).astype(int)
    fr = q - i
    fr = fr * fr * (3 - 2 * fr)
    i0, j0 = i[..., 0], i[..., 1]
    fx, fy = fr[..., 0], fr[..., 1]
    return (g[i0, j0] * (1 - fx) + g[i0 + 1, j0] * fx) * (1 - fy) + (
        g[i0, j0 + 1] * (1 - fx) + g[i0 + 1, j0 + 1] * fx
    ) * fy


class SimRenderer:
    """Renders one sim camera's view of the arena and the animal's spheres.

    Parameters
    ----------
    camera
        The camera (size, intrinsics, distortion, pose).
    sim
        ``noise_std`` and ``seed`` (floor texture, noise fields).
    arena_radius_mm
        Radius of the floor disc and of the clear wall.
    light_dir
        Direction towards the (distant) light, world ``(3,)``; default from above, a bit
        to the side.
    floor_albedo
        Mean grey level of the arena floor (0–1).
    texture_seed
        Seed of the floor texture and noise fields (default: ``sim.seed``).
    """

    def __init__(
        self,
        camera: CameraModel,
        sim: SimConfig,
        arena_radius_mm: float,
        light_dir: np.ndarray | None = None,
        floor_albedo: float = 0.74,
        texture_seed: int | None = None,
    ) -> None:
        self.camera = camera
        w, h = camera.size
        self.size = (w, h)
        seed = int(sim.seed if texture_seed is None else texture_seed) & 0xFFFFFFFF
        rng = np.random.default_rng([seed, 4242])
        L = np.array([0.28, -0.18, 1.0]) if light_dir is None else np.asarray(light_dir, float)
        self.light = L / np.linalg.norm(L)
        self.spot = np.array([40.0, -30.0, 1.0 / 420.0**2])
        self.origin = camera.center.astype(np.float64)
        rays = camera.pixel_rays()
        self.rays = np.ascontiguousarray(rays, dtype=np.float64)
        self._rng_texture = rng
        self.bg, self.floor_xy, self.wall_t, self.wall_a = self._background(
            float(arena_radius_mm), floor_albedo
        )
        u, v = np.meshgrid(np.arange(w) - (w - 1) / 2, np.arange(h) - (h - 1) / 2)
        rr = (u**2 + v**2) / ((w / 2) ** 2 + (h / 2) ** 2)
        self.vign = np.ascontiguousarray(1.0 - 0.32 * rr, dtype=np.float64)
        self.bg = np.ascontiguousarray(self.bg * self.vign, dtype=np.float64)
        self.wall_c = 0.85
        nrng = np.random.default_rng([seed, 99])
        self.noise = np.ascontiguousarray(
            nrng.standard_normal((_NOISE_FIELDS, h, w)) * float(sim.noise_std), dtype=np.float64
        )
        self._depth = np.empty((h, w))
        self._shade = np.empty((h, w))
        self._shadow = np.empty((h, w))

    def _background(
        self, radius: float, floor_albedo: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Static shading ``(H, W)``, floor hit points ``(H, W, 2)``, near-wall depth and
        opacity ``(H, W)``."""
        rng = self._rng_texture
        d = self.rays
        o = self.origin
        dz = np.where(d[..., 2] < -1e-9, d[..., 2], -1e-9)
        t_floor = -o[2] / dz
        pf = o[:2] + t_floor[..., None] * d[..., :2]
        rho = np.linalg.norm(pf, axis=-1)
        inside = rho <= radius
        ext = 3.0 * radius
        tex = (
            0.05 * _value_noise(rng, pf, 40.0, ext)
            + 0.035 * _value_noise(rng, pf, 9.0, ext)
            + 0.02 * _value_noise(rng, pf, 3.0, ext)
        )
        # bedding-like speckles and faint floor-plate seams
        speck = np.maximum(_value_noise(rng, pf, 2.2, ext) - 1.6, 0.0)
        seams = np.exp(-0.5 * (((pf[..., 0] + 0.3 * pf[..., 1]) % 100.0) - 50.0) ** 2)
        floor = floor_albedo * (1.0 + tex) - 0.25 * speck - 0.05 * seams
        table = 0.30 * (
            1.0 + 0.15 * _value_noise(rng, pf, 25.0, ext) + 0.05 * _value_noise(rng, pf, 4.0, ext)
        )
        alb = np.where(inside, floor, table)
        # the arena wall's base leaves a dark contact line on the floor
        alb *= 1.0 - 0.35 * np.exp(-0.5 * ((rho - radius) / 1.5) ** 2)
        sp = 1.0 / (
            1.0
            + ((pf[..., 0] - self.spot[0]) ** 2 + (pf[..., 1] - self.spot[1]) ** 2) * self.spot[2]
        )
        bg = alb * (AMBIENT + DIFFUSE * self.light[2]) * sp
        # clear cylindrical wall: tint where a ray crosses it, bright top rim
        a = d[..., 0] ** 2 + d[..., 1] ** 2
        b = 2 * (o[0] * d[..., 0] + o[1] * d[..., 1])
        c = o[0] ** 2 + o[1] ** 2 - radius**2
        disc = np.maximum(b * b - 4 * a * c, 0.0)
        ok = b * b - 4 * a * c > 0
        wall_t = np.full(bg.shape, np.inf)
        wall_a = np.zeros(bg.shape)
        hw = WALL_HEIGHT_MM
        for sign in (+1.0, -1.0):  # far wall first, then the near wall over it
            tw = (-b + sign * np.sqrt(disc)) / (2 * np.maximum(a, 1e-12))
            zw = o[2] + tw * d[..., 2]
            hit = ok & (zw >= 0) & (zw <= hw) & (tw < t_floor) & (tw > 0)
            alpha = 0.10 + 0.45 * np.exp(-0.5 * ((zw - hw) / 0.9) ** 2)
            alpha += 0.25 * np.exp(-0.5 * (zw / 1.2) ** 2)
            bg = np.where(hit, bg * (1 - alpha) + alpha * 0.85 * (0.4 + 0.6 * (zw / hw)), bg)
            if sign < 0:
                wall_t = np.where(hit, tw, wall_t)
                wall_a = np.where(hit, alpha, wall_a)
        return (
            np.clip(bg, 0, 1),
            np.ascontiguousarray(pf, dtype=np.float64),
            np.ascontiguousarray(wall_t),
            np.ascontiguousarray(wall_a),
        )

    def render(self, spheres: np.ndarray, albedo: np.ndarray, frame_index: int) -> np.ndarray:
        """Render one frame.

        Parameters
        ----------
        spheres
            ``(S, 4)`` centres x, y, z and radii, world mm.
        albedo
            ``(S,)`` grey albedo in [0, 1].
        frame_index
            Picks the sensor-noise field (deterministic).

        Returns
        -------
        np.ndarray
            ``(H, W)`` uint8 mono image.
        """
        cam = self.camera
        w, h = self.size
        out = np.empty((h, w), dtype=np.uint8)
        self._depth.fill(np.inf)
        self._shadow.fill(1.0)
        k = int(frame_index)
        _render_nb(
            np.ascontiguousarray(spheres, dtype=np.float64),
            np.ascontiguousarray(albedo, dtype=np.float64),
            self.origin,
            self.rays,
            self.bg,
            self.vign,
            self.floor_xy,
            self.wall_t,
            self.wall_a,
            self.wall_c,
            self.light,
            self.spot,
            cam.R,
            cam.tvec,
            cam.matrix,
            cam.dist8,
            cam.fisheye,
            self.noise[k % _NOISE_FIELDS],
            (k // _NOISE_FIELDS) * 37 % w,
            self._depth,
            self._shade,
            self._shadow,
            out,
        )
        return out

    @property
    def depth(self) -> np.ndarray:
        """Ray depth ``(H, W)`` of the animal from the last :meth:`render` (``inf``: none)."""
        return self._depth.copy()
