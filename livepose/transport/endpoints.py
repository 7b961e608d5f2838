"""Resolve the ZeroMQ endpoints of a run from the config.

Roles (who binds → who connects):

==================  ====================================================================
``trigger``          trigger clock PUB (topics ``trigger``, ``truth``) → cameras, monitors
``frame/<cam>``      camera PUB (topics ``frame/<cam>``, ``preview/<cam>``) → inference
``kp2d/<k>``         inference worker k PUB (topic ``kp2d``) → fusion, monitors
``pose3d``           fusion PUB (topic ``pose3d``) → clients, dashboard
``health``           supervisor SUB ← every process PUB connects (topic ``health/<proc>``)
``control``          supervisor REP ← CLI / dashboard REQ
``camctl``           closed-loop client PUB (``CameraOutput``) → camera processes' output lines
==================  ====================================================================

Same host: ``ipc://`` in a private temporary folder. ``tcp``: ``transport.host`` (loopback
by default) and consecutive ports from ``transport.base_port``, or free ports when it is 0.
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

from livepose.core.config import Config


def roles(cfg: Config) -> list[str]:
    """Every endpoint role of a run, in a fixed order."""
    out = ["trigger", "health", "control", "pose3d"]
    out += [f"frame/{n}" for n in cfg.camera_names]
    out += [f"kp2d/{k}" for k in range(cfg.model.workers)]
    out.append("camctl")  # closed-loop CameraOutput binds it; camera processes connect
    return out


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def resolve(cfg: Config, run_dir: Path | None = None) -> dict[str, str]:
    """Endpoints by role.

    Parameters
    ----------
    cfg
        The run's config.
    run_dir
        Folder for ``ipc`` socket files (default: ``transport.ipc_dir`` or a new temporary
        folder). Paths must stay under ~100 characters (a Unix socket limit).
    """
    t = cfg.transport
    if t.kind == "ipc":
        base = run_dir or t.ipc_dir or Path(tempfile.mkdtemp(prefix="livepose-"))
        base.mkdir(parents=True, exist_ok=True)
        eps = {r: f"ipc://{base / r.replace('/', '-')}.sock" for r in roles(cfg)}
        too_long = [e for e in eps.values() if len(e) - 6 > 100]
        if too_long:
            raise ValueError(f"ipc path too long for a Unix socket: {too_long[0]}")
        return eps
    out = {}
    for i, r in enumerate(roles(cfg)):
        port = t.base_port + i if t.base_port else _free_port(t.host)
        out[r] = f"tcp://{t.host}:{port}"
    return out
