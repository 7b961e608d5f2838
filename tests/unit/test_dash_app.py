"""The dashboard's state and web app without a pipeline: pairing previews with keypoints,
the JSON API, metrics, the token, recording control and bad clients."""

from __future__ import annotations

import io
import json
import logging
import struct
import warnings
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # starlette on httpx

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from livepose.core import protocol  # noqa: E402
from livepose.dashboard.access import allowed_hosts, host_of  # noqa: E402
from livepose.dashboard.app import Hub, create_app  # noqa: E402
from livepose.dashboard.control import ControlUnavailable  # noqa: E402
from livepose.dashboard.state import (  # noqa: E402
    KP2D_KEEP_S,
    PAIR_MAX_S,
    PAIR_TIMEOUT_S,
    STALE_KP_S,
    DashState,
)

CAMS = ["cam0", "cam1"]
META = {"name": "t", "cameras": CAMS, "keypoints": ["a", "b"], "skeleton": [["a", "b"]],
        "camera_centers": {}, "fps": 30.0}


def _jpeg() -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 10), 128, np.uint8)).save(buf, format="JPEG")
    return np.frombuffer(buf.getvalue(), np.uint8)


def _preview(cam: str, fid: int) -> protocol.Preview:
    return protocol.Preview(cam=cam, frame_id=fid, t_grab_ns=1, width=10, height=8, jpeg=_jpeg())


def _kp2d(fid: int) -> protocol.Kp2d:
    pts = np.array([[[20, 10, 0.9], [np.nan, np.nan, np.nan]],
                    [[4, 2, 0.5], [8, 6, 0.1]]], np.float32)
    return protocol.Kp2d(frame_id=fid, cams=CAMS, model="m", points=pts)


def _pose(fid: int) -> protocol.Pose3d:
    return protocol.Pose3d(
        frame_id=fid, xyz=np.array([[1.0, 2, 3], [np.nan, 0, 0]]), variance=np.ones((2, 3)),
        reproj=np.zeros(2, np.float32), views=np.ones(2, np.uint16), cams=CAMS,
        status=np.array([1, 0], np.uint8),
        t_trigger_ns=1_000_000_000 + fid, t_grab_ns=[1_002_000_000, 1_005_000_000],
        t_set_ns=1_006_000_000, t_infer_start_ns=1_006_000_000, t_infer_end_ns=1_016_000_000,
        t_fused_ns=1_017_000_000, skipped=[fid - 1] if fid else [],
    )


def _decode_tile(payload: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<I", payload[:4])
    return json.loads(payload[4 : 4 + n]), payload[4 + n :]


def test_dash_state_pairs_previews_with_keypoints_of_the_same_frame() -> None:
    st = DashState(CAMS, preview_step=2, desync_tolerance_ms=2.0)
    assert st.add(_preview("cam0", 3), now=0.0) == []  # waits for its keypoints
    out = st.add(_kp2d(3), now=0.01)
    assert [c for c, _ in out] == ["cam0"]
    head, jpeg = _decode_tile(out[0][1])
    assert head["frame_id"] == 3 and jpeg[:2] == b"\xff\xd8"
    assert head["kp"][0] == [10.0, 5.0, 0.9]  # full-frame pixels / preview step
    assert head["kp"][1] == [None, None, None]  # NaN = no view
    # keypoints first, then the preview: paired at once
    assert [c for c, _ in st.add(_preview("cam1", 3), now=0.02)] == ["cam1"]
    # a preview whose keypoints never come is shown without them after the timeout
    st.add(_preview("cam0", 9), now=1.0)
    assert st.expire(now=1.1) == []
    (cam, tile), = st.expire(now=2.5)
    assert cam == "cam0" and _decode_tile(tile)[0]["kp"] == []
    # …unless a newer frame of that camera was shown meanwhile (the worker skipped frame 10):
    # the page keeps the newest tile, an older one would replace it
    st.add(_preview("cam0", 10), now=3.0)
    assert st.add(_preview("cam0", 11), now=3.05) == []
    assert [c for c, _ in st.add(_kp2d(11), now=3.06)] == ["cam0"]
    assert st.expire(now=5.0) == [] and not st.pending  # frame 10 is dropped, not shown
    st.add(_preview("cam1", 12), now=6.0)
    st.add(_preview("cam1", 13), now=6.01)
    assert [_decode_tile(t)[0]["frame_id"] for _, t in st.expire(now=8.0)] == [12, 13]
    assert st.add(_kp2d(12), now=8.1) == []  # keypoints too late for a frame already shown


def test_dash_state_pairs_a_preview_that_comes_long_after_its_keypoints() -> None:
    """Keypoints are kept by age, not count: at 200 frame-sets a second, a preview 2 s late
    (its camera process preempted) still finds its keypoints; 4 s late, it does not."""
    st = DashState(CAMS, preview_step=2, desync_tolerance_ms=2.0)
    for k in range(1000):
        st.add(_kp2d(k), now=k / 200)
    head, _ = _decode_tile(st.add(_preview("cam0", 600), now=5.0)[0][1])  # 2 s late
    assert head["frame_id"] == 600 and head["kp"][0] == [10.0, 5.0, 0.9]
    assert st.add(_preview("cam1", 100), now=5.0) == []  # 4.5 s late: waits, then bare
    assert len(st.kp2d) <= 200 * KP2D_KEEP_S + 1


def test_dash_state_waits_longer_for_keypoints_that_come_late() -> None:
    """A model that takes 2.5 s a frame-set (a CPU rig, a loaded host): the first tiles go
    out bare after 1 s, then the wait follows the keypoints' lag and the tiles have them."""
    st = DashState(CAMS, preview_step=2, desync_tolerance_ms=2.0)
    with_kp = []
    for k in range(200):  # 10 previews a second; keypoints of frame k come at k/10 + 2.5
        t = k / 10
        tiles = st.add(_preview("cam0", k), now=t)
        if k >= 25:
            tiles += st.add(_kp2d(k - 25), now=t)
        tiles += st.expire(now=t)
        with_kp += [bool(_decode_tile(b)[0]["kp"]) for c, b in tiles if c == "cam0"]
    assert not any(with_kp[:5])  # the first: bare, after the default wait
    assert sum(with_kp[-100:]) >= 95, with_kp  # then with keypoints
    assert 2.5 * 1.5 - 0.2 <= st.snapshot()["keypoint_wait_s"] <= PAIR_MAX_S
    # keypoints on time again: the wait comes back down
    for k in range(200, 300):
        st.add(_kp2d(k), now=k / 10)
        st.add(_preview("cam0", k), now=k / 10)
    assert st.pair_wait() == PAIR_TIMEOUT_S


def test_dash_state_marks_a_camera_whose_keypoints_stopped() -> None:
    st = DashState(CAMS, preview_step=2, desync_tolerance_ms=2.0)
    st.add(_kp2d(1), now=0.0)
    head, _ = _decode_tile(st.add(_preview("cam0", 1), now=0.1)[0][1])
    assert "kp_age_s" not in head  # paired: no age
    # the worker stops delivering cam0's keypoints: tiles go out bare after the pairing wait
    ages, stale = [], []
    for k, t in enumerate(np.arange(1.0, 5.0, 0.5)):
        st.add(_preview("cam0", 2 + k), now=float(t))
        for _, tile in st.expire(now=float(t) + 1.01):
            h, _ = _decode_tile(tile)
            ages.append(h["kp_age_s"])
            stale.append(h["kp_stale"])
    assert ages == sorted(ages) and ages[0] < STALE_KP_S < ages[-1]
    assert stale == [a > STALE_KP_S for a in ages]
    assert st.snapshot()["cameras"]["cam0"]["tiles_without_keypoints"] == len(ages)
    assert st.cam["cam0"].kp_stale(now=6.0)
    assert not st.cam["cam1"].kp_stale(now=6.0)  # no tile yet: nothing to say
    # keypoints again: the mark goes
    st.add(_kp2d(20), now=6.0)
    head, _ = _decode_tile(st.add(_preview("cam0", 20), now=6.0)[0][1])
    assert "kp_stale" not in head and not st.cam["cam0"].kp_stale(now=6.1)
    # a camera that never had keypoints is marked too, counted from its first tile (7.1)
    st.add(_preview("cam1", 21), now=6.0)
    st.expire(now=7.1)
    st.add(_preview("cam1", 22), now=8.5)
    (_, tile), = st.expire(now=9.6)
    assert _decode_tile(tile)[0]["kp_stale"] and _decode_tile(tile)[0]["kp_age_s"] == 2.5


def test_dash_state_accounting_latency_desync_and_feed() -> None:
    st = DashState(CAMS, preview_step=2, desync_tolerance_ms=2.0)
    for i in range(3):
        st.add(protocol.Trigger(frame_id=i, t_trigger_ns=i))
    st.add(_pose(2))
    st.add(protocol.Health(proc="cam1", pid=1, state="running", t_ns=1, counters={"frames": 5}))
    st.add(protocol.Health(proc="cam1", pid=1, state="running", t_ns=1_000_000_001,
                           counters={"frames": 35, "dropped": 2}, last_error="2 dropped"))
    s = st.snapshot()
    assert s["frames"] == {**s["frames"], "triggered": 3, "fused": 1, "skipped": 1,
                           "in_flight": 1, "dropped_frames": 2}
    assert s["latency_ms"]["inference"]["p50"] == pytest.approx(10.0)
    assert s["cameras"]["cam1"]["desync_ms"] == pytest.approx(1.5)
    assert s["cameras"]["cam1"]["desync"] is False
    assert s["cameras"]["cam1"]["fps"] == pytest.approx(30.0)
    assert any("dropped +2" in e["msg"] for e in s["feed"])
    json.dumps(s)  # JSON-able


class FakeControl:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[dict[str, Any]] = []

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.fail:
            raise ControlUnavailable("no answer from the supervisor's control socket")
        self.calls.append(body)
        return {"ok": True, "session": "sessions/x"}


TOKEN = "s3cret-token-for-tests"
WS = "ws://127.0.0.1:8765/ws"


def _client(control: Any = None, auth: bool = True) -> tuple[TestClient, Hub]:
    """A client of the app on 127.0.0.1 that sends the token (``auth``) as a bearer."""
    hub = Hub(DashState(CAMS, 2, 2.0), META, control, TOKEN)
    headers = {"Authorization": f"Bearer {TOKEN}"} if auth else {}
    return TestClient(create_app(hub), base_url="http://127.0.0.1:8765", headers=headers), hub


def test_dash_api_status_metrics_and_unknown_route() -> None:
    c, hub = _client()
    hub.state.add(_pose(0))
    r = c.get("/api/status")
    assert r.status_code == 200 and r.json()["frames"]["fused"] == 1
    assert c.get("/api/meta").json()["keypoints"] == ["a", "b"]
    m = c.get("/metrics")
    assert m.status_code == 200 and "text/plain" in m.headers["content-type"]
    assert 'livepose_framesets_total{outcome="fused"} 1.0' in m.text
    assert 'livepose_latency_ms{quantile="0.5",stage="total"}' in m.text
    r = c.get("/no/such/thing")
    assert r.status_code == 404 and "unknown route" in r.json()["error"]
    assert c.get("/").status_code == 200
    assert c.get("/static/vendor/three/LICENSE").status_code == 200


def test_dash_token_is_always_required() -> None:
    c, _ = _client(auth=False)
    for path in ("/", "/api/status", "/metrics", "/static/app.js"):
        assert c.get(path).status_code == 401, path
    r = c.post("/api/record", json={"action": "stop"})
    assert r.status_code == 401 and "token" in r.json()["error"]
    assert c.get("/api/status?token=wrong-token").status_code == 401
    assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    # Prometheus: bearer token
    assert c.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    # the printed URL: ?token=… once, then the cookie the page set
    first = c.get(f"/?token={TOKEN}")
    assert first.status_code == 200 and "httponly" in first.headers["set-cookie"].lower()
    assert c.get("/api/status").status_code == 200  # the cookie alone is enough now
    c.cookies.clear()
    with pytest.raises(Exception), c.websocket_connect(WS) as ws:  # noqa: B017
        ws.receive_text()
    # a hub made without a token makes its own: never open
    hub = Hub(DashState(CAMS, 2, 2.0), META)
    open_c = TestClient(create_app(hub), base_url="http://127.0.0.1")
    assert len(hub.token) >= 32 and open_c.get("/api/status").status_code == 401


def test_dash_foreign_host_is_refused_before_the_token() -> None:
    c, _ = _client()  # with the right token…
    for host in ("evil.example", "evil.example:8765", "192.168.7.7", "localhost.evil.example"):
        r = c.get("/api/status", headers={"Host": host})
        assert r.status_code == 403 and "allowed_hosts" in r.json()["error"], host
    for host in ("127.0.0.1:8765", "localhost", "[::1]:8765"):
        assert c.get("/api/status", headers={"Host": host}).status_code == 200, host
    hub = Hub(DashState(CAMS, 2, 2.0), META, None, TOKEN,
              allowed_hosts("0.0.0.0", ["rig.lab.example", "10.0.0.5"]))
    c2 = TestClient(create_app(hub), base_url="http://rig.lab.example:8765",
                    headers={"Authorization": f"Bearer {TOKEN}"})
    assert c2.get("/api/status").status_code == 200
    assert c2.get("/api/status", headers={"Host": "10.0.0.5:8765"}).status_code == 200
    assert c2.get("/api/status", headers={"Host": "10.0.0.6"}).status_code == 403
    assert host_of("[::1]:80") == "::1" and host_of("Rig:1") == "rig"


def test_dash_record_button_api() -> None:
    ctl = FakeControl()
    c, _ = _client(control=ctl)
    assert c.post("/api/record", json={"action": "start", "name": "t1"}).status_code == 200
    assert c.post("/api/record", json={"action": "stop"}).status_code == 200
    assert ctl.calls == [{"cmd": "record_start", "name": "t1"}, {"cmd": "record_stop"}]
    assert c.post("/api/record", json={"action": "start"}).status_code == 400  # no name
    assert c.post("/api/record", content=b"\xff garbage").status_code == 415  # not JSON
    bad = c.post("/api/record", content=b"\xff", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400
    c2, _ = _client(control=FakeControl(fail=True))
    r = c2.post("/api/record", json={"action": "stop"})
    assert r.status_code == 503 and "no answer" in r.json()["error"]
    c3, _ = _client(control=None)
    assert c3.post("/api/record", json={"action": "stop"}).status_code == 503


def test_dash_websocket_ignores_garbage_and_keeps_serving(caplog: pytest.LogCaptureFixture) -> None:
    c, hub = _client()
    with caplog.at_level(logging.WARNING), c.websocket_connect(WS) as ws:
        first = [json.loads(ws.receive_text())["type"] for _ in range(2)]
        assert first == ["meta", "status"]
        ws.send_bytes(b"\x00\x01 not json")
        ws.send_text("{not json")
        ws.send_text(json.dumps({"type": "ping"}))
        assert json.loads(ws.receive_text())["type"] == "pong"
    assert "ignored a websocket message" in caplog.text
    assert hub.clients == set()
    # a page of another site may not open the stream, nor a rebound name of this host
    for origin in ("http://evil.example", "http://evil.example:8765", "null", "file://"):
        with pytest.raises(Exception), c.websocket_connect(  # noqa: B017
            WS, headers={"Origin": origin}
        ) as ws:
            ws.receive_text()
    with c.websocket_connect(WS, headers={"Origin": "http://localhost:8765"}) as ws:
        assert json.loads(ws.receive_text())["type"] == "meta"


def test_dash_state_sends_individuals_by_track_id() -> None:
    st = DashState(CAMS, preview_step=2, desync_tolerance_ms=2.0)
    msg = _pose(3)
    msg.ind_ids = np.array([4, 9], np.int32)
    msg.ind_xyz = np.stack([msg.xyz, msg.xyz + 10.0])
    st.add(msg)
    assert st.pose is not None
    inds = st.pose["individuals"]
    assert [i["id"] for i in inds] == [4, 9]
    assert inds[1]["xyz"][0] == [11.0, 12.0, 13.0] and inds[1]["xyz"][1][0] is None
    st.add(_pose(4))  # a single-animal pose has no individuals
    assert "individuals" not in st.pose


def test_dash_state_tiles_show_every_instance_by_its_individuals_id() -> None:
    st = DashState(CAMS, preview_step=2, desync_tolerance_ms=2.0)
    pose = _pose(5)
    pose.ind_ids = np.array([2, 7], np.int32)
    pose.ind_track = np.array([11, 12], np.int32)  # keys: crops name their owner by these
    pose.ind_xyz = np.stack([pose.xyz, pose.xyz])
    st.add(pose)
    kp = _kp2d(6)
    kp.points = np.full_like(kp.points, np.nan)  # several animals: the instances say it all
    kp.inst_points = np.array([[[20, 10, 0.9], [np.nan, np.nan, np.nan]],
                               [[40, 30, 0.8], [42, 32, 0.7]],
                               [[4, 2, 0.5], [8, 6, 0.1]],
                               [[60, 50, 0.6], [62, 52, 0.6]]], np.float32)
    kp.inst_cams = np.array([0, 0, 1, 0], np.uint8)
    kp.inst_owner = np.array([12, -1, 11, 99], np.int32)  # 99: a track that is gone
    st.add(kp)
    head, _ = _decode_tile(st.add(_preview(CAMS[0], 6))[0][1])
    assert head["kp"] == []
    assert [i["id"] for i in head["inst"]] == [7, None, None]
    assert head["inst"][0]["kp"] == [[10.0, 5.0, 0.9], [None, None, None]]  # preview pixels
    assert head["inst"][1]["kp"][1] == [21.0, 16.0, 0.7]
    head, _ = _decode_tile(st.add(_preview(CAMS[1], 6))[0][1])
    assert [i["id"] for i in head["inst"]] == [2]
    pose.ind_ids = np.array([7, 2], np.int32)  # a user swapped the ids: the colours follow
    st.add(pose)
    kp.frame_id = 7
    st.add(kp)
    head, _ = _decode_tile(st.add(_preview(CAMS[1], 7))[0][1])
    assert [i["id"] for i in head["inst"]] == [7]


def test_dash_state_calibration_status_and_drift_banner_data() -> None:
    st = DashState(CAMS, preview_step=2, desync_tolerance_ms=2.0)
    s = st.snapshot()
    assert s["calibration"] is None and s["drift"] == []
    cal = {"frames": 9, "kept": 4, "enough": False, "state": "collecting",
           "targets": {"views": 20, "coverage": 0.5, "pair_views": 8},
           "cameras": [{"name": "cam0", "views": 4, "coverage": 0.1, "grid": [[0, 2]],
                        "reproj_px": None, "message": None}], "pairs": [["cam0", "cam1", 3]]}
    st.add(protocol.Health(proc="calib", pid=2, state="running", t_ns=1, info={"calib": cal}))
    assert st.snapshot()["calibration"] == cal
    # a malformed status is shown as absent, never breaks the snapshot
    st.add(protocol.Health(proc="calib", pid=2, state="running", t_ns=2,
                           info={"calib": {"cameras": "nope"}}))
    assert st.snapshot()["calibration"] is None
    drift = {"cam1": {"shift_px": 6.2, "angle_deg": 0.48, "frame_id": 300},
             "cam0": {"shift_px": 3.1, "angle_deg": 0.2, "frame_id": 500}, "bad": 7}
    st.add(protocol.Health(proc="fusion", pid=3, state="running", t_ns=3,
                           info={"drift": drift}, last_error="calibration drift: camera cam1"))
    s = st.snapshot()
    assert [d["camera"] for d in s["drift"]] == ["cam1", "cam0"]  # largest shift first
    assert s["drift"][0] == {"camera": "cam1", "shift_px": 6.2, "angle_deg": 0.48,
                             "frame_id": 300}
    json.dumps(s)


def test_dash_swap_ids_api() -> None:
    ctl = FakeControl()
    c, _ = _client(control=ctl)
    assert c.post("/api/ids", json={"action": "swap", "a": 0, "b": 2}).status_code == 200
    assert c.post("/api/ids", json={"action": "set", "current": 1, "new": 0}).status_code == 200
    assert ctl.calls == [{"cmd": "swap_ids", "a": 0, "b": 2},
                         {"cmd": "set_id", "current": 1, "new": 0}]
    assert c.post("/api/ids", json={"action": "rename"}).status_code == 400
    assert c.post("/api/ids", content=b"{}").status_code == 415  # not JSON
    c3, _ = _client(control=None)
    assert c3.post("/api/ids", json={"action": "swap", "a": 0, "b": 1}).status_code == 503
