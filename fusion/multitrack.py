"""3D tracks with identities: several individuals through one frame-set at a time.

Per frame-set (instances per view in, individuals out):

1. **Association** across views (:mod:`livepose.fusion.associate`): clusters of instances
   that are one individual; each cluster is triangulated (all clusters in one call of the
   fusion kernel). Instances the worker made *for* a confirmed individual (its 3D-guided
   crops: ``owners``, ``kp2d.inst_owner``) skip it: they are that individual's cluster, even
   from a single view (the EKF's gate still checks every keypoint against the prediction,
   and a cluster whose every view it refused leaves its track unseen); epipolar
   association groups the others (new animals, re-acquisition).
2. **Matching** of the live tracks to the clusters: the cost of a (track, cluster) pair is
   the median over keypoints of the 3D distance between the track's prediction to this
   frame-set and the cluster's triangulation, divided by the track's gate
   ``gate_mm + 3 σ`` (σ: the prediction's median standard deviation, so a track that
   coasted, and grew uncertain, reaches farther); pairs above 1 are not made. Within the
   gate a body-size cue can be added (:mod:`livepose.fusion.appearance`, weight
   ``size_weight``, off by default): a cluster of another size than the track's individual
   costs more. Confirmed
   tracks are matched first (Hungarian method, :func:`~livepose.fusion.assign.assign_nb`),
   tentative ones to the clusters left.
3. **Filters.** Every track is a block of ``J`` keypoints in *one* :class:`KeypointEKF` of
   ``S · J`` keypoints (``S`` track slots): the fusion's own kernel runs all individuals in
   one call, with each track's cluster as its views, so each individual gets the EKF's
   gating, consensus and per-keypoint status exactly as a single animal does. A track
   unmatched for more than :data:`HOLD_AFTER_S` (or whose EKF has lost every keypoint) is
   looked for at its last position, with a gate that grows at :data:`MAX_SPEED_MM_S`, so
   it can be found again after an occlusion. A keypoint without an accepted view for more
   than :data:`HOLD_AFTER_S` stops (its velocity is zeroed): an animal hidden behind
   another is looked for where it was seen, and its crop placed there, rather than
   extrapolated off (tracks of animals in contact used to run 100–300 mm away).
4. **Life.** A cluster left unmatched starts a *tentative* track (not near another track).
   A tentative track is confirmed, and given an id, after ``confirm_frames`` frame-sets
   matched in a row — and only if it moved ``min_motion_mm`` since it was first seen (a
   static figure never does) and is not flat (``min_depth_ratio``: a picture of a person
   triangulates onto a plane). A tentative track unmatched once is dropped; a confirmed one
   after ``timeout_s`` unmatched.
5. **Identities.** With ``individuals: N`` ids are ``0..N-1`` and at most ``N`` tracks are
   confirmed; a track confirmed after one died takes the free id whose track was last seen
   nearest. Free (``individuals: null``): ids count up. :meth:`MultiTracker.swap_ids` and
   :meth:`MultiTracker.set_id` let a user fix a swap; every change is logged
   (:attr:`MultiTracker.id_log` and the ``livepose.fusion`` logger).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numba as nb
import numpy as np

from livepose.core.camera import CameraGroup
from livepose.core.config import FusionConfig
from livepose.core.protocol import MEASURED, MISSING, PREDICTED
from livepose.fusion.appearance import SizeCue
from livepose.fusion.assign import assign_nb
from livepose.fusion.associate import Association, Associator
from livepose.fusion.ekf import FilterOutput, KeypointEKF
from livepose.fusion.ekf_model_nb import ekf_predict_nb

log = logging.getLogger("livepose.fusion")

MAX_SPEED_MM_S = 300.0
"""Lost-track gate growth: how far an unseen individual may have gone per second."""

HOLD_AFTER_S = 0.1
"""A track unmatched for longer is looked for where it was last seen (its velocity is not
extrapolated: animals that meet slow down, and an extrapolated track runs off)."""


@dataclass(slots=True)
class Track:
    """One track (a block of the EKF)."""

    slot: int
    first_xyz: np.ndarray
    last_xyz: np.ndarray
    last_seen_s: float
    id: int | None = None
    key: int = -1
    hits: int = 0
    frames: int = 0
    moved_mm: float = 0.0
    flatness: float = 1.0

    @property
    def confirmed(self) -> bool:
        """Has an id."""
        return self.id is not None


@dataclass(slots=True)
class Individuals:
    """One frame-set's confirmed individuals (``N`` of them, ``J`` keypoints).

    Attributes
    ----------
    ids
        ``(N,)`` int32 track ids, ascending.
    xyz, var
        ``(N, J, 3)`` filtered positions and per-axis variances (NaN: missing).
    status
        ``(N, J)`` uint8 measured / predicted / missing.
    views
        ``(N, J)`` uint16 bitmask of the cameras that measured each keypoint.
    reproj
        ``(N, J)`` float32 reprojection error (px) in those views.
    association
        The frame-set's clusters (for diagnostics).
    points2d
        ``(N, C, J, 3)`` float32: each individual's 2D instance in each camera (x, y
        distorted px, confidence) that this frame-set's measurement used, NaN in a camera
        without one — the identities of the 2D instances, for DeepLabCut's multi-animal 2D
        layout.
    keys
        ``(N,)`` int32 track keys: never reused and kept through a user's id swap — what
        the worker's crops name as their owner (``kp2d.inst_owner``).
    """

    ids: np.ndarray
    xyz: np.ndarray
    var: np.ndarray
    status: np.ndarray
    views: np.ndarray
    reproj: np.ndarray
    association: Association | None = None
    counters: dict[str, int] = field(default_factory=dict)
    points2d: np.ndarray | None = None
    keys: np.ndarray | None = None


@nb.njit(cache=True, nogil=True)
def _predict_nb(pxyz: np.ndarray, pvar: np.ndarray, slots: np.ndarray, last: np.ndarray,
                gap: np.ndarray, g0: float, vmax: float, hold_after: float,
                pred: np.ndarray, gate: np.ndarray) -> None:
    """Each track's prediction and gate (module docstring, step 3)."""
    J = pxyz.shape[1]
    sd = np.empty(J)
    for i in range(slots.shape[0]):
        s = slots[i]
        n = 0
        for j in range(J):
            if np.isfinite(pxyz[s, j, 0]):
                sd[n] = np.sqrt(pvar[s, j, 0] + pvar[s, j, 1] + pvar[s, j, 2])
                n += 1
        if n > 0 and gap[i] <= hold_after:
            pred[i] = pxyz[s]
            gate[i] = g0 + 3.0 * np.median(sd[:n])
        else:
            pred[i] = last[i]
            gate[i] = g0 + vmax * max(gap[i] - hold_after, 0.0)


@nb.njit(cache=True, nogil=True)
def _predictions_nb(state: np.ndarray, cov: np.ndarray, initialised: np.ndarray, order: int,
                    lead: float, q: float, slots: np.ndarray, last: np.ndarray,
                    gap: np.ndarray, J: int, g0: float, vmax: float, hold_after: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The EKF's prediction ``lead`` s ahead (state unchanged) and :func:`_predict_nb`, in
    one call: per track ``(T, J, 3)`` and ``(T,)``."""
    n = state.shape[0]
    pxyz, pvar = np.empty((n, 3)), np.empty((n, 3))
    ekf_predict_nb(state, cov, initialised, order, lead, q, pxyz, pvar)
    T = slots.shape[0]
    pred, gate = np.empty((T, J, 3)), np.empty(T)
    _predict_nb(pxyz.reshape(n // J, J, 3), pvar.reshape(n // J, J, 3), slots, last, gap, g0,
                vmax, hold_after, pred, gate)
    return pred, gate


@nb.njit(cache=True, nogil=True)
def _costs_nb(pred: np.ndarray, gate: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """``(T, K)`` median keypoint distance between predictions and clusters / gate."""
    T, K, J = pred.shape[0], tri.shape[0], pred.shape[1]
    out = np.full((T, K), np.inf)
    d = np.empty(J)
    for i in range(T):
        for k in range(K):
            n = 0
            for j in range(J):
                v = np.sqrt((pred[i, j, 0] - tri[k, j, 0]) ** 2 + (pred[i, j, 1] - tri[k, j, 1])
                            ** 2 + (pred[i, j, 2] - tri[k, j, 2]) ** 2)
                if np.isfinite(v):
                    d[n] = v
                    n += 1
            if n >= 3:
                out[i, k] = np.median(d[:n]) / gate[i]
    return out


@nb.njit(cache=True, nogil=True)
def _match_nb(cost: np.ndarray, both: np.ndarray, limit: float, gate: np.ndarray,
              confirmed: np.ndarray, slots: np.ndarray,
              cl_pts: np.ndarray, tri: np.ndarray, free: np.ndarray, g0: float, J: int,
              pts: np.ndarray, initialised: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matching and the EKF's views (module docstring, steps 2–4) in one call.

    ``both``: the cost the matching uses (``cost``, plus the size cue's term within the
    gate), rejected above ``limit``; ``cost`` (the gate-scaled 3D distance) decides which
    leftover clusters are near a track.
    Confirmed tracks are matched to the clusters first (Hungarian, rejection at ``limit``), the
    tentative ones to the clusters left; ``pts`` ``(C, S·J, 3)`` gets each matched track's
    cluster in its slot's block (NaN elsewhere). A cluster left over with a finite
    triangulation, not within ``g0`` of a track, takes the lowest of the ``free`` slots
    (sorted), whose keypoints are marked uninitialised in ``initialised``.

    Returns each track's cluster ``(T,)`` (-1: none), and the new tracks' slots and clusters.
    """
    T, K = cost.shape
    match = np.full(T, -1, dtype=np.int64)
    used = np.zeros(K, dtype=np.bool_)
    rows = np.empty(T, dtype=np.int64)
    cols = np.empty(K, dtype=np.int64)
    for p in range(2):
        want = p == 0  # confirmed tracks first, tentative ones after
        nr = 0
        for i in range(T):
            if confirmed[i] == want:
                rows[nr] = i
                nr += 1
        nc = 0
        for k in range(K):
            if not used[k]:
                cols[nc] = k
                nc += 1
        if nr == 0 or nc == 0:
            continue
        sub = np.empty((nr, nc))
        for r in range(nr):
            for c in range(nc):
                sub[r, c] = both[rows[r], cols[c]]
        col = assign_nb(sub, limit)
        for r in range(nr):
            if col[r] >= 0:
                match[rows[r]] = cols[col[r]]
                used[cols[col[r]]] = True
    pts[:] = np.nan
    C = pts.shape[0]
    for i in range(T):
        if match[i] >= 0:
            b = slots[i] * J
            for c in range(C):
                for j in range(J):
                    for d in range(3):
                        pts[c, b + j, d] = cl_pts[match[i], c, j, d]
    new_slot = np.empty(K, dtype=np.int64)
    new_k = np.empty(K, dtype=np.int64)
    n = 0
    for k in range(K):
        if used[k]:
            continue
        if n >= free.shape[0]:
            continue
        fin = False
        for j in range(J):
            for d in range(3):
                if np.isfinite(tri[k, j, d]):
                    fin = True
        if not fin:
            continue
        near = False
        for i in range(T):
            if cost[i, k] * gate[i] < g0:
                near = True  # a split of an individual already tracked, not a new one
        if near:
            continue
        s = free[n]
        b = s * J
        initialised[b:b + J] = False
        for c in range(C):
            for j in range(J):
                for d in range(3):
                    pts[c, b + j, d] = cl_pts[k, c, j, d]
        new_slot[n] = s
        new_k[n] = k
        n += 1
    return match, new_slot[:n], new_k[:n]


@nb.njit(cache=True, nogil=True)
def _output_nb(xyz: np.ndarray, var: np.ndarray, views: np.ndarray, reproj: np.ndarray,
               slots: np.ndarray, J: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The EKF's rows ``(S·J, …)`` of the tracks in ``slots`` ``(N,)``: ``xyz``, ``var``
    ``(N, J, 3)``, ``status``, ``views``, ``reproj`` ``(N, J)`` (new arrays)."""
    N = slots.shape[0]
    ox = np.empty((N, J, 3))
    ov = np.empty((N, J, 3))
    st = np.empty((N, J), dtype=np.uint8)
    vw = np.empty((N, J), dtype=np.uint16)
    rp = np.empty((N, J), dtype=np.float32)
    for n in range(N):
        for j in range(J):
            r = slots[n] * J + j
            fin = True
            for d in range(3):
                ox[n, j, d] = xyz[r, d]
                ov[n, j, d] = var[r, d]
                fin = fin and np.isfinite(xyz[r, d])
            vw[n, j] = views[r]
            rp[n, j] = reproj[r]
            st[n, j] = MEASURED if views[r] > 0 else (PREDICTED if fin else MISSING)
    return ox, ov, st, vw, rp


def pose3d_fields(ind: Individuals, J: int) -> dict[str, Any]:
    """The ``pose3d`` message's arrays for one frame-set's individuals (protocol 3): the
    ``ind_*`` arrays, and ``xyz``/``variance``/``reproj``/``views``/``status`` of the lowest
    id (NaN / missing without one) for single-animal clients."""
    if len(ind.ids):
        one = {"xyz": ind.xyz[0], "variance": ind.var[0], "reproj": ind.reproj[0],
               "views": ind.views[0], "status": ind.status[0]}
    else:
        one = {"xyz": np.full((J, 3), np.nan), "variance": np.full((J, 3), np.nan),
               "reproj": np.full(J, np.nan, np.float32), "views": np.zeros(J, np.uint16),
               "status": np.full(J, MISSING, np.uint8)}
    extra = {} if ind.points2d is None else {"ind_points2d": ind.points2d.astype(np.float32)}
    if ind.keys is not None:
        extra["ind_track"] = ind.keys.astype(np.int32)
    return {**one, "ind_ids": ind.ids.astype(np.int32), "ind_xyz": ind.xyz,
            "ind_variance": ind.var, "ind_status": ind.status, "ind_views": ind.views,
            "ind_reproj": ind.reproj.astype(np.float32), **extra}


def _flatness(xyz: np.ndarray) -> float:
    """Smallest / largest principal extent of the finite keypoints ``(J, 3)``."""
    p = xyz[np.all(np.isfinite(xyz), axis=1)]
    if len(p) < 4:
        return 1.0
    s = np.linalg.svd(p - p.mean(axis=0), compute_uv=False)
    return float(s[-1] / max(s[0], 1e-12))


class MultiTracker:
    """Several individuals in 3D with identities (module docstring).

    Parameters
    ----------
    cameras
        The calibrated cameras, in the views' order.
    n_keypoints
        ``J``.
    cfg
        ``fusion`` settings (``multi``, the EKF's, the likelihood threshold).
    fps
        Frame rate (EKF delays in frame-sets).
    length_scale
        Calibration unit per mm (``multi``'s mm settings are scaled by it).
    pixel_noise_px
        The model's 2D noise at confidence 1.
    """

    def __init__(self, cameras: CameraGroup, n_keypoints: int, cfg: FusionConfig, fps: float,
                 length_scale: float = 1.0, pixel_noise_px: float | None = None) -> None:
        m = cfg.multi
        self.cfg = m
        self.J = int(n_keypoints)
        self.C = len(cameras)
        self.fixed = m.individuals
        self.S = (m.individuals + 2) if m.individuals is not None else m.max_tracks
        self.scale = float(length_scale)
        self.ekf = KeypointEKF(cameras, self.S * self.J, cfg, fps, output_reproj=True,
                               length_scale=length_scale, pixel_noise_px=pixel_noise_px)
        self.assoc = Associator(cameras, cfg.likelihood_threshold, m.epipolar_px,
                                m.min_keypoints)
        self.size = SizeCue(self.S, self.J, m.size_weight, length_scale)
        self._drift_in: tuple[np.ndarray, np.ndarray, np.ndarray,
                              list[tuple[bool, int]], int] | None = None
        #: where the drift samples come from: ``associated`` instances (blobs, a detector)
        #: until the first owned ones (3D-guided crops), ``owned`` from then on — another 2D
        #: model, so the drift monitor starts a new baseline when it changes
        self.drift_source = "associated"
        self.tracks: list[Track] = []
        self.free_slots = list(range(self.S))
        self.last_seen: dict[int, tuple[float, np.ndarray]] = {}  # fixed mode: id → last seen
        self.next_id = 0
        self.next_key = 0  # track keys: never reused
        self.t: float | None = None
        self.id_log: list[dict[str, object]] = []
        self.counters = {"births": 0, "deaths": 0, "tentative_dropped": 0,
                         "rejected_static": 0, "rejected_flat": 0, "clusters": 0}
        self._pts = np.full((self.C, self.S * self.J, 3), np.nan, dtype=np.float32)

    # ------------------------------------------------------------------ identities

    def _log(self, action: str, **kw: object) -> None:
        entry = {"t": self.t, "action": action, **kw}
        self.id_log.append(entry)
        log.info("individuals: %s %s", action, kw)

    def swap_ids(self, a: int, b: int) -> None:
        """Swap the ids of two confirmed individuals (a user's fix of a swap; logged)."""
        ta, tb = self._by_id(a), self._by_id(b)
        if ta is None or tb is None:
            raise KeyError(f"no individual with id {a if ta is None else b}")
        ta.id, tb.id = b, a
        self._log("swap", a=a, b=b)

    def set_id(self, current: int, new: int) -> None:
        """Give individual ``current`` the id ``new`` (swapping with its holder; logged)."""
        t = self._by_id(current)
        if t is None:
            raise KeyError(f"no individual with id {current}")
        if self.fixed is not None and not 0 <= new < self.fixed:
            raise ValueError(f"id must be in 0..{self.fixed - 1} (fusion.multi.individuals)")
        other = self._by_id(new)
        if other is not None:
            other.id = current
        t.id = new
        self._log("set", current=current, new=new)

    def _by_id(self, i: int) -> Track | None:
        return next((t for t in self.tracks if t.id == i), None)

    # ------------------------------------------------------------------ step

    def _predictions(self, dt: float, now: float) -> tuple[np.ndarray, np.ndarray]:
        """Per track: predicted ``(T, J, 3)`` and its gate ``(T,)`` (calibration units)."""
        T = len(self.tracks)
        e = self.ekf
        last = (np.stack([t.last_xyz for t in self.tracks]) if T else
                np.zeros((0, self.J, 3)))
        return _predictions_nb(
            e.state, e.cov, e.initialised, e.order, float(dt), e.q,
            np.array([t.slot for t in self.tracks], dtype=np.int64), last,
            np.array([now - t.last_seen_s for t in self.tracks], dtype=np.float64), self.J,
            self.cfg.gate_mm * self.scale, MAX_SPEED_MM_S * self.scale, HOLD_AFTER_S)

    @staticmethod
    def _costs(pred: np.ndarray, gate: np.ndarray, tri: np.ndarray) -> np.ndarray:
        """``(T, K)`` median keypoint distance / gate (inf with < 3 shared keypoints)."""
        return _costs_nb(pred, gate, np.ascontiguousarray(tri, dtype=np.float64))

    def _owned(self, views: list[np.ndarray], owners: list[np.ndarray] | None
               ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Split off the instances made for a confirmed individual (a 3D-guided crop's
        owner: its track key, kept through id swaps): per such individual one cluster ``(K₀, C, J, 3)`` of its instances (the
        first per view), the track index of each ``(K₀,)``, and the other instances per
        view (module docstring, step 1)."""
        C, J = self.C, self.J
        none = np.zeros((0, C, J, 3), np.float32), np.zeros(0, np.int64)
        if owners is None:
            return *none, views
        row = {t.key: i for i, t in enumerate(self.tracks) if t.confirmed}
        picks: list[tuple[int, int, int]] = []  # track row, view, instance
        taken: set[tuple[int, int]] = set()
        for c, own in enumerate(owners):
            for m, oid in enumerate(np.asarray(own).tolist()):
                i = row.get(oid, -1)
                if i >= 0 and (i, c) not in taken:
                    taken.add((i, c))
                    picks.append((i, c, m))
        if not picks:
            return *none, views
        tracks = sorted({i for i, _c, _m in picks})
        k_of = {i: k for k, i in enumerate(tracks)}
        out = np.full((len(tracks), C, J, 3), np.nan, np.float32)
        gone: list[list[int]] = [[] for _ in range(C)]
        for i, c, m in picks:
            out[k_of[i], c] = views[c][m]
            gone[c].append(m)
        rest = [v if not g else v[:0] if len(g) == len(v) else
                v[np.isin(np.arange(len(v)), g, invert=True)]
                for v, g in zip(views, gone, strict=True)]
        return out, np.array(tracks, dtype=np.int64), rest

    def step(self, views: list[np.ndarray], t_s: float,
             owners: list[np.ndarray] | None = None) -> Individuals:
        """One frame-set.

        Parameters
        ----------
        views
            ``C`` arrays ``(K_c, J, 3)``: each view's instances (x, y distorted px,
            confidence), camera order.
        t_s
            The frame-set's time, seconds (increasing).
        owners
            Optional, per view ``(K_c,)`` int: the track key (:attr:`Individuals.keys`) of
            the individual each instance was made for (a 3D-guided crop's), -1 for none. Such instances are that individual's
            measurement without association (the EKF's gate still checks every keypoint);
            the others are associated across views and matched as usual.

        Returns
        -------
        Individuals
            The confirmed individuals after this frame-set.
        """
        dt = 0.0 if self.t is None else max(float(t_s) - self.t, 0.0)
        self.t = float(t_s)
        own_pts, own_track, views = self._owned(views, owners)
        assoc = self.assoc(views)
        K0 = len(own_track)
        cl_pts = assoc.points if len(assoc.cost) else np.zeros((0, self.C, self.J, 3),
                                                               np.float32)
        if K0:
            cl_pts = np.concatenate([own_pts, cl_pts.astype(np.float32, copy=False)])
        K = len(cl_pts)
        self.counters["clusters"] += len(assoc.cost)
        J, C = self.J, self.C
        tri = np.full((K, J, 3), np.nan)  # owned clusters: not needed (matched already)
        if K > K0:
            K1 = K - K0
            flat = np.ascontiguousarray(cl_pts[K0:].transpose(1, 0, 2, 3).reshape(C, K1 * J, 3))
            tri[K0:] = self.ekf.tri.triangulate(flat).xyz.reshape(K1, J, 3)
        pred, gate = self._predictions(dt, self.t)
        cost = self._costs(pred, gate, tri)
        both, limit = cost, 1.0
        slots = np.array([t.slot for t in self.tracks], dtype=np.int64)
        if self.size.weight > 0:  # the size cue (fusion/appearance.py) within the gate
            both = np.where(cost <= 1.0, cost + self.size.costs(slots, tri), np.inf)
            limit = 1.0 + self.size.weight
        if K0:  # an owned cluster is its individual's, and that individual takes no other
            both = both.copy()
            both[own_track, :] = np.inf
            both[:, :K0] = np.inf
            both[own_track, np.arange(K0)] = 0.0
        free = np.array(self.free_slots, dtype=np.int64)
        match, new_slot, new_k = _match_nb(
            cost, np.ascontiguousarray(both, dtype=np.float64), limit, gate,
            np.array([t.confirmed for t in self.tracks], dtype=np.bool_),
            slots, np.ascontiguousarray(cl_pts, dtype=np.float32), tri, free,
            0.5 * self.cfg.gate_mm * self.scale, J, self._pts, self.ekf.initialised)
        if self.size.weight > 0 and len(self.tracks):
            with np.errstate(all="ignore"):
                self.size.learn(slots, match, np.nanmedian(pred, axis=1))
        del self.free_slots[:len(new_slot)]
        for slot in new_slot.tolist():
            self.size.reset(slot)
        new = list(zip(new_slot.tolist(), new_k.tolist(), strict=True))
        pts = self._pts
        out = self.ekf.step(pts, dt)
        coast = self.ekf.since > HOLD_AFTER_S  # an unseen keypoint waits where it was seen
        self.ekf.state[coast, 3:] = 0.0
        xyz = out.xyz.reshape(self.S, J, 3)
        if K0:  # an owned cluster whose every view the EKF's gate refused: not seen
            measured = out.views.reshape(self.S, J)
            for i in own_track.tolist():
                if not measured[self.tracks[i].slot].any():
                    match[i] = -1
        if K0:
            self.drift_source = "owned"
        self._drift_in = (match, cl_pts, out.raw.xyz, [(t.confirmed, t.slot)
                                                        for t in self.tracks], K0)
        self._update(match, new, xyz, tri)
        return self._output(out, assoc)

    def drift_sample(self) -> tuple[np.ndarray, np.ndarray] | None:
        """What the calibration drift monitor (:mod:`livepose.fusion.drift`) reads from the
        last frame-set: the confirmed individual seen by the most views among those that are
        alone — no keypoint of another individual nearer than half its length (its
        keypoints' largest spread) — its instances ``(C, J, 3)`` (NaN: no instance in that view) and
        their triangulation ``(J, 3)`` (the EKF's, with consensus, as a single animal's views
        are); ``None`` when no such individual was matched. An animal near another is left
        out: where their bodies overlap in a view its 2D is biased for as long as they stay
        close, which the monitor read as a camera that moved (false alarms on a static rig).
        Once crops are owned (:attr:`drift_source`), only owned instances are sampled."""
        if self._drift_in is None:
            return None
        match, cl_pts, raw, tracks, owned = self._drift_in
        J = self.J
        pts = {slot: raw[slot * J:(slot + 1) * J] for confirmed, slot in tracks if confirmed}
        best, out = -1, None
        for i, (confirmed, slot) in enumerate(tracks):
            k = int(match[i])
            if not confirmed or k < 0 or not self._alone(slot, pts):
                continue
            if self.drift_source == "owned" and k >= owned:  # one 2D source (model) only
                continue
            seen = int(np.isfinite(cl_pts[k, :, :, 0]).any(axis=1).sum())
            if seen > best:
                best, out = seen, (cl_pts[k], pts[slot])
        return out

    @staticmethod
    def _alone(slot: int, pts: dict[int, np.ndarray]) -> bool:
        """No other individual's keypoint within half this one's length (``pts``: ``(J, 3)``
        per confirmed slot; NaN rows ignored)."""
        own = pts[slot][np.isfinite(pts[slot]).all(axis=1)]
        if len(own) < 2:
            return False
        reach = 0.5 * float(np.max(np.linalg.norm(own[:, None] - own[None], axis=-1)))
        for other, xyz in pts.items():
            q = xyz[np.isfinite(xyz).all(axis=1)]
            if other != slot and len(q) and float(np.min(np.linalg.norm(
                    own[:, None] - q[None], axis=-1))) < reach:
                return False
        return True

    def _update(self, match: np.ndarray, new: list[tuple[int, int]], xyz: np.ndarray,
                tri: np.ndarray) -> None:
        now = float(self.t or 0.0)
        keep: list[Track] = []
        for i, tr in enumerate(self.tracks):
            x = xyz[tr.slot]
            if match[i] >= 0:
                tr.hits += 1
                tr.last_seen_s = now
                if np.isfinite(x).any():
                    tr.last_xyz = np.where(np.isfinite(x), x, tr.last_xyz)
            else:
                tr.hits = 0
                if not tr.confirmed:
                    self.counters["tentative_dropped"] += 1
                    self._free(tr)
                    continue
                if now - tr.last_seen_s > self.cfg.timeout_s:
                    self.counters["deaths"] += 1
                    self._log("death", id=tr.id)
                    if tr.id is not None:
                        self.last_seen[tr.id] = (now, tr.last_xyz)
                    self._free(tr)
                    continue
            tr.frames += 1
            if not tr.confirmed:  # the motion test of a tentative track
                d = np.linalg.norm(tr.last_xyz - tr.first_xyz, axis=-1)
                d = d[np.isfinite(d)]
                if d.size:
                    tr.moved_mm = max(tr.moved_mm, float(d.max()) / self.scale)
                if tr.hits >= self.cfg.confirm_frames:
                    self._confirm(tr)
            keep.append(tr)
        for slot, k in new:
            x = np.where(np.isfinite(xyz[slot]), xyz[slot], tri[k])
            keep.append(Track(slot=slot, first_xyz=x.copy(), last_xyz=x.copy(),
                              last_seen_s=now, key=self.next_key, hits=1, frames=1))
            self.next_key += 1
        self.tracks = keep

    def _confirm(self, tr: Track) -> None:
        m = self.cfg
        if tr.moved_mm < m.min_motion_mm:
            self.counters["rejected_static"] += tr.hits == m.confirm_frames
            return
        tr.flatness = _flatness(tr.last_xyz)
        if tr.flatness < m.min_depth_ratio:
            self.counters["rejected_flat"] += tr.hits == m.confirm_frames
            return
        if self.fixed is not None:
            taken = {t.id for t in self.tracks if t.id is not None}
            free = [i for i in range(self.fixed) if i not in taken]
            if not free:
                return
            centre = np.nanmedian(tr.last_xyz, axis=0)

            def dist(i: int) -> float:
                seen = self.last_seen.get(i)
                if seen is None:
                    return np.inf
                return float(np.linalg.norm(np.nanmedian(seen[1], axis=0) - centre))

            tr.id = min(free, key=lambda i: (dist(i), i))
        else:
            tr.id = self.next_id
            self.next_id += 1
        self.counters["births"] += 1
        self._log("birth", id=tr.id)

    def _free(self, tr: Track) -> None:
        self.ekf.initialised[tr.slot * self.J:(tr.slot + 1) * self.J] = False
        self.free_slots.append(tr.slot)
        self.free_slots.sort()

    def _output(self, out: FilterOutput, assoc: Association) -> Individuals:
        J = self.J
        conf = sorted((t for t in self.tracks if t.confirmed), key=lambda t: t.id or 0)
        slots = np.array([t.slot for t in conf], dtype=np.int64)
        xyz, var, status, views, reproj = _output_nb(out.xyz, out.var, out.views, out.reproj,
                                                     slots, J)
        ids = np.array([t.id for t in conf], dtype=np.int32)
        keys = np.array([t.key for t in conf], dtype=np.int32)
        blocks = self._pts.reshape(self.C, self.S, J, 3)  # each slot's matched instances
        points2d = np.ascontiguousarray(blocks[:, slots].transpose(1, 0, 2, 3))
        return Individuals(ids, xyz, var, status, views, reproj, assoc, dict(self.counters),
                           points2d, keys)

    def expected(self, max_age_s: float = 0.5) -> np.ndarray:
        """The confirmed tracks' last positions ``(T, J, 3)``, those seen within
        ``max_age_s``: what the detector needs to tell a blob of two individuals from one (a
        tentative duplicate or a long-lost track would make it drop good blobs)."""
        return self.expected_tracks(max_age_s)[1]

    def expected_tracks(self, max_age_s: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`expected` with the tracks' keys ``(T,)`` (the crops' owners)."""
        now = self.t or 0.0
        live = [t for t in self.tracks if t.confirmed and now - t.last_seen_s <= max_age_s]
        if not live:
            return np.zeros(0, np.int64), np.zeros((0, self.J, 3))
        return (np.array([t.key for t in live], np.int64),
                np.stack([t.last_xyz for t in live]))

    def warmup(self) -> None:
        """Compile (or load) the kernels: association, assignment, matching, output, EKF."""
        self.ekf.warmup()
        self.ekf.tri.warmup(self.J)
        probe = np.full((1, self.J, 3), np.nan, dtype=np.float32)
        self.assoc([probe] * self.C)
        assign_nb(np.zeros((2, 2)), 1.0)
        J = self.J
        z = np.zeros((1, 1))
        _match_nb(z, z, 1.0, np.ones(1), np.ones(1, np.bool_), np.zeros(1, np.int64),
                  np.full((1, self.C, J, 3), np.nan, np.float32), np.full((1, J, 3), np.nan),
                  np.arange(self.S, dtype=np.int64), 1.0, J, self._pts.copy(),
                  np.zeros(self.S * J, np.bool_))
        _output_nb(np.zeros((J, 3)), np.zeros((J, 3)), np.zeros(J, np.uint16),
                   np.zeros(J, np.float32), np.zeros(1, np.int64), J)
        self.size.warmup()
