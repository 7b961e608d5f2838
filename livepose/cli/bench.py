"""``livepose bench …``: the benchmark commands (each a thin shell over ``livepose.bench``;
results and the machine they ran on are in docs/benchmarks.md). Nothing heavy is imported
until a command runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from livepose.core.errors import UserError

JsonOpt = Annotated[Path | None, typer.Option("--json", help="write the summary as JSON here")]

bench_group: Callable[[], typer.Typer]
err: Console
_fail: Callable[..., None]


def register(group: Callable[[], typer.Typer], console: Console,
             fail: Callable[..., None]) -> None:
    """Add every benchmark command to the ``bench`` sub-app (``group()`` returns it)."""
    global bench_group, err, _fail
    bench_group, err, _fail = group, console, fail
    _acquisition_bench()
    _latency_bench()
    _inference_bench()
    _fusion_bench()
    _crops_bench()
    _multi_bench()
    _fuzz_bench()
    _soak_bench()
    _faults_bench()
    _calibration_bench()


def _acquisition_bench() -> None:
    """``bench transport`` and ``bench acquisition`` (livepose/bench/transport.py,
    livepose/bench/acquisition.py; results in docs/benchmarks.md)."""
    bench = bench_group()

    @bench.command("transport")
    def bench_transport(
        json_path: JsonOpt = None,
        quick: Annotated[bool, typer.Option("--quick", help="1280x1024 only, 1 and 4 cameras")] = False,
        duration: Annotated[float, typer.Option("--case-duration", help="seconds per case")] = 1.5,
    ) -> None:
        """Frames across processes: shm ring + doorbell, ipc, tcp: GB/s, frames/s, latency, losses."""
        from livepose.bench.transport import main as run

        res = run(json_path, quick=quick, duration_s=duration)
        Console().print_json(data=res["summary"])

    @bench.command("curve")
    def bench_curve(
        json_path: JsonOpt = None,
        duration: Annotated[float, typer.Option("--case-duration", min=0.5, max=10,
                                                help="seconds per case")] = 2.0,
    ) -> None:
        """CURVE's cost: 1280x1024 frames over tcp with and without it (fps, p50/p99)."""
        from livepose.bench.curve import main as run

        res = run(json_path, duration_s=duration)
        Console().print_json(data=res["summary"])

    @bench.command("acquisition")
    def bench_acquisition(
        json_path: JsonOpt = None,
        cameras: Annotated[int, typer.Option("--cameras", min=2, max=8)] = 3,
        fps: Annotated[float, typer.Option("--fps", min=1, max=200)] = 90.0,
        duration: Annotated[float, typer.Option("--duration", "-d", help="seconds")] = 60.0,
    ) -> None:
        """pylon camera emulation, software-triggered: fps achieved, latency, CPU, drops."""
        import importlib.util

        if importlib.util.find_spec("pypylon") is None:
            _fail("bench acquisition needs pypylon: pip install 'livepose[basler]'")
        from livepose.bench.acquisition import main as run

        try:
            res = run(json_path, cameras=cameras, fps=fps, duration_s=duration)
        except UserError as exc:
            _fail(str(exc))
        Console().print_json(data=res["summary"])


def _latency_bench() -> None:
    """``bench latency`` (livepose/bench/latency.py; results in docs/benchmarks.md)."""
    bench = bench_group()

    @bench.command("latency")
    def bench_latency(
        json_path: JsonOpt = None,
        frames: Annotated[int, typer.Option("--frames", min=10, help="frame-sets per condition")] = 3000,
        fps: Annotated[float, typer.Option("--fps", min=1, max=1000)] = 30.0,
        clients: Annotated[int, typer.Option("--clients", min=0, max=32,
                                             help="websocket clients on the dashboard")] = 10,
        rounds: Annotated[int, typer.Option("--rounds", min=1, max=10,
                                            help="alternate the conditions this many times")] = 2,
        realtime: Annotated[bool, typer.Option(
            "--realtime/--no-realtime", help="SCHED_FIFO for the latency path and the client, "
            "as `livepose demo` runs it")] = True,
    ) -> None:
        """Trigger → pose3d → client callback → action, without and with the dashboard."""
        from livepose.bench.latency import run_latency

        try:
            res = run_latency(frames, fps, clients, json_path, rounds, realtime)
        except UserError as exc:
            _fail(str(exc))
        Console().print_json(data=res["summary"])


def _inference_bench() -> None:
    """``bench inference`` (livepose/bench/inference.py; results in docs/benchmarks.md)."""
    bench = bench_group()

    @bench.command("inference")
    def bench_inference(
        json_path: JsonOpt = None,
        model: Annotated[str | None, typer.Option("--model", help="model path (default: the "
                                                  "bundled model)")] = None,
        views: Annotated[int, typer.Option("--views", min=1, max=16)] = 4,
        runs: Annotated[int, typer.Option("--runs", min=10, help="timed calls per case")] = 200,
        threads: Annotated[int | None, typer.Option("--threads", min=0,
                                                    help="ONNX Runtime intra-op threads")] = None,
    ) -> None:
        """Per engine/provider: latency per frame-set for batch 1…C, decode, throughput."""
        from livepose.bench.inference import main as run

        try:
            res = run(json_path, model, views, runs, threads,
                      progress=lambda m: err.print(m, highlight=False))
        except UserError as exc:
            _fail(str(exc))
        Console().print_json(data=res["summary"])


def _fusion_bench() -> None:
    """``bench fusion`` and ``bench accuracy`` (livepose/bench/fusion.py, accuracy.py;
    results in docs/benchmarks.md)."""
    bench = bench_group()

    @bench.command("fusion")
    def bench_fusion(
        json_path: JsonOpt = None,
        quick: Annotated[bool, typer.Option("--quick", help="tiny run (smoke test)")] = False,
    ) -> None:
        """Fusion cost per frame: triangulation, + each filter, vs aniposelib and NumPy DLT."""
        from livepose.bench.fusion import run as run_fusion

        res = run_fusion(json_path, quick=quick, progress=lambda m: err.print(m, highlight=False))
        Console().print_json(data=res["summary"])

    @bench.command("accuracy")
    def bench_accuracy(
        json_path: JsonOpt = None,
        quick: Annotated[bool, typer.Option("--quick", help="tiny run (smoke test)")] = False,
        frames: Annotated[int, typer.Option("--frames", min=20, help="frames per scenario")] = 300,
    ) -> None:
        """3D error on the sim animal vs DLT, Pose2Sim, aniposelib, filterpy's UKF and EKS."""
        from livepose.bench.accuracy import quick_scenarios
        from livepose.bench.accuracy import run as run_accuracy

        res = run_accuracy(json_path, frames=frames,
                           scenarios=quick_scenarios() if quick else None,
                           progress=lambda m: err.print(f"scenario {m}", highlight=False))
        Console().print_json(data=res["summary"])


def _crops_bench() -> None:
    """``bench crops`` (livepose/bench/crops.py; results in docs/inference.md)."""
    bench = bench_group()

    @bench.command("crops")
    def bench_crops(
        json_path: JsonOpt = None,
        frames: Annotated[int, typer.Option("--frames", min=10, help="frame-sets")] = 150,
    ) -> None:
        """Small animals in 1280×1024 frames: full frame resized vs 3D-guided crops."""
        from livepose.bench.crops import CropScenario
        from livepose.bench.crops import run as run_crops

        res = run_crops(json_path, CropScenario(frames=frames),
                        progress=lambda m: err.print(m, highlight=False))
        Console().print_json(data=res["summary"])


def _multi_bench() -> None:
    """``bench multi`` (livepose/bench/multi.py; results in docs/benchmarks.md)."""
    bench = bench_group()

    @bench.command("multi")
    def bench_multi(
        json_path: JsonOpt = None,
        duration: Annotated[float, typer.Option(
            "--duration", min=1.0, help="seconds of sim at 30 fps")] = 60.0,
        animals: Annotated[int, typer.Option("--animals", min=2, max=8)] = 3,
        real: Annotated[Path | None, typer.Option(
            "--real", help="instead: a folder of synchronized videos of several people "
            "(Pose2Sim's multi/), with --calibration; the bundled BlazePose")] = None,
        calibration: Annotated[Path | None, typer.Option(
            "--calibration", help="--real: the rig's calibration TOML")] = None,
        frames: Annotated[int, typer.Option("--frames", min=2, help="--real: frame-sets")] = 100,
        route: Annotated[str, typer.Option(
            "--route", help="sim: the worker's instances: crops (3D-guided crops once the "
            "individuals are known, as live) or full (every blob masked on the full "
            "frame)")] = "crops",
        avoid: Annotated[bool, typer.Option(
            "--avoid/--no-avoid", help="sim.avoid: animals steer around each other")] = True,
        size_spread: Annotated[float | None, typer.Option(
            "--size-spread", min=0.0, max=0.3, help="sim.size_spread (default 0.06)")] = None,
        size_weight: Annotated[float | None, typer.Option(
            "--size-weight", min=0.0, help="fusion.multi.size_weight (0: no size cue)")] = None,
        cost_frames: Annotated[int, typer.Option(
            "--cost-frames", min=0, help="sim: frame-sets of the isolated cost timing "
            "(0: skip)")] = 900,
        seed: Annotated[int, typer.Option("--seed", help="sim.seed (the herd)")] = 0,
        crop_model: Annotated[str | None, typer.Option(
            "--crop-model", help="fusion.multi.crop_model (auto, main, or a model)")] = None,
        body_radius: Annotated[float | None, typer.Option(
            "--body-radius", min=0.0, help="fusion.multi.body_radius_mm (0: the nearest "
            "keypoint splits overlapping animals)")] = None,
        owners: Annotated[bool, typer.Option(
            "--owners/--no-owners", help="the crops' instances skip association (as "
            "live)")] = True,
    ) -> None:
        """Several animals: 3 rodents, 4 sim cameras — identity swaps, encounters,
        occlusions, per-animal 3D error vs the single-animal demo, association + tracking
        cost. ``--real``: several people on real footage."""
        if real is not None:
            if calibration is None:
                _fail("--real needs --calibration (livepose calibration import …)")
                return
            from livepose.bench.multi_real import run_multi_real
            from livepose.bench.results import write_json

            try:
                res = write_json(run_multi_real(real, calibration, frames), json_path)
            except UserError as exc:
                _fail(str(exc))
                return
            Console().print_json(data={k: v for k, v in res.items() if k != "id_log"})
            return
        from livepose.bench.multi import run as run_multi

        if route not in ("crops", "full"):
            _fail(f"--route must be crops or full, got {route!r}")
            return
        res = run_multi(json_path, duration_s=duration, animals=animals, route=route,
                        cost_frames=cost_frames, progress=lambda m: err.print(m, highlight=False),
                        avoid=avoid, size_spread=size_spread, size_weight=size_weight,
                        seed=seed, crop_model=crop_model, body_radius_mm=body_radius,
                        owners=owners)
        Console().print_json(data={k: v for k, v in res.items()
                                   if k not in ("scenario", "tracker")})


def _fuzz_bench() -> None:
    """``bench fuzz`` (livepose/bench/fuzz.py; results in docs/benchmarks.md)."""
    bench = bench_group()

    @bench.command("fuzz")
    def bench_fuzz(
        json_path: JsonOpt = None,
        per_kind: Annotated[int, typer.Option("--per-kind", min=1)] = 100_000,
        seed: Annotated[int, typer.Option("--seed")] = 0,
    ) -> None:
        """Malformed messages through every receiver and corrupt ring headers: 0 crashes,
        every message counted."""
        from livepose.bench.fuzz import main as run

        res = run(json_path, per_kind, seed)
        Console().print_json(data={**res["summary"], "seconds": res["seconds"]})


def _soak_bench() -> None:
    """``bench soak`` (livepose/bench/soak.py; results in docs/benchmarks.md)."""
    bench = bench_group()

    @bench.command("soak")
    def bench_soak(
        hours: Annotated[float, typer.Option("--hours", min=0.001)] = 1.0,
        json_path: JsonOpt = None,
        interval: Annotated[float, typer.Option("--interval", min=1.0)] = 60.0,
        fps: Annotated[float | None, typer.Option("--fps", min=1.0,
                                                  help="trigger rate (default: the demo's)")] = None,
    ) -> None:
        """The sim rig for hours: RSS, file descriptors, rings, disk and drops sampled, and
        their slopes."""
        from livepose.bench.soak import run as run_soak

        res = run_soak(hours, json_path, interval, fps)
        Console().print_json(data={k: res[k] for k in ("slopes", "totals", "rings_left_behind",
                                                        "restarts")})


def _faults_bench() -> None:
    """``bench faults`` (livepose/bench/faults.py; results in docs/benchmarks.md)."""
    bench = bench_group()

    @bench.command("faults")
    def bench_faults(
        json_path: JsonOpt = None,
        fuzz_per_kind: Annotated[int, typer.Option(
            "--fuzz-per-kind", min=0, help="malformed messages per socket kind afterwards "
            "(0: no fuzzing)")] = 100_000,
        fps: Annotated[float | None, typer.Option(
            "--fps", min=1.0, help="trigger rate (default: the demo's 30)")] = None,
    ) -> None:
        """Scripted faults on the sim rig, one at a time: recovery times, poses and recorded
        frames lost outside each fault's window (duration + 2 s); then the fuzzer."""
        from livepose.bench.faults import run as run_faults

        res = run_faults(json_path, fuzz_per_kind, fps)
        Console().print_json(data={"summary": res["summary"], "faults": res["faults"]})


def _calibration_bench() -> None:
    """``bench calibration`` (livepose/bench/calibration.py; results in docs/benchmarks.md)."""
    bench = bench_group()

    @bench.command("calibration")
    def bench_calibration(
        json_path: JsonOpt = None,
        no_peer: Annotated[bool, typer.Option("--no-peer", help="skip aniposelib")] = False,
        photos: Annotated[Path | None, typer.Option(
            "--photos", help="also the Pose2Sim demo's calibration folder: intrinsics from "
            "its checkerboard photos vs its Qualisys calibration")] = None,
    ) -> None:
        """Sim rig, 4 cameras, 5×7 ChArUco, 60 poses: errors vs truth and vs aniposelib;
        calibration drift on the sim rig."""
        from livepose.bench.calibration import run as run_cal

        res = run_cal(None, progress=lambda m: err.print(m, highlight=False),
                      peer=not no_peer)
        if photos is not None:
            from livepose.bench.calibration_real import run as run_photos
            from livepose.bench.results import write_json

            try:
                res["photos"] = run_photos(photos)
            except UserError as exc:
                _fail(str(exc))
            res = write_json(res, json_path)
        elif json_path is not None:
            from livepose.bench.results import write_json

            write_json(res, json_path)
        Console().print_json(data={**res["summary"], "photos": res.get("photos", {}).get(
            "summary")})
