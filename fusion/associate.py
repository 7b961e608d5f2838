"""Cross-view association of instances per frame-set: which instance in each view is the
same individual.

**Affinity.** Two instances in different cameras ``a`` and ``b`` are compared through their
keypoints' epipolar geometry: every keypoint's pixel is undistorted (the core's exact
undistortion) to normalised coordinates ``x``; with the essential matrix
``E_ab = [t_ab]ₓ R_ab`` of the pair, the symmetric epipolar distance of keypoint ``j`` is
``½ (|x_bᵀ E x_a| / ‖(E x_a)₁₂‖ · f_b + |x_bᵀ E x_a| / ‖(Eᵀ x_b)₁₂‖ · f_a)`` pixels. The
instances' distance is the confidence-weighted mean (weight ``min(c_a, c_b)``) over the
keypoints both see above ``likelihood_threshold``, each term truncated at
``3 · epipolar_px`` (one wrong keypoint cannot dominate); fewer than ``min_keypoints`` shared
keypoints: no affinity. All pairs of a frame-set are one compiled call.

**Assignment.** Clusters grow view by view (views with the most instances first): every
cluster's cost to an instance of the next view is the mean distance to the cluster's members;
the clusters and the view's instances are matched by the Hungarian method with rejection at
``epipolar_px`` (:func:`livepose.fusion.assign.assign_nb`), and an instance left unmatched
starts a cluster of its own. So an individual seen by only some cameras is a cluster of
those views, and a view's instance never joins two clusters. Clusters of one view cannot be
triangulated and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from livepose.core.camera import CameraGroup, undistort_nb
from livepose.fusion.assign import assign_nb


@nb.njit(cache=True, nogil=True)
def _undistort_all_nb(pts: np.ndarray, cam: np.ndarray, K: np.ndarray, dist: np.ndarray,
                      fisheye: np.ndarray, out: np.ndarray) -> None:
    M, J = pts.shape[0], pts.shape[1]
    for i in range(M):
        c = cam[i]
        fx, fy, cx, cy, sk = K[c, 0, 0], K[c, 1, 1], K[c, 0, 2], K[c, 1, 2], K[c, 0, 1]
        for j in range(J):
            yd = (pts[i, j, 1] - cy) / fy
            xd = (pts[i, j, 0] - cx - sk * yd) / fx
            x, y = undistort_nb(xd, yd, dist[c], fisheye[c])
            out[i, j, 0] = x
            out[i, j, 1] = y


@nb.njit(cache=True, nogil=True)
def pair_distances_nb(pts: np.ndarray, xn: np.ndarray, cam: np.ndarray, E: np.ndarray,
                      f: np.ndarray, thr: float, min_kp: int, trunc: float) -> np.ndarray:
    """Symmetric ``(M, M)`` epipolar distances (px) between instances (module docstring);
    ``inf`` within a camera or with fewer than ``min_kp`` shared keypoints."""
    M, J = pts.shape[0], pts.shape[1]
    D = np.full((M, M), np.inf)
    for a in range(M):
        for b in range(a + 1, M):
            ca, cb = cam[a], cam[b]
            if ca == cb:
                continue
            e = E[ca, cb]
            sw, sd, n = 0.0, 0.0, 0
            for j in range(J):
                wa, wb = pts[a, j, 2], pts[b, j, 2]
                if not (wa >= thr and wb >= thr and wa > 0 and wb > 0):
                    continue
                xa, ya = xn[a, j, 0], xn[a, j, 1]
                xb, yb = xn[b, j, 0], xn[b, j, 1]
                if not (np.isfinite(xa) and np.isfinite(ya) and np.isfinite(xb)
                        and np.isfinite(yb)):
                    continue
                l0 = e[0, 0] * xa + e[0, 1] * ya + e[0, 2]
                l1 = e[1, 0] * xa + e[1, 1] * ya + e[1, 2]
                l2 = e[2, 0] * xa + e[2, 1] * ya + e[2, 2]
                r = xb * l0 + yb * l1 + l2
                m0 = e[0, 0] * xb + e[1, 0] * yb + e[2, 0]
                m1 = e[0, 1] * xb + e[1, 1] * yb + e[2, 1]
                d = 0.5 * abs(r) * (f[cb] / max(np.sqrt(l0 * l0 + l1 * l1), 1e-12)
                                    + f[ca] / max(np.sqrt(m0 * m0 + m1 * m1), 1e-12))
                w = min(wa, wb)
                sd += w * min(d, trunc)
                sw += w
                n += 1
            if n >= min_kp and sw > 0:
                D[a, b] = D[b, a] = sd / sw
    return D


@nb.njit(cache=True, nogil=True)
def cluster_nb(D: np.ndarray, start: np.ndarray, order: np.ndarray, max_cost: float
               ) -> np.ndarray:
    """Grow clusters view by view (module docstring): the cluster of each instance ``(M,)``.

    ``D`` ``(M, M)`` distances, ``start`` ``(C + 1,)`` the first instance of each view,
    ``order`` the views in the order they join."""
    M = D.shape[0]
    label = np.full(M, -1, dtype=np.int64)
    ncl = 0
    for c in order:
        a, b = start[c], start[c + 1]
        n = b - a
        if n == 0:
            continue
        if ncl > 0:
            cost = np.empty((ncl, n))
            for k in range(ncl):
                for i in range(n):
                    s, cnt = 0.0, 0
                    for m in range(M):
                        if label[m] == k and np.isfinite(D[m, a + i]):
                            s += D[m, a + i]
                            cnt += 1
                    cost[k, i] = s / cnt if cnt > 0 else np.inf
            col = assign_nb(cost, max_cost)
            for k in range(ncl):
                if col[k] >= 0:
                    label[a + col[k]] = k
        for i in range(a, b):
            if label[i] < 0:
                label[i] = ncl
                ncl += 1
    return label


@nb.njit(cache=True, nogil=True)
def cluster_costs_nb(D: np.ndarray, label: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Mean finite pairwise distance inside each kept cluster ``(K,)`` (0 if none)."""
    out = np.zeros(keep.shape[0])
    M = D.shape[0]
    for k in range(keep.shape[0]):
        s, n = 0.0, 0
        for a in range(M):
            if label[a] != keep[k]:
                continue
            for b in range(a + 1, M):
                if label[b] == keep[k] and np.isfinite(D[a, b]):
                    s += D[a, b]
                    n += 1
        out[k] = s / n if n else 0.0
    return out


@nb.njit(cache=True, nogil=True)
def _cams_nb(start: np.ndarray) -> np.ndarray:
    """The camera of each instance ``(M,)`` from the first instance of each view."""
    cam = np.empty(start[-1], dtype=np.int64)
    for c in range(start.shape[0] - 1):
        cam[start[c]:start[c + 1]] = c
    return cam


@nb.njit(cache=True, nogil=True)
def _distances_nb(pts: np.ndarray, cam: np.ndarray, K: np.ndarray, dist: np.ndarray,
                  fisheye: np.ndarray, E: np.ndarray, f: np.ndarray, thr: float, min_kp: int,
                  trunc: float) -> np.ndarray:
    """Undistortion and :func:`pair_distances_nb` in one call: ``(M, M)`` distances."""
    xn = np.empty((pts.shape[0], pts.shape[1], 2))
    _undistort_all_nb(pts, cam, K, dist, fisheye, xn)
    return pair_distances_nb(pts, xn, cam, E, f, thr, min_kp, trunc)


@nb.njit(cache=True, nogil=True)
def _associate_nb(pts: np.ndarray, start: np.ndarray, K: np.ndarray,
                  dist: np.ndarray, fisheye: np.ndarray, E: np.ndarray, f: np.ndarray,
                  thr: float, min_kp: int, trunc: float, max_cost: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A frame-set's association in one call (module docstring): ``start`` ``(C + 1,)`` the
    first instance of each view in ``pts`` ``(M, J, 3)``.

    Returns the clusters of two or more views: points ``(K, C, J, 3)`` float32 (NaN where a
    camera has no member), mean internal distance ``(K,)``; per instance its kept
    cluster's index (-1: none) and its camera, ``(M,)`` each.
    """
    C = start.shape[0] - 1
    M, J = pts.shape[0], pts.shape[1]
    order = np.arange(C)  # views with the most instances first (a stable sort)
    for a in range(1, C):
        c = order[a]
        b = a
        while b > 0 and start[order[b - 1] + 1] - start[order[b - 1]] < start[c + 1] - start[c]:
            order[b] = order[b - 1]
            b -= 1
        order[b] = c
    cam = _cams_nb(start)
    D = _distances_nb(pts, cam, K, dist, fisheye, E, f, thr, min_kp, trunc)
    label = cluster_nb(D, start, order, max_cost)
    ncl = 0
    for i in range(M):
        ncl = max(ncl, label[i] + 1)
    sizes = np.zeros(ncl, dtype=np.int64)
    for i in range(M):
        sizes[label[i]] += 1
    kept = np.full(ncl, -1, dtype=np.int64)
    nk = 0
    for lab in range(ncl):
        if sizes[lab] >= 2:
            kept[lab] = nk
            nk += 1
    keep = np.empty(nk, dtype=np.int64)
    for lab in range(ncl):
        if kept[lab] >= 0:
            keep[kept[lab]] = lab
    Jo = J if M else 0
    out = np.full((nk, C, Jo, 3), np.nan, dtype=np.float32)
    kidx = np.full(M, -1, dtype=np.int64)
    for i in range(M):
        k = kept[label[i]]
        kidx[i] = k
        if k >= 0:
            for j in range(J):
                for d in range(3):
                    out[k, cam[i], j, d] = pts[i, j, d]
    return out, cluster_costs_nb(D, label, keep), kidx, cam


def essential_matrices(cameras: CameraGroup) -> np.ndarray:
    """``(C, C, 3, 3)``: ``E[a, b]`` maps camera ``a``'s normalised point to its epipolar
    line in camera ``b`` (``x_bᵀ E x_a = 0``)."""
    C = len(cameras)
    E = np.zeros((C, C, 3, 3))
    for a in range(C):
        Ra, ta = cameras[a].R, cameras[a].tvec
        for b in range(C):
            if a == b:
                continue
            Rb, tb = cameras[b].R, cameras[b].tvec
            R = Rb @ Ra.T
            t = tb - R @ ta
            tx = np.array([[0.0, -t[2], t[1]], [t[2], 0.0, -t[0]], [-t[1], t[0], 0.0]])
            E[a, b] = tx @ R
    return E


@dataclass(slots=True)
class Association:
    """One frame-set's clusters.

    Attributes
    ----------
    points
        ``(K, C, J, 3)`` float32: per cluster, the member instances' keypoints in their
        camera's row, NaN for cameras without a member.
    cost
        ``(K,)`` mean pairwise epipolar distance (px) inside each cluster.
    cluster, cam, index
        Per instance (all views' instances stacked, ``(M,)`` int64 each): its cluster
        (``-1``: none), its camera and its index in that camera's view.
    """

    points: np.ndarray
    cost: np.ndarray
    cluster: np.ndarray
    cam: np.ndarray
    index: np.ndarray

    @property
    def members(self) -> list[list[tuple[int, int]]]:
        """Per cluster, its ``(camera, instance)`` pairs."""
        out: list[list[tuple[int, int]]] = [[] for _ in range(len(self.cost))]
        for k, c, i in zip(self.cluster.tolist(), self.cam.tolist(), self.index.tolist(),
                           strict=True):
            if k >= 0:
                out[k].append((c, i))
        return out


class Associator:
    """Associates instances across views (module docstring).

    Parameters
    ----------
    cameras
        The calibrated cameras (camera order of the views).
    likelihood_threshold, epipolar_px, min_keypoints
        ``fusion.likelihood_threshold`` and ``fusion.multi``'s settings.
    """

    def __init__(self, cameras: CameraGroup, likelihood_threshold: float, epipolar_px: float,
                 min_keypoints: int) -> None:
        cams = cameras.cameras
        self.C = len(cams)
        self.K = np.ascontiguousarray(np.stack([c.matrix for c in cams]), dtype=np.float64)
        self.dist = np.ascontiguousarray(np.stack([c.dist8 for c in cams]), dtype=np.float64)
        self.fisheye = np.array([c.fisheye for c in cams], dtype=np.bool_)
        self.f = np.array([0.5 * (c.matrix[0, 0] + c.matrix[1, 1]) for c in cams])
        self.E = essential_matrices(cameras)
        self.thr = float(likelihood_threshold)
        self.epipolar_px = float(epipolar_px)
        self.min_keypoints = int(min_keypoints)

    def _stack(self, views: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """All instances stacked ``(M, J, 3)`` float64 and the first instance of each view
        ``(C + 1,)``."""
        n = [len(v) for v in views]
        J = next((v.shape[1] for v in views if v.ndim == 3 and v.shape[0]), 0)
        pts = (np.ascontiguousarray(np.concatenate([v for v in views if len(v)]),
                                    dtype=np.float64)
               if J else np.zeros((0, 0, 3)))
        start = np.zeros(len(views) + 1, dtype=np.int64)
        np.cumsum(n, out=start[1:])
        return pts, start

    def distances(self, views: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All instances stacked ``(M, J, 3)``, their camera ``(M,)`` and the ``(M, M)``
        distances."""
        pts, start = self._stack(views)
        cam = _cams_nb(start)
        D = _distances_nb(pts, cam, self.K, self.dist, self.fisheye, self.E, self.f, self.thr,
                          self.min_keypoints, 3.0 * self.epipolar_px)
        return pts, cam, D

    def __call__(self, views: list[np.ndarray]) -> Association:
        """Cluster one frame-set's instances.

        Parameters
        ----------
        views
            ``C`` arrays ``(K_c, J, 3)``: x, y (distorted px), confidence of each instance.

        Returns
        -------
        Association
            Clusters of two or more views.
        """
        if len(views) != self.C:
            raise ValueError(f"need {self.C} views, got {len(views)}")
        pts, start = self._stack(views)
        out, cost, kidx, cam = _associate_nb(
            pts, start, self.K, self.dist, self.fisheye, self.E, self.f, self.thr,
            self.min_keypoints, 3.0 * self.epipolar_px, self.epipolar_px)
        return Association(out, cost, kidx, cam, np.arange(len(cam)) - start[cam])
