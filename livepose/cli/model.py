"""``livepose model …``: check, export and build models (docs/inference.md).

Each command is a thin shell over a function of ``livepose.inference``; nothing heavy is
imported until a command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from livepose.cli.console import failer
from livepose.core.errors import UserError


def _sim_frames(
    n: int, size: tuple[int, int] | None
) -> tuple[list[list[Any]], Any, list[str]]:
    """``n`` frame-sets of the default config's sim rig (the animal at spread-out times),
    rendered at ``size`` (``(width, height)``; default: the rig's), with the ground truth:
    each keypoint projected into each camera, ``(n, C, J, 2)`` frame pixels, and the names."""
    import numpy as np

    from livepose.acquisition.sim.animal import KEYPOINTS
    from livepose.acquisition.sim.backend import make_animal
    from livepose.acquisition.sim.render import SimRenderer
    from livepose.acquisition.sim.rig import make_rig
    from livepose.core.config import load_default_config

    cfg = load_default_config()
    if size is not None:
        cfg.sim = cfg.sim.model_copy(update={"width": size[0], "height": size[1]})
    rig = make_rig(cfg.sim, cfg.camera_names)
    animal = make_animal(cfg)
    renderers = [SimRenderer(cam, cfg.sim, cfg.sim.arena_diameter_mm / 2) for cam in rig.cameras]
    sets, truth = [], np.empty((n, len(renderers), len(KEYPOINTS), 2))
    for f in range(n):
        spheres, albedo, kp3 = animal.pose(1.0 + 0.77 * f)
        sets.append([r.render(spheres, albedo, f) for r in renderers])
        truth[f] = rig.project(kp3)
    return sets, truth, list(KEYPOINTS)


def _print_check(r: dict[str, Any]) -> None:
    """Print :func:`livepose.inference.check.check_model`'s result."""
    from rich.table import Table

    out = Console(soft_wrap=True)
    inp = r["input"]
    out.print(f"[bold]{r['manifest']}[/] ({r['model']})", highlight=False)
    out.print(f"engine {r['engine']} on {r['provider']}; output.type {r['output_type']}, "
              f"{len(r['keypoints'])} keypoints", highlight=False)
    out.print(f"input  {inp['name']} {inp['shape']} ({inp['layout']}, {inp['channels']} ch, "
              f"resize {inp['resize']})", highlight=False)
    for o in r["outputs"]:
        out.print(f"output {o['name']} {o['shape']} (batch of {r['views']})", highlight=False)
    src = f"{r['frames']} sim frame-set(s)" if r["frames"] else "a mid-grey dummy batch"
    t = Table(title=f"keypoints, view 0 of the first frame ({src}; frame pixels)")
    for col in ("keypoint", "x", "y", "confidence", *(["error px"] if r["error"] else [])):
        t.add_column(col, justify="left" if col == "keypoint" else "right")
    per_kp = r["error"]["per_keypoint_median_px"] if r["error"] else {}
    for row in r["first_frame"]:
        cells = [row["keypoint"], f"{row['x']:.1f}", f"{row['y']:.1f}", f"{row['confidence']:.2f}"]
        if r["error"]:
            e = per_kp.get(row["keypoint"])
            cells.append("–" if e is None else f"{e:.2f}")
        t.add_row(*cells)
    out.print(t)
    tm = r["timing_ms"]
    out.print(f"timing (median of {r['repeats']}, {r['views']} views): preprocess "
              f"{tm['preprocess']:.2f} ms, run {tm['run']:.2f} ms, decode {tm['decode']:.3f} ms, "
              f"total {tm['total']:.2f} ms", highlight=False)
    e = r["error"]
    if e:
        out.print(f"2D error vs sim truth over {e['points']} points ({e['missing']} missing): "
                  f"median {e['median_px']:.2f} px, mean {e['mean_px']:.2f}, p95 "
                  f"{e['p95_px']:.2f}, max {e['max_px']:.2f} (error column: median per "
                  "keypoint over all frames and views)", highlight=False)
    elif r["frames"]:
        out.print("2D error: the model's keypoints share no names with the sim's", highlight=False)


def register(app: typer.Typer, err: Console) -> None:
    """Add the ``model`` sub-app to ``app``."""
    model_app = typer.Typer(no_args_is_help=True, help="Check, export and build 2D models.")
    app.add_typer(model_app, name="model")

    fail = failer(err)

    @model_app.command("check")
    def check(
        model: Annotated[str, typer.Argument(
            help="'default', a model folder or an .onnx file")] = "default",
        manifest: Annotated[Path | None, typer.Option(
            "--manifest", help="manifest (default: manifest.yaml next to the model)")] = None,
        frames: Annotated[int, typer.Option(
            "--frames", min=1, max=200, help="sim frame-sets to run (each: every camera)")] = 3,
        sim: Annotated[bool | None, typer.Option(
            "--sim/--no-sim", help="run rendered sim frames and report the 2D error "
            "(default: on when the model input is the sim rig's size)")] = None,
    ) -> None:
        """Load MODEL with its manifest, run a dummy batch (and sim frames), print names,
        shapes, provider, decoded keypoints, timings and the error against sim truth."""
        from livepose.core.config import ModelConfig, SimConfig
        from livepose.inference.check import check_model
        from livepose.inference.manifest import resolve_model

        try:
            cfg = ModelConfig(path=model, manifest=manifest)
            spec = resolve_model(cfg)[1].input
            if sim is None:
                rig = SimConfig()
                sim = (spec.width, spec.height) == (rig.width, rig.height)
            if sim:  # resize none: render at the model's size; else let the model resize
                size = (spec.width, spec.height) if spec.resize == "none" else None
                sets, truth, names = _sim_frames(frames, size)
                result = check_model(cfg, sets, "Mono8", truth, names)
            else:
                result = check_model(cfg)
        except UserError as exc:
            fail(str(exc))
        _print_check(result)

    @model_app.command("export")
    def export(
        checkpoint: Annotated[Path, typer.Argument(
            help="DLC snapshot (.pt), Lightning Pose .ckpt, or TorchScript .pt/.ts/.pt2")],
        source: Annotated[str, typer.Option(
            "--from", help="dlc | lightning-pose | torchscript")],
        out: Annotated[Path, typer.Option(
            "--out", help="folder for model.onnx + manifest.yaml")],
        config: Annotated[Path | None, typer.Option(
            "--config", help="dlc: pytorch_config.yaml; lightning-pose: the model's "
            "config.yaml")] = None,
        manifest: Annotated[Path | None, typer.Option(
            "--manifest", help="torchscript: a manifest describing the model")] = None,
        width: Annotated[int | None, typer.Option(
            "--width", min=1, help="input width (dlc: required, the camera frame width)")] = None,
        height: Annotated[int | None, typer.Option(
            "--height", min=1, help="input height (dlc: required)")] = None,
        name: Annotated[str | None, typer.Option("--name", help="manifest name")] = None,
        head: Annotated[str, typer.Option("--head", help="dlc: the head to export")] = "bodypart",
        trust_pickle: Annotated[bool, typer.Option(
            "--trust-pickle", help="load checkpoints holding Python objects "
            "(torch.load weights_only=False): only files you trust")] = False,
    ) -> None:
        """Export a DeepLabCut 3.x / Lightning Pose checkpoint or a TorchScript model to ONNX
        plus a livepose manifest, checked against torch in ONNX Runtime."""
        from livepose.inference.export import export_model

        try:
            result = export_model(source, checkpoint, out, config, manifest, width, height,
                                  name, head, trust_pickle)
        except UserError as exc:
            fail(str(exc))
        con = Console(soft_wrap=True)
        con.print(f"wrote {result.onnx} and {result.manifest} (ONNX Runtime vs torch: max "
                  f"|diff| {result.max_abs_diff:.2g})", highlight=False)
        for note in result.notes:
            con.print(f"note: {note}", highlight=False)

    @model_app.command("import")
    def import_(
        source: Annotated[str, typer.Argument(help="mediapipe-pose (BlazePose, full)")],
        out: Annotated[Path, typer.Option("--out", help="folder for the ONNX files + manifest")],
        wheel: Annotated[Path | None, typer.Option(
            "--wheel", help="the mediapipe wheel (pip download mediapipe==0.10.21 --no-deps) "
            "or a site-packages holding mediapipe/; default: the installed mediapipe")] = None,
        opset: Annotated[int, typer.Option("--opset", min=13, help="ONNX opset")] = 17,
    ) -> None:
        """Convert a model shipped by another runtime to ONNX + manifest (extra `convert`);
        the result is the bundled `blazepose` model (docs/inference.md)."""
        if source != "mediapipe-pose":
            fail(f"model import: unknown source {source!r}; known: mediapipe-pose")
        from livepose.inference.convert_mediapipe import import_mediapipe_pose

        try:
            res = import_mediapipe_pose(out, wheel, opset, log=err.print)
        except UserError as exc:
            fail(str(exc))
        Console().print_json(data=res)

    @model_app.command("build-engine")
    def build_engine_cmd(
        model: Annotated[Path, typer.Argument(help="the ONNX model")],
        out: Annotated[Path, typer.Option("--out", help="engine file to write (.engine)")],
        fp16: Annotated[bool, typer.Option("--fp16/--no-fp16", help="allow fp16 kernels")] = True,
        max_batch: Annotated[int, typer.Option(
            "--max-batch", min=1, max=64, help="largest batch (cameras per frame-set)")] = 8,
        cache_dir: Annotated[Path | None, typer.Option(
            "--cache-dir", help="timing cache folder (default ~/.cache/livepose/trt)")] = None,
    ) -> None:
        """Build a TensorRT engine (batch 1..MAX_BATCH) from an ONNX model, for
        `model.engine: tensorrt` (needs the tensorrt extra and an NVIDIA GPU)."""
        from livepose.inference.engine_trt import build_engine

        try:
            path = build_engine(model, out, fp16, cache_dir, max_batch)
        except UserError as exc:
            fail(str(exc))
        Console(soft_wrap=True).print(f"wrote {path}", highlight=False)
