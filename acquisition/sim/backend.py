"""The ``sim`` camera backend: a camera of the simulated rig, software-triggered.

It obeys exactly the same :class:`~livepose.acquisition.base.CameraBackend` contract as the
hardware backends: open, arm, one exposure per trigger pulse, grab with a counter. The image
of pulse ``frame_id`` is the animal at time ``frame_id / fps`` rendered through this camera's
calibrated model (distortion included), so ground truth is exact for every frame.

A simulator knows its scene in advance: the trigger clock computes the animal once per pulse
and publishes it (``truth`` with ``spheres``/``albedo``) half a period before the pulse; each
camera renders it in a background thread at lower priority (the numba renderer releases the
GIL). On the pulse the image is ready, so ``t_grab_ns - t_trigger_ns`` measures the software
path only, not the renderer. A pulse whose scene did not arrive is rendered on demand.

With ``sim.scene: board`` the cameras see a calibration board instead (``sim.board``,
:class:`~livepose.acquisition.sim.board.BoardScene`: scripted poses, each held
``hold_frames`` pulses, with motion blur, uneven light and false corners), so the live rig can
be calibrated in the sim against the rig's true cameras. Each camera renders the next
pulse's image in its background thread as soon as it delivered one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from livepose.acquisition.base import Grab
from livepose.acquisition.sim.animal import Rodent
from livepose.acquisition.sim.board import BoardScene
from livepose.acquisition.sim.herd import Herd
from livepose.acquisition.sim.render import SimRenderer
from livepose.acquisition.sim.rig import make_rig
from livepose.core.calibration import write_calibration
from livepose.core.config import Config
from livepose.kit.realtime import leave_realtime

RENDER_NICE = 10


def make_animal(cfg: Config) -> Rodent | Herd:
    """The rig's animal for a config (deterministic from ``sim.seed``); a :class:`Herd` when
    ``sim.animals`` > 1."""
    s = cfg.sim
    if s.animals > 1:
        return Herd(s.animals, s.seed, s.arena_diameter_mm / 2, s.speed_mm_s, avoid=s.avoid,
                    size_spread=s.size_spread)
    return Rodent(seed=s.seed, arena_radius_mm=s.arena_diameter_mm / 2, speed_mm_s=s.speed_mm_s)


def scene_function(cfg: Config) -> Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``frame_id`` → (spheres ``(S, 4)``, albedo ``(S,)``, keypoints ``(J, 3)``), mm
    (keypoints ``(N, J, 3)`` in identity order with ``sim.animals`` > 1)."""
    animal = make_animal(cfg)
    fps = cfg.fps
    return lambda frame_id: animal.pose(frame_id / fps)


def board_scene(cfg: Config) -> BoardScene:
    """The board scene of a config (``sim.board``), in front of the sim rig's cameras."""
    from livepose.core.board import Board

    b = cfg.sim.board
    board = Board.load(b.file) if b.file is not None else Board()
    return BoardScene.from_board(board, list(make_rig(cfg.sim, cfg.camera_names)), b.poses,
                                 seed=b.seed, px_per_square=b.px_per_square,
                                 blur_px=b.blur_px, false_corners=b.false_corners)


def board_pose_index(cfg: Config, frame_id: int) -> int:
    """Which scripted board pose pulse ``frame_id`` shows."""
    b = cfg.sim.board
    return (max(frame_id, 0) // b.hold_frames) % b.poses


def write_rig_calibration(cfg: Config, path: Path) -> Path:
    """Write the sim rig's cameras as an Anipose calibration TOML."""
    return write_calibration(path, make_rig(cfg.sim, cfg.camera_names), units="mm")


class SimCamera:
    """A simulated, software-triggered mono camera.

    Parameters
    ----------
    cam_cfg
        Its entry in ``cfg.cameras``.
    cfg
        The whole config (rig, fps).
    index
        Position in ``cfg.cameras`` (selects the rig camera).
    """

    pixel_format = "Mono8"
    counter_bits = 32
    counter_origin: int | None = 0
    software_triggered = True
    #: virtual output lines for closed-loop actions (acquisition/outputs.py)
    output_lines = ("Line1", "Line2", "Line3")

    def __init__(self, cam_cfg: Any, cfg: Config, index: int) -> None:
        self.name: str = cam_cfg.name
        self.cfg = cfg
        self.index = index
        self._renderer: SimRenderer | None = None
        self._board: BoardScene | None = None  # sim.scene: board
        self._animal: Rodent | Herd | None = None
        self._pending: tuple[int, int] | None = None
        self._armed = False
        self._pool: ThreadPoolExecutor | None = None
        self.unforeseen = 0
        self.line_state: dict[str, bool] = {}
        self._niced = False
        self._ahead: tuple[int, Future[np.ndarray]] | None = None
        #: fault injection (``frame_offset``): this camera delivers, as frame ``k``, the
        #: image exposed at pulse ``k - frame_offset``, with that exposure's time
        self.frame_offset = int(getattr(cam_cfg, "frame_offset", 0))

    def open(self) -> None:
        """Build the rig camera and renderer (compiles the renderer on first use)."""
        if self.cfg.sim.scene == "board":
            self._board = board_scene(self.cfg)
            self._board.render(self.index, 0)  # JIT compile and ray table before the trigger
            self._pool = ThreadPoolExecutor(max_workers=1,
                                            thread_name_prefix=f"render-{self.name}")
            return
        rig = make_rig(self.cfg.sim, self.cfg.camera_names)
        self._animal = make_animal(self.cfg)
        self._renderer = SimRenderer(
            rig[self.index], self.cfg.sim, self.cfg.sim.arena_diameter_mm / 2
        )
        self._renderer.render(*self._animal.body(0.0), 0)  # JIT compile before the trigger
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"render-{self.name}")

    def _render(self, frame_id: int) -> np.ndarray:
        if self._board is not None:
            return self._board.render(self.index, board_pose_index(self.cfg, frame_id))
        assert self._renderer is not None and self._animal is not None
        spheres, albedo = self._animal.body(frame_id / self.cfg.fps)
        return self._renderer.render(spheres, albedo, frame_id)

    def _yield_thread(self) -> None:
        if not self._niced:  # Linux nice is per thread: this one yields to the pipeline
            self._niced = True
            leave_realtime(RENDER_NICE)

    def _render_board(self, frame_id: int) -> np.ndarray:
        self._yield_thread()
        return self._render(frame_id)

    def _render_scene(self, frame_id: int, spheres: np.ndarray, albedo: np.ndarray) -> np.ndarray:
        self._yield_thread()
        assert self._renderer is not None
        return self._renderer.render(spheres, albedo, frame_id)

    def on_scene(self, frame_id: int, spheres: np.ndarray, albedo: np.ndarray) -> None:
        """The scene of a coming pulse (from the trigger clock's ``truth`` message, half a
        period ahead): render it now in the background so the pulse finds it ready."""
        if self._board is not None:  # the board scene is known from the pulse number alone
            return
        if self._pool is not None:
            sph, alb = np.array(spheres), np.array(albedo)  # own copies: received buffers go
            self._ahead = (frame_id, self._pool.submit(self._render_scene, frame_id, sph, alb))

    def arm(self) -> None:
        """Ready for pulses (pulse 0's image is rendered ahead)."""
        self._armed = True
        if self._board is not None:
            self._ahead_board(0)
        elif self._pool is not None and self._animal is not None:
            self.on_scene(0, *self._animal.body(0.0))

    def software_trigger(self, frame_id: int, t_trigger_ns: int) -> None:
        """Expose frame ``frame_id``."""
        self._pending = (frame_id, t_trigger_ns)

    def grab(self, timeout_s: float) -> Grab | None:
        """Render the pending exposure (``None`` if no pulse came)."""
        if self._pending is None or (self._board is None and (
                self._renderer is None or self._animal is None)):
            time.sleep(min(timeout_s, 0.01))
            return None
        frame_id, t_trig = self._pending
        self._pending = None
        ahead = self._ahead
        if self.frame_offset:  # a camera frame_offset pulses behind (fault injection)
            image = self._render(frame_id - self.frame_offset)
            t_exposed = t_trig - round(self.frame_offset * 1e9 / self.cfg.fps)
        elif ahead is not None and ahead[0] == frame_id:
            image = ahead[1].result()
            t_exposed = t_trig
        else:
            self.unforeseen += 1
            image = self._render(frame_id)
            t_exposed = t_trig
        if self._board is not None:
            self._ahead_board(frame_id + 1)
        t_grab = time.time_ns()
        # the simulated sensors expose exactly on the pulse: their (host-mapped) exposure
        # time is the trigger time, so cross-camera spread is 0 unless a camera is wrong
        return Grab(image=image, counter=frame_id, t_grab_ns=t_grab, t_trigger_ns=t_trig,
                    t_exposure_ns=t_exposed)

    def _ahead_board(self, frame_id: int) -> None:
        """Render pulse ``frame_id``'s board image in the background (the next pulse's)."""
        if self._pool is not None:
            self._ahead = (frame_id, self._pool.submit(self._render_board, frame_id))

    def set_output(self, line: str, high: bool) -> None:
        """Drive a virtual output line (its state is kept in :attr:`line_state`)."""
        if line not in self.output_lines:
            raise KeyError(line)
        self.line_state[line] = high

    def close(self) -> None:
        """Stop the render thread."""
        self._armed = False
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
