"""``livepose reanalyse`` and ``livepose bench cluster`` (docs/cluster.md; extra
``livepose[cluster]``: Ray, imported only when one of them runs on Ray)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from livepose.core.errors import UserError


def register(app: typer.Typer, err: Console, bench_group: Callable[[], typer.Typer],
             fail: Callable[..., None]) -> None:
    """Add ``reanalyse`` to ``app`` and ``cluster`` to the bench group."""

    @app.command()
    def reanalyse(
        sessions: Annotated[list[Path], typer.Argument(help="recorded session folders")],
        model: Annotated[str, typer.Option("--model", "-m", help="model (.onnx, folder with "
                                           "manifest.yaml, or a bundled name)")],
        out: Annotated[Path, typer.Option("--out", "-o", help="output folder: "
                                          "OUT/<session>/pose2d, pose3d.csv, …")],
        cluster: Annotated[str | None, typer.Option(
            "--cluster", help="Ray cluster ADDRESS (HEAD:6379, ray://…, auto)")] = None,
        workers: Annotated[int, typer.Option(
            "--workers", "-w", min=1, help="model workers (1 without --cluster: no Ray)")] = 1,
        gpus_per_worker: Annotated[float, typer.Option(
            "--gpus-per-worker", min=0, help="GPUs per worker actor")] = 0.0,
    ) -> None:
        """Re-run inference and fusion over recorded sessions with MODEL, on this host or a
        Ray cluster; results are identical either way (docs/cluster.md)."""
        from livepose.cluster.reanalyse import run_local, run_ray

        show = sys.stderr.isatty()
        try:
            if cluster is None and workers == 1:
                rep = run_local(sessions, model, out, progress=show)
            else:
                rep = run_ray(sessions, model, out, workers=workers, address=cluster,
                              num_gpus=gpus_per_worker, progress=show)
        except UserError as exc:
            fail(str(exc))
            return
        s = rep.summary()
        err.print(f"[green]ok[/green]: {len(rep.sessions)} sessions, {s['frames']} frames on "
                  f"{s['workers']} worker(s) ({s['backend']}) in {s['seconds']} s "
                  f"({s['frames_per_s']} frames/s), redone {s['redone']} → {out}",
                  highlight=False, soft_wrap=True)

    bench = bench_group()

    @bench.command("cluster")
    def bench_cluster(
        json_path: Annotated[Path | None, typer.Option("--json", help="write results here")]
        = None,
        sessions: Annotated[int, typer.Option(help="recorded sim sessions to re-analyse")] = 4,
        pulses: Annotated[int, typer.Option(help="frame-sets per recorded session")] = 60,
        seconds: Annotated[float, typer.Option(help="each live run's length")] = 6.0,
        part: Annotated[list[str] | None, typer.Option(
            "--part", help="reanalyse and/or live (default both)")] = None,
    ) -> None:
        """A local 2-node Ray cluster: reanalysis identical to one process (1 and 2
        workers, a killed worker), the live sim rig across the nodes vs one host."""
        from livepose.bench.cluster import run_bench

        try:
            res = run_bench(json_path, sessions, pulses, seconds,
                            tuple(part or ("reanalyse", "live")))
        except UserError as exc:
            fail(str(exc))
            return
        slim = {k: v for k, v in res.items() if k not in ("runs",)}
        if "reanalyse" in slim:
            slim["reanalyse"] = {k: v for k, v in slim["reanalyse"].items() if k != "runs"}
        typer.echo(json.dumps(slim, indent=2, default=str))
