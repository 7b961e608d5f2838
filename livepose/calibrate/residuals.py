"""The bundle adjustment's residuals and their analytic sparse Jacobian (OpenCV pinhole and
fisheye models), vectorised over every observed corner."""

from __future__ import annotations

from typing import Any

import numpy as np


def rodrigues_batch(r: np.ndarray) -> np.ndarray:
    """Rotation vectors ``(M, 3)`` → matrices ``(M, 3, 3)``."""
    th = np.linalg.norm(r, axis=1)
    safe = np.where(th < 1e-12, 1.0, th)
    k = r / safe[:, None]
    K = np.zeros((r.shape[0], 3, 3))
    K[:, 0, 1], K[:, 0, 2] = -k[:, 2], k[:, 1]
    K[:, 1, 0], K[:, 1, 2] = k[:, 2], -k[:, 0]
    K[:, 2, 0], K[:, 2, 1] = -k[:, 1], k[:, 0]
    s, c = np.sin(th)[:, None, None], (1.0 - np.cos(th))[:, None, None]
    return np.eye(3)[None] + s * K + c * (K @ K)


def _skew(v: np.ndarray) -> np.ndarray:
    """``(M, 3)`` → ``(M, 3, 3)`` cross-product matrices."""
    S = np.zeros((v.shape[0], 3, 3))
    S[:, 0, 1], S[:, 0, 2] = -v[:, 2], v[:, 1]
    S[:, 1, 0], S[:, 1, 2] = v[:, 2], -v[:, 0]
    S[:, 2, 0], S[:, 2, 1] = -v[:, 1], v[:, 0]
    return S


class Problem:
    """Residuals and their analytic sparse Jacobian.

    Unknowns: per camera (but camera 0, the world) a rotation increment ``δ`` (``R = exp(δ)
    R₀``) and a translation; per camera, if refined, ``fx fy cx cy`` and the distortion;
    per board pose a rotation increment and a translation. Rotations are re-based
    (``R₀ ← R``) between solves so the increments stay small.
    """

    def __init__(self, uv: np.ndarray, objp: np.ndarray, obs: tuple[np.ndarray, ...],
                 frames: np.ndarray, fisheye: bool, refine_intrinsics: bool,
                 dist_len: int, Rc0: np.ndarray, Rb0: np.ndarray) -> None:
        self.objp = objp
        self.obs_c, self.obs_f, self.obs_n = obs  # (M,) each; obs_f indexes `frames`
        self.uv = uv[self.obs_c, frames[self.obs_f], self.obs_n]
        self.C = int(uv.shape[0])
        self.B = int(frames.size)
        self.fisheye = fisheye
        self.refine = refine_intrinsics
        self.nd = 4 if fisheye else dist_len
        self.ni = (4 + self.nd) if refine_intrinsics else 0
        self.n_ext = (self.C - 1) * 6  # camera 0 is the world
        self.Rc0, self.Rb0 = Rc0, Rb0
        self._cache: tuple[bytes, np.ndarray, Any] | None = None

    @property
    def n(self) -> int:
        return self.n_ext + self.C * self.ni + self.B * 6

    def pack(self, tc: np.ndarray, intr: np.ndarray, tb: np.ndarray) -> np.ndarray:
        ext = np.concatenate([np.zeros((self.C, 3)), tc], axis=1)[1:].ravel()
        brd = np.concatenate([np.zeros((self.B, 3)), tb], axis=1).ravel()
        return np.concatenate([ext, intr.ravel() if self.refine else [], brd])

    def unpack(self, x: np.ndarray, intr0: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray, np.ndarray,
                                                                 np.ndarray]:
        """``x`` → ``Rc (C,3,3), tc (C,3), intr (C,ni), Rb (B,3,3), tb (B,3)``."""
        ext = np.concatenate([np.zeros((1, 6)), x[: self.n_ext].reshape(-1, 6)])
        o = self.n_ext
        if self.refine:
            intr = x[o: o + self.C * self.ni].reshape(self.C, self.ni)
            o += self.C * self.ni
        else:
            intr = intr0
        brd = x[o:].reshape(self.B, 6)
        Rc = rodrigues_batch(ext[:, :3]) @ self.Rc0
        Rb = rodrigues_batch(brd[:, :3]) @ self.Rb0
        return Rc, ext[:, 3:], intr, Rb, brd[:, 3:]

    def project(self, Rc: np.ndarray, tc: np.ndarray, intr: np.ndarray, Rb: np.ndarray,
                tb: np.ndarray, jac: bool = False) -> tuple[np.ndarray, Any]:
        """Predicted pixels ``(M, 2)`` and, if ``jac``, the Jacobian ``(2M, n)`` (CSR)."""
        c, f = self.obs_c, self.obs_f
        RbP = np.einsum("mij,mj->mi", Rb[f], self.objp[self.obs_n])
        Xw = RbP + tb[f]
        RcX = np.einsum("mij,mj->mi", Rc[c], Xw)
        Xc = RcX + tc[c]
        z = np.maximum(Xc[:, 2], 1e-9)
        x, y = Xc[:, 0] / z, Xc[:, 1] / z
        k = intr[c]
        fx, fy, cx, cy = k[:, 0], k[:, 1], k[:, 2], k[:, 3]
        d = k[:, 4:]
        M = x.size
        Dd = np.zeros((M, 2, self.nd))  # d(xd, yd)/d(dist)
        if self.fisheye:
            r = np.maximum(np.hypot(x, y), 1e-12)
            th = np.arctan(r)
            t2 = th * th
            poly = 1 + t2 * (d[:, 0] + t2 * (d[:, 1] + t2 * (d[:, 2] + t2 * d[:, 3])))
            s = th * poly / r
            xd, yd = x * s, y * s
            dthd = 1 + t2 * (3 * d[:, 0] + t2 * (5 * d[:, 1] + t2 * (7 * d[:, 2]
                                                                     + 9 * t2 * d[:, 3])))
            ds_dr = (dthd / (1 + r * r) - s) / r  # d(thd/r)/dr
            Dxy = np.empty((M, 2, 2))
            Dxy[:, 0, 0] = s + x * ds_dr * x / r
            Dxy[:, 0, 1] = x * ds_dr * y / r
            Dxy[:, 1, 0] = y * ds_dr * x / r
            Dxy[:, 1, 1] = s + y * ds_dr * y / r
            for i in range(4):
                g = th ** (2 * i + 3) / r
                Dd[:, 0, i], Dd[:, 1, i] = x * g, y * g
        else:
            r2 = x * x + y * y
            k3 = d[:, 4] if self.nd > 4 else 0.0
            p1, p2 = d[:, 2], d[:, 3]
            rad = 1 + r2 * (d[:, 0] + r2 * (d[:, 1] + r2 * k3))
            drad = d[:, 0] + r2 * (2 * d[:, 1] + 3 * r2 * k3)
            xd = x * rad + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
            yd = y * rad + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
            Dxy = np.empty((M, 2, 2))
            Dxy[:, 0, 0] = rad + 2 * x * x * drad + 2 * p1 * y + 6 * p2 * x
            Dxy[:, 0, 1] = 2 * x * y * drad + 2 * p1 * x + 2 * p2 * y
            Dxy[:, 1, 0] = 2 * x * y * drad + 2 * p1 * x + 2 * p2 * y
            Dxy[:, 1, 1] = rad + 2 * y * y * drad + 6 * p1 * y + 2 * p2 * x
            Dd[:, 0, 0], Dd[:, 1, 0] = x * r2, y * r2
            Dd[:, 0, 1], Dd[:, 1, 1] = x * r2 * r2, y * r2 * r2
            Dd[:, 0, 2], Dd[:, 1, 2] = 2 * x * y, r2 + 2 * y * y
            Dd[:, 0, 3], Dd[:, 1, 3] = r2 + 2 * x * x, 2 * x * y
            if self.nd > 4:
                Dd[:, 0, 4], Dd[:, 1, 4] = x * r2 ** 3, y * r2 ** 3
        pred = np.stack([fx * xd + cx, fy * yd + cy], axis=1)
        if not jac:
            return pred, None
        from scipy.sparse import csr_matrix

        Dp = np.zeros((M, 2, 3))  # d(x, y)/dXc
        Dp[:, 0, 0] = Dp[:, 1, 1] = 1 / z
        Dp[:, 0, 2], Dp[:, 1, 2] = -x / z, -y / z
        F = np.stack([fx, fy], 1)[:, :, None]
        A = F * np.einsum("mij,mjk->mik", Dxy, Dp)  # d(u, v)/dXc  (M, 2, 3)
        blocks, cols = [], []
        rows_ok = c > 0
        ext_cols = (c[:, None] - 1) * 6 + np.arange(6)[None]
        Jc = np.concatenate([np.einsum("mij,mjk->mik", A, -_skew(RcX)), A], axis=2)
        Jc[~rows_ok] = 0.0
        blocks.append(Jc)
        cols.append(np.where(rows_ok[:, None], ext_cols, 0))
        if self.refine:
            Ji = np.zeros((M, 2, self.ni))
            Ji[:, 0, 0], Ji[:, 1, 1] = xd, yd
            Ji[:, 0, 2], Ji[:, 1, 3] = 1.0, 1.0
            Ji[:, :, 4:] = F * Dd
            blocks.append(Ji)
            cols.append(self.n_ext + c[:, None] * self.ni + np.arange(self.ni)[None])
        ARc = np.einsum("mij,mjk->mik", A, Rc[c])
        Jb = np.concatenate([np.einsum("mij,mjk->mik", ARc, -_skew(RbP)), ARc], axis=2)
        blocks.append(Jb)
        cols.append(self.n_ext + self.C * self.ni + f[:, None] * 6 + np.arange(6)[None])
        data = np.concatenate(blocks, axis=2)  # (M, 2, K)
        colm = np.concatenate(cols, axis=1)  # (M, K)
        K = colm.shape[1]
        rr = np.repeat(np.arange(2 * M), K)
        cc = np.repeat(colm[:, None, :], 2, axis=1).ravel()
        J = csr_matrix((data.ravel(), (rr, cc)), shape=(2 * M, self.n))
        return pred, J

    def rebase(self, x: np.ndarray, intr0: np.ndarray) -> np.ndarray:
        """Fold ``x``'s rotation increments into ``R₀`` and return ``x`` with them at zero
        (where the Jacobian is exact)."""
        Rc, _, _, Rb, _ = self.unpack(x, intr0)
        self.Rc0, self.Rb0 = Rc, Rb
        x = x.copy()
        ext = x[: self.n_ext].reshape(-1, 6)
        ext[:, :3] = 0.0
        o = self.n_ext + self.C * self.ni
        x[o:].reshape(self.B, 6)[:, :3] = 0.0
        self._cache = None
        return x

    def residual(self, x: np.ndarray, intr0: np.ndarray) -> np.ndarray:
        pred, J = self.project(*self.unpack(x, intr0), jac=True)
        self._cache = (x.tobytes(), pred, J)
        return (pred - self.uv).ravel()

    def jacobian(self, x: np.ndarray, intr0: np.ndarray) -> Any:
        if self._cache is None or self._cache[0] != x.tobytes():
            self.residual(x, intr0)
        assert self._cache is not None
        return self._cache[2]
