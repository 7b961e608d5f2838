"""3D-guided crops: placement from a known pose and cameras, fallbacks, and the worker path."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
import zmq
from onnx import TensorProto, helper

from livepose.acquisition.sim.rig import make_camera
from livepose.core import protocol
from livepose.core.calibration import write_calibration
from livepose.core.camera import CameraGroup, CameraModel
from livepose.core.config import parse_config
from livepose.core.errors import UserError
from livepose.inference import worker
from livepose.inference.crops import CropPlanner, PoseTrack, place_crop
from livepose.kit.process import StageContext

FPS = 100.0
F = 500.0  # px; the top camera is 1000 mm above the floor: 0.5 px per mm
FW, FH = 320, 256


def top_camera(name: str = "top", size: tuple[int, int] = (FW, FH)) -> CameraModel:
    """Looks straight down from (0, 0, 1000): world (x, y, 0) → pixel
    (0.5 x + cx, -0.5 y + cy), no distortion."""
    K = np.array([[F, 0, (size[0] - 1) / 2], [0, F, (size[1] - 1) / 2], [0, 0, 1.0]])
    return CameraModel(name=name, size=size, matrix=K, dist=np.zeros(5),
                       rvec=np.array([np.pi, 0.0, 0.0]), tvec=np.array([0.0, 0.0, 1000.0]))


def top_pixels(xyz: np.ndarray) -> np.ndarray:
    """The top camera's projection, written out by hand."""
    return np.stack([0.5 * xyz[:, 0] + (FW - 1) / 2, -0.5 * xyz[:, 1] + (FH - 1) / 2], axis=1)


def body(cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    """Five keypoints on the floor, 80 × 40 mm, centred on (cx, cy)."""
    return np.array([[-40, -20, 0], [40, 20, 0], [0, 0, 0], [20, -10, 0], [-10, 15, 0]],
                    dtype=np.float64) + np.array([cx, cy, 0.0])


def expected_crop(uv: np.ndarray, size: tuple[int, int], margin: float) -> tuple[int, int]:
    lo, hi = uv.min(axis=0) - margin, uv.max(axis=0) + margin
    c = (lo + hi) / 2
    x0 = int(np.clip(round(c[0] - (size[0] - 1) / 2), 0, FW - size[0]))
    y0 = int(np.clip(round(c[1] - (size[1] - 1) / 2), 0, FH - size[1]))
    return x0, y0


# --------------------------------------------------------------------------- placement


def test_place_crop_centres_on_the_box() -> None:
    uv = np.array([[100.0, 50.0], [140.0, 90.0], [120.0, 60.0]])
    x0, y0, w, h = place_crop(uv, (FW, FH), (64, 48), margin=2.0)
    assert (w, h) == (64, 48)
    # crop centre (x0 + (w-1)/2) within half a pixel of the box centre (120, 70)
    assert abs(x0 + 31.5 - 120.0) <= 0.5 and abs(y0 + 23.5 - 70.0) <= 0.5


@pytest.mark.parametrize(("uv", "want"), [
    ([[2.0, 3.0], [10.0, 8.0]], (0, 0)),
    ([[315.0, 250.0], [319.0, 255.0]], (FW - 64, FH - 48)),
    ([[-50.0, 100.0], [-10.0, 120.0]], (0, None)),
])
def test_place_crop_stays_inside_the_frame(uv: list[list[float]],
                                           want: tuple[int, int | None]) -> None:
    x0, y0, w, h = place_crop(np.array(uv), (FW, FH), (64, 48), margin=4.0)
    assert x0 == want[0] and (want[1] is None or y0 == want[1])
    assert 0 <= x0 <= FW - w and 0 <= y0 <= FH - h


def test_place_crop_grows_keeping_its_aspect_and_caps_at_the_frame() -> None:
    uv = np.array([[100.0, 100.0], [250.0, 130.0]])  # 150 + 2 × 5 = 160 wide
    x0, y0, w, h = place_crop(uv, (FW, FH), (64, 48), margin=5.0)
    assert (w, h) == (160, 120)  # × 2.5 both
    assert abs(x0 + (w - 1) / 2 - 175.0) <= 0.5 and abs(y0 + (h - 1) / 2 - 115.0) <= 0.5
    huge = np.array([[-500.0, 0.0], [900.0, 10.0]])
    assert place_crop(huge, (FW, FH), (64, 48), margin=0.0)[2:] == (FW, FH)


# --------------------------------------------------------------------------- track


def test_track_predicts_at_constant_velocity() -> None:
    tr = PoseTrack(FPS, max_age_s=0.1)
    assert tr.predict(0) == (None, "no_pose")
    p = body()
    tr.update(10, p)
    got, reason = tr.predict(12)
    assert reason is None and got is not None
    np.testing.assert_allclose(got, p)  # one pose: no velocity
    d = np.array([3.0, -1.0, 0.5])  # mm per frame
    tr.update(11, p + d)
    got, _ = tr.predict(14)
    assert got is not None
    np.testing.assert_allclose(got, p + 4 * d)
    got, _ = tr.predict(21)  # 0.1 s after the pose: still fresh
    assert got is not None
    assert tr.predict(22) == (None, "stale")
    assert tr.predict(0) == (None, "stale")  # 0.11 s before it


def test_track_lead_nan_late_and_restart() -> None:
    tr = PoseTrack(FPS, max_age_s=0.1)
    p = body()
    tr.update(10, p, lead_ns=5_000_000)  # predicted 5 ms ahead: it is the pose of t = 0.105
    q = p + np.array([2.0, 0.0, 0.0])
    q[1] = np.nan
    tr.update(11, q, lead_ns=5_000_000)
    v = tr.velocity()
    assert v is not None
    np.testing.assert_allclose(v[0], [200.0, 0.0, 0.0])  # mm/s
    assert (v[1] == 0).all()
    got, _ = tr.predict(12)  # t = 0.12, 5 ms after the latest pose
    assert got is not None
    np.testing.assert_allclose(got[0], q[0] + [1.0, 0.0, 0.0])
    assert np.isnan(got[1]).all()
    assert not tr.update(10, p)  # late: ignored
    assert tr.frame_id == 11
    assert tr.update(0, p)  # far behind: acquisition restarted
    assert tr.frame_id == 0 and tr.velocity() is None


# --------------------------------------------------------------------------- planner


def planner(cams: list[CameraModel], **kw: Any) -> CropPlanner:
    args: dict[str, Any] = dict(crop_size=(64, 48), margin=4.0, max_age_s=0.05,
                                min_keypoints=3, fps=FPS)
    args.update(kw)
    return CropPlanner(CameraGroup(cams), **args)


def test_planner_crops_around_the_projected_pose() -> None:
    pl = planner([top_camera("a"), top_camera("b")])
    p = body(30.0, -20.0)
    pl.update(5, p)
    plan = pl.plan(6, [(FW, FH), (FW, FH)])
    x0, y0 = expected_crop(top_pixels(p), (64, 48), 4.0)
    assert plan.rois == [(x0, y0, 64, 48)] * 2 and plan.reasons == [None, None]
    assert pl.counters["crops"] == 2 and pl.counters["full_frame_fallbacks"] == 0


def test_planner_moves_with_the_velocity() -> None:
    pl = planner([top_camera()])
    d = np.array([4.0, 2.0, 0.0])  # mm per frame → (2, -1) px per frame
    pl.update(5, body())
    pl.update(6, body() + d)
    plan = pl.plan(10, [(FW, FH)])
    assert plan.rois[0][:2] == expected_crop(top_pixels(body() + 5 * d), (64, 48), 4.0)


def test_planner_clamps_near_the_edge() -> None:
    pl = planner([top_camera()])
    p = body(-300.0, 230.0)  # pixels near the top-left corner, some outside
    uv = top_pixels(p)
    inside = (uv[:, 0] >= -0.5) & (uv[:, 1] >= -0.5)
    assert 3 <= inside.sum() < len(p)
    pl.update(1, p)
    assert pl.plan(2, [(FW, FH)]).rois == [(0, 0, 64, 48)]


def test_planner_fallbacks() -> None:
    pl = planner([top_camera("a"), top_camera("b")])
    full = (0, 0, FW, FH)
    plan = pl.plan(0, [(FW, FH)] * 2)
    assert plan.rois == [full, full] and plan.reasons == ["no_pose"] * 2
    pl.update(10, body())
    assert pl.plan(16, [(FW, FH)] * 2).reasons == ["stale"] * 2  # 0.06 s > 0.05 s
    assert pl.plan(15, [(FW, FH)] * 2).reasons == [None, None]
    few = body()
    few[2:] = np.nan  # 2 keypoints known, 3 needed
    pl.update(11, few)
    plan = pl.plan(12, [(FW, FH)] * 2)
    assert plan.rois == [full, full] and plan.reasons == ["few_keypoints"] * 2
    pl.update(12, body(2000.0, 0.0))  # far outside the view
    assert pl.plan(13, [(FW, FH)] * 2).reasons == ["outside"] * 2
    pl.update(13, body())
    pl.update(14, body())  # (13 alone: the velocity of the jump from 12 carries it away)
    plan = pl.plan(15, [(FW, FH), (FW // 2, FH // 2)])  # b's frame: not the calibrated size
    assert plan.reasons == [None, "size_mismatch"] and plan.rois[1] == (0, 0, FW // 2, FH // 2)
    c = pl.counters
    assert c["crops"] == 3 and c["full_frame_fallbacks"] == 9
    assert [c[f"fallback/{r}"] for r in ("no_pose", "stale", "few_keypoints", "outside",
                                         "size_mismatch")] == [2, 2, 2, 2, 1]


def test_planner_per_view_outside() -> None:
    side = top_camera("shifted")
    shifted = CameraModel(name="shifted", size=side.size, matrix=side.matrix, dist=side.dist,
                          rvec=side.rvec, tvec=side.tvec + np.array([900.0, 0.0, 0.0]))  # looks 900 mm away
    pl = planner([top_camera(), shifted])
    pl.update(1, body())
    plan = pl.plan(2, [(FW, FH)] * 2)
    assert plan.reasons == [None, "outside"] and plan.rois[1] == (0, 0, FW, FH)


def test_from_config_needs_a_calibration(tmp_path: Path) -> None:
    cfg = parse_config({"cameras": [{"name": n, "backend": "sim"} for n in ("a", "b")],
                        "model": {"crop": {"enabled": True, "min_keypoints": 2}}})
    with pytest.raises(UserError, match="calibration"):
        CropPlanner.from_config(cfg, None, (64, 48))
    cal = write_calibration(tmp_path / "cal.toml", [top_camera("b"), top_camera("a")])
    pl = CropPlanner.from_config(cfg, str(cal), (64, 48))
    assert pl.crop_size == (64, 48) and pl.min_keypoints == 2 and pl.track.fps == cfg.fps
    assert pl.cameras.names == ["a", "b"]  # the config's order
    cfg.model.crop.size = (100, 80)
    assert CropPlanner.from_config(cfg, str(cal), (64, 48)).crop_size == (100, 80)


def test_crop_config_checks() -> None:
    with pytest.raises(UserError, match="crop size"):
        parse_config({"cameras": [{"name": "a", "backend": "sim"}],
                      "model": {"crop": {"size": [4, 100]}}})


# --------------------------------------------------------------------------- worker

S = 64  # model input
STRIDE = 4
CAMS = ["cam0", "cam1", "cam2"]
WF, HF = 160, 128  # frames: larger than the model input


def pool_model(folder: Path) -> Path:
    """AveragePool(stride) 'heatmap' model, one keypoint: the peak is the blob."""
    graph = helper.make_graph(
        [helper.make_node("AveragePool", ["image"], ["heatmaps"],
                          kernel_shape=[STRIDE, STRIDE], strides=[STRIDE, STRIDE])],
        "pool",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, S, S])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT,
                                       ["N", 1, S // STRIDE, S // STRIDE])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "manifest.yaml").write_text(yaml.safe_dump({
        "format": "livepose-model/1", "name": "pool-crop", "file": "model.onnx",
        "input": {"name": "image", "layout": "NCHW", "width": S, "height": S, "channels": 1,
                  "color": "mono", "scale": 1 / 255, "mean": [0.0], "std": [1.0],
                  "resize": "none"},
        "output": {"name": "heatmaps", "type": "heatmap", "stride": STRIDE},
        "keypoints": ["blob"],
    }))
    return folder / "model.onnx"


def blob(cx: float, cy: float) -> np.ndarray:
    y, x = np.mgrid[0:HF, 0:WF]
    return (250 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 18.0)).astype(np.uint8)


@pytest.mark.timeout(60)
def test_worker_crop_path(tmp_path: Path) -> None:
    """Full frame until a pose arrives, then native-size crops around its projection
    (one clamped at the frame's edge); kp2d in full-frame pixels either way."""
    rig = CameraGroup([make_camera(c, (WF, HF), 30.0 + 120.0 * i, 50.0, 400.0, 150.0,
                                   [-0.1, 0.01, 0.0, 0.0, 0.0]) for i, c in enumerate(CAMS)])
    cal = write_calibration(tmp_path / "calibration.toml", rig)
    point = np.array([[60.0, -100.0, 10.0]])
    uv = rig.project(point)[:, 0]  # (C, 2): where each camera sees the blob
    assert ((uv > 4) & (uv < [WF - 4, HF - 4])).all()
    near_edge = (uv[:, 0] < S / 2) | (uv[:, 0] > WF - S / 2) | (uv[:, 1] < S / 2) \
        | (uv[:, 1] > HF - S / 2)
    assert near_edge.any() and not near_edge.all()  # one crop is clamped, others centred
    images = {c: blob(*uv[i]) for i, c in enumerate(CAMS)}
    cfg = parse_config({
        "cameras": [{"name": c, "backend": "sim"} for c in CAMS],
        "sim": {"width": WF, "height": HF}, "fps": 30.0,
        "model": {"path": str(pool_model(tmp_path)), "intra_op_threads": 1,
                  "crop": {"enabled": True, "min_keypoints": 1, "margin": 8}},
    })
    worker.preflight(cfg)  # frames ≠ model size is fine with crops
    eps = {f"frame/{c}": f"ipc://{tmp_path}/f-{c}.sock" for c in CAMS}
    eps["kp2d/0"] = f"ipc://{tmp_path}/kp2d-0.sock"
    eps["pose3d"] = f"ipc://{tmp_path}/pose3d.sock"
    zctx: zmq.Context[Any] = zmq.Context()
    ctx = StageContext(name="infer0", cfg=cfg, endpoints=eps,
                       args={"worker": 0, "calibration": str(cal)}, zmq_ctx=zctx)
    socks: list[zmq.Socket[Any]] = []

    def sock(kind: int, ep: str, bind: bool) -> zmq.Socket[Any]:
        s = zctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        s.bind(ep) if bind else s.connect(ep)
        socks.append(s)
        return s

    pubs = {c: sock(zmq.PUB, eps[f"frame/{c}"], True) for c in CAMS}
    pose_pub = sock(zmq.PUB, eps["pose3d"], True)
    sub = sock(zmq.SUB, eps["kp2d/0"], False)
    sub.setsockopt(zmq.SUBSCRIBE, b"kp2d")
    errors: list[BaseException] = []
    received: list[int] = []

    def run() -> None:
        try:
            worker.main(ctx)
        except BaseException as exc:
            errors.append(exc)

    def send_set(fid: int, wait_ms: int = 300) -> protocol.Kp2d | None:
        for c in CAMS:
            f = protocol.Frame(cam=c, frame_id=fid, t_grab_ns=fid, pixel_format="Mono8",
                               image=images[c])
            pubs[c].send_multipart(protocol.encode(f))
        # this set's kp2d only: a late answer to an earlier set (the slow-joiner loop gives
        # up after wait_ms) must not be taken for this one
        deadline = time.monotonic() + wait_ms / 1e3
        while (left := deadline - time.monotonic()) > 0 and sub.poll(int(left * 1e3) + 1):
            msg = protocol.decode_strict(sub.recv_multipart(copy=False))
            assert isinstance(msg, protocol.Kp2d)
            received.append(msg.frame_id)
            if msg.frame_id == fid:
                return msg
        return None

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 30
        while ctx._state != "ready" and time.monotonic() < deadline and not errors:
            time.sleep(0.01)
        assert not errors and ctx._state == "ready"
        fid, first = 0, None
        while first is None and fid < 50:  # slow joiner: until a kp2d comes back
            first = send_set(fid)
            fid += 1
        assert first is not None
        assert ctx.counters["crops"] == 0
        assert ctx.counters["fallback/no_pose"] >= 3 * len(received)
        # full frame letterboxed 2.5× down: still within a pixel or so
        np.testing.assert_allclose(first.points[:, 0, :2], uv, atol=1.5)
        cropped = None
        while cropped is None and fid < 100:  # until the worker has the pose
            pose = protocol.Pose3d(frame_id=fid - 1, xyz=point, variance=np.ones((1, 3)),
                                   reproj=np.zeros(1, np.float32),
                                   views=np.full(1, 7, np.uint16),
                                   status=np.ones(1, np.uint8))
            pose_pub.send_multipart(protocol.encode(pose))
            before = ctx.counters["crops"]
            msg = send_set(fid, 3000)  # kp2d is subscribed by now: only a slow answer
            fid += 1
            if msg is not None and ctx.counters["crops"] == before + 3:
                cropped = msg
        assert cropped is not None, dict(ctx.counters)
        # native-resolution crops: the blob comes back at its frame position, sub-pixel
        np.testing.assert_allclose(cropped.points[:, 0, :2], uv, atol=0.5)
        again = send_set(fid, 3000)  # the pose is 2 frame-sets old now: still fresh, cropped
        assert again is not None
        np.testing.assert_allclose(again.points[:, 0, :2], uv, atol=0.5)
        c = ctx.counters
        assert c["crops"] == 6 and c["crop_errors"] == 0
        assert c["full_frame_fallbacks"] == c["fallback/no_pose"] >= 3 * (len(received) - 2)
        # (sets whose kp2d was lost to the slow joiner count too: at most the frame ids sent)
        assert c["full_frame_fallbacks"] + c["crops"] <= 3 * (fid + 1)
    finally:
        ctx.request_stop()
        t.join(5)
        for s in socks:
            s.close(linger=0)
        ctx.close()
    assert not t.is_alive() and not errors
