"""``livepose calibrate …``: print a board, calibrate from videos or images
(docs/calibration.md)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console

from livepose.cli.console import failer
from livepose.core.errors import UserError


def _board(kind: str, squares: str, square: float, marker: float, dictionary: str,
           legacy: bool, unit: str, measured: float | None, spec: Path | None = None) -> Any:
    from livepose.core.board import Board

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


def live_config(path: Path, out: Path) -> Any:
    """The rig's config for a calibration run: a config whose cameras are not all simulated
    must name a calibration; the one this run makes (``out``) stands in for it."""
    import yaml

    from livepose.core.config import ConfigError, load_config, parse_config

    try:
        return load_config(path)
    except ConfigError as exc:
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            raise exc from None
        if not isinstance(data, dict) or data.get("calibration") is not None:
            raise
        data["calibration"] = str(out.resolve())
        return parse_config(data, source=str(path), base_dir=path.parent)


def collect_live(cfg: Any, board: Any, out: Path, targets: dict[str, Any] | None = None,
                 timeout_s: float = 600.0, dashboard: bool = False,
                 show: Callable[[str], None] = print, show_every_s: float = 1.0,
                 fisheye: bool = False, k3: bool = False,
                 on_launch: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Run the rig of ``cfg`` with the collector stage until it solved (or ``timeout_s``):
    the terminal view of its status every ``show_every_s``; returns the final status
    (``state`` ``done`` with ``result``, or ``failed``/``collecting`` and why)."""
    from livepose.calibrate.collect import status_text
    from livepose.calibrate.live import board_args
    from livepose.runtime.supervisor import Supervisor

    args = {"board": board_args(board), "out": str(out.resolve()), "targets": targets or {},
            "fisheye": fisheye, "k3": k3}
    out.parent.mkdir(parents=True, exist_ok=True)
    with Supervisor(cfg, collect=args, dashboard=dashboard) as sup:
        sup.launch()
        if on_launch is not None:
            on_launch(sup)
        sup.start_trigger()
        t0 = last = time.monotonic()
        status: dict[str, Any] = {}
        while time.monotonic() - t0 < timeout_s:
            sup.poll(0.1)
            h = sup.health.get("calib")
            status = dict(h.info.get("calib") or {}) if h is not None else {}
            if status.get("state") in ("done", "failed"):
                break
            if status.get("cameras") and time.monotonic() - last >= show_every_s:
                last = time.monotonic()
                show(status_text(status))
        if status.get("cameras"):
            show(status_text(status))
        sup.stop_trigger()
    status["elapsed_s"] = round(time.monotonic() - t0, 2)
    return status


def register(app: typer.Typer, err: Console) -> None:
    """Add the ``calibrate`` sub-app to ``app``."""
    cal = typer.Typer(no_args_is_help=True, help="Calibrate cameras with a ChArUco or "
                      "checkerboard board.")
    app.add_typer(cal, name="calibrate")

    fail = failer(err)

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

    @cal.command("live")
    def live_cmd(
        config: Annotated[Path, typer.Argument(help="the rig's YAML config")],
        out: Annotated[Path, typer.Option("--out", help="Anipose calibration TOML")],
        spec: Spec = None,
        measured: Measured = None,
        views: Annotated[int, typer.Option("--views", help="views wanted per camera")] = 20,
        coverage: Annotated[float, typer.Option(
            "--coverage", help="fraction of each image's 8x6 grid to cover")] = 0.5,
        pair_views: Annotated[int, typer.Option(
            "--pair-views", help="views a camera pair must share to link them")] = 8,
        timeout: Annotated[float, typer.Option("--timeout", help="give up after (s)")] = 600.0,
        no_dashboard: Annotated[bool, typer.Option("--no-dashboard")] = False,
        fisheye: Annotated[bool, typer.Option("--fisheye")] = False,
    ) -> None:
        """Calibrate the running rig: move the board in front of the cameras; per-camera
        views, coverage, shared pairs and reprojection in the terminal (and the dashboard);
        stops when enough, then writes the TOML and its report."""
        from livepose.core.board import Board
        from livepose.runtime.supervisor import ProcessDied

        try:
            cfg = live_config(config, out)
            if spec is None and cfg.is_sim and cfg.sim.scene == "board":
                spec = cfg.sim.board.file  # the sim's own board
            if spec is None:
                b = Board() if measured is None else Board(measured_square=measured)
            else:
                b = _board("charuco", "5x7", 40, 30, "DICT_4X4_50", False, "mm", measured, spec)
            con = Console(stderr=True)

            def launched(sup: Any) -> None:
                if sup.dashboard_login_url:
                    con.print(f"dashboard: {sup.dashboard_login_url}", highlight=False)

            st = collect_live(cfg, b, out, {"views": views, "coverage": coverage,
                                            "pair_views": pair_views}, timeout,
                              dashboard=cfg.dashboard.enabled and not no_dashboard,
                              show=lambda m: con.print(m, highlight=False), fisheye=fisheye,
                              on_launch=launched)
        except UserError as exc:
            fail(exc)
        except (ProcessDied, TimeoutError) as exc:
            fail(exc, 1)
        except KeyboardInterrupt:
            err.print("stopped before the calibration was solved; nothing written")
            raise typer.Exit(130) from None
        if st.get("state") != "done":
            why = (st.get("result") or {}).get("error") or (
                f"not enough views after {timeout:g} s (see the status above)")
            fail(why, 1)
        Console().print_json(json.dumps(st["result"]))

    @cal.command("refine")
    def refine_cmd(
        session: Annotated[Path, typer.Argument(help="a recorded session folder")],
        out: Annotated[Path, typer.Option("--out", help="the new Anipose calibration TOML")],
        camera: Annotated[str | None, typer.Option(
            "--camera", help="the camera that moved (default: every camera)")] = None,
        min_score: Annotated[float, typer.Option(
            "--min-score", help="keypoints below this likelihood are left out")] = 0.5,
    ) -> None:
        """Re-estimate a drifted camera's pose from a session's recorded keypoints (the
        other cameras triangulate them), or without --camera every camera's (keypoint bundle
        adjustment: the subject must have covered the arena); writes the session's
        calibration with the new poses."""
        from livepose.calibrate.refine import refine_session

        try:
            res = refine_session(session, camera, out, min_score=min_score)
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

