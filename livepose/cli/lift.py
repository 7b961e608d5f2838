"""Lifter commands of the ``livepose`` CLI: ``lift train`` and ``bench lift``
(registered into the main app by :func:`register`; docs/lifting.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from livepose.cli.console import failer
from livepose.core.errors import UserError


def _range(text: str, what: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise UserError(f"{what}: expected LO:HI, got {text!r}") from None
    if not lo <= hi:
        raise UserError(f"{what}: LO must be <= HI, got {text!r}")
    return lo, hi


def register(app: typer.Typer, err: Console, bench: typer.Typer) -> None:
    """Add ``lift train`` to ``app`` and ``lift`` to the ``bench`` group."""

    fail = failer(err)

    lift_app = typer.Typer(no_args_is_help=True,
                           help="Single-camera 3D: train lifters from multi-camera sessions.")
    app.add_typer(lift_app, name="lift")

    @lift_app.command("train")
    def train(
        sessions: Annotated[list[Path], typer.Argument(help="recorded session folders")],
        out: Annotated[Path, typer.Option("--out", help="folder for lifter.onnx + lifter.yaml")],
        root: Annotated[str, typer.Option("--root", help="root keypoint (default: the "
                                          "keypoint measured most often)")] = "",
        elevation: Annotated[str, typer.Option(
            "--elevation", help="virtual cameras' elevation range, degrees LO:HI")] = "20:70",
        distance: Annotated[str, typer.Option(
            "--distance", help="virtual cameras' distance range, mm LO:HI (default: 0.7–1.3 × "
            "the recorded cameras')")] = "",
        azimuth: Annotated[str, typer.Option(
            "--azimuth", help="virtual cameras' azimuth range, degrees LO:HI")] = "0:360",
        views: Annotated[int, typer.Option("--views", min=0, max=64,
                                           help="virtual views per pose")] = 4,
        aim: Annotated[float, typer.Option(
            "--aim", min=0, max=60, help="virtual cameras look up to this many degrees "
            "beside the subject (it appears off-centre, as in real views)")] = 0.0,
        height: Annotated[float | None, typer.Option(
            "--height", help="the root's plane height, mm (default: its median)")] = None,
        epochs: Annotated[int, typer.Option("--epochs", min=1, max=1000)] = 30,
        width: Annotated[int, typer.Option("--width", min=16, max=4096)] = 512,
        blocks: Annotated[int, typer.Option("--blocks", min=0, max=16)] = 2,
        threshold: Annotated[float, typer.Option(
            "--likelihood-threshold", min=0, max=1, help="2D below this is missing")] = 0.3,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        dropout: Annotated[float, typer.Option("--dropout", min=0, max=0.9)] = 0.0,
        weight_decay: Annotated[float, typer.Option(
            "--weight-decay", min=0, max=1, help="AdamW weight decay (0: Adam)")] = 0.0,
        loss: Annotated[str, typer.Option(
            "--loss", help="l1 or mse (LiftPose3D's)")] = "l1",
        noise: Annotated[str, typer.Option(
            "--noise", help="2D error in training: empirical (the measured residuals "
            "resampled) or gaussian (robust sigma + drops)")] = "empirical",
        history: Annotated[int, typer.Option(
            "--history", min=0, max=16, help="previous frames in the input (causal)")] = 0,
        history_step: Annotated[float, typer.Option(
            "--history-step", min=0.001, max=1.0, help="seconds between them")] = 0.02,
        fps: Annotated[float | None, typer.Option(
            "--fps", help="the sessions' frame rate (default: their config.yaml)")] = None,
    ) -> None:
        """Train a LiftPose3D-style lifter on sessions' measured 3D (recorded and virtual
        cameras, the 2D model's own error), export ONNX + manifest, print the errors."""
        import numpy as np

        from livepose.lift.build import Temporal, build_lifter, session_noise, split
        from livepose.lift.pairs import Augment
        from livepose.lift.sessions import read_session
        from livepose.lift.train import TrainConfig

        try:
            if noise not in ("empirical", "gaussian"):
                raise UserError(f"--noise: empirical or gaussian, got {noise!r}")
            if loss not in ("mse", "l1"):
                raise UserError(f"--loss: mse or l1, got {loss!r}")
            data = [read_session(s) for s in sessions]
            names = data[0].keypoints
            if any(d.keypoints != names for d in data):
                raise UserError("lift train: the sessions' keypoints differ")
            temporal = None
            if history:
                rate = fps or (data[0].fps if all(d.fps == data[0].fps for d in data) else None)
                if not rate:
                    raise UserError("--history: the sessions' frame rate is unknown or differs; "
                                    "give --fps")
                data = [d.on_grid() for d in data]
                step = max(1, round(history_step * rate))
                temporal = Temporal(history, step, rate)
            poses = [split(d.poses) for d in data]
            # sessions never share a history window: a gap of NaN rows between them
            gap = np.full((history * (temporal.step if temporal else 1), *data[0].poses.shape[1:]),
                          np.nan)
            tr = np.concatenate([x for p in poses for x in (p[0], gap)])
            held = np.concatenate([x for p in poses for x in (p[1], gap)])
            r = root or names[int(np.argmax(np.isfinite(tr).all(axis=2).sum(axis=0)))]
            cams = data[0].cameras
            if distance:
                dist = _range(distance, "--distance")
            else:
                d0 = [float(np.linalg.norm(c.center - np.nanmedian(tr.reshape(-1, 3), axis=0)))
                      for c in cams]
                dist = (0.7 * min(d0), 1.3 * max(d0))
            aug = Augment(_range(elevation, "--elevation"), dist, _range(azimuth, "--azimuth"),
                          views, aim)
            nm = session_noise(data, threshold)
            built = build_lifter(tr, held, names, r, cams,
                                 nm if noise == "empirical" else nm.gaussian(), aug,
                                 TrainConfig(width=width, blocks=blocks, epochs=epochs,
                                             seed=seed, dropout=dropout,
                                             weight_decay=weight_decay, loss=loss),
                                 out, height, threshold,
                                 {"sessions": [str(s) for s in sessions], "noise_model": noise},
                                 progress=lambda m: err.print(m, highlight=False),
                                 temporal=temporal)
        except UserError as exc:
            fail(str(exc))
        rep = built.report
        Console(soft_wrap=True).print(
            f"wrote {out}/lifter.onnx + lifter.yaml (root {r}); training error median "
            f"{rep['training_error']['median_mm']} mm, held-out median "
            f"{(rep['held_out_error'] or {}).get('median_mm')} mm", highlight=False)

    @bench.command("lift")
    def bench_lift(
        json_path: Annotated[Path | None, typer.Option("--json", help="write the result")] = None,
        quick: Annotated[bool, typer.Option("--quick", help="a small smoke run")] = False,
    ) -> None:
        """Sim rig: a lifter trained on cameras 0-2 lifts a held-out test camera's live 2D;
        against nearest-neighbour lookup and the 4-camera EKF."""
        from livepose.bench.lift import run

        try:
            res = run(json_path, quick, progress=lambda m: err.print(m, highlight=False))
        except UserError as exc:
            fail(str(exc))
        res.pop("training", None)
        Console().print_json(json.dumps(res))
