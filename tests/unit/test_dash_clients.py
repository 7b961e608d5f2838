"""Bad websocket clients against the real web server (uvicorn): one that never reads is
disconnected after a blocked send while a good one keeps receiving fresh messages."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

uvicorn = pytest.importorskip("uvicorn")
ws_sync = pytest.importorskip("websockets.sync.client")

from livepose.dashboard import app as dash_app  # noqa: E402
from livepose.dashboard.app import Hub, create_app  # noqa: E402
from livepose.dashboard.process import bind_socket  # noqa: E402
from livepose.dashboard.state import DashState, tile_payload  # noqa: E402

TOKEN = "a-test-token-of-some-length"
META = {"name": "t", "cameras": ["cam0"], "keypoints": [], "skeleton": [], "fps": 30.0}


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, Hub]]:
    """A dashboard web server in a thread, broadcasting a 200 kB tile every 5 ms."""
    monkeypatch.setattr(dash_app, "SEND_TIMEOUT_S", 1.0)
    hub = Hub(DashState(["cam0"], 2, 2.0), META, token=TOKEN)
    lsock = bind_socket("127.0.0.1", 0)
    port = lsock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(hub), log_level="warning", lifespan="off",
                                        ws_per_message_deflate=False))
    stop = threading.Event()

    async def main() -> None:
        serving = asyncio.create_task(srv.serve(sockets=[lsock]))
        big = b"\xff" * 200_000
        n = 0
        while not stop.is_set():
            n += 1
            hub.broadcast("tile/cam0", tile_payload({"cam": "cam0", "frame_id": n}, big))
            await asyncio.sleep(0.005)
        srv.should_exit = True
        await serving

    t = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield port, hub
    stop.set()
    t.join(10)
    lsock.close()


def _never_reading_client(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        f"GET /ws?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .encode()
    )
    return s  # and never read from it again


def test_dash_client_that_never_reads_is_dropped_and_others_keep_up(
    server: tuple[int, Hub],
) -> None:
    port, hub = server
    lazy = _never_reading_client(port)
    got: list[Any] = []
    with ws_sync.connect(f"ws://127.0.0.1:{port}/ws?token={TOKEN}", max_size=None) as good:
        deadline = time.monotonic() + 15
        dropped_at = None
        while time.monotonic() < deadline:
            got.append(good.recv(timeout=5))
            if dropped_at is None and len(hub.clients) == 1 and len(got) > 5:
                dropped_at = len(got)
            if dropped_at is not None and len(got) > dropped_at + 20:
                break
        assert dropped_at is not None, "the client that never reads was not disconnected"
        assert len(got) > dropped_at + 20  # the good client kept receiving afterwards
    lazy.close()


def test_dash_too_big_or_binary_garbage_does_not_stop_the_server(server: tuple[int, Hub]) -> None:
    port, _ = server
    with ws_sync.connect(f"ws://127.0.0.1:{port}/ws?token={TOKEN}", max_size=None) as bad:
        bad.send(os.urandom(1000))
        bad.send("\x00garbage")
    with ws_sync.connect(f"ws://127.0.0.1:{port}/ws?token={TOKEN}", max_size=None) as good:
        kinds = {good.recv(timeout=5)[:1] for _ in range(10)}
        assert kinds  # still serving
