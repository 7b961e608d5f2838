"""aniposelib's calibration (``CameraGroup.calibrate_rows``: intrinsics start, initial
extrinsics, iterative bundle adjustment) on our detections, and one reprojection metric for
any solved rig: each frame's board pose refitted to all cameras at once (so both solvers are
scored the same way, on the same corners)."""

from __future__ import annotations

import contextlib
import io
import time
from typing import Any

import numpy as np

from livepose.calibrate.detect import MIN_CORNERS
from livepose.core.board import Board
from livepose.core.camera import CameraGroup, CameraModel, rodrigues

BEHIND_PX = 1e3


def anipose_solve(uv: np.ndarray, board: Board, names: list[str],
                  sizes: list[tuple[int, int]],
                  intrinsics: list[tuple[np.ndarray, np.ndarray]] | None = None
                  ) -> dict[str, Any]:
    """aniposelib on the detections ``uv`` ``(C, F, N, 2)``: its cameras, solve time and the
    per-corner errors ``(C, F, N)`` (:func:`refit_errors`).

    ``intrinsics``: ``(K, dist)`` per camera to start from (``init_intrinsics=False``);
    ``None``: aniposelib's own start (``initCameraMatrix2D``, no distortion)."""
    from aniposelib.boards import CharucoBoard
    from aniposelib.cameras import CameraGroup as AGroup

    nbits = int(board.dictionary.split("_")[1][0])
    dsize = int(board.dictionary.rsplit("_", 1)[1])
    ab = CharucoBoard(board.squares[0], board.squares[1], square_length=board.length,
                      marker_length=board.marker, marker_bits=nbits, dict_size=dsize)
    cg = AGroup.from_names(names)
    for cam, size in zip(cg.cameras, sizes, strict=True):
        cam.set_size(size)
    for cam, kd in zip(cg.cameras, intrinsics or [], strict=False):
        cam.set_camera_matrix(np.asarray(kd[0], float).copy())
        cam.set_distortions(np.asarray(kd[1], float).ravel().copy())
    rows = []
    for c in range(uv.shape[0]):
        rc = []
        for f in range(uv.shape[1]):
            seen = np.isfinite(uv[c, f, :, 0])
            if seen.sum() < MIN_CORNERS:
                continue
            ids = np.flatnonzero(seen)
            rc.append({"framenum": (0, f), "ids": ids.reshape(-1, 1).astype(np.int32),
                       "corners": uv[c, f, ids].reshape(-1, 1, 2).astype(np.float32)})
        rows.append(ab.fill_points_rows(rc))
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        cg.calibrate_rows(rows, ab, init_intrinsics=intrinsics is None, init_extrinsics=True,
                          verbose=False)
    seconds = time.perf_counter() - t
    cams = CameraGroup([
        CameraModel(name=n, size=s, matrix=np.asarray(a.get_camera_matrix()),
                    dist=np.asarray(a.get_distortions()).ravel(), rvec=np.ravel(a.get_rotation()),
                    tvec=np.ravel(a.get_translation()))
        for n, s, a in zip(names, sizes, cg.cameras, strict=True)])
    return {"cameras": cams, "seconds": seconds,
            "errors": refit_errors(cams, uv, board.object_points())}


def refit_errors(cams: CameraGroup, uv: np.ndarray, objp: np.ndarray) -> np.ndarray:
    """``(C, F, N)`` reprojection error (px) of every seen corner, each frame's board pose
    fitted to all cameras (Huber loss, 1 px) with the cameras held fixed. A corner that
    lands behind its camera counts as ``BEHIND_PX``."""
    import cv2
    from scipy.optimize import least_squares

    C, F, N = uv.shape[:3]
    seen = np.isfinite(uv[..., 0])
    out = np.full((C, F, N), np.nan)
    for f in range(F):
        cs = [c for c in range(C) if seen[c, f].sum() >= MIN_CORNERS]
        if not cs:
            continue
        c0 = max(cs, key=lambda c: seen[c, f].sum())
        cam = cams[c0]
        ok, r, t = cv2.solvePnP(objp[seen[c0, f]], uv[c0, f, seen[c0, f]], cam.matrix,
                                cam.dist, flags=cv2.SOLVEPNP_IPPE)
        if not ok:
            continue
        Rb = cam.R.T @ rodrigues(r.ravel())
        tb = cam.R.T @ (t.ravel() - cam.tvec)

        def res(p: np.ndarray, Rb: np.ndarray = Rb, tb: np.ndarray = tb, f: int = f,
                cs: list[int] = cs) -> np.ndarray:
            X = objp @ (rodrigues(p[:3]) @ Rb).T + tb + p[3:]
            r = np.concatenate([(cams[c].project(X)[seen[c, f]] - uv[c, f, seen[c, f]])
                                .ravel() for c in cs])
            return np.nan_to_num(r, nan=BEHIND_PX)  # behind a camera: a large error

        sol = least_squares(res, np.zeros(6), loss="huber", f_scale=1.0)
        X = objp @ (rodrigues(sol.x[:3]) @ Rb).T + tb + sol.x[3:]
        for c in cs:
            e = np.linalg.norm(cams[c].project(X) - uv[c, f], axis=1)
            out[c, f] = np.where(seen[c, f] & ~np.isfinite(e), BEHIND_PX, e)
    return out
