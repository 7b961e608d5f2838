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
from livepose.cli.console import failer
from livepose.core.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="livepose: real-time multi-camera 3D pose estimation.",
)
err = Console(stderr=True)


_fail = failer(err)


def _load(config: Path | None):  # type: ignore[no-untyped-def]
    from livepose.core.config import load_config, load_default_config

    return load_default_config() if config is None else load_config(config)


def _run(
    config: Path | None,
    duration: float | None,
    json_path: Path | None,
    fps: float | None,
    cameras: int | None,
    no_live: bool,
    verbose: bool,
    no_dashboard: bool = False,
    port: int | None = None,
    record: str | None = None,
    realtime: bool = False,
    kill_camera: str | None = None,
    camera_offset: str | None = None,
    cluster: tuple[str, float] | None = None,
) -> None:
    from livepose.cli.demo import parse_camera_offset, parse_kill, run_pipeline
    from livepose.cli.track import video_pulses
    from livepose.runtime.supervisor import ProcessDied

    try:
        cfg = _load(config)
        if fps is not None:
            cfg.fps = fps
        if cameras is not None:
            if not cfg.is_sim:
                _fail("--cameras only applies to a simulated rig")
            from livepose.core.config import SimCameraConfig

            cfg.cameras = [SimCameraConfig(backend="sim", name=f"cam{i}") for i in range(cameras)]
        if port is not None:
            cfg.dashboard.port = port
        if realtime:
            cfg.realtime = True
        if record is not None:  # recording (docs/recording.md)
            cfg.recording.enabled = True
            cfg.recording.name = record if record != RECORD_DEFAULT else None
        if camera_offset is not None:
            parse_camera_offset(cfg, camera_offset)
        launcher = None
        if cluster is not None:  # livepose run --cluster (livepose/cluster/live.py)
            from livepose.cluster.live import cluster_launcher

            launcher = cluster_launcher(cfg, *cluster)
        summary = run_pipeline(
            cfg,
            duration,
            json_path,
            live=not no_live,
            log_level=logging.INFO if verbose else logging.WARNING,
            dashboard=cfg.dashboard.enabled and not no_dashboard,
            kill=parse_kill(cfg, kill_camera) if kill_camera else None,
            pulses=video_pulses(cfg),
            launcher=launcher,
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
NoDashOpt = Annotated[
    bool, typer.Option("--no-dashboard", help="do not start the web dashboard")
]
RECORD_DEFAULT = "@default"
RecordOpt = Annotated[
    str | None,
    typer.Option(
        "--record",
        help="record a session sessions/<date>_<NAME>/ (NAME optional: default the config name)",
    ),
]
RealtimeOpt = Annotated[
    bool, typer.Option("--realtime", help="SCHED_FIFO for the latency path (config realtime)")
]
PortOpt = Annotated[
    int | None,
    typer.Option("--port", min=0, max=65535, help="dashboard port (default 8765; 0: any free)"),
]


@app.command()
def demo(
    duration: DurationOpt = None,
    json_path: JsonOpt = None,
    fps: FpsOpt = None,
    cameras: CamOpt = None,
    no_live: NoLiveOpt = False,
    verbose: VerboseOpt = False,
    no_dashboard: NoDashOpt = False,
    port: PortOpt = None,
    record: RecordOpt = None,
    realtime: Annotated[bool, typer.Option(
        "--realtime/--no-realtime", help="SCHED_FIFO for the latency path; falls back to the "
        "ordinary scheduler where not permitted (docs/closed-loop.md)")] = True,
    kill_camera: Annotated[str | None, typer.Option(
        help="scripted camera loss: CAMERA@SECONDS kills that camera's process (SIGKILL) "
        "that long after the trigger started")] = None,
    camera_offset: Annotated[str | None, typer.Option(
        help="fault injection: CAMERA=K makes that sim camera deliver frames K pulses "
        "late (the timing model must keep them out of every frame-set)")] = None,
) -> None:
    """Run the simulated rig end to end with a live view (Ctrl-C to stop)."""
    _run(None, duration, json_path, fps, cameras, no_live, verbose, no_dashboard, port, record,
         realtime, kill_camera, camera_offset)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="YAML config")],
    duration: DurationOpt = None,
    json_path: JsonOpt = None,
    fps: FpsOpt = None,
    no_live: NoLiveOpt = False,
    verbose: VerboseOpt = False,
    no_dashboard: NoDashOpt = False,
    port: PortOpt = None,
    record: RecordOpt = None,
    realtime: RealtimeOpt = False,
    cluster: Annotated[str | None, typer.Option(
        "--cluster", help="run every stage as a Ray actor on this cluster (ADDRESS, e.g. "
        "HEAD:6379 or auto; docs/cluster.md)")] = None,
    gpus_per_worker: Annotated[float, typer.Option(
        "--gpus-per-worker", min=0, help="--cluster: inference workers on GPU nodes")] = 0.0,
) -> None:
    """Run the pipeline described by CONFIG."""
    _run(config, duration, json_path, fps, None, no_live, verbose, no_dashboard, port, record,
         realtime, cluster=(cluster, gpus_per_worker) if cluster else None)


@app.command("check-config")
def check_config(config: Annotated[Path, typer.Argument(help="YAML config")]) -> None:
    """Validate CONFIG and everything it points to (calibration, model) without running."""
    from livepose.runtime.supervisor import check_config_runnable

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

    from livepose.transport import shmring

    if shmring.available():
        free = shutil.disk_usage(shmring.SHM_DIR).free
        t.add_row("frame rings (/dev/shm)", f"writable, {free / 2**30:.1f} GiB free")
    else:
        t.add_row("frame rings (/dev/shm)", "not writable: frames travel inside the messages")
    t.add_row("frame doorbells", _doorbells())

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


def _register_recording() -> None:
    from livepose.cli.session import register

    register(app, err)


_register_recording()  # session / replay / export commands (livepose/cli/session.py)


def _register_model() -> None:
    from livepose.cli.model import register

    register(app, err)


_register_model()  # model check / export / build-engine (livepose/cli/model.py)


def _register_calibration() -> None:
    from livepose.cli.calibration import register

    register(app, err)


_register_calibration()  # calibration import (livepose/cli/calibration.py)


def _register_keys() -> None:
    from livepose.cli.keys import register

    register(app, err)


_register_keys()  # CURVE key pairs (livepose/cli/keys.py)


def _register_calibrate() -> None:
    from livepose.cli.calibrate import register

    register(app, err)


_register_calibrate()  # calibrate board / run / intrinsics (livepose/cli/calibrate.py)


def _bench_group() -> typer.Typer:
    """The ``bench`` sub-app (created by whichever module registers a benchmark first)."""
    group = next((g.typer_instance for g in app.registered_groups if g.name == "bench"), None)
    if group is None:
        group = typer.Typer(no_args_is_help=True, help="Benchmarks.")
        app.add_typer(group, name="bench")
    return group








def _register_lift() -> None:
    from livepose.cli.lift import register

    register(app, err, _bench_group())


_register_lift()  # lift train, bench lift (livepose/cli/lift.py)


def _register_bench() -> None:
    from livepose.cli.bench import register

    register(_bench_group, err, _fail)


_register_bench()  # bench transport, acquisition, latency, … (livepose/cli/bench.py)


def _register_cluster() -> None:
    from livepose.cli.cluster import register

    register(app, err, _bench_group, _fail)


_register_cluster()  # reanalyse, bench cluster (livepose/cli/cluster.py)


def _split_camera_names(camera_names: list[str], inputs: list[str]) -> tuple[list[str], list[str]]:
    """``--camera-names A B C IN…`` reaches us as ``camera_names=[A]``, ``inputs=[B, C, IN…]``
    (an option takes one value): leading inputs that are not paths are camera names. Also
    accepts ``A,B,C`` and a repeated option."""
    names = [n for item in camera_names for n in item.split(",") if n]
    rest = list(inputs)
    while rest and not Path(rest[0]).exists() and "/" not in rest[0] and not rest[0].endswith(".csv"):
        names.append(rest.pop(0))
    return names, rest


@app.command()
def fuse(
    inputs: Annotated[list[str], typer.Argument(help="DLC / Lightning Pose 2D CSVs or folders")],
    calibration: Annotated[Path, typer.Option("--calibration", help="Anipose calibration TOML")],
    camera_names: Annotated[
        list[str], typer.Option("--camera-names", help="camera names (substrings of the file "
                                "names): --camera-names A B C, or A,B,C")
    ],
    out: Annotated[Path, typer.Option("--out", help="output folder")],
    filter: Annotated[str, typer.Option("--filter", help="none | kf | ekf")] = "ekf",
    fps: Annotated[float | None, typer.Option(
        "--fps", help="frame rate of the recording (required: the CSVs do not say it)")] = None,
    units: Annotated[str | None, typer.Option(
        "--units", help="the calibration's length unit (m, cm, mm) if its file does not say")]
    = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Fuse recorded 2D predictions into 3D with the online code, frame by frame: writes
    OUT/pose3d.csv (Anipose), OUT/pose3d_var.csv and OUT/pose3d.trc."""
    from livepose.fusion.offline import fuse_files

    names, files = _split_camera_names(camera_names, inputs)
    if not files:
        _fail("no input CSV files or folders given")
    try:
        res = fuse_files(calibration, names, files, out, filter=filter, fps=fps,
                         progress=not quiet and sys.stderr.isatty(), units=units)
    except UserError as exc:
        _fail(str(exc))
    err.print(
        f"[green]ok[/green]: {res['frames']} frames × {len(res['keypoints'])} keypoints "
        f"({res['filter']}), measured {res['measured_pct']:.1f} %, mean reprojection error "
        f"{res['mean_reproj_px']:.2f} px → {res['csv']}, {res['trc']}", highlight=False,
        soft_wrap=True,
    )






def _register_track() -> None:
    from livepose.cli.track import register

    register(app, err, _bench_group, _fail)


_register_track()  # track VIDEO_DIR, bench real (livepose/cli/track.py)










def main() -> None:
    """Console-script entry point."""
    from livepose.cli.session import expand_record_flag

    sys.argv[1:] = expand_record_flag(sys.argv[1:], RECORD_DEFAULT)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()


def _doorbells() -> str:
    """How inference workers wait for same-host frames (``livepose doctor``)."""
    from livepose.transport import doorbell

    if not doorbell.supported():
        return "no futex here: workers take frames over ZeroMQ"
    import numpy as np

    word = np.zeros(1, np.uint32)
    if doorbell.wait_any([word, np.zeros(1, np.uint32)], [1, 0], 0.0) is None:
        return "futex (kernel < 5.16: one ring at a time, 2 ms naps between rings)"
    return "futex_waitv: workers sleep on every camera's ring at once"
