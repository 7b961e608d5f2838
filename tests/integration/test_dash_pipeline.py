"""The dashboard as a stage of the real pipeline, without a browser: its API answers, bad
clients are shrugged off, and the pipeline keeps running when the dashboard dies."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from livepose.core.config import load_default_config
from livepose.runtime.monitor import Monitor
from livepose.runtime.supervisor import Supervisor

pytestmark = pytest.mark.integration
ws_sync = pytest.importorskip("websockets.sync.client")


def _get(url: str, token: str | None = None, host: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if host is not None:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _poll_until(sup: Supervisor, mon: Monitor, pred: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        mon.poll(20)
        sup.poll(0)
        if pred():
            return True
    return False


def test_dash_stage_survives_bad_clients_and_its_death_does_not_stop_the_run() -> None:
    cfg = load_default_config()
    cfg.dashboard.port = 0
    with Supervisor(cfg, dashboard=True) as sup:
        sup.launch()
        mon = Monitor(sup.endpoints, sup.zctx)
        try:
            sup.start_trigger(subscribers=[mon.hello])
            url, token = sup.dashboard_url, sup.dashboard_token
            assert url is not None and url.startswith("http://127.0.0.1:") and token
            assert sup.dashboard_login_url == f"{url}?token={token}"
            # only its user: no token → 401 everywhere; a foreign Host (DNS rebinding) → 403
            for path in ("", "api/status", "metrics", "api/meta"):
                assert _get(url + path)[0] == 401, path
            code, body = _get(url + "api/status", token, host="rebound.evil.example:80")
            assert code == 403 and b"allowed_hosts" in body
            assert _poll_until(sup, mon, lambda: len(mon.fused) > 20, 30)
            # the page's status is fed by the run: fused frame-sets, health of every process
            assert _poll_until(sup, mon, lambda: json.loads(_get(url + "api/status", token)[1])
                               ["frames"]["fused"] > 0, 10)
            status = json.loads(_get(url + "api/status", token)[1])
            assert {"fusion", "infer0", "trigger", *cfg.camera_names} <= set(status["processes"])
            # the supervisor's control answers (this thread serves it between its requests)
            assert _poll_until(sup, mon, lambda: json.loads(_get(url + "api/status", token)[1])
                               ["recording"].get("available") is True, 15)
            assert b"livepose_framesets_total" in _get(url + "metrics", token)[1]
            code, body = _get(url + "api/nothing-here", token)
            assert code == 404 and b"unknown route" in body
            # garbage from a websocket client is ignored; another client still gets updates
            ws_url = url.replace("http", "ws") + f"ws?token={token}"
            with ws_sync.connect(ws_url) as bad:
                bad.send(b"\x00\xff" * 100)
                bad.send("{{{ not json")
            with ws_sync.connect(ws_url, max_size=None) as good:
                kinds = set()
                for _ in range(30):
                    m = good.recv(timeout=5)
                    kinds.add("tile" if isinstance(m, bytes) else json.loads(m)["type"])
                assert {"meta", "status", "tile", "pose"} <= kinds
            # the dashboard dies: the run goes on (it is a consumer only)
            pid = sup.procs["dashboard"].pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            n = len(mon.fused)
            assert _poll_until(sup, mon, lambda: "dashboard" in sup.exited, 10)
            assert _poll_until(sup, mon, lambda: len(mon.fused) > n + 30, 15)
        finally:
            mon.close()
