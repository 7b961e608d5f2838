"""A body-size cue for the 3D tracks: which individual a cluster is, from its proportions.

Geometry alone cannot tell two individuals apart while they are within a few millimetres of
each other's predictions (a close encounter, an occlusion); their sizes can. No colour is
needed: the cue is the distances between a track's 3D keypoints, which any calibrated rig
measures.

- **Signature.** Per track, the mean ``m_p`` and spread of every keypoint-pair distance
  ``p`` ``(P = J (J−1) / 2)``, from the clusters matched to it while it is *alone* (no other
  track's prediction within :data:`ALONE_MM`; ≥ half the keypoints triangulated), an
  exponential mean over the last ~:data:`MEMORY` such frame-sets. *Rigid* pairs (spread
  ≤ :data:`RIGID` × the mean, longer than :data:`MIN_PAIR_MM`) carry the size: a snout–neck
  or hip–tail-base distance, not a paw.
- **Size of a cluster relative to a track**: ``r``, the inverse-variance weighted mean of
  ``d_p / m_p − 1`` over the track's rigid pairs that the cluster measures (weights
  ``m_p² / var_p``: long pairs that the animal's posture does not bend weigh most) — how much bigger (``r > 0``) or smaller
  the cluster is than the track's individual. Its spread ``σ_r`` on the track's own
  clusters is learnt alongside (floor :data:`SIGMA_FLOOR`).
- **Cost**: ``w · min(|r| / σ_r, 3) / 3`` (``w``: ``fusion.multi.size_weight``), added to
  the geometric cost of pairs that pass the geometric gate, once a track has a signature
  (:data:`MIN_FRAMES`). For the right individual ``|r| / σ_r`` is about 0.7; for one 6 %
  bigger or smaller it is 2–3, so in an ambiguous encounter the assignment follows size.

Everything is a few hundred multiply-adds per (track, cluster) pair, in one compiled call.
"""

from __future__ import annotations

import numba as nb
import numpy as np

ALONE_MM = 150.0
"""A track learns its signature only while no other track is predicted this close (mm,
between the keypoints' medians)."""
MEMORY = 300
"""Frame-sets the signature averages over (exponential)."""
MIN_FRAMES = 30
"""Frame-sets alone before the signature is used."""
RIGID = 0.06
"""A pair is rigid if its spread is at most this fraction of its mean."""
MIN_PAIR_MM = 10.0
"""… and it is longer than this."""
SIGMA_FLOOR = 0.01
"""Smallest spread of ``r`` used (1 %)."""
VAR_FLOOR = 0.25
"""Smallest variance of a pair's distance used as its weight (mm², calibration units²)."""


@nb.njit(cache=True, nogil=True)
def pair_distances_nb(xyz: np.ndarray, pi: np.ndarray, pj: np.ndarray) -> np.ndarray:
    """``(K, P)`` distances between keypoints ``pi[p]`` and ``pj[p]`` of ``xyz`` ``(K, J, 3)``
    (NaN where one is missing)."""
    K, P = xyz.shape[0], pi.shape[0]
    out = np.empty((K, P))
    for k in range(K):
        for p in range(P):
            a, b = pi[p], pj[p]
            out[k, p] = np.sqrt((xyz[k, a, 0] - xyz[k, b, 0]) ** 2 + (xyz[k, a, 1] - xyz[k, b, 1])
                                ** 2 + (xyz[k, a, 2] - xyz[k, b, 2]) ** 2)
    return out


@nb.njit(cache=True, nogil=True)
def relative_size_nb(d: np.ndarray, mean: np.ndarray, var: np.ndarray,
                     rigid: np.ndarray) -> np.ndarray:
    """``(T, K)`` relative size ``r`` of each cluster against each track: the mean of
    ``d / mean − 1`` over the track's rigid pairs the cluster measures, weighted by
    ``mean² / var`` (NaN: fewer than 3 pairs). ``d`` ``(K, P)``; ``mean``, ``var``, ``rigid`` ``(T, P)``."""
    T, K, P = mean.shape[0], d.shape[0], d.shape[1]
    out = np.full((T, K), np.nan)
    for i in range(T):
        for k in range(K):
            n = 0
            sx = 0.0
            sw = 0.0
            for p in range(P):
                if rigid[i, p] and np.isfinite(d[k, p]):
                    w = mean[i, p] ** 2 / max(var[i, p], VAR_FLOOR)
                    sx += w * (d[k, p] / mean[i, p] - 1.0)
                    sw += w
                    n += 1
            if n >= 3:
                out[i, k] = sx / sw
    return out


class SizeCue:
    """Per-slot size signatures of a :class:`~livepose.fusion.multitrack.MultiTracker`'s
    tracks (module docstring).

    Parameters
    ----------
    slots
        Track slots ``S``.
    n_keypoints
        ``J``.
    weight
        ``w`` of the cost (0: the cue is off and costs nothing).
    length_scale
        Calibration unit per mm.
    """

    def __init__(self, slots: int, n_keypoints: int, weight: float,
                 length_scale: float = 1.0) -> None:
        self.weight = float(weight)
        self.scale = float(length_scale)
        pi, pj = np.triu_indices(int(n_keypoints), k=1)
        self.pi, self.pj = pi.astype(np.int64), pj.astype(np.int64)
        P = len(pi)
        self.mean = np.full((slots, P), np.nan)
        self.var = np.zeros((slots, P))
        self.r_var = np.full(slots, 0.03**2)
        self.frames = np.zeros(slots, dtype=np.int64)
        self._d = np.zeros((0, P))

    def reset(self, slot: int) -> None:
        """A new track in ``slot``: no signature yet."""
        self.mean[slot] = np.nan
        self.var[slot] = 0.0
        self.r_var[slot] = 0.03**2
        self.frames[slot] = 0

    def rigid(self, slots: np.ndarray) -> np.ndarray:
        """``(T, P)`` bool: the rigid pairs of each slot's signature."""
        m = self.mean[slots]
        with np.errstate(invalid="ignore"):
            return (np.isfinite(m) & (m > MIN_PAIR_MM * self.scale)
                    & (np.sqrt(self.var[slots]) <= RIGID * m))

    def costs(self, slots: np.ndarray, tri: np.ndarray) -> np.ndarray:
        """``(T, K)`` size cost of each cluster ``tri`` ``(K, J, 3)`` for the tracks in
        ``slots`` ``(T,)`` (0 where a track has no signature yet or the cluster measures too
        little). Keeps the clusters' pair distances for :meth:`learn`."""
        self._d = pair_distances_nb(np.ascontiguousarray(tri, dtype=np.float64), self.pi,
                                    self.pj)
        T, K = len(slots), len(tri)
        out = np.zeros((T, K))
        if self.weight <= 0 or T == 0 or K == 0:
            return out
        ready = self.frames[slots] >= MIN_FRAMES
        if not ready.any():
            return out
        r = relative_size_nb(self._d, np.where(np.isfinite(self.mean[slots]),
                                               self.mean[slots], 1.0), self.var[slots],
                             self.rigid(slots))
        sd = np.maximum(np.sqrt(self.r_var[slots]), SIGMA_FLOOR)[:, None]
        z = np.where(np.isfinite(r), np.minimum(np.abs(r) / sd, 3.0), 0.0)
        return np.where(ready[:, None], self.weight * z / 3.0, 0.0)

    def learn(self, slots: np.ndarray, match: np.ndarray, centres: np.ndarray) -> None:
        """Update the signatures of the tracks that are alone.

        Parameters
        ----------
        slots
            ``(T,)`` slots of the tracks, as given to :meth:`costs`.
        match
            ``(T,)`` cluster matched to each (−1: none).
        centres
            ``(T, 3)`` each track's predicted centre (NaN: unknown).
        """
        if self.weight <= 0:
            return
        J = int(self.pj.max()) + 1 if len(self.pj) else 0
        for i, (s, k) in enumerate(zip(slots, match, strict=True)):
            if k < 0:
                continue
            d = self._d[k]
            fin = np.isfinite(d)
            if fin.sum() < (J // 2) * (J // 2 - 1) // 2:  # about half the keypoints
                continue
            others = np.delete(centres, i, axis=0)
            if len(others) and np.any(np.linalg.norm(others - centres[i], axis=1)
                                      < ALONE_MM * self.scale):
                continue
            a = max(1.0 / (self.frames[s] + 1), 1.0 / MEMORY)
            m = self.mean[s]
            if self.frames[s] >= MIN_FRAMES:  # spread of r on its own clusters
                rig = self.rigid(np.array([s]))[0] & fin
                if rig.sum() >= 3:
                    r = float(relative_size_nb(d[None], m[None], self.var[s][None],
                                               rig[None])[0, 0])
                    self.r_var[s] += a * (r * r - self.r_var[s])
            new = ~np.isfinite(m) & fin
            m[new] = d[new]
            both = fin & ~new
            dev = d[both] - m[both]
            m[both] += a * dev
            self.var[s, both] += a * (dev * dev - self.var[s, both])
            self.frames[s] += 1

    def warmup(self) -> None:
        """Compile the kernels."""
        J = int(self.pj.max()) + 1 if len(self.pj) else 1
        d = pair_distances_nb(np.zeros((1, J, 3)), self.pi, self.pj)
        one = np.ones((1, d.shape[1]))
        relative_size_nb(d, one, one, np.ones((1, d.shape[1]), dtype=np.bool_))
