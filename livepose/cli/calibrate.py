"""``livepose calibrate …``: print a board, calibrate from videos or images
(docs/calibration.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console

from livepose.core.errors import UserError


def _board(kind: str, squares: str, square: float, marker: float, dictionary: str,
           legacy: bool, unit: str, measured: float | None, spec: Path | None = None) -> Any:
    from livepose.calibrate.board import Board

    if spec is not None:
        from dataclasses import replace

        b = Board.load(spec)
        return b if measured is None else replace(b, measured_square=measured)

    nx, _, ny = squares.lower().partition("x")
    if not (nx.isdigit() and ny.isdigit()):
        raise UserError(f"--squares {squares!r}: expected COLSxROWS, e.g. 5x7")
    if kind == "checkerboard":
        return Board.checkerboard((int(nx), int(ny)), square, unit, measured)
    return Board(kind="charuco", squares=(int(nx), int(ny)), square_length=square,
                 marker_length=marker, dictionary=dictionary, legacy=legacy, unit=unit,
                 measured_square=measured)


Kind = Annotated[str, typer.Option("--kind", help="charuco or checkerboard")]
Squares = Annotated[str, typer.Option("--squares", help="ChArUco: squares COLSxROWS; "
                                      "checkerboard: inner corners COLSxROWS")]
Square = Annotated[float, typer.Option("--square", help="square length (in --unit)")]
Marker = Annotated[float, typer.Option("--marker", help="ChArUco marker length")]
Dictionary = Annotated[str, typer.Option("--dictionary", help="OpenCV ArUco dictionary")]
Legacy = Annotated[bool, typer.Option("--legacy", help="OpenCV's pre-4.6 ChArUco pattern")]
Unit = Annotated[str, typer.Option("--unit", help="mm, cm or m")]
Measured = Annotated[float | None, typer.Option(
    "--measured-square", help="square length measured on the print (overrides --square)")]
Spec = Annotated[Path | None, typer.Option(
    "--board", help="board description TOML (written by `calibrate board`); overrides the "
    "board options")]


def register(app: typer.Typer, err: Console) -> None:
    """Add the ``calibrate`` sub-app to ``app``."""
    cal = typer.Typer(no_args_is_help=True, help="Calibrate cameras with a ChArUco or "
                      "checkerboard board.")
    app.add_typer(cal, name="calibrate")

    def fail(exc: Exception) -> None:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None

    @cal.command("board")
    def board_cmd(
        out: Annotated[Path, typer.Option("--out", help="board.png or board.pdf")],
        kind: Kind = "charuco", squares: Squares = "5x7", square: Square = 40.0,
        marker: Marker = 30.0, dictionary: Dictionary = "DICT_4X4_50", legacy: Legacy = False,
        unit: Unit = "mm",
        dpi: Annotated[int, typer.Option("--dpi", min=72, max=2400)] = 300,
    ) -> None:
        """Write the board at true scale (print at 100 %, then measure a square), and its
        description beside it (OUT with .toml) for `--board`."""
        try:
            b = _board(kind, squares, square, marker, dictionary, legacy, unit, None)
            b.save(out, dpi=dpi)
            b.dump(out.with_suffix(".toml"))
        except UserError as exc:
            fail(exc)
        w, h = b.size
        Console().print(f"{out}: {b.describe()}; board {w:g} × {h:g} {b.unit} plus a white "
                        f"margin, {dpi} dpi", highlight=False)

    @cal.command("run")
    def run_cmd(
        folder: Annotated[Path, typer.Argument(
            help="one video per camera (name = camera) or one image sub-folder per camera")],
        out: Annotated[Path, typer.Option("--out", help="Anipose calibration TOML")],
        kind: Kind = "charuco", squares: Squares = "5x7", square: Square = 40.0,
        marker: Marker = 30.0, dictionary: Dictionary = "DICT_4X4_50", legacy: Legacy = False,
        unit: Unit = "mm", measured: Measured = None, spec: Spec = None,
        every: Annotated[int, typer.Option("--every", min=1, help="use every n-th frame")] = 1,
        fisheye: Annotated[bool, typer.Option("--fisheye", help="OpenCV fisheye model")] = False,
        k3: Annotated[bool, typer.Option("--k3", help="estimate k3 too")] = False,
    ) -> None:
        """Calibrate a rig from synchronized videos or images: TOML + HTML report."""
        from livepose.calibrate.pipeline import calibrate_folder

        try:
            b = _board(kind, squares, square, marker, dictionary, legacy, unit, measured, spec)
            res = calibrate_folder(folder, b, out, every=every, fisheye=fisheye, k3=k3,
                                   say=lambda m: err.print(m, highlight=False))
        except UserError as exc:
            fail(exc)
        Console().print_json(json.dumps(res))

    @cal.command("collect")
    def collect_cmd(
        folder: Annotated[Path, typer.Argument(
            help="one video per camera (name = camera) or one image sub-folder per camera")],
        out: Annotated[Path, typer.Option("--out", help="Anipose calibration TOML")],
        kind: Kind = "charuco", squares: Squares = "5x7", square: Square = 40.0,
        marker: Marker = 30.0, dictionary: Dictionary = "DICT_4X4_50", legacy: Legacy = False,
        unit: Unit = "mm", measured: Measured = None, spec: Spec = None,
        views: Annotated[int, typer.Option("--views", help="views wanted per camera")] = 20,
        coverage: Annotated[float, typer.Option(
            "--coverage", help="fraction of each image's 8x6 grid to cover")] = 0.5,
        pair_views: Annotated[int, typer.Option(
            "--pair-views", help="views a camera pair must share to link them")] = 8,
        every: Annotated[int, typer.Option("--every", min=1)] = 1,
        fisheye: Annotated[bool, typer.Option("--fisheye")] = False,
    ) -> None:
        """Play videos as a live collection: per-camera views, coverage, shared pairs and
        reprojection in the terminal; stop when enough, then calibrate."""
        from livepose.calibrate.collect import Targets
        from livepose.calibrate.pipeline import collect_folder

        try:
            b = _board(kind, squares, square, marker, dictionary, legacy, unit, measured, spec)
            res = collect_folder(folder, b, out, Targets(views=views, coverage=coverage,
                                                         pair_views=pair_views),
                                 every=every, fisheye=fisheye,
                                 show=lambda m: err.print(m, highlight=False))
        except UserError as exc:
            fail(exc)
        Console().print_json(json.dumps(res))

    @cal.command("intrinsics")
    def intrinsics_cmd(
        folder: Annotated[Path, typer.Argument(help="images of one camera")],
        kind: Kind = "checkerboard", squares: Squares = "4x7", square: Square = 60.0,
        marker: Marker = 30.0, dictionary: Dictionary = "DICT_4X4_50", legacy: Legacy = False,
        unit: Unit = "mm", measured: Measured = None, spec: Spec = None,
        fisheye: Annotated[bool, typer.Option("--fisheye")] = False,
        k3: Annotated[bool, typer.Option("--k3")] = False,
    ) -> None:
        """One camera's intrinsics from a folder of images (prints JSON)."""
        from livepose.calibrate.detect import IMAGE_EXT, detect_images, diagnose, read_frames
        from livepose.calibrate.intrinsics import calibrate_intrinsics

        try:
            b = _board(kind, squares, square, marker, dictionary, legacy, unit, measured, spec)
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXT)
            if not files:
                raise UserError(f"{folder}: no images")
            imgs = [img for _, img in read_frames(files)]
            uv = detect_images(imgs, b)
            n = int(np.isfinite(uv[..., 0]).any(1).sum())
            if n == 0:
                raise UserError(f"{folder}: 0 boards detected — {diagnose(imgs[0], b)}")
            size = (imgs[0].shape[1], imgs[0].shape[0])
            i = calibrate_intrinsics(uv, b.object_points(), size, fisheye=fisheye, k3=k3,
                                     name=folder.name)
        except UserError as exc:
            fail(exc)
        Console().print_json(json.dumps({
            "images": len(files), "boards": n, "size": list(size), "rms_px": i.rms,
            "matrix": i.K.tolist(), "dist": i.dist.tolist()}))

