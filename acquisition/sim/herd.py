"""Several simulated rodents in one arena, with ground-truth identities and the events that
make identities hard: close encounters and occlusions.

Animal ``i`` of a herd is a :class:`~livepose.acquisition.sim.animal.Rodent` of seed
``seed + 7919 · i`` (animal 0 is the single-animal rig's animal), each on its own path around
the arena at its own speed profile. Their paths cross, so they meet, pass close by and hide
each other from cameras; the renderer is depth-buffered, so who hides whom in each view is
exact.

**Avoidance** (``avoid``, on by default). Real rodents do not pass through each other: each
animal steers around the others' bodies, slows down briefly, and drifts back onto its own
path (:mod:`livepose.acquisition.sim.avoid`); the bodies follow their heads' trails. The
animals still meet, pass close (well within one body length) and hide each other from
cameras — their bodies only do not overlap (a head may press :data:`~.avoid.SQUEEZE_MM`
into another body). Without avoidance (``avoid=False``, the earlier herd) the bodies can
overlap for a moment while two animals pass through each other.

**Sizes** (``size_spread``): animal ``i > 0`` has a body scale drawn from its seed in
``1 ± size_spread`` (:class:`Rodent`'s ``scale``); animal 0 keeps scale 1 (the
single-animal rig's animal). 0: all alike.

Ground truth for a benchmark:

- :meth:`Herd.pose` gives every animal's keypoints ``(N, J, 3)`` in identity order;
- :func:`hidden_keypoints` says which keypoints of which animal are hidden behind another
  animal's body in a camera (ray–sphere tests against the other animals' spheres);
- :func:`body_overlap` says how deep two bodies overlap (none with avoidance, but for
  squeezing and the rare knot an animal goes through);
- :func:`count_onsets` turns a per-frame boolean into events (rising edges, with a minimum
  gap so a flickering contact counts once).
"""

from __future__ import annotations

import numpy as np

from livepose.acquisition.sim.animal import KEYPOINTS, Rodent
from livepose.acquisition.sim.avoid import Steering

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
    avoid
        Animals steer around each other's bodies (module docstring); ``False``: they pass
        through each other.
    size_spread
        Body scale of animals ``i > 0`` drawn in ``1 ± size_spread`` (0 to 0.3).
    """

    def __init__(self, n: int, seed: int, arena_radius_mm: float, speed_mm_s: float,
                 avoid: bool = True, size_spread: float = 0.0) -> None:
        if n < 1:
            raise ValueError(f"a herd needs at least one animal, got {n}")
        if not 0.0 <= size_spread <= 0.3:
            raise ValueError(f"sim size_spread must be in 0..0.3, got {size_spread}")
        self.animals: list[Rodent] = []
        for i in range(int(n)):
            s = int(seed) + SEED_STRIDE * i
            f = 1.0 if i == 0 else float(np.random.default_rng([s & 0xFFFFFFFF, 5]).uniform(
                0.85, 1.15))
            k = 1.0 if i == 0 else 1.0 + size_spread * float(
                np.random.default_rng([s & 0xFFFFFFFF, 11]).uniform(-1.0, 1.0))
            self.animals.append(Rodent(seed=s, arena_radius_mm=arena_radius_mm,
                                       speed_mm_s=speed_mm_s * f, scale=k))
        self.scales = np.array([a.scale for a in self.animals])
        self.steering = (Steering(self.animals, arena_radius_mm) if avoid and n > 1
                         else None)

    def clocks(self, t: float) -> np.ndarray:
        """Each animal's own time ``τ_i(t)`` ``(N,)`` (``τ_i = t`` without avoidance)."""
        if self.steering is None:
            return np.full(len(self.animals), float(t))
        return self.steering.at(t)[0]

    def __len__(self) -> int:
        return len(self.animals)

    @property
    def n_keypoints(self) -> int:
        """``J``."""
        return len(KEYPOINTS)

    def parts(self, t: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per animal: spheres ``(S_i, 4)``, albedo ``(S_i,)``, keypoints ``(J, 3)``."""
        if self.steering is None:
            return [a.pose(float(t)) for a in self.animals]
        tau, arc = self.steering.at(t)
        return [a.pose(float(tt), float(s)) for a, tt, s in
                zip(self.animals, tau, arc, strict=True)]

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


def body_overlap(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                 min_radius_mm: float = 6.0) -> float:
    """How deep (mm) two animals' bodies overlap at one instant: the largest
    ``r_a + r_b − distance`` over pairs of spheres of different animals with radius ≥
    ``min_radius_mm`` (head, spine, hips: not the thin legs and tail); ≤ 0: apart.

    Parameters
    ----------
    parts
        :meth:`Herd.parts` of one instant.
    """
    out = -np.inf
    big = [p[0][p[0][:, 3] >= min_radius_mm] for p in parts]
    for a in range(len(big)):
        for b in range(a + 1, len(big)):
            A, B = big[a], big[b]
            d = np.linalg.norm(A[:, None, :3] - B[None, :, :3], axis=-1)
            out = max(out, float(np.max(A[:, None, 3] + B[None, :, 3] - d)))
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
