"""``livepose keys``: a CURVE key pair for this host (docs/architecture.md, "Security")."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from livepose.cli.console import failer
from livepose.core.errors import UserError


def register(app: typer.Typer, err: Console) -> None:
    """Add the ``keys`` command to ``app``."""

    @app.command("keys")
    def keys(
        directory: Annotated[Path, typer.Argument(
            help="folder for the key pair (made with mode 0700); transport.keys_dir")],
        name: Annotated[str | None, typer.Option(
            "--name", help="key name (default: this host's name)")] = None,
        force: Annotated[bool, typer.Option("--force", help="replace an existing pair")] = False,
    ) -> None:
        """Make this host's CURVE key pair: NAME.key (public) and NAME.key_secret (0600)."""
        from livepose.transport.security import ALLOWED_DIR, make_key_pair

        key_name = name or socket.gethostname().split(".")[0]
        try:
            public, secret = make_key_pair(directory, key_name, force=force)
        except UserError as exc:
            failer(err)(exc)
        except OSError as exc:
            failer(err)(f"keys: cannot write in {directory}: {exc.strerror}")
        public, d = public.resolve(), public.parent.resolve()
        out = Console()
        out.print(f"public key: {public}\nsecret key: {d / secret.name} (mode 600; never copy it)\n"
                  f"allow-list: {d / ALLOWED_DIR}/ (this host's public key is in "
                  "it; copy the .key of every other host of the run there)\n"
                  f"config: transport: {{kind: tcp, keys_dir: {d}}}",
                  highlight=False, soft_wrap=True)
