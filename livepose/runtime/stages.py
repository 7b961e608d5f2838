"""The stage registry: the one place where the runtime names the processes it starts.

Each entry is a module-level function (so ``spawn`` can pickle it by name) that imports its
stage only when called, in the child process: the supervisor itself never loads the stages'
heavy dependencies (ONNX Runtime, numba kernels, camera SDKs). The imports are plain ``from
… import`` statements, so import-linter sees every edge from the runtime to a stage.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from livepose.core.config import Config, from_dict
from livepose.kit.process import StageContext


def fusion(ctx: StageContext) -> None:
    """The fusion process (:mod:`livepose.fusion.process`)."""
    from livepose.fusion.process import main

    main(ctx)


def inference(ctx: StageContext) -> None:
    """One inference worker (:mod:`livepose.inference.worker`)."""
    from livepose.inference.worker import main

    main(ctx)


def camera(ctx: StageContext) -> None:
    """One camera process (:mod:`livepose.acquisition.camera`)."""
    from livepose.acquisition.camera import main

    main(ctx)


def encoder(ctx: StageContext) -> None:
    """One camera's video encoder (:mod:`livepose.acquisition.encoder`)."""
    from livepose.acquisition.encoder import main

    main(ctx)


def trigger(ctx: StageContext) -> None:
    """The trigger clock or trigger box (:mod:`livepose.acquisition.trigger`)."""
    from livepose.acquisition.trigger import main

    main(ctx)


def recorder(ctx: StageContext) -> None:
    """The session recorder of 2D/3D predictions (:mod:`livepose.recording.recorder`)."""
    from livepose.recording.recorder import main

    main(ctx)


def dashboard(ctx: StageContext) -> None:
    """The web dashboard (:mod:`livepose.dashboard.process`)."""
    from livepose.dashboard.process import main

    main(ctx)


def collector(ctx: StageContext) -> None:
    """The calibration collector (:mod:`livepose.calibrate.live`): ``calibrate live``."""
    from livepose.calibrate.live import main

    main(ctx)


def _warm_camera(cfg: dict[str, Any], args: dict[str, Any]) -> None:
    from livepose.acquisition.camera import prewarm

    prewarm(from_dict(cfg), args)


def _warm_inference(cfg: dict[str, Any], args: dict[str, Any]) -> None:
    from livepose.inference.worker import prewarm

    prewarm(from_dict(cfg), args)


def _warm_fusion(cfg: dict[str, Any], args: dict[str, Any]) -> None:
    from livepose.fusion.process import prewarm

    prewarm(from_dict(cfg), args)


def _warm_encoder(cfg: dict[str, Any], args: dict[str, Any]) -> None:
    from livepose.acquisition.encoder import prewarm

    prewarm(from_dict(cfg), args)


def _warm_dashboard(cfg: dict[str, Any], args: dict[str, Any]) -> None:
    from livepose.dashboard.process import prewarm

    prewarm(from_dict(cfg), args)


#: what a warm spare of each stage does before it is needed (livepose/runtime/spares.py)
WARM: dict[Callable[[StageContext], None], Callable[[dict[str, Any], dict[str, Any]], None]] = {
    camera: _warm_camera, inference: _warm_inference, fusion: _warm_fusion,
    encoder: _warm_encoder, dashboard: _warm_dashboard,
}


def prepare_acquisition(cfg: Config, run_dir: Path,
                        need_calibration: bool = True) -> dict[str, Any]:
    """Preflight of the cameras and calibration, in the supervisor (UserError on mistakes);
    ``need_calibration=False``: the run makes the calibration (``calibrate live``)."""
    from livepose.acquisition.prepare import prepare_run

    return prepare_run(cfg, run_dir, need_calibration)


def preflight_inference(cfg: Config) -> None:
    """Preflight of the model against its manifest, in the supervisor (UserError)."""
    from livepose.inference.worker import preflight

    preflight(cfg)
