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

Free ports are drawn below every common OS's ephemeral range (Linux starts it at 32768,
macOS and Windows at 49152). A port the kernel picked itself (``bind`` to port 0) would be
free now but could be handed to any outgoing connection, or to another ``bind(*)``, before
the stage that owns the role binds it: a run failed "Address already in use" that way.
"""

from __future__ import annotations

import random
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


#: where free ports are drawn from: below the ephemeral ranges (see the module docstring)
FREE_PORTS = range(20000, 32768)


def free_port(host: str = "127.0.0.1", taken: set[int] | None = None,
              rng: random.Random | None = None) -> int:
    """A port of ``FREE_PORTS`` that ``host`` can bind now and that is not in ``taken``
    (added to it). For a socket another process binds later; bind your own to port 0."""
    taken = set() if taken is None else taken
    rng = rng or random.Random()  # not the global one: a seeded simulation must not pick ports
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(200):
        port = rng.choice(FREE_PORTS)
        if port in taken:
            continue
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise OSError(f"no free tcp port on {host} in {FREE_PORTS.start}-{FREE_PORTS.stop - 1} "
                  "after 200 tries; set transport.base_port")


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
    taken: set[int] = set()
    for i, r in enumerate(roles(cfg)):
        port = t.base_port + i if t.base_port else free_port(t.host, taken)
        out[r] = f"tcp://{t.host}:{port}"
    return out
