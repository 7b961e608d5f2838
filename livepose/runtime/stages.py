"""The stage registry: the one place where the runtime names the processes it starts.

Each entry is a module-level function (so ``spawn`` can pickle it by name) that imports its
stage only when called, in the child process: the supervisor itself never loads the stages'
heavy dependencies (ONNX Runtime, numba kernels, camera SDKs). The imports are plain ``from
… import`` statements, so import-linter sees every edge from the runtime to a stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from livepose.core.config import Config
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


def prepare_acquisition(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Preflight of the cameras and calibration, in the supervisor (UserError on mistakes)."""
    from livepose.acquisition.prepare import prepare_run

    return prepare_run(cfg, run_dir)


def preflight_inference(cfg: Config) -> None:
    """Preflight of the model against its manifest, in the supervisor (UserError)."""
    from livepose.inference.worker import preflight

    preflight(cfg)
