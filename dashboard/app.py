"""The dashboard's ASGI application (Starlette): page, static files, JSON API, metrics,
websocket.

Routes
------
``GET /``                 the page (``static/index.html``)
``GET /static/…``         scripts, styles, vendored three.js
``GET /api/status``       the run's status (JSON; see :meth:`DashState.snapshot`)
``GET /api/meta``         cameras, keypoint names, skeleton, camera centres (JSON)
``POST /api/record``      ``{"action": "start", "name": …}`` or ``{"action": "stop"}``
``GET /metrics``          Prometheus text format
``WS /ws``                live updates (see docs/dashboard.md for the message types)

Every request passes :class:`livepose.dashboard.access.Guard` first: an allowed ``Host``, on
websockets an allowed ``Origin``, and the run's token (401 without it).

Each websocket client has one slot per message key (``tile/<cam>``, ``pose``, ``status``):
a newer message replaces an unsent older one, so a slow client sees fewer, fresher updates and
never holds memory or the pipeline back; a client whose send blocks for ``SEND_TIMEOUT_S`` is
disconnected. What a client sends is ignored except ``{"type": "ping"}``, with a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp
from starlette.websockets import WebSocket

from livepose.dashboard.access import COOKIE, Guard, allowed_hosts, new_token
from livepose.dashboard.metrics import make_registry, render
from livepose.dashboard.state import DashState

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
SEND_TIMEOUT_S = 3.0
MAX_CLIENTS = 32
Payload = str | bytes
ControlFn = Callable[[dict[str, Any]], dict[str, Any]]


class Client:
    """One websocket client: the newest payload per key, waiting to be sent."""

    def __init__(self, ws: WebSocket, ident: int) -> None:
        self.ws = ws
        self.ident = ident
        self.slots: dict[str, Payload] = {}
        self.wake = asyncio.Event()
        self.sent = 0
        self.replaced = 0
        self.ignored = 0

    def offer(self, key: str, payload: Payload) -> None:
        """Queue ``payload`` under ``key``, replacing an unsent one."""
        if key in self.slots:
            self.replaced += 1
        self.slots[key] = payload
        self.wake.set()


class Hub:
    """Shared state of the web side: the run state, the clients, the control function."""

    def __init__(
        self, state: DashState, meta: dict[str, Any], control: ControlFn | None = None,
        token: str | None = None, hosts: frozenset[str] | None = None,
    ) -> None:
        self.state = state
        self.meta = meta
        self.control = control
        #: the run's token (a fresh random one when none is given: never open)
        self.token = token or new_token()
        #: host names the dashboard answers to (Host header, websocket Origin)
        self.hosts = hosts or allowed_hosts("127.0.0.1")
        self.clients: set[Client] = set()
        self._next_id = 0
        self._last_log: dict[str, float] = {}
        self.registry = make_registry(lambda: self.state.snapshot(len(self.clients)))

    def broadcast(self, key: str, payload: Payload) -> None:
        """Offer ``payload`` to every client (call from the event loop)."""
        for c in self.clients:
            c.offer(key, payload)

    def log_limited(self, key: str, msg: str, *args: Any) -> None:
        """Log a warning at most once per second per ``key``."""
        now = time.monotonic()
        if now - self._last_log.get(key, 0.0) > 1.0:
            self._last_log[key] = now
            log.warning(msg, *args)


def create_app(hub: Hub) -> ASGIApp:
    """The dashboard application around ``hub``."""

    async def index(request: Request) -> Response:
        resp = FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})
        token = request.query_params.get("token")
        if token and hmac.compare_digest(token.encode(), hub.token.encode()):
            resp.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return resp

    async def status(request: Request) -> Response:
        return JSONResponse(hub.state.snapshot(len(hub.clients)))

    async def meta(request: Request) -> Response:
        return JSONResponse(hub.meta)

    async def metrics(request: Request) -> Response:
        return Response(render(hub.registry),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    async def json_body(request: Request) -> tuple[dict[str, Any] | None, Response | None]:
        """The POSTed JSON object, or the error response (415: not JSON — which also keeps
        other web sites from posting here, as a JSON POST needs CORS approval)."""
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return None, JSONResponse({"error": "send Content-Type: application/json"},
                                      status_code=415)
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        return (body if isinstance(body, dict) else None), None

    async def forward(cmd: dict[str, Any], label: str, unavailable: str
                      ) -> tuple[dict[str, Any] | None, Response]:
        """Send ``cmd`` to the supervisor's control socket; its reply (``None`` when it could
        not be sent) and the response carrying it (409 for a refusal, 503: no control)."""
        if hub.control is None:
            return None, JSONResponse({"error": unavailable}, status_code=503)
        try:
            reply = await asyncio.to_thread(hub.control, cmd)
        except Exception as exc:  # ControlUnavailable, or a zmq error: report, never crash
            hub.state.note("error", f"{label}: {exc}")
            return None, JSONResponse({"error": str(exc)}, status_code=503)
        ok = reply.get("ok", "error" not in reply)
        return reply, JSONResponse(reply, status_code=200 if ok else 409)

    async def record(request: Request) -> Response:
        body, bad = await json_body(request)
        if bad is not None:
            return bad
        action = body.get("action") if body is not None else None
        if body is None or action not in ("start", "stop", "status"):
            return JSONResponse({"error": 'send {"action": "start", "name": …}, '
                                 '{"action": "stop"} or {"action": "status"}'}, status_code=400)
        cmd: dict[str, Any] = {"cmd": f"record_{action}" if action != "status" else "status"}
        if action == "start":
            name = body.get("name")
            if not isinstance(name, str) or not name.strip():
                return JSONResponse({"error": "a session name is required"}, status_code=400)
            cmd["name"] = name.strip()
        reply, resp = await forward(cmd, f"record {action}",
                                    "recording control is not available in this run")
        if reply is not None:
            ok = reply.get("ok", "error" not in reply)
            hub.state.note("info" if ok else "error", f"record {action}: "
                           f"{reply.get('error') or reply.get('session') or 'ok'}")
        return resp

    async def ids(request: Request) -> Response:
        """Fix identities (several animals): ``{"action": "swap", "a": 0, "b": 1}`` or
        ``{"action": "set", "current": 2, "new": 0}`` → the supervisor's control socket →
        fusion (logged there, and an event of the session being recorded)."""
        body, bad = await json_body(request)
        if bad is not None:
            return bad
        action = body.get("action") if body is not None else None
        if body is None or action not in ("swap", "set"):
            return JSONResponse({"error": 'send {"action": "swap", "a": ID, "b": ID} or '
                                 '{"action": "set", "current": ID, "new": ID}'}, status_code=400)
        keys = ("a", "b") if action == "swap" else ("current", "new")
        cmd: dict[str, Any] = {"cmd": "swap_ids" if action == "swap" else "set_id",
                               **{k: body.get(k) for k in keys}}
        reply, resp = await forward(cmd, f"ids {action}", "control is not available in this run")
        if reply is not None:
            ok = reply.get("ok", "error" not in reply)
            what = " ".join(str(body.get(k)) for k in keys)
            hub.state.note("info" if ok else "error",
                           f"ids {action} {what}: {reply.get('error') or 'sent'}")
        return resp

    async def ws_endpoint(ws: WebSocket) -> None:
        if len(hub.clients) >= MAX_CLIENTS:
            await ws.close(code=1013)
            hub.log_limited("full", "refused a websocket client: %d connected", MAX_CLIENTS)
            return
        await ws.accept()
        hub._next_id += 1
        client = Client(ws, hub._next_id)
        client.offer("meta", json.dumps({"type": "meta", **hub.meta}))
        client.offer("status", json.dumps(hub.state.snapshot(len(hub.clients) + 1)))
        hub.clients.add(client)
        try:
            async with anyio.create_task_group() as tg:

                async def until_done(fn: Callable[[Hub, Client], Awaitable[None]]) -> None:
                    await fn(hub, client)
                    tg.cancel_scope.cancel()  # one side ended: end the other

                tg.start_soon(until_done, _sender)
                tg.start_soon(until_done, _receiver)
        finally:
            hub.clients.discard(client)
            with anyio.move_on_after(1.0, shield=True), contextlib.suppress(Exception):
                await ws.close()  # already closed, or the peer is gone: nothing to do

    async def not_found(request: Request, exc: Exception) -> Response:
        code = exc.status_code if isinstance(exc, HTTPException) else 500
        if code == 404:
            hub.log_limited("404", "unknown route %s %s", request.method, request.url.path)
            return JSONResponse({"error": f"unknown route {request.url.path}",
                                 "routes": ["/", "/api/status", "/api/meta", "/api/record",
                                            "/api/ids", "/metrics", "/ws"]}, status_code=404)
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        return JSONResponse({"error": detail}, status_code=code)

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    routes = [
        Route("/", index),
        Route("/favicon.ico", favicon),
        Route("/api/status", status),
        Route("/api/meta", meta),
        Route("/api/record", record, methods=["POST"]),
        Route("/api/ids", ids, methods=["POST"]),
        Route("/metrics", metrics),
        WebSocketRoute("/ws", ws_endpoint),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found})
    return Guard(app, hub.token, hub.hosts)


async def _sender(hub: Hub, client: Client) -> None:
    ws = client.ws
    while True:
        await client.wake.wait()
        client.wake.clear()
        while client.slots:
            key = next(iter(client.slots))
            payload = client.slots.pop(key)
            try:
                with anyio.fail_after(SEND_TIMEOUT_S):
                    if isinstance(payload, bytes):
                        await ws.send_bytes(payload)
                    else:
                        await ws.send_text(payload)
            except TimeoutError:
                log.warning("websocket client %d does not read (a send blocked %.0f s); "
                            "disconnecting it", client.ident, SEND_TIMEOUT_S)
                return
            except Exception as exc:  # the peer went away mid-send
                log.info("websocket client %d gone: %s", client.ident, exc)
                return
            client.sent += 1


async def _receiver(hub: Hub, client: Client) -> None:
    while True:
        msg = await client.ws.receive()
        if msg["type"] == "websocket.disconnect":
            return
        text = msg.get("text")
        try:
            data = json.loads(text) if text is not None else None
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and data.get("type") == "ping":
            client.offer("pong", json.dumps({"type": "pong", "t": time.time()}))
            continue
        client.ignored += 1
        hub.log_limited("garbage", "ignored a websocket message from client %d (%d so far): "
                        "not a known JSON message", client.ident, client.ignored)
