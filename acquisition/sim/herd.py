"""Several simulated rodents in one arena, with ground-truth identities and the events that
make identities hard: close encounters and occlusions.

Animal ``i`` of a herd is a :class:`~livepose.acquisition.sim.animal.Rodent` of seed
``seed + 7919 · i`` (animal 0 is the single-animal rig's animal), each on its own path around
the arena at its own speed profile. Their paths cross, so they meet, pass close by and hide
each other from cameras; the renderer is depth-buffered, so who hides whom in each view is
exact.

**Yielding** (``yield_mm`` > 0; off by default: with it, animals on similar laps queue up
nose to tail for seconds). Animal ``i`` runs on its own clock ``τ_i(t)``: it slows down and
stops while its head is within ``yield_mm`` of the body of an animal of lower index (animal 0
never yields), and goes on when the way is clear. Heads do not run into bodies from behind or the
side that way; an animal of higher priority can still run into a waiting one's body (the
bodies then overlap for a moment, which real animals' would not). The clocks are tabulated
from ``t = 0`` on a fine grid as far as asked, so any ``t`` gives the same pose.

Ground truth for a benchmark:

- :meth:`Herd.pose` gives every animal's keypoints ``(N, J, 3)`` in identity order;
- :func:`hidden_keypoints` says which keypoints of which animal are hidden behind another
  animal's body in a camera (ray–sphere tests against the other animals' spheres);
- :func:`count_onsets` turns a per-frame boolean into events (rising edges, with a minimum
  gap so a flickering contact counts once).
"""

from __future__ import annotations

import numpy as np

from livepose.acquisition.sim.animal import KEYPOINTS, Rodent

_GRID_S = 1.0 / 240.0  # time step of the yielding clocks
_BODY_LAGS = np.array([0.0, 22.0, 36.0, 50.0, 63.0, 75.0, 92.0])  # arc lags of body points

SEED_STRIDE = 7919
"""Animal ``i`` has seed ``seed + SEED_STRIDE · i``."""

BODY_LENGTH_MM = 100.0
"""Snout to tail base of the sim rodent (about): a close encounter is two animals' spine
midpoints nearer than this."""


class Herd:
    """``n`` rodents in one arena.

    Parameters
    ----------
    n
        Number of animals (>= 1).
    seed, arena_radius_mm, speed_mm_s
        As for :class:`Rodent`; animal ``i`` uses ``seed + SEED_STRIDE · i`` and a speed
        within ±15 % of ``speed_mm_s`` (drawn from its seed).
    yield_mm
        Yielding distance (module docstring); 0: animals never wait.
    """

    def __init__(self, n: int, seed: int, arena_radius_mm: float, speed_mm_s: float,
                 yield_mm: float = 0.0) -> None:
        self.yield_mm = float(yield_mm)
        if n < 1:
            raise ValueError(f"a herd needs at least one animal, got {n}")
        self.animals: list[Rodent] = []
        for i in range(int(n)):
            s = int(seed) + SEED_STRIDE * i
            f = 1.0 if i == 0 else float(np.random.default_rng([s & 0xFFFFFFFF, 5]).uniform(
                0.85, 1.15))
            self.animals.append(Rodent(seed=s, arena_radius_mm=arena_radius_mm,
                                       speed_mm_s=speed_mm_s * f))
        self._tau = np.zeros((len(self.animals), 1))  # clocks on the grid, (N, K)

    def _extend(self, t: float) -> None:
        """Tabulate the clocks up to ``t`` (module docstring: yielding)."""
        K = int(np.ceil(t / _GRID_S)) + 2
        k0 = self._tau.shape[1]
        if k0 >= K:
            return
        N = len(self.animals)
        tau = np.concatenate([self._tau, np.zeros((N, K - k0))], axis=1)
        for k in range(k0, K):
            prev = tau[:, k - 1]
            heads, bodies = [], []
            for a, tt in zip(self.animals, prev, strict=True):
                s = a.arc(float(tt))
                p, _ = a._path(s - _BODY_LAGS)
                heads.append(p[0])
                bodies.append(p)
            for i in range(N):
                rate = 1.0
                for j in range(i):
                    d = float(np.min(np.linalg.norm(bodies[j] - heads[i], axis=1)))
                    x = min(max((d - self.yield_mm) / 30.0, 0.0), 1.0)
                    rate = min(rate, x * x * (3.0 - 2.0 * x))
                tau[i, k] = prev[i] + rate * _GRID_S
        self._tau = tau

    def clocks(self, t: float) -> np.ndarray:
        """Each animal's own time ``τ_i(t)`` ``(N,)`` (``τ_0 = t``)."""
        if self.yield_mm <= 0:
            return np.full(len(self.animals), float(t))
        self._extend(t)
        g = np.arange(self._tau.shape[1]) * _GRID_S
        return np.array([np.interp(t, g, row) for row in self._tau])

    def __len__(self) -> int:
        return len(self.animals)

    @property
    def n_keypoints(self) -> int:
        """``J``."""
        return len(KEYPOINTS)

    def parts(self, t: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per animal: spheres ``(S_i, 4)``, albedo ``(S_i,)``, keypoints ``(J, 3)``."""
        return [a.pose(float(tt)) for a, tt in zip(self.animals, self.clocks(t), strict=True)]

    def pose(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All animals at ``t``: spheres ``(S, 4)`` and albedo ``(S,)`` concatenated (for the
        renderer), keypoints ``(N, J, 3)`` in identity order."""
        parts = self.parts(t)
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                np.stack([p[2] for p in parts]))

    def body(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Spheres ``(S, 4)`` and albedo ``(S,)`` of every animal (the renderer's input)."""
        spheres, albedo, _ = self.pose(t)
        return spheres, albedo

    def keypoints(self, t: float) -> np.ndarray:
        """Keypoints ``(N, J, 3)`` in mm, identity order."""
        return np.stack([p[2] for p in self.parts(t)])


def hidden_keypoints(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], centres: np.ndarray
) -> np.ndarray:
    """Which keypoints are hidden behind *another* animal's body.

    Parameters
    ----------
    parts
        :meth:`Herd.parts` of one instant (``N`` animals).
    centres
        ``(C, 3)`` camera centres (world mm).

    Returns
    -------
    np.ndarray
        ``(C, N, J)`` bool: the segment from the camera to the keypoint passes through a
        sphere of another animal (self-occlusion is not counted).
    """
    N = len(parts)
    C = len(centres)
    J = parts[0][2].shape[0]
    out = np.zeros((C, N, J), dtype=bool)
    for a in range(N):
        kp = parts[a][2]
        for b in range(N):
            if a == b:
                continue
            sph = parts[b][0]
            for c in range(C):
                o = centres[c]
                d = kp - o  # (J, 3), segment camera → keypoint
                L = np.linalg.norm(d, axis=1)
                u = d / L[:, None]
                oc = sph[None, :, :3] - o  # (1, S, 3)
                tca = np.einsum("jk,jsk->js", u, np.broadcast_to(oc, (J, *oc.shape[1:])))
                d2 = np.sum(oc**2, axis=2) - tca**2
                hit = (d2 < sph[None, :, 3] ** 2) & (tca > 0) & (tca < L[:, None] - 2.0)
                out[c, a] |= hit.any(axis=1)
    return out


def count_onsets(flags: np.ndarray, min_gap: int) -> int:
    """Events in a per-frame boolean series ``(T,)``: rising edges, where an edge less than
    ``min_gap`` frames after the previous event's end is the same event."""
    f = np.asarray(flags, dtype=bool)
    n, last_end = 0, -(10**9)
    i, T = 0, len(f)
    while i < T:
        if f[i]:
            if i - last_end >= min_gap:
                n += 1
            while i < T and f[i]:
                i += 1
            last_end = i
        else:
            i += 1
    return n
