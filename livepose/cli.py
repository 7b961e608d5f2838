"""The ``livepose`` command line: a thin layer over the library.

User mistakes (config, paths, models, calibration) exit with code 2 and one line naming the
problem; a stage process that dies is reported with its name and exit code (exit code 1).
"""

from __future__ import annotations

import importlib.util
import logging
import platform
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from livepose import __version__
from livepose.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="livepose: real-time multi-camera 3D pose estimation.",
)
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _load(config: Path | None):  # type: ignore[no-untyped-def]
    from livepose.config import load_config, load_default_config

    return load_default_config() if config is None else load_config(config)


def _run(
    config: Path | None,
    duration: float | None,
    json_path: Path | None,
    fps: float | None,
    cameras: int | None,
    no_live: bool,
    verbose: bool,
) -> None:
    from livepose.demo import run_pipeline
    from livepose.runner import ProcessDied

    try:
        cfg = _load(config)
        if fps is not None:
            cfg.fps = fps
        if cameras is not None:
            if not cfg.is_sim:
                _fail("--cameras only applies to a simulated rig")
            from livepose.config import SimCameraConfig

            cfg.cameras = [SimCameraConfig(backend="sim", name=f"cam{i}") for i in range(cameras)]
        summary = run_pipeline(
            cfg,
            duration,
            json_path,
            live=not no_live,
            log_level=logging.INFO if verbose else logging.WARNING,
        )
    except UserError as exc:
        _fail(str(exc))
    except ProcessDied as exc:
        _fail(str(exc), code=1)
    except TimeoutError as exc:
        _fail(str(exc), code=1)
    if not summary["frame_accounting_ok"]:
        err.print("[yellow]warning:[/yellow] not every triggered frame-set was accounted for")


DurationOpt = Annotated[float | None, typer.Option("--duration", "-d", help="stop after SECONDS")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="write the summary as JSON here")]
FpsOpt = Annotated[float | None, typer.Option("--fps", help="override the trigger rate")]
CamOpt = Annotated[
    int | None, typer.Option("--cameras", min=2, max=8, help="sim rig: number of cameras")
]
NoLiveOpt = Annotated[bool, typer.Option("--no-live", help="no live terminal view")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="log INFO from every process")]


@app.command()
def demo(
    duration: DurationOpt = None,
    json_path: JsonOpt = None,
    fps: FpsOpt = None,
    cameras: CamOpt = None,
    no_live: NoLiveOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Run the simulated rig end to end with a live view (Ctrl-C to stop)."""
    _run(None, duration, json_path, fps, cameras, no_live, verbose)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="YAML config")],
    duration: DurationOpt = None,
    json_path: JsonOpt = None,
    fps: FpsOpt = None,
    no_live: NoLiveOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Run the pipeline described by CONFIG."""
    _run(config, duration, json_path, fps, None, no_live, verbose)


@app.command("check-config")
def check_config(config: Annotated[Path, typer.Argument(help="YAML config")]) -> None:
    """Validate CONFIG and everything it points to (calibration, model) without running."""
    from livepose.runner import check_config_runnable

    try:
        cfg = _load(config)
        check_config_runnable(cfg)
    except UserError as exc:
        _fail(str(exc))
    err.print(
        f"[green]ok[/green]: {config} — {len(cfg.cameras)} cameras "
        f"({', '.join(cfg.camera_names)}), {cfg.fps} fps, model {cfg.model.path}"
    )


@app.command()
def doctor() -> None:
    """Versions, camera SDKs, ONNX Runtime execution providers and GPUs found."""
    t = Table(
        title=f"livepose {__version__} on Python {platform.python_version()} "
        f"({platform.system()} {platform.machine()})"
    )
    t.add_column("component")
    t.add_column("status")
    for mod in ("numpy", "numba", "zmq", "onnxruntime", "pydantic", "msgpack"):
        spec = importlib.util.find_spec(mod)
        ver = "missing"
        if spec is not None:
            m = __import__(mod)
            ver = getattr(m, "__version__", None) or getattr(m, "pyzmq_version", lambda: "?")()
        t.add_row(mod, str(ver))
    from livepose.acquisition.base import available_backends

    for name, ok in available_backends().items():
        t.add_row(f"camera backend {name}", "available" if ok else "SDK not installed")
    for sdk, extra in (
        ("pypylon", "basler"),
        ("harvesters", "genicam"),
        ("PySpin", "FLIR Spinnaker"),
    ):
        found = importlib.util.find_spec(sdk) is not None
        t.add_row(f"SDK {sdk}", "found" if found else f"not installed ({extra})")
    try:
        import onnxruntime as ort

        t.add_row("ONNX Runtime providers", ", ".join(ort.get_available_providers()))
    except ImportError:
        t.add_row("ONNX Runtime providers", "onnxruntime not installed")
    import shutil
    import subprocess

    gpus = "none found"
    if shutil.which("nvidia-smi"):
        r = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        gpus = r.stdout.strip() or "nvidia-smi found, no GPU listed"
    t.add_row("GPUs", gpus)
    Console().print(t)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
