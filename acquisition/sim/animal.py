"""An articulated rodent-like animal that moves plausibly around a round arena.

The animal is a set of spheres (body chain, tapered head, ears, eyes, legs, paws, a thin tail)
whose centres include the keypoints. Everything is a deterministic function of time, with
random access (any ``t >= 0``):

- the head runs along a smooth closed 2D curve (laps around the arena in polar form: the
  angle always advances, so there are no cusps, while the radius wanders between the centre
  region and the wall; corners rounded) at a speed that varies smoothly around
  ``speed_mm_s`` with occasional pauses; the speed profile is periodic (:data:`PERIOD_S`), so
  the arc length travelled is a table lookup;
- spine and tail points follow the curve *behind* the head by fixed arc lengths, so the body
  bends naturally in turns and the tail drags along the path;
- the head yaws (sniffing) and pitches with slow noise; now and then, while slow, the animal
  rears (the front body rotates up about the hips);
- the paws trot (diagonal pairs) with a phase driven by the distance travelled: planted in
  stance, lifted and swung forward in swing, still when the animal stands still.

World units are millimetres, ``z`` up, floor at ``z = 0``.
"""

from __future__ import annotations

import numpy as np

KEYPOINTS: list[str] = [
    "snout",
    "left_ear",
    "right_ear",
    "head",
    "neck",
    "spine_mid",
    "hip",
    "tail_base",
    "tail_mid",
    "tail_tip",
    "left_forepaw",
    "right_forepaw",
    "left_hindpaw",
    "right_hindpaw",
]
"""Keypoint names, in the order of :meth:`Rodent.keypoints` rows."""

SKELETON: list[tuple[str, str]] = [
    ("snout", "head"),
    ("head", "left_ear"),
    ("head", "right_ear"),
    ("head", "neck"),
    ("neck", "spine_mid"),
    ("spine_mid", "hip"),
    ("hip", "tail_base"),
    ("tail_base", "tail_mid"),
    ("tail_mid", "tail_tip"),
    ("neck", "left_forepaw"),
    ("neck", "right_forepaw"),
    ("hip", "left_hindpaw"),
    ("hip", "right_hindpaw"),
]
"""Edges between keypoints, for drawing."""

PERIOD_S = 120.0
"""Period of the speed and posture noise, seconds."""

_DT = 0.005  # time grid of the speed integral, s
_NCURVE = 16384  # samples of the closed path curve
_MARGIN_MM = 32.0  # path stays this far inside the wall
_TURN_SMOOTH_MM = 8.0  # smoothing of the path: tightest turns ~ this radius
_STRIDE_MM = 30.0  # trot stride length
_DUTY = 0.6  # stance fraction of a stride
_LIFT_MM = 5.0  # paw lift at mid-swing

# spine spheres: (arc lag behind the head reference, radius, height of centre)
_SPINE = np.array(
    [
        [22.0, 10.0, 15.0],  # neck
        [36.0, 12.0, 14.0],  # chest
        [50.0, 13.0, 14.5],  # spine_mid
        [63.0, 12.5, 14.0],  # hip
        [75.0, 10.5, 12.0],  # rump
        [85.0, 6.5, 8.0],  # tail root
    ]
)
_TAIL_BASE_LAG = 92.0
_TAIL_LEN = 80.0
_NTAIL = 27

ALBEDO_BODY = 0.34
ALBEDO_HEAD = 0.36
ALBEDO_EAR = 0.62
ALBEDO_EYE = 0.04
ALBEDO_NOSE = 0.66
ALBEDO_PAW = 0.74
ALBEDO_LEG = 0.40
ALBEDO_TAIL = 0.58


def _noise_bank(rng: np.random.Generator, n: int, m_lo: int, m_hi: int) -> np.ndarray:
    """``(n, 3)`` rows ``[frequency Hz, phase, amplitude]`` of a unit-variance periodic noise
    whose frequencies are integer multiples of ``1 / PERIOD_S`` in ``[m_lo, m_hi]``."""
    m = rng.integers(m_lo, m_hi + 1, size=n).astype(float)
    amp = 1.0 / np.sqrt(m)
    amp *= np.sqrt(2.0 / np.sum(amp**2))
    return np.stack([m / PERIOD_S, rng.uniform(0, 2 * np.pi, n), amp], axis=1)


def _noise(bank: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    """Evaluate a noise bank at times ``t`` (any shape)."""
    tt = np.asarray(t, dtype=np.float64)[..., None]
    return np.sum(bank[:, 2] * np.sin(2 * np.pi * bank[:, 0] * tt + bank[:, 1]), axis=-1)


def _round_corners(xy: np.ndarray, sigma_mm: float) -> np.ndarray:
    """Resample a closed curve ``(M, 2)`` uniformly by arc length and smooth it with a
    circular Gaussian of ``sigma_mm`` (twice), so that near-cusps become tight turns."""
    for _ in range(2):
        seg = np.linalg.norm(np.diff(xy, axis=0, append=xy[:1]), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        length = float(s[-1])
        m = len(xy)
        q = np.arange(m) * (length / m)
        closed = np.vstack([xy, xy[:1]])
        xy = np.stack([np.interp(q, s, closed[:, 0]), np.interp(q, s, closed[:, 1])], axis=1)
        freq = np.fft.rfftfreq(m, d=length / m)
        gain = np.exp(-2.0 * (np.pi * freq * sigma_mm) ** 2)
        xy = np.fft.irfft(np.fft.rfft(xy, axis=0) * gain[:, None], n=m, axis=0)
    return xy


def _smoothstep(x: np.ndarray | float) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


class Rodent:
    """A simulated rodent (body ~10 cm, tail ~8 cm).

    Parameters
    ----------
    seed
        Makes the path, speed profile, posture noise and gait phase.
    arena_radius_mm
        The animal stays inside this radius (with a margin).
    speed_mm_s
        Median running speed.
    scale
        Body size: every length of the body (spheres, keypoint offsets, stride) times this;
        the path and the speed are unchanged (real animals of one cage differ by a few %).
    """

    def __init__(self, seed: int, arena_radius_mm: float, speed_mm_s: float,
                 scale: float = 1.0) -> None:
        if not 0.5 <= scale <= 2.0:
            raise ValueError(f"Rodent scale must be in 0.5..2.0, got {scale}")
        self.scale = float(scale)
        # a trail that replaces the path (set by a herd that avoids collisions)
        self._trail: tuple[np.ndarray, np.ndarray] | None = None
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 31337])
        self.arena_radius_mm = float(arena_radius_mm)
        self.speed_mm_s = float(speed_mm_s)
        # closed path in polar form: the angle always advances (laps around the arena, no
        # cusps), the radius wanders between the centre region and the wall
        rmax = max(self.arena_radius_mm - _MARGIN_MM, 10.0)
        u = np.arange(_NCURVE) / _NCURVE
        laps = int(rng.integers(3, 6))
        kp = np.arange(1, 3 * laps + 1, dtype=float)
        ap = rng.standard_normal(len(kp)) / kp
        ap *= 0.75 * laps / np.sum(np.abs(ap) * kp)  # keeps dφ/du ≥ 0.25 × its mean
        phi = (
            2
            * np.pi
            * (
                laps * u
                + (np.sin(2 * np.pi * np.outer(u, kp) + rng.uniform(0, 2 * np.pi, len(kp))) @ ap)
                / (2 * np.pi)
            )
        )
        phi *= 1.0 if rng.random() < 0.5 else -1.0
        kr = np.arange(1, 4 * laps + 1, dtype=float)
        ar = rng.standard_normal(len(kr)) / kr**0.8
        nr = np.sin(2 * np.pi * np.outer(u, kr) + rng.uniform(0, 2 * np.pi, len(kr))) @ ar
        nr /= max(float(nr.std()), 1e-9)
        rad = 15.0 + (rmax - 15.0) / (1.0 + np.exp(-(0.8 + 1.6 * nr)))
        xy = np.stack([rad * np.cos(phi), rad * np.sin(phi)], axis=1)
        xy = _round_corners(xy, _TURN_SMOOTH_MM)
        seg = np.linalg.norm(np.diff(xy, axis=0, append=xy[:1]), axis=1)
        self._curve = np.vstack([xy, xy[:1]])
        self._curve_s = np.concatenate([[0.0], np.cumsum(seg)])
        self._curve_len = float(self._curve_s[-1])
        # speed profile over one period and its integral
        self._speed_bank = _noise_bank(rng, 12, 4, 90)
        self._pause_bank = _noise_bank(rng, 8, 2, 12)
        self._rear_bank = _noise_bank(rng, 8, 3, 20)
        self._pitch_bank = _noise_bank(rng, 10, 20, 200)
        self._yaw_bank = _noise_bank(rng, 12, 60, 400)
        self._tail_bank = _noise_bank(rng, 6, 30, 150)
        tg = np.arange(0.0, PERIOD_S + _DT / 2, _DT)
        g = self._speed_shape(tg)
        g *= self.speed_mm_s / max(float(np.median(g[:-1])), 1e-12)
        self._t_grid = tg
        self._v_grid = g
        self._s_grid = np.concatenate([[0.0], np.cumsum(0.5 * (g[1:] + g[:-1]) * _DT)])
        self._s_period = float(self._s_grid[-1])
        self._s0 = float(rng.uniform(0, self._curve_len)) + _TAIL_BASE_LAG + _TAIL_LEN
        self._gait0 = float(rng.uniform(0, 1))
        self._kp_index = np.array(self._build(0.0)[2])

    # ------------------------------------------------------------------ time → arc length

    def _speed_shape(self, t: np.ndarray) -> np.ndarray:
        pause = 0.06 + 0.94 * _smoothstep((_noise(self._pause_bank, t) + 1.0) / 0.8)
        return np.exp(0.35 * _noise(self._speed_bank, t)) * pause

    def speed(self, t: float) -> float:
        """Speed of the head reference point along the path at ``t``, mm/s."""
        return float(np.interp(t % PERIOD_S, self._t_grid, self._v_grid))

    def arc(self, t: float) -> float:
        """Arc length travelled by the head reference point at ``t``, mm (monotonic)."""
        n, frac = divmod(float(t), PERIOD_S)
        return self._s0 + n * self._s_period + float(np.interp(frac, self._t_grid, self._s_grid))

    def set_trail(self, s: np.ndarray, xy: np.ndarray) -> None:
        """Follow a trail instead of the path: points ``xy`` ``(K, 2)`` at arc lengths ``s``
        ``(K,)`` (increasing, ~uniform; interpolated, held beyond the ends). The body is
        laid along it exactly as along the path (a herd that avoids collisions steers the
        head and records where it went); give the head's arc to :meth:`pose`."""
        self._trail = (s, xy)

    def _path(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Path (or trail) points ``(..., 2)`` and unit tangents ``(..., 2)`` at arc lengths
        ``s``."""
        s = np.asarray(s, dtype=np.float64)
        h = 3.0
        sa = np.stack([s - h, s, s + h])
        if self._trail is not None:
            ts, txy = self._trail
            x = np.interp(sa, ts, txy[:, 0])
            y = np.interp(sa, ts, txy[:, 1])
        else:
            q = sa % self._curve_len
            x = np.interp(q, self._curve_s, self._curve[:, 0])
            y = np.interp(q, self._curve_s, self._curve[:, 1])
        p = np.stack([x[1], y[1]], axis=-1)
        d = np.stack([x[2] - x[0], y[2] - y[0]], axis=-1)
        d /= np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-9)
        return p, d

    def _vpath(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The path in body units (arc ``u`` = world arc / scale, points / scale): a body of
        unit size built on it and scaled by ``scale`` is the animal of this size."""
        k = self.scale
        p, d = self._path(np.asarray(u, dtype=np.float64) * k)
        return (p / k if k != 1.0 else p), d

    # ------------------------------------------------------------------ pose

    def _paw(self, s: float, lag: float, lateral: float, offset: float) -> np.ndarray:
        """Trotting paw position ``(3,)`` at head arc ``s`` (centre height added by caller)."""
        x = (s / _STRIDE_MM) + offset + self._gait0
        k = np.floor(x)
        ph = x - k

        def neutral(cycle: float) -> np.ndarray:
            sm = (cycle + 0.5 * _DUTY - offset - self._gait0) * _STRIDE_MM - lag
            p, d = self._vpath(np.array(sm))
            return np.array([p[0] - lateral * d[1], p[1] + lateral * d[0], 0.0])

        a = neutral(k)
        if ph < _DUTY:
            return a
        w = (ph - _DUTY) / (1.0 - _DUTY)
        b = neutral(k + 1.0)
        e = 0.5 - 0.5 * np.cos(np.pi * w)
        out = a + e * (b - a)
        out[2] = _LIFT_MM * np.sin(np.pi * w)
        return out

    def _build(self, t: float, s_head: float | None = None
               ) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Spheres ``(S, 4)``, albedo ``(S,)`` and the keypoint rows (``KEYPOINTS`` order);
        ``s_head``: the head's arc on the trail (default: :meth:`arc`)."""
        k = self.scale
        s = (self.arc(t) if s_head is None else s_head) / k  # body units (:meth:`_vpath`)
        sp: list[list[float]] = []
        alb: list[float] = []
        names: dict[str, int] = {}

        def add(c: np.ndarray, r: float, a: float, name: str | None = None) -> None:
            if name is not None:
                names[name] = len(sp)
            sp.append([float(c[0]), float(c[1]), float(c[2]), r])
            alb.append(a)

        lags = _SPINE[:, 0]
        p, _ = self._vpath(s - lags)
        spine = np.column_stack([p, _SPINE[:, 2]])
        # head: from the neck towards the head reference point, with yaw and pitch noise
        p0, _ = self._vpath(np.array(s))
        fwd = p0 - p[0]
        fwd /= max(float(np.linalg.norm(fwd)), 1e-9)
        yaw = 0.35 * _noise(self._yaw_bank, t)
        cy, sy = np.cos(yaw), np.sin(yaw)
        hx, hy = cy * fwd[0] - sy * fwd[1], sy * fwd[0] + cy * fwd[1]
        pitch = -0.25 + 0.22 * _noise(self._pitch_bank, t)
        axis = np.array([hx * np.cos(pitch), hy * np.cos(pitch), np.sin(pitch)])
        side = np.array([-hy, hx, 0.0])
        up = np.cross(axis, side)
        neck = spine[0]
        head_pts = [
            (7.0, 8.5, ALBEDO_HEAD, "head"),
            (14.0, 6.8, ALBEDO_HEAD, None),
            (20.0, 4.8, ALBEDO_HEAD, None),
            (25.0, 2.8, ALBEDO_NOSE, "snout"),
        ]
        for dist, r, a, nm in head_pts:
            add(neck + dist * axis, r, a, nm)
        hc = neck + 7.0 * axis
        add(hc + 7.5 * side + 7.0 * up - 2.0 * axis, 4.2, ALBEDO_EAR, "left_ear")
        add(hc - 7.5 * side + 7.0 * up - 2.0 * axis, 4.2, ALBEDO_EAR, "right_ear")
        ec = neck + 14.5 * axis + 2.5 * up
        add(ec + 5.6 * side, 1.5, ALBEDO_EYE)
        add(ec - 5.6 * side, 1.5, ALBEDO_EYE)
        n_front = len(sp)
        # spine
        spine_names = ["neck", None, "spine_mid", "hip", None, None]
        for i in range(len(_SPINE)):
            add(spine[i], float(_SPINE[i, 1]), ALBEDO_BODY, spine_names[i])
        for i in range(len(_SPINE) - 1):  # in-between spheres smooth the silhouette
            add(
                0.5 * (spine[i] + spine[i + 1]),
                0.5 * float(_SPINE[i, 1] + _SPINE[i + 1, 1]),
                ALBEDO_BODY,
            )
        # legs: joints, a mid sphere and the trotting paws
        for lat, lag, off, jlag, jlat, nm in (
            (+11.0, 30.0, 0.0, 34.0, 6.0, "left_forepaw"),
            (-11.0, 30.0, 0.5, 34.0, -6.0, "right_forepaw"),
            (+14.0, 70.0, 0.5, 60.0, 8.5, "left_hindpaw"),
            (-14.0, 70.0, 0.0, 60.0, -8.5, "right_hindpaw"),
        ):
            paw = self._paw(s, lag, lat, off)
            pj, dj = self._vpath(np.array(s - jlag))
            joint = np.array([pj[0] - jlat * dj[1], pj[1] + jlat * dj[0], 9.0])
            hind = lag > 50
            paw[2] += 3.0 if hind else 2.5
            if hind:
                add(joint + np.array([0.0, 0.0, 1.0]), 6.5, ALBEDO_BODY)
                add(paw + np.array([dj[0] * 4.5, dj[1] * 4.5, -0.6]), 2.4, ALBEDO_PAW)
            mid = 0.5 * (joint + paw) + np.array([0.0, 0.0, 1.0])
            add(0.5 * (joint + mid), 3.6, ALBEDO_LEG)
            add(mid, 3.2, ALBEDO_LEG)
            add(0.5 * (mid + paw), 2.8, ALBEDO_LEG)
            add(paw, 3.0 if hind else 2.6, ALBEDO_PAW, nm)
        # tail: along the path with a travelling lateral wave, resting towards the floor
        tl = np.linspace(0.0, _TAIL_LEN, _NTAIL)
        pt, dt = self._vpath(s - _TAIL_BASE_LAG - tl)
        f = tl / _TAIL_LEN
        wave = (
            7.0 * f**1.5 * np.sin(2 * np.pi * (1.2 * f - 0.7 * t) + 3 * _noise(self._tail_bank, t))
        )
        rad = 3.6 - 2.0 * f
        z = rad + (5.0 - 1.0) * (1.0 - f) ** 2
        for i in range(_NTAIL):
            c = np.array([pt[i, 0] - wave[i] * dt[i, 1], pt[i, 1] + wave[i] * dt[i, 0], z[i]])
            nm = "tail_base" if i == 0 else "tail_mid" if i == _NTAIL // 2 else None
            add(c, float(rad[i]), ALBEDO_TAIL, "tail_tip" if i == _NTAIL - 1 else nm)
        spheres = np.asarray(sp)
        # rearing: while slow, the front body rotates up about the hips
        rear = _smoothstep((_noise(self._rear_bank, t) - 0.9) / 0.5)
        rear *= 1.0 - _smoothstep(self.speed(t) / (0.6 * self.speed_mm_s))
        theta = 0.9 * float(rear)
        if theta > 1e-4:
            nk = names["neck"]
            front = [*range(n_front), nk, nk + 1, nk + 2, nk + len(_SPINE), nk + len(_SPINE) + 1]
            front += [i for i in range(len(sp)) if i not in front and self._is_foreleg(i, names)]
            pivot = np.array([spine[3, 0], spine[3, 1], 10.0])
            fwd_b = spine[0, :2] - spine[3, :2]
            fwd_b /= max(float(np.linalg.norm(fwd_b)), 1e-9)
            dv = spheres[front, :3] - pivot
            df = dv[:, 0] * fwd_b[0] + dv[:, 1] * fwd_b[1]
            dz = dv[:, 2]
            nf = df * np.cos(theta) - dz * np.sin(theta)
            nz = df * np.sin(theta) + dz * np.cos(theta)
            spheres[front, 0] += (nf - df) * fwd_b[0]
            spheres[front, 1] += (nf - df) * fwd_b[1]
            spheres[front, 2] = pivot[2] + nz
        if k != 1.0:
            spheres *= k
        spheres[:, 2] = np.maximum(spheres[:, 2], spheres[:, 3] * 0.9)
        return spheres, np.asarray(alb), [names[k] for k in KEYPOINTS]

    @staticmethod
    def _is_foreleg(i: int, names: dict[str, int]) -> bool:
        lf, rf = names["left_forepaw"], names["right_forepaw"]
        return lf - 3 <= i <= lf or rf - 3 <= i <= rf

    def body(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """The spheres to render at time ``t``.

        Returns
        -------
        spheres
            ``(S, 4)`` float64: centre x, y, z and radius, mm.
        albedo
            ``(S,)`` float64 in [0, 1].
        """
        spheres, albedo, _ = self._build(t)
        return spheres, albedo

    def keypoints(self, t: float) -> np.ndarray:
        """Keypoints ``(J, 3)`` float64 in mm at time ``t`` (rows in :data:`KEYPOINTS` order);
        each is the centre of one of :meth:`body`'s spheres."""
        spheres, _, idx = self._build(t)
        return np.ascontiguousarray(spheres[idx, :3])

    def pose(self, t: float, s_head: float | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Spheres ``(S, 4)``, albedo ``(S,)`` and keypoints ``(J, 3)`` in one evaluation
        (``s_head``: the head's arc on a trail, :meth:`set_trail`)."""
        spheres, albedo, idx = self._build(t, s_head)
        return spheres, albedo, np.ascontiguousarray(spheres[idx, :3])

    @property
    def keypoint_sphere_index(self) -> np.ndarray:
        """Row of :meth:`body`'s spheres that each keypoint is the centre of, ``(J,)``."""
        return self._kp_index.copy()
