"""Extrinsics and bundle adjustment.

Initial poses come from shared board views (a spanning tree grown from camera 0, each new
camera placed by the chordal mean of its candidate rotations and the median translation);
then one bundle adjustment refines every camera (extrinsics and, by default, intrinsics) and
every board pose: Levenberg–Marquardt on the analytic sparse Jacobian
(:mod:`livepose.calibrate.residuals`), the board poses eliminated from each step (Schur
complement), a Huber loss first; then the corners that still reproject far off are dropped
and the solve is finished with a plain least-squares loss. World frame: camera 0 (as
Anipose). (``scipy.optimize.least_squares`` with ``jac_sparsity``, as aniposelib uses, found
the same solution 15–30× slower here: docs/calibration.md.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from livepose.calibrate.detect import MIN_CORNERS
from livepose.calibrate.intrinsics import Intrinsics
from livepose.calibrate.residuals import Problem, rodrigues_batch
from livepose.core.camera import CameraGroup, CameraModel, rodrigues_inv
from livepose.core.errors import UserError

HUBER_PX = 1.0
OUTLIER_PX = 1.5
"""After the robust pass a corner farther than this (and than 5 robust sigmas) is dropped."""


def _chordal_mean(Rs: list[np.ndarray]) -> np.ndarray:
    U, _, Vt = np.linalg.svd(np.sum(Rs, axis=0))
    R = U @ Vt
    if np.linalg.det(R) < 0:
        U[:, -1] *= -1
        R = U @ Vt
    return R


def initial_extrinsics(rv: np.ndarray, tv: np.ndarray, counts: np.ndarray,
                       names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                  np.ndarray]:
    """World (= camera 0) → camera poses and board → world poses from per-view poses.

    Parameters
    ----------
    rv, tv
        ``(C, F, 3)`` board → camera per view, NaN where the view is unusable.
    counts
        ``(C, F)`` corners per view (the view with most corners places a board).

    Returns
    -------
    Rc, tc
        ``(C, 3, 3)``, ``(C, 3)`` world → camera.
    Rb, tb
        ``(F, 3, 3)``, ``(F, 3)`` board → world (NaN for frames no placed camera saw).
    """
    C, F = rv.shape[:2]
    ok = np.isfinite(rv[..., 0])
    Rv = np.full((C, F, 3, 3), np.nan)
    for c in range(C):
        Rv[c, ok[c]] = rodrigues_batch(rv[c, ok[c]])
    Rc = np.full((C, 3, 3), np.nan)
    tc = np.full((C, 3), np.nan)
    Rc[0], tc[0] = np.eye(3), np.zeros(3)
    Rb = np.full((F, 3, 3), np.nan)
    tb = np.full((F, 3), np.nan)
    placed = {0}
    best = np.zeros(F)

    def place_boards(c: int) -> None:
        for f in np.flatnonzero(ok[c]):
            better = not np.isfinite(tb[f, 0]) or counts[c, f] > best[f]
            if better:
                # board -> world = (world -> cam)^-1 ∘ (board -> cam)
                Rb[f] = Rc[c].T @ Rv[c, f]
                tb[f] = Rc[c].T @ (tv[c, f] - tc[c])
                best[f] = counts[c, f]

    place_boards(0)
    while len(placed) < C:
        known = np.isfinite(tb[:, 0])
        shared = [(int((ok[c] & known).sum()), c) for c in range(C) if c not in placed]
        n, c = max(shared)
        if n == 0:
            raise UserError(f"camera(s) {[names[c] for _, c in shared]} share no board view "
                            f"with {[names[p] for p in sorted(placed)]}: collect views that "
                            "both see")
        cand_R, cand_t = [], []
        for f in np.flatnonzero(ok[c] & known):
            R = Rv[c, f] @ Rb[f].T
            cand_R.append(R)
            cand_t.append(tv[c, f] - R @ tb[f])
        Rc[c] = _chordal_mean(cand_R)
        tc[c] = np.median(np.asarray(cand_t), axis=0)
        placed.add(c)
        place_boards(c)
    return Rc, tc, Rb, tb


@dataclass
class BundleResult:
    """A solved rig.

    Attributes
    ----------
    cameras
        The calibrated cameras (world = camera 0).
    board_R, board_t
        ``(F, 3, 3)``, ``(F, 3)`` board → world per frame (NaN where not solved).
    errors
        ``(C, F, N)`` reprojection error per corner (px), NaN where not observed.
    inliers
        ``(C, F, N)`` bool: corners kept by the final solve.
    reproj_px
        Mean reprojection error over the inliers.
    seconds, nfev
        Solve time and residual evaluations.
    """

    cameras: CameraGroup
    board_R: np.ndarray  # noqa: N815
    board_t: np.ndarray
    errors: np.ndarray
    inliers: np.ndarray
    reproj_px: float
    seconds: float
    nfev: int


def _robust(r: np.ndarray, huber: float | None) -> tuple[float, np.ndarray]:
    """Cost and IRLS weights ``(2M,)`` of residuals ``r`` under a Huber loss (or none)."""
    if huber is None:
        return 0.5 * float(r @ r), np.ones_like(r)
    a = np.abs(r)
    small = a <= huber
    cost = np.where(small, 0.5 * r * r, huber * a - 0.5 * huber * huber).sum()
    return float(cost), np.where(small, 1.0, huber / np.maximum(a, 1e-12))


def _solve_schur(H: np.ndarray, b: np.ndarray, nc: int) -> np.ndarray:
    """Solve ``H x = b`` where ``H[nc:, nc:]`` is block diagonal (6 × 6 per board pose):
    eliminate the board poses (Schur complement), solve for the ``nc`` camera unknowns."""
    A, Bm, bc, bb = H[:nc, :nc], H[:nc, nc:], b[:nc], b[nc:]
    nb = bb.size // 6
    idx = nc + np.arange(nb)[:, None] * 6 + np.arange(6)[None]
    D = H[idx[:, :, None], idx[:, None, :]]  # (nb, 6, 6)
    Dinv = np.linalg.inv(D)
    BD = np.einsum("cbi,bij->cbj", Bm.reshape(nc, nb, 6), Dinv).reshape(nc, -1)
    S = A - BD @ Bm.T
    xc = np.linalg.solve(S, bc - BD @ bb)
    xb = np.einsum("bij,bj->bi", Dinv, (bb - Bm.T @ xc).reshape(nb, 6)).ravel()
    return np.concatenate([xc, xb])


def levenberg_marquardt(prob: Problem, x0: np.ndarray, intr0: np.ndarray,
                        huber: float | None, max_iter: int = 50,
                        rtol: float = 1e-10) -> tuple[np.ndarray, int]:
    """Minimise the (Huber-)robust reprojection cost from ``x0``.

    Levenberg–Marquardt with the analytic sparse Jacobian; the normal equations (a few
    hundred unknowns) are formed sparse and solved dense; a Huber loss by iteratively
    reweighted least squares. Returns the solution and the number of evaluations.
    """
    from scipy.sparse import diags

    x = x0
    r = prob.residual(x, intr0)
    J = prob.jacobian(x, intr0)
    cost, w = _robust(r, huber)
    lam = 1e-3
    n_eval = 1
    for _ in range(max_iter):
        JW = diags(w) @ J
        H = (J.T @ JW).toarray()
        g = JW.T @ r
        dH = np.maximum(np.diag(H), 1e-12)
        improved = False
        for _ in range(10):
            dx = _solve_schur(H + lam * np.diag(dH), -g, prob.n - prob.B * 6)
            xn = x + dx
            rn = prob.residual(xn, intr0)
            n_eval += 1
            cn, wn = _robust(rn, huber)
            if cn < cost:
                improved = True
                break
            lam *= 10.0
        if not improved:
            break
        done = cost - cn <= rtol * cost
        x, r, cost, w = prob.rebase(xn, intr0), rn, cn, wn
        J = prob.jacobian(x, intr0)
        lam = max(lam / 10.0, 1e-9)
        if done:
            break
    return x, n_eval


def bundle_adjust(uv: np.ndarray, objp: np.ndarray, intr: list[Intrinsics],
                  rv: np.ndarray, tv: np.ndarray, names: list[str],
                  sizes: list[tuple[int, int]], refine_intrinsics: bool = True,
                  inliers: np.ndarray | None = None) -> BundleResult:
    """Calibrate the rig from board corners seen by every camera.

    Parameters
    ----------
    uv
        ``(C, F, N, 2)`` corners, NaN where unseen.
    objp
        ``(N, 3)`` board corners.
    intr
        Each camera's :class:`Intrinsics` (the start of the intrinsics).
    rv, tv
        ``(C, F, 3)`` board → camera per view (NaN where unusable), e.g. from
        :func:`livepose.calibrate.intrinsics.board_poses`.
    inliers
        ``(C, F, N)`` corners allowed in (default: all seen); e.g. the intrinsics' inliers.
    """
    import importlib.util

    if importlib.util.find_spec("scipy") is None:
        raise UserError("bundle adjustment needs SciPy: pip install 'livepose[calibrate]'")
    t0 = time.perf_counter()
    C, F = uv.shape[:2]
    seen = np.isfinite(uv[..., 0])
    counts = seen.sum(2)
    Rc, tc, Rb, tb = initial_extrinsics(rv, tv, counts, names)
    frames = np.flatnonzero(np.isfinite(tb[:, 0]))
    use = seen & (inliers if inliers is not None else True)
    use &= (counts >= MIN_CORNERS)[..., None]
    use[:, ~np.isfinite(tb[:, 0])] = False
    fmap = np.full(F, -1)
    fmap[frames] = np.arange(frames.size)
    fisheye = intr[0].fisheye
    dist_len = 4 if fisheye else max(5 if i.dist.size >= 5 else 4 for i in intr)
    k3 = any(i.dist.size >= 5 and i.dist[4] != 0.0 for i in intr)
    dist_len = dist_len if fisheye or k3 else 4

    def intr_vec(i: Intrinsics) -> np.ndarray:
        d = np.zeros(dist_len)
        d[: min(dist_len, i.dist.size)] = i.dist[:dist_len]
        return np.concatenate([[i.K[0, 0], i.K[1, 1], i.K[0, 2], i.K[1, 2]], d])

    intr0 = np.stack([intr_vec(i) for i in intr])
    Rcur, tcur = Rc, tc
    Rbcur, tbcur = Rb[frames], tb[frames]
    nfev = 0
    for final in (False, True):
        c_i, f_i, n_i = np.nonzero(use)
        prob = Problem(uv, objp, (c_i, fmap[f_i], n_i), frames, fisheye, refine_intrinsics,
                        dist_len, Rcur, Rbcur)
        x0 = prob.pack(tcur, intr0, tbcur)
        xs, n_eval = levenberg_marquardt(prob, x0, intr0, huber=None if final else HUBER_PX)
        nfev += n_eval
        Rcur, tcur, intr_now, Rbcur, tbcur = prob.unpack(xs, intr0)
        if refine_intrinsics:
            intr0 = intr_now
        if not final:
            # errors of every seen corner under the robust solution: drop the far ones
            allc, allf, alln = np.nonzero(seen & (fmap >= 0)[None, :, None])
            full = Problem(uv, objp, (allc, fmap[allf], alln), frames, fisheye,
                            refine_intrinsics, dist_len, Rcur, Rbcur)
            pred, _ = full.project(Rcur, tcur, intr0, Rbcur, tbcur)
            e = np.linalg.norm(pred - full.uv, axis=1)
            thr = max(OUTLIER_PX, 5 * 1.4826 * float(np.median(e)))
            use = np.zeros_like(seen)
            use[allc, allf, alln] = e <= thr
    cams = []
    for c in range(C):
        k = intr0[c]
        K = np.array([[k[0], 0.0, k[2]], [0.0, k[1], k[3]], [0.0, 0.0, 1.0]])
        d = k[4:]
        if not fisheye and d.size == 4:
            d = np.concatenate([d, [0.0]])
        cams.append(CameraModel(name=names[c], size=sizes[c], matrix=K, dist=d,
                                rvec=rodrigues_inv(Rcur[c]), tvec=tcur[c], fisheye=fisheye))
    board_R = np.full((F, 3, 3), np.nan)
    board_t = np.full((F, 3), np.nan)
    board_R[frames] = Rbcur
    board_t[frames] = tbcur
    errors = reprojection_errors(CameraGroup(cams), uv, objp, board_R, board_t)
    reproj = float(np.nanmean(np.where(use, errors, np.nan)))
    return BundleResult(cameras=CameraGroup(cams), board_R=board_R, board_t=board_t,
                        errors=errors, inliers=use, reproj_px=reproj,
                        seconds=time.perf_counter() - t0, nfev=nfev)


def reprojection_errors(cams: CameraGroup, uv: np.ndarray, objp: np.ndarray,
                        board_R: np.ndarray, board_t: np.ndarray) -> np.ndarray:
    """``(C, F, N)`` distance (px) between each seen corner and its reprojection (NaN where
    unseen or the board pose is unknown)."""
    C, F, N = uv.shape[:3]
    out = np.full((C, F, N), np.nan)
    for f in np.flatnonzero(np.isfinite(board_t[:, 0])):
        X = objp @ board_R[f].T + board_t[f]
        for c in range(C):
            out[c, f] = np.linalg.norm(cams[c].project(X) - uv[c, f], axis=1)
    return out


def world_from(cams: CameraGroup, R: np.ndarray, t: np.ndarray) -> CameraGroup:
    """The same rig in another world frame: ``X_old = R @ X_new + t``."""
    out = []
    for c in cams:
        Rn = c.R @ R
        tn = c.R @ t + c.tvec
        out.append(CameraModel(name=c.name, size=c.size, matrix=c.matrix, dist=c.dist,
                               rvec=rodrigues_inv(Rn), tvec=tn, fisheye=c.fisheye))
    return CameraGroup(out)


__all__ = ["BundleResult", "bundle_adjust", "initial_extrinsics", "reprojection_errors",
           "world_from"]
