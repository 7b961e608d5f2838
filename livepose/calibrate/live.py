"""The collector stage: calibration from the running rig (``livepose calibrate live``).

The supervisor starts it beside the cameras and the trigger (no inference, no fusion). It
takes the cameras' **full frames** — from their shared-memory rings where the cameras run on
this host, through :class:`~livepose.transport.framefeed.FrameFeed` as the inference worker
does, else over ``frame/<cam>`` — assembles frame-sets by ``frame_id``, and feeds the newest
complete one to :class:`~livepose.calibrate.collect.Collector` whenever it is free (detection
takes a few ms a camera; sets that arrive meanwhile are skipped, never queued).

Its status (:meth:`Collector.summary`: per-camera views, coverage grid, reprojection, the
diagnosis of a camera that sees nothing and the picture of what its detector saw; camera
pairs sharing views) goes out every health period as ``info["calib"]`` of its ``health``
messages: the CLI's terminal view and the dashboard's calibration panel draw it. When the
targets are met it solves (intrinsics, bundle adjustment), writes the Anipose TOML and its
report, publishes ``info["calib"]["state"] = "done"`` with the result (or ``"failed"`` with
the reason) and waits to be stopped.

Stage arguments (``ctx.args``): ``board`` (a :class:`~livepose.core.board.Board`'s fields),
``out`` (the TOML path), ``targets`` (:class:`~livepose.calibrate.collect.Targets`' fields),
``fisheye``, ``k3``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from livepose.calibrate.collect import Collector, Targets
from livepose.core import protocol
from livepose.core.board import Board
from livepose.core.errors import UserError
from livepose.kit.process import StageContext
from livepose.transport import codec, shmring
from livepose.transport.framefeed import FrameFeed

log = logging.getLogger(__name__)

KEEP_SETS = 16
"""Incomplete frame-sets remembered (by ``frame_id``) while the others' views arrive."""


def board_args(board: Board) -> dict[str, Any]:
    """A board as stage arguments (plain data through ``spawn``)."""
    return {"kind": board.kind, "squares": list(board.squares),
            "square_length": board.square_length, "unit": board.unit,
            "marker_length": board.marker_length, "dictionary": board.dictionary,
            "legacy": board.legacy, "measured_square": board.measured_square}


def board_of(args: dict[str, Any]) -> Board:
    """The board of :func:`board_args`."""
    a = dict(args)
    a["squares"] = tuple(a["squares"])
    return Board(**a)


class FrameSets:
    """Frames by ``frame_id`` until every camera's view of one arrived.

    Views are kept as received (a ring slot's view, not a copy); :meth:`newest` hands the
    newest complete set over and forgets it and everything older.
    """

    def __init__(self, cams: list[str]) -> None:
        self.cams = list(cams)
        self.sets: dict[int, dict[str, protocol.Frame]] = {}
        self.skipped = 0

    def add(self, msg: protocol.Frame) -> None:
        """Keep one camera's frame."""
        if msg.cam not in self.cams:
            return
        self.sets.setdefault(msg.frame_id, {})[msg.cam] = msg
        while len(self.sets) > KEEP_SETS:
            self.sets.pop(min(self.sets))

    def newest(self) -> dict[str, protocol.Frame] | None:
        """The newest complete frame-set (``None``: none); older sets are dropped."""
        done = [f for f, s in self.sets.items() if len(s) == len(self.cams)]
        if not done:
            return None
        fid = max(done)
        out = self.sets.pop(fid)
        older = [f for f in self.sets if f < fid]
        self.skipped += sum(1 for f in older if len(self.sets[f]) == len(self.cams))
        for f in older:
            del self.sets[f]
        return out


def grey(image: np.ndarray) -> np.ndarray:
    """An own grey uint8 copy ``(H, W)`` of a received image (mono, colour, 16-bit): the
    camera may reuse its ring slot while the detector runs."""
    a = np.asarray(image)
    if a.ndim == 3:
        a = a.mean(axis=2)
    if a.dtype == np.uint16:
        a = a / 257.0
    return np.array(a, dtype=np.uint8, copy=True)


def solve_and_write(col: Collector, board: Board, out: Path, fisheye: bool = False,
                    k3: bool = False) -> dict[str, Any]:
    """Solve the collected views and write ``out`` (Anipose TOML) and its report."""
    from livepose.calibrate.pipeline import solve_collected

    return {**solve_collected(col, board, out, fisheye, k3), "frame_sets": col.frames}


class _Collect:
    """The stage's state: the collector, the frame-sets, the published status."""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        a = ctx.args
        self.board = board_of(a["board"])
        self.out = Path(a["out"])
        self.fisheye, self.k3 = bool(a.get("fisheye")), bool(a.get("k3"))
        self.cams = ctx.cfg.camera_names
        self.sets = FrameSets(self.cams)
        self.col: Collector | None = None  # made from the first set's image sizes
        self.targets = Targets(**a.get("targets", {}))
        self.state = "collecting"
        self.result: dict[str, Any] | None = None
        self.pictures: dict[str, str] = {}

    def status(self) -> dict[str, Any]:
        st: dict[str, Any] = self.col.summary() if self.col is not None else {
            "frames": 0, "kept": 0, "enough": False, "cameras": [], "pairs": [],
            "targets": {"views": self.targets.views, "coverage": self.targets.coverage,
                        "pair_views": self.targets.pair_views}}
        st.update(state=self.state, result=self.result, pictures=self.pictures,
                  board=self.board.describe(), out=str(self.out))
        return st

    def publish(self, force: bool = False) -> None:
        c = self.ctx.counters
        c["sets_skipped"] = self.sets.skipped
        self.ctx.info["calib"] = self.status()
        if force:
            self.ctx.publish_health(force=True)
        else:
            self.ctx.tick_health()

    def take(self, frames: dict[str, protocol.Frame]) -> None:
        imgs = {c: grey(f.image) for c, f in frames.items()}
        if not all(shmring.intact(f.image) for f in frames.values()):
            self.ctx.counters["sets_torn"] += 1  # a slot reused while we copied it
            return
        if self.col is None:
            sizes = [(imgs[c].shape[1], imgs[c].shape[0]) for c in self.cams]
            self.col = Collector(self.board, self.cams, sizes, self.targets)
        self.col.add(imgs)
        self.ctx.counters["sets_used"] += 1
        for s in self.col.status:  # a camera that sees nothing: keep what its detector saw
            if s.message and s.name not in self.pictures:
                self._picture(s.name, imgs[s.name])
        if self.col.enough():
            self.solve()

    def _picture(self, cam: str, img: np.ndarray) -> None:
        from livepose.calibrate.detect import save_detector_view

        path = self.out.parent / f"{self.out.stem}_debug" / f"{cam}_detector.png"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.pictures[cam] = str(save_detector_view(img, self.board, path))
        except OSError as exc:
            self.ctx.error(f"{cam}: cannot write the detector's picture: {exc}")

    def solve(self) -> None:
        assert self.col is not None
        self.state = "solving"
        self.publish(force=True)
        t = time.monotonic()
        try:
            self.result = solve_and_write(self.col, self.board, self.out, self.fisheye, self.k3)
            self.state = "done"
            log.info("%s: calibration written to %s in %.1f s", self.ctx.name, self.out,
                     time.monotonic() - t)
        except (UserError, ValueError, OSError) as exc:
            self.result = {"error": str(exc)}
            self.state = "failed"
            self.ctx.error(f"calibration failed: {exc}")
        self.publish(force=True)


def main(ctx: StageContext) -> None:
    """Collect board views from the running cameras until enough, then solve (see the
    module docstring); then wait to be stopped."""
    st = _Collect(ctx)
    cfg = ctx.cfg
    decoder = codec.Decoder(protocol.Limits(max_array_bytes=cfg.limits.max_frame_bytes),
                            expect=["frame"], copy_shared=False)
    sub = ctx.socket(zmq.SUB, connect=[ctx.endpoints[f"frame/{c}"] for c in st.cams],
                     subscribe=[b"frame/" + c.encode() for c in st.cams], hwm=64)
    feed = FrameFeed(sub, st.cams, decoder, follow=cfg.transport.follow_rings)
    ctx.counters.update(dict.fromkeys(("frames", "sets_used", "sets_skipped", "sets_torn"), 0))
    ctx.ready(board=st.board.describe(), out=str(st.out))
    ctx.set_state("running")
    while not ctx.stopping:
        st.publish()
        if st.state != "collecting":
            time.sleep(0.05)
            continue
        if not feed.wait(100):
            continue
        for msg, _t in feed.drain():
            if isinstance(msg, protocol.Frame):
                ctx.counters["frames"] += 1
                st.sets.add(msg)
        for key, val in feed.counters.items():
            ctx.counters[key] = val
        frames = st.sets.newest()
        if frames is not None:
            st.take(frames)
            del frames  # release the ring views
    st.publish(force=True)
