"""The dashboard's address, chosen by the supervisor before anything starts."""

from __future__ import annotations

import logging
import socket
from typing import Any

from livepose.core.config import Config
from livepose.core.errors import UserError
from livepose.transport.endpoints import free_port

log = logging.getLogger(__name__)


def dashboard_address(cfg: Config) -> dict[str, Any]:
    """``{"host", "port"}`` of the dashboard; port 0 becomes a free port, and so does the
    default port when it is taken (a port set explicitly — config or ``--port`` — is kept).

    Raises
    ------
    UserError
        An explicitly chosen port is taken — names it and the way out.
    """
    d = cfg.dashboard
    host, port = d.host, d.port
    explicit = "port" in d.model_fields_set and port != 0
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    if port == 0:  # the dashboard binds it later: not a port the kernel may hand out meanwhile
        return {"host": host, "port": free_port(host)}
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if explicit:
                raise UserError(
                    f"dashboard: cannot listen on {host}:{port} ({exc.strerror}; another "
                    "livepose running?); use --port N, or --no-dashboard"
                ) from None
            log.warning("dashboard: port %d is taken (%s); using a free port", port, exc.strerror)
            return {"host": host, "port": free_port(host)}
    return {"host": host, "port": port}
