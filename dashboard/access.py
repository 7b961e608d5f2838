"""Who may use the dashboard: a token on every request, a Host allow-list, and on websockets
an Origin from that same list.

- **Token**: one per run (the configured ``dashboard.token``, else a random one made by
  :func:`new_token`), carried as ``?token=…`` (the printed URL, Jupyter-style), the
  ``livepose_token`` cookie the page sets on the first visit, or ``Authorization: Bearer …``
  (scripts, Prometheus' ``bearer_token``). Without it: 401, or websocket close code 1008.
- **Host**: the request's ``Host`` header must name an allowed host (loopback names, the
  bind address, ``dashboard.allowed_hosts``), so a DNS-rebinding page — whose requests carry
  the attacker's host name — is refused with 403 before anything else.
- **Origin**: a websocket whose ``Origin`` is not ``http(s)://<allowed host>`` is closed
  (1008): another web site open in the same browser cannot open the stream.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import socket
import time
from collections.abc import Iterable
from urllib.parse import parse_qs, urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD = frozenset({"0.0.0.0", "::", ""})
COOKIE = "livepose_token"


def new_token() -> str:
    """A fresh random token (32 bytes, URL-safe)."""
    return secrets.token_urlsafe(32)


def allowed_hosts(bind_host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """Host names (lower case, no port) the dashboard answers to.

    Loopback names, ``bind_host`` unless it is a wildcard (then this machine's host name),
    and ``extra`` (``dashboard.allowed_hosts``)."""
    hosts = set(LOOPBACK) | {h.strip().lower().strip("[]") for h in extra if h.strip()}
    if bind_host in WILDCARD:
        hosts.add(socket.gethostname().lower())
    else:
        hosts.add(bind_host.lower().strip("[]"))
    return frozenset(hosts)


def host_of(value: str) -> str:
    """``"rig:8765"`` → ``"rig"``, ``"[::1]:8765"`` → ``"::1"`` (lower case)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") > 1:  # a bare IPv6 address
        return value
    return value.rsplit(":", 1)[0] if ":" in value else value


class Guard:
    """ASGI middleware applying the Host, Origin and token checks (see the module text).

    Parameters
    ----------
    app
        The application behind it.
    token
        The run's token (never empty).
    hosts
        :func:`allowed_hosts`.
    """

    def __init__(self, app: ASGIApp, token: str, hosts: frozenset[str]) -> None:
        if not token:
            raise ValueError("the dashboard needs a token")
        self.app = app
        self.token = token
        self.hosts = hosts
        self.refused: dict[str, int] = {"host": 0, "origin": 0, "token": 0}
        self._logged: dict[str, float] = {}

    def _warn(self, key: str, msg: str, *args: object) -> None:
        self.refused[key] += 1
        now = time.monotonic()
        if now - self._logged.get(key, 0.0) > 1.0:
            self._logged[key] = now
            log.warning(msg + " (%d refused so far)", *args, self.refused[key])

    def _token_ok(self, scope: Scope, headers: dict[str, str]) -> bool:
        given = parse_qs(scope.get("query_string", b"").decode(errors="replace")).get("token", [])
        auth = headers.get("authorization", "")
        if auth.startswith("Bearer "):
            given.append(auth[7:].strip())
        for part in headers.get("cookie", "").split(";"):
            k, _, v = part.strip().partition("=")
            if k == COOKIE:
                given.append(v)
        want = self.token.encode()
        return any(hmac.compare_digest(g.encode(), want) for g in given)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int,
                      error: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await JSONResponse({"error": error}, status_code=status)(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        path = scope.get("path")
        host = host_of(headers.get("host", ""))
        if host not in self.hosts:
            self._warn("host", "refused %s %s: Host %r is not an allowed dashboard host "
                       "(dashboard.allowed_hosts)", scope["type"], path, host)
            await self._refuse(scope, receive, send, 403,
                               f"host {host!r} is not allowed; add it to dashboard.allowed_hosts")
            return
        origin = headers.get("origin")
        if scope["type"] == "websocket" and origin is not None:
            o = urlsplit(origin)
            if o.scheme not in ("http", "https") or (o.hostname or "") not in self.hosts:
                self._warn("origin", "refused a websocket from another site (Origin %s)",
                           origin)
                await self._refuse(scope, receive, send, 403, "origin not allowed")
                return
        if not self._token_ok(scope, headers):
            self._warn("token", "refused %s %s: missing or wrong dashboard token",
                       scope["type"], path)
            await self._refuse(scope, receive, send, 401, "a valid dashboard token is required "
                               "(the URL printed at start: ?token=…, or Authorization: Bearer)")
            return
        await self.app(scope, receive, send)
