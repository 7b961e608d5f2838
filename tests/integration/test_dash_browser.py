"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright
(pointed at ``/usr/bin/chromium``; nothing downloads a browser).

The sim pipeline runs with the dashboard; the page must show every camera's live preview
(non-blank, changing), draw the 3D view, update the latency numbers, and its record button
must create and close a session on disk. A screenshot goes to ``artifacts/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from livepose.core.config import load_default_config
from livepose.runtime.supervisor import Supervisor

pytestmark = pytest.mark.integration

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser")
                 if Path(p).exists()), None)
TILE_STATS = """cam => {
  const c = document.querySelector(`#tile-${cam} canvas`);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let s = 0, s2 = 0, h = 0, colour = 0;
  for (let i = 0; i < d.length; i += 4) {
    s += d[i]; s2 += d[i] * d[i]; h = (h * 31 + d[i]) >>> 0;
    if (Math.abs(d[i] - d[i + 1]) > 40 || Math.abs(d[i + 1] - d[i + 2]) > 40) colour++;
  }
  const n = d.length / 4, m = s / n;
  return {std: Math.sqrt(s2 / n - m * m), hash: h, colour: colour,
          drawn: window.livepose.tiles[cam] || 0};
}"""
WEBGL_STATS = """() => {
  const c = document.querySelector('#view3d canvas');
  if (!c) return null;
  const g = document.createElement('canvas'); g.width = c.width; g.height = c.height;
  const x = g.getContext('2d'); x.drawImage(c, 0, 0);
  const d = x.getImageData(0, 0, g.width, g.height).data;
  const colours = new Set();
  for (let i = 0; i < d.length; i += 16) colours.add((d[i] << 16) | (d[i+1] << 8) | d[i+2]);
  return {colours: colours.size, renders: window.livepose.renders};
}"""


def _wait(pred: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev)")
    if CHROMIUM is None:
        pytest.skip("no chromium: apt-get install -y chromium (Debian) — .ci/run does this")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                               args=["--no-sandbox", "--enable-unsafe-swiftshader"])
        try:
            yield b
        finally:
            b.close()


@contextlib.contextmanager
def _running(cfg: Any, **kwargs: Any) -> Iterator[Supervisor]:
    """The pipeline of ``cfg`` with its dashboard, the supervisor polled in a thread."""
    stop = threading.Event()
    with Supervisor(cfg, dashboard=True, **kwargs) as sup:
        sup.launch()
        sup.start_trigger()
        t = threading.Thread(target=lambda: [sup.poll(0.02) for _ in iter(stop.is_set, True)],
                             daemon=True)
        t.start()
        try:
            yield sup
        finally:
            stop.set()
            t.join(5)


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Supervisor]:
    cfg = load_default_config()
    cfg.dashboard.port = 0
    cfg.recording.dir = tmp_path / "sessions"
    with _running(cfg) as sup:
        yield sup


FOREIGN_WS = """async wsUrl => await new Promise(done => {
  const ws = new WebSocket(wsUrl);
  let opened = false;
  ws.onopen = () => { opened = true; };
  ws.onmessage = () => { done({opened, message: true}); };
  ws.onclose = e => done({opened, message: false, code: e.code});
  setTimeout(() => done({opened, message: false, timeout: true}), 10000);
})"""


def test_dash_page_in_chromium(browser: Any, pipeline: Supervisor, artifacts: Path,
                               tmp_path: Path) -> None:
    url, token = pipeline.dashboard_url, pipeline.dashboard_token
    assert url is not None and token
    cams = pipeline.cfg.camera_names
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    assert page.goto(url).status == 401  # no token: nothing
    page.goto(pipeline.dashboard_login_url)  # the printed URL sets the cookie…
    page.goto(url)  # …which is all the page needs from then on
    _wait(lambda: page.evaluate("() => window.livepose && window.livepose.statuses >= 2"), 30,
          "status messages")
    # every camera tile: a non-blank image that changes
    first = {c: _wait(lambda c=c: (s := page.evaluate(TILE_STATS, c))["drawn"] > 0 and s, 30,
                      f"a preview of {c}") for c in cams}
    for c in cams:
        assert first[c]["std"] > 3.0, (c, first[c])  # not a flat (blank) image
    later = {c: _wait(lambda c=c: (s := page.evaluate(TILE_STATS, c))["hash"] != first[c]["hash"]
                      and s, 15, f"{c}'s preview to change") for c in cams}
    assert all(later[c]["drawn"] > first[c]["drawn"] for c in cams)
    # 2D keypoints drawn on the (grey) previews, coloured by confidence
    _wait(lambda: any(page.evaluate(TILE_STATS, c)["colour"] > 0 for c in cams), 20,
          "coloured keypoints on a preview")
    # the 3D view draws (more than a clear colour) and poses arrive
    gl = _wait(lambda: (s := page.evaluate(WEBGL_STATS)) and s["colours"] > 3 and s, 20,
               "the 3D view to draw")
    assert gl["renders"] > 1
    _wait(lambda: page.evaluate("() => window.livepose.poses") > 3, 10, "3D poses")
    # latency numbers update
    p50 = "() => window.livepose.status.latency_ms.total"
    a = _wait(lambda: page.evaluate(p50)["n"] > 0 and page.evaluate(p50), 20, "latency numbers")
    _wait(lambda: page.evaluate(p50)["n"] != a["n"], 10, "latency numbers to update")
    cell = page.locator("#latency tbody tr", has_text="total").locator("td").nth(1)
    assert float(cell.inner_text()) > 0
    # the record button creates and closes a session on disk
    page.fill("#session-name", "browser_test")
    page.click("#record-start")
    rec = _wait(lambda: page.evaluate("() => window.livepose.lastRecord"), 20, "record start")
    assert rec["status"] == 200, rec
    session = Path(rec["body"]["session"])
    assert session.is_dir() and session.parent == tmp_path / "sessions"
    _wait(lambda: "recording" in page.inner_text("#record-status"), 10, "recording status")
    time.sleep(2.0)
    page.screenshot(path=str(artifacts / "dashboard.png"))
    page.evaluate("() => { window.livepose.lastRecord = null; }")
    page.click("#record-stop")
    rec = _wait(lambda: page.evaluate("() => window.livepose.lastRecord"), 20, "record stop")
    assert rec["status"] == 200, rec
    status = _wait(lambda: (s := _read_json(session / "status.json")) and
                   s.get("state") != "recording" and s, 40, "the session to close")
    assert status["state"] in ("complete", "incomplete"), status
    # the JSON API and metrics answer too (a script's bearer token)
    auth = {"Authorization": f"Bearer {token}"}
    with urllib.request.urlopen(urllib.request.Request(url + "api/status", headers=auth),
                                timeout=5) as r:
        assert json.load(r)["frames"]["fused"] > 0
    with urllib.request.urlopen(urllib.request.Request(url + "metrics", headers=auth),
                                timeout=5) as r:
        assert b"livepose_framesets_total" in r.read()
    assert not errors, errors


def test_dash_refuses_other_sites_and_tokenless_browsers(browser: Any,
                                                          pipeline: Supervisor) -> None:
    url, token = pipeline.dashboard_url, pipeline.dashboard_token
    assert url is not None and token
    ws_url = url.replace("http", "ws") + f"ws?token={token}"
    # a page of another site that even knows the token: its Origin closes the websocket
    page = browser.new_page()
    page.route("http://evil.example/**", lambda route: route.fulfill(
        status=200, content_type="text/html", body="<html><body>evil</body></html>"))
    page.goto("http://evil.example/")
    got = page.evaluate(FOREIGN_WS, ws_url)
    assert got["message"] is False and got.get("timeout") is not True, got
    # the same request from the dashboard's own origin is served (the Origin decided)
    own = browser.new_page()
    own.goto(pipeline.dashboard_login_url)
    assert own.evaluate(FOREIGN_WS, ws_url)["message"] is True
    # a fresh browser without the token or cookie: 401 for the page, the API and /metrics
    ctx = browser.new_context()
    fresh = ctx.new_page()
    for path in ("", "api/status", "metrics"):
        assert fresh.goto(url + path).status == 401, path
    assert fresh.evaluate(FOREIGN_WS, url.replace("http", "ws") + "ws")["message"] is False
    ctx.close()


def _read_json(p: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


CALIB_STATS = """() => [...document.querySelectorAll('#calib-cams .calib-cam')].map(r => {
  const c = r.querySelector('canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let lit = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i + 1] > d[i] + 40) lit++;
  return {cam: r.dataset.cam, views: r.querySelector('.views').textContent, lit};
})"""


def test_dash_calibration_panel_and_drift_banner(browser: Any, tmp_path: Path,
                                                 artifacts: Path) -> None:
    """A live calibration (the sim rig's board scene, the collector stage) drawn on the
    page: per-camera views and coverage maps, the camera pairs; then the drift banner."""
    pytest.importorskip("cv2")
    from livepose.calibrate.live import board_args
    from livepose.core.board import Board

    cfg = load_default_config()
    cfg.cameras = cfg.cameras[:2]
    cfg.fps, cfg.realtime, cfg.dashboard.port = 6.0, False, 0
    cfg.sim.width, cfg.sim.height, cfg.sim.scene = 480, 384, "board"
    cfg.sim.board.hold_frames = 1
    collect = {"board": board_args(Board()), "out": str(tmp_path / "calib.toml"),
               "targets": {"views": 1000}}  # never enough: the panel keeps collecting
    with _running(cfg, collect=collect) as sup:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        assert sup.dashboard_login_url
        page.goto(sup.dashboard_login_url)
        _wait(lambda: page.is_visible("#calib-panel"), 30, "the calibration panel")
        rows = _wait(lambda: (r := page.evaluate(CALIB_STATS)) and len(r) == 2
                     and all(int(x["views"].split("/")[0]) >= 3 and x["lit"] > 0 for x in r)
                     and r, 40, "views and coverage of both cameras")
        assert [r["cam"] for r in rows] == ["cam0", "cam1"]
        pair = page.locator("#calib-pairs tbody tr").first
        assert pair.locator("td").first.inner_text() == "cam0 – cam1"
        assert int(pair.locator("td").nth(1).inner_text()) >= 3
        assert "collecting" in page.inner_text("#calib-state")
        assert not page.is_visible("#drift-banner")  # no fusion here: no drift
        page.screenshot(path=str(artifacts / "dashboard_calibration.png"))
        # the banner drawn from a drift list as fusion's health carries it (in one JS
        # turn: the next status message, without drift, hides it again)
        text = page.evaluate("() => { window.livepose.showDrift([{camera: 'cam1', "
                             "shift_px: 6.24, angle_deg: 0.48, frame_id: 300}]); "
                             "const b = document.getElementById('drift-banner'); "
                             "return b.hidden ? '' : b.textContent; }")
        assert "camera cam1 moved 6.2 px (≈ 0.48°)" in text and "frame 300" in text
        assert not errors, errors



# pixels of a tile near a colour (within 40 per channel): how much of an individual is drawn
COLOUR_PIXELS = """([cam, rgb]) => {
  const c = document.querySelector(`#tile-${cam} canvas`);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (Math.abs(d[i] - rgb[0]) < 40 && Math.abs(d[i + 1] - rgb[1]) < 40
        && Math.abs(d[i + 2] - rgb[2]) < 40) n++;
  }
  return n;
}"""
ID_RGB = {0: (0xFF, 0xD5, 0x4F), 1: (0x4F, 0xC3, 0xF7)}  # app.js PALETTE[0], PALETTE[1]


@pytest.mark.skipif(
    os.environ.get("LIVEPOSE_BROWSER_MULTI") != "1",
    reason="opt-in (LIVEPOSE_BROWSER_MULTI=1): it failed 2 CI runs of 5 before the worker "
    "warmed its kernels for read-only frames; its CI pass rate since is not yet measured")
def test_dash_several_animals_coloured_by_id_and_swapped_from_the_page(
        browser: Any, artifacts: Path) -> None:
    """Two sim rodents: every camera tile draws both animals' 2D instances, each in its
    individual's colour (fusion's ids on the worker's crops), and the page's swap form
    reaches fusion. With a cold numba cache (``NUMBA_CACHE_DIR`` an empty folder) it failed
    1 run of 2 before the worker's warm-up covered read-only frames, and passed 2 of 2
    after."""
    cfg = load_default_config()
    cfg.sim.animals = 2
    m = cfg.fusion.multi
    m.enabled, m.individuals, m.background_frames, m.background_every = True, 2, 7, 3
    cfg.fps, cfg.dashboard.port = 15.0, 0
    cams = cfg.camera_names
    with _running(cfg) as sup:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        assert sup.dashboard_login_url
        page.goto(sup.dashboard_login_url)
        # every tile, at some moment, draws an instance of id 0 and one of id 1 in their
        # colours (not necessarily in the same tile: an animal may be hidden in a view, or
        # its crop not owned yet, in any one frame-set under load)
        seen: dict[str, set[int]] = {c: set() for c in cams}
        drawn = {(c, k): 0 for c in cams for k in ID_RGB}

        def all_drawn() -> bool:
            inst = page.evaluate("() => window.livepose.instances")
            for c in cams:
                now = {x for x in inst.get(c, []) if x is not None}
                seen[c] |= now
                for k in now & set(ID_RGB):
                    drawn[c, k] = max(drawn[c, k], page.evaluate(COLOUR_PIXELS, [c, ID_RGB[k]]))
            return all(drawn[c, k] >= 3 for c in cams for k in ID_RGB)

        try:
            _wait(all_drawn, 90, "every tile to draw ids 0 and 1 in their colours")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: ids seen {seen}, pixels {drawn}") from None
        assert all({0, 1} <= seen[c] for c in cams), seen
        page.screenshot(path=str(artifacts / "dashboard_multi.png"))
        _wait(lambda: page.is_visible("#ids-form"), 10, "the swap form")
        page.fill("#ids-a", "0")
        page.fill("#ids-b", "1")
        page.click("#ids-swap")
        _wait(lambda: "swapped 0 ⇄ 1" in page.inner_text("#ids-status"), 15, "the swap's reply")
        _wait(lambda: sup.health["fusion"].counters.get("id_fixes", 0) == 1, 10,
              "fusion to count the swap")
        assert not errors, errors
