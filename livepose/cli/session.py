"""Recording commands of the ``livepose`` CLI: ``session``, ``replay``, ``export``,
``bench record`` (registered into the main app by :func:`register`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from livepose.cli.console import failer
from livepose.core.errors import UserError

SessionArg = Annotated[Path, typer.Argument(help="a session folder sessions/<date>_<name>/")]


def expand_record_flag(argv: list[str], sentinel: str) -> list[str]:
    """Let ``--record`` go without a NAME (typer options need a value): a bare ``--record``
    (last, or followed by an option or a ``.yaml`` file) gets ``sentinel``."""
    out: list[str] = []
    for i, a in enumerate(argv):
        out.append(a)
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if a == "--record" and (nxt is None or nxt.startswith("-")
                                or nxt.endswith((".yaml", ".yml"))):
            out.append(sentinel)
    return out


def register(app: typer.Typer, err: Console) -> None:
    """Add the recording commands to ``app``."""

    fail = failer(err)

    session_app = typer.Typer(no_args_is_help=True, help="Inspect and repair recorded sessions.")
    export_app = typer.Typer(no_args_is_help=True, help="Export a session for offline tools.")
    app.add_typer(session_app, name="session")
    app.add_typer(export_app, name="export")

    @session_app.command("status")
    def session_status(session: SessionArg) -> None:
        """Print a session's status (JSON)."""
        from livepose.kit.session import read_status

        try:
            typer.echo(json.dumps(read_status(session), indent=2))
        except UserError as exc:
            fail(str(exc))

    @session_app.command("repair")
    def session_repair(session: SessionArg) -> None:
        """Finalise what a killed run left: torn CSV lines, video index, TRC, status."""
        from livepose.kit.session import read_status
        from livepose.recording.tools import repair

        try:
            report = repair(session)
            st = read_status(session)
        except UserError as exc:
            fail(str(exc))
        typer.echo(json.dumps(report, indent=2))
        err.print(f"{session}: {st['state']}" + (f" ({st['reason']})" if st.get("reason") else ""))

    @export_app.command("eks")
    def export_eks_cmd(
        session: SessionArg,
        out: Annotated[Path, typer.Argument(help="output folder for eks multicam")],
    ) -> None:
        """Write per-camera 2D CSVs (camera names in the file names) and calibration.toml."""
        from livepose.recording.tools import export_eks, session_config

        try:
            files = export_eks(session, out)
            names = " ".join(session_config(session).camera_names)
        except UserError as exc:
            fail(str(exc))
        folders = sorted({str(f.parent) for f in files})  # one per individual (several animals)
        run = "run" if len(folders) == 1 else f"one folder per individual; in each ({', '.join(folders)}) run"
        where = folders[0] if len(folders) == 1 else "FOLDER"
        err.print(f"wrote {len(files)} files to {out}; {run}: eks multicam --input-dir {where} "
                  f"--camera-names {names} --bodypart-list …")

    @export_app.command("nwb")
    def export_nwb_cmd(
        session: SessionArg,
        out: Annotated[Path, typer.Argument(help="the .nwb file to write")],
    ) -> None:
        """Write the session as NWB: 3D and per-camera 2D per keypoint (ndx-pose), with
        confidence, the frame tables' timestamps, the skeleton and the config's metadata."""
        from livepose.recording.nwb import export_nwb

        try:
            res = export_nwb(session, out)
        except UserError as exc:
            fail(str(exc))
        err.print(f"wrote {res['path']}: {res['frames']} frames × {res['keypoints']} keypoints, "
                  f"{len(res['series'])} pose estimations")

    @app.command("replay")
    def replay(
        session: SessionArg,
        fuse_only: Annotated[bool, typer.Option("--fuse-only", help="re-run fusion on the "
                                                "recorded 2D only (livepose fuse)")] = False,
        out: Annotated[Path | None, typer.Option("--out", help="--fuse-only: output CSV")] = None,
        record: Annotated[str | None, typer.Option("--record", help="record the replay "
                                                   "as a new session NAME")] = None,
        fps: Annotated[float | None, typer.Option("--fps", help="replay rate")] = None,
        json_path: Annotated[Path | None, typer.Option("--json", help="summary JSON")] = None,
        no_live: Annotated[bool, typer.Option("--no-live", help="no live view")] = False,
    ) -> None:
        """Stream a recorded session through the pipeline (video cameras)."""
        from livepose.recording.tools import fuse_only_session, replay_config
        from livepose.runtime.supervisor import ProcessDied

        try:
            if fuse_only:
                path = fuse_only_session(session, out)
                err.print(f"fused 3D written to {path}")
                return
            cfg, frames = replay_config(session, fps)
            if record is not None:
                cfg.recording.enabled = True
                cfg.recording.name = None if record == "@default" else record
            from livepose.cli.demo import run_pipeline

            run_pipeline(cfg, None, json_path, live=not no_live, pulses=frames)
        except UserError as exc:
            fail(str(exc))
        except (ProcessDied, TimeoutError) as exc:
            fail(str(exc), code=1)

    bench = next((g.typer_instance for g in app.registered_groups if g.name == "bench"), None)
    if bench is None:
        bench = typer.Typer(no_args_is_help=True, help="Benchmarks.")
        app.add_typer(bench, name="bench")

    @bench.command("record")
    def bench_record(
        json_path: Annotated[Path | None, typer.Option("--json", help="write results here")] = None,
        seconds: Annotated[float, typer.Option("--seconds", help="recording length")] = 60.0,
        fps: Annotated[float | None, typer.Option("--fps", help="trigger rate (default: "
                                                  "100 or the codec's sustainable rate)")] = None,
        codec: Annotated[str, typer.Option("--codec", help="ffv1, h264, raw…")] = "ffv1",
        cameras: Annotated[int, typer.Option("--cameras", min=1, max=8)] = 4,
        sweep: Annotated[bool, typer.Option("--sweep/--no-sweep", help="also find the "
                                            "highest sustainable rate per codec")] = True,
        verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    ) -> None:
        """Record a sim rig (4 × 640×512) with the live pipeline and check every frame."""
        from livepose.bench.record import run_bench

        try:
            res: dict[str, Any] = run_bench(
                seconds=seconds, fps=fps, codec=codec, cameras=cameras,
                sweep=sweep,
                log_level=logging.INFO if verbose else logging.WARNING,
            )
        except UserError as exc:
            fail(str(exc))
        typer.echo(json.dumps(res["summary"], indent=2))
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(res, indent=2))
