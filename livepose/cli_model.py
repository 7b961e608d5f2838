"""``livepose model …``: check, export and build models (docs/inference.md).

Each command is a thin shell over a function of ``livepose.inference``; nothing heavy is
imported until a command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from livepose.errors import UserError


def register(app: typer.Typer, err: Console) -> None:
    """Add the ``model`` sub-app to ``app``."""
    model_app = typer.Typer(no_args_is_help=True, help="Check, export and build 2D models.")
    app.add_typer(model_app, name="model")

    def fail(message: str, code: int = 2) -> None:
        err.print(f"[red]error:[/] {message}", highlight=False)
        raise typer.Exit(code)

    # `check` (livepose/inference/check.py), `export` (livepose/inference/export.py) and
    # `build-engine` (livepose/inference/trt.py) are added below.
    _ = (Path, Annotated, UserError, fail)
