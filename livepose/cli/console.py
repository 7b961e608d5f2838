"""How every command reports a user's mistake: one red line on stderr, then the exit code."""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape


def failer(err: Console) -> Callable[..., NoReturn]:
    """``fail(message, code=2)`` printing to ``err``: the message as written (escaped, so
    ``[metadata] units`` or ``livepose[torch]`` are not taken for markup and eaten)."""

    def fail(message: object, code: int = 2) -> NoReturn:
        err.print(f"[red]error:[/red] {escape(str(message))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code)

    return fail
