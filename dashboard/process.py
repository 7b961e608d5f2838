"""The dashboard stage process: a consumer of the run's streams behind a small web server.

It subscribes (one SUB socket, receive high-water mark :data:`RCVHWM` per peer, so a slow
dashboard loses messages instead of holding anyone back) to ``preview/<cam>`` on every
camera socket, ``kp2d`` on every worker, ``pose3d``, ``trigger`` and the supervisor's health
relay, and serves the page with uvicorn in the same asyncio loop. Nothing it does can block a
publisher: PUB sockets drop for it at the high-water mark.

``ctx.args``: ``calibration`` (path), ``host``, ``port`` (resolved by the supervisor),
``token`` (the run's dashboard token; see :mod:`livepose.dashboard.access`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import zmq

from livepose.core.config import Config
from livepose.kit.process import StageContext
from livepose.transport import codec

log = logging.getLogger(__name__)

RCVHWM = 200
NICE = 10
"""The dashboard runs at a lower CPU priority: on a busy machine the pipeline goes first."""
POLL_S = 0.02
STATUS_PERIOD_S = 0.5
POSE_PERIOD_S = 0.05
CONTROL_PERIOD_S = 1.0
#: status requests missed in a row before the page says recording control is unavailable
CONTROL_MISSES = 3


def meta_of(cfg: Config, calibration: str | None) -> dict[str, Any]:
    """What the page needs once: cameras (with centres), keypoints, skeleton, rates."""
    from livepose.core.modelinfo import model_keypoints

    names, edges = model_keypoints(cfg)
    centres: dict[str, list[float]] = {}
    if calibration:
        try:
            from livepose.core.calibration import read_calibration

            group = read_calibration(calibration, cfg.camera_names)
            centres = {c.name: [round(float(v), 2) for v in c.center] for c in group.cameras}
        except (ValueError, OSError) as exc:  # shown without camera positions
            log.warning("dashboard: no camera positions (%s)", exc)
    return {
        "name": cfg.name,
        "cameras": cfg.camera_names,
        "camera_centers": centres,
        "keypoints": names,
        "skeleton": [list(e) for e in edges],
        "fps": cfg.fps,
        "units": "mm",
        "arena_radius": cfg.sim.arena_diameter_mm / 2 if cfg.is_sim else None,
    }


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (raises ``OSError`` with a clear message when taken)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"dashboard: cannot listen on {host}:{port} ({exc.strerror}); "
                      "use --port or --no-dashboard") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _subscribe(ctx: StageContext) -> zmq.Socket[Any]:
    ep = ctx.endpoints
    peers = [ep[f"frame/{c}"] for c in ctx.cfg.camera_names]
    peers += [ep[f"kp2d/{k}"] for k in range(ctx.cfg.model.workers)]
    peers += [ep["pose3d"], ep["trigger"]]
    if "health/relay" in ep:
        peers.append(ep["health/relay"])
    topics = [b"preview/", b"kp2d", b"pose3d", b"trigger", b"health/"]
    return ctx.socket(zmq.SUB, connect=peers, subscribe=topics, hwm=RCVHWM)


def _drain(sub: zmq.Socket[Any], decoder: codec.Decoder, limit: int = 2000) -> Iterator[Any]:
    for _ in range(limit):
        try:
            parts = sub.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        msg = decoder.decode(parts)
        if msg is not None:
            yield msg


async def _control_poll(hub: Any) -> None:
    """Keep ``state.recording`` current from the supervisor's ``status``.

    A missed answer (a supervisor busy for a moment on a loaded host) keeps the last good
    status, marked ``stale``, and asks again a period later; only :data:`CONTROL_MISSES`
    misses in a row make control unavailable (then asked every 5 periods)."""
    from livepose.dashboard.control import ControlUnavailable

    misses = 0
    while True:
        period = CONTROL_PERIOD_S
        try:
            reply = await asyncio.to_thread(hub.control, {"cmd": "status"})
            hub.state.recording = {"available": True, **reply}
            misses = 0
        except ControlUnavailable as exc:
            misses += 1
            if hub.state.recording.get("available") and misses < CONTROL_MISSES:
                hub.state.recording = {**hub.state.recording, "stale": str(exc)}
            else:
                hub.state.recording = {"available": False, "reason": str(exc)}
                period = 5 * CONTROL_PERIOD_S
        except zmq.ZMQError as exc:  # context closing at shutdown
            hub.state.recording = {"available": False, "reason": str(exc)}
            return
        await asyncio.sleep(period)


async def _serve(ctx: StageContext, hub: Any, sub: zmq.Socket[Any], lsock: socket.socket) -> None:
    import uvicorn

    from livepose.dashboard.app import create_app

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # the stage context owns the signals
            yield

    config = uvicorn.Config(
        create_app(hub), log_level="warning", access_log=False, lifespan="off",
        ws_max_size=64 * 1024, ws_per_message_deflate=False, ws_ping_interval=10.0,
        ws_ping_timeout=10.0,
    )
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[lsock]))
    while not server.started:
        if serving.done():
            serving.result()
            raise RuntimeError("the dashboard's web server stopped during start-up")
        await asyncio.sleep(0.02)
    host, port = lsock.getsockname()[:2]
    ctx.ready(url=f"http://{host}:{port}/")
    ctx.set_state("running")
    control = asyncio.create_task(_control_poll(hub))
    decoder = codec.Decoder(expect=["preview", "kp2d", "pose3d", "trigger", "health"])
    state = hub.state
    last_status = last_pose = 0.0
    pose_sent = None
    try:
        while not ctx.stopping and not serving.done():
            for msg in _drain(sub, decoder):
                for cam, tile in state.add(msg):
                    hub.broadcast(f"tile/{cam}", tile)
            for cam, tile in state.expire():
                hub.broadcast(f"tile/{cam}", tile)
            now = time.monotonic()
            if state.pose is not None and state.pose is not pose_sent and now - last_pose > POSE_PERIOD_S:
                pose_sent, last_pose = state.pose, now
                hub.broadcast("pose", json.dumps(pose_sent))
            if now - last_status > STATUS_PERIOD_S:
                last_status = now
                if hub.clients:
                    hub.broadcast("status", json.dumps(state.snapshot(len(hub.clients))))
                ctx.counters["rejected"] = decoder.rejected
                ctx.counters["ws_sent"] = sum(c.sent for c in hub.clients)
                ctx.rates["clients"] = float(len(hub.clients))
            ctx.tick_health()
            await asyncio.sleep(POLL_S)
    finally:
        control.cancel()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, 3.0)
        await asyncio.gather(control, return_exceptions=True)


def prewarm(cfg: Config, args: dict[str, Any]) -> None:
    """In a warm spare (livepose/runtime/spares.py): the web stack's imports and the page's
    metadata (model keypoints, calibration) once."""
    import uvicorn  # noqa: F401

    import livepose.dashboard.access
    import livepose.dashboard.app
    import livepose.dashboard.control
    import livepose.dashboard.state  # noqa: F401

    meta_of(cfg, args.get("calibration"))


def main(ctx: StageContext) -> None:
    """Dashboard process main."""
    from livepose.dashboard.access import allowed_hosts, new_token
    from livepose.dashboard.app import Hub
    from livepose.dashboard.control import request
    from livepose.dashboard.state import DashState

    with contextlib.suppress(OSError, AttributeError):  # not on every platform
        os.nice(NICE)
    cfg = ctx.cfg
    host = str(ctx.args.get("host") or cfg.dashboard.host)
    port = int(ctx.args.get("port") or cfg.dashboard.port)
    lsock = bind_socket(host, port)
    sub = _subscribe(ctx)
    step = max(1, round(1.0 / cfg.preview.scale))
    state = DashState(cfg.camera_names, step, cfg.desync_tolerance_ms)
    control = (partial(request, ctx.zmq_ctx, ctx.endpoints["control"], keys=ctx.keys)
               if "control" in ctx.endpoints else None)
    hosts = allowed_hosts(host, cfg.dashboard.allowed_hosts)
    token = str(ctx.args.get("token") or cfg.dashboard.token or new_token())
    hub = Hub(state, meta_of(cfg, ctx.args.get("calibration")), control, token, hosts)
    try:
        asyncio.run(_serve(ctx, hub, sub, lsock))
    finally:
        lsock.close()
