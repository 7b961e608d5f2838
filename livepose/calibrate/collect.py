"""Feedback while collecting board views: the logic of a live collection, without sockets.

Feed :meth:`Collector.add` one synchronized frame-set at a time (from the running rig's
cameras, or from videos); it keeps the views where the board moved, and says per camera how
many views it has, where in the image corners have been seen (a coverage grid), which camera
pairs share views, a running reprojection estimate (intrinsics from the views so far), and,
for a camera that has seen nothing for a while, the likely reason. :meth:`Collector.enough`
says when coverage and shared views suffice; :meth:`Collector.detections` hands the views to
the solver (:func:`livepose.calibrate.pipeline.solve_detections`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from livepose.calibrate.detect import (
    MIN_CORNERS,
    Detections,
    detect_view,
    diagnose,
    make_detector,
    plausible,
)
from livepose.calibrate.intrinsics import calibrate_intrinsics
from livepose.calibrate.report import coverage
from livepose.core.board import Board
from livepose.core.errors import UserError


@dataclass
class Targets:
    """When collection may stop: every camera has ``views`` views covering ``coverage`` of
    its image grid, and every camera is linked to the others through pairs sharing at least
    ``pair_views`` views."""

    views: int = 20
    coverage: float = 0.5
    pair_views: int = 8
    grid: tuple[int, int] = (8, 6)
    min_move_px: float = 8.0
    """A view is kept only if the board moved this much (median corner) since the last."""
    quiet_frames: int = 30
    """After this many frame-sets without a board, a camera gets a diagnosis."""


@dataclass
class CameraStatus:
    """One camera's collection so far."""

    name: str
    views: int = 0
    coverage: float = 0.0
    grid: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), int))
    reproj_px: float | None = None
    since_seen: int = 0
    message: str | None = None


class Collector:
    """Collects board views from synchronized frame-sets (see the module docstring).

    Parameters
    ----------
    board
        The board.
    names, sizes
        Camera names and image ``(width, height)``.
    targets
        When to stop.
    """

    def __init__(self, board: Board, names: list[str], sizes: list[tuple[int, int]],
                 targets: Targets | None = None) -> None:
        if len(names) != len(sizes) or not names:
            raise UserError("the collector needs one image size per camera name")
        self.board = board
        self.names = list(names)
        self.sizes = list(sizes)
        self.t = targets or Targets()
        self.objp = board.object_points()
        self._det = make_detector(board) if board.kind == "charuco" else None
        self._rows: list[np.ndarray] = []  # kept frame-sets, each (C, N, 2)
        self._last = [np.full((board.n_corners, 2), np.nan) for _ in names]
        self.status = [CameraStatus(n, grid=np.zeros(self.t.grid[::-1], int)) for n in names]
        self.frames = 0
        self._since_fit = [0] * len(names)

    def add(self, frames: Mapping[str, np.ndarray]) -> bool:
        """Detect the board in one frame-set ``{camera: (H, W) grey}``; returns whether the
        frame-set was kept (some camera saw the board somewhere new)."""
        self.frames += 1
        row = np.full((len(self.names), self.board.n_corners, 2), np.nan)
        keep = False
        for c, name in enumerate(self.names):
            img = frames.get(name)
            st = self.status[c]
            if img is None:
                continue
            ids, uv = detect_view(img, self.board, self._det)
            if not plausible(ids, uv, self.objp):
                st.since_seen += 1
                if st.since_seen >= self.t.quiet_frames and st.since_seen % self.t.quiet_frames == 0:
                    st.message = f"{name}: no board in {st.since_seen} frames — " + diagnose(
                        img, self.board)
                continue
            st.since_seen, st.message = 0, None
            row[c, ids] = uv
            both = np.isfinite(self._last[c][:, 0]) & np.isfinite(row[c, :, 0])
            moved = (not both.any()) or float(np.median(np.linalg.norm(
                self._last[c][both] - row[c, both], axis=1))) >= self.t.min_move_px
            if moved:
                keep = True
        if keep:
            self._rows.append(row)
            for c in range(len(self.names)):
                if np.isfinite(row[c, :, 0]).sum() >= MIN_CORNERS:
                    self._last[c] = row[c]
                    self._update(c)
        return keep

    def _update(self, c: int) -> None:
        st = self.status[c]
        uv = np.stack([r[c] for r in self._rows])
        st.views = int((np.isfinite(uv[..., 0]).sum(1) >= MIN_CORNERS).sum())
        st.grid = coverage(uv, self.sizes[c], self.t.grid)
        st.coverage = float((st.grid > 0).mean())
        self._since_fit[c] += 1
        if st.views >= 6 and (st.reproj_px is None or self._since_fit[c] >= 5):
            self._since_fit[c] = 0
            try:
                st.reproj_px = calibrate_intrinsics(uv, self.objp, self.sizes[c],
                                                    max_views=30, name=st.name).rms
            except UserError:
                st.reproj_px = None

    def shared(self) -> np.ndarray:
        """Views shared by each camera pair ``(C, C)``."""
        return self.detections().shared()

    def enough(self) -> bool:
        """Whether every target is met (:class:`Targets`)."""
        if not self._rows:
            return False
        if any(s.views < self.t.views or s.coverage < self.t.coverage for s in self.status):
            return False
        linked = self.shared() >= self.t.pair_views
        seen, todo = {0}, [0]
        while todo:
            i = todo.pop()
            for j in np.flatnonzero(linked[i]):
                if int(j) not in seen:
                    seen.add(int(j))
                    todo.append(int(j))
        return len(seen) == len(self.names)

    def detections(self) -> Detections:
        """The kept views as :class:`Detections` ``(C, F, N, 2)``."""
        uv = (np.stack(self._rows, axis=1) if self._rows
              else np.zeros((len(self.names), 0, self.board.n_corners, 2)))
        return Detections(names=self.names, sizes=self.sizes, uv=uv,
                          frames=np.arange(uv.shape[1]))

    def summary(self) -> dict[str, Any]:
        """The collection's status as plain data (msgpack/JSON): what the collector stage
        publishes in its health ``info["calib"]`` and the dashboard and terminal draw.

        ``{"frames", "kept", "enough", "targets": {"views", "coverage", "pair_views"},
        "cameras": [{"name", "views", "coverage", "grid" (rows × cols 0/counts),
        "reproj_px", "message"}], "pairs": [[cam_a, cam_b, shared views], …]}``
        """
        sh = self.shared() if self._rows else np.zeros((len(self.names),) * 2, int)
        n = len(self.names)
        return {
            "frames": self.frames, "kept": len(self._rows), "enough": self.enough(),
            "targets": {"views": self.t.views, "coverage": self.t.coverage,
                        "pair_views": self.t.pair_views},
            "cameras": [{"name": s.name, "views": s.views, "coverage": round(s.coverage, 4),
                         "grid": s.grid.astype(int).tolist(), "reproj_px": s.reproj_px,
                         "message": s.message} for s in self.status],
            "pairs": [[self.names[i], self.names[j], int(sh[i, j])]
                      for i in range(n) for j in range(i + 1, n)],
        }

    def text(self) -> str:
        """The terminal view: one line per camera, then the pairs."""
        return status_text(self.summary())


def status_text(st: Mapping[str, Any]) -> str:
    """The terminal view of a :meth:`Collector.summary` (also as received from the
    collector stage): one line per camera, then the pairs."""
    views = st["targets"]["views"]
    lines = [f"frame-sets {st['frames']}, kept {st['kept']}"
             f"{' — enough: stop and solve' if st['enough'] else ''}"]
    for s in st["cameras"]:
        rp = "–" if s["reproj_px"] is None else f"{s['reproj_px']:.2f} px"
        bar = "".join("#" if v else "." for row in s["grid"] for v in row)
        lines.append(f"{s['name']:>10}: {s['views']:3d}/{views} views, coverage "
                     f"{s['coverage']:4.0%} [{bar}], reprojection {rp}"
                     + (f"  ! {s['message']}" if s["message"] else ""))
    pairs = ", ".join(f"{a}-{b} {n}" for a, b, n in st["pairs"])
    lines.append(f"shared views: {pairs}")
    return "\n".join(lines)
