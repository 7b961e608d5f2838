"""The inference worker loop over real ZeroMQ sockets (ipc), run in a thread."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
import zmq
from onnx import TensorProto, helper

from livepose.core import protocol
from livepose.core.config import Config, parse_config
from livepose.core.errors import UserError
from livepose.inference import worker
from livepose.kit.process import StageContext
from livepose.transport import codec

S = 64  # frame and model size (the smallest sim frame)
STRIDE = 4
CAMS = ["cam0", "cam1", "cam2"]


def make_model(folder: Path, size: int = S) -> Path:
    """AveragePool(stride) heatmap model with one keypoint."""
    graph = helper.make_graph(
        [helper.make_node("AveragePool", ["image"], ["heatmaps"],
                          kernel_shape=[STRIDE, STRIDE], strides=[STRIDE, STRIDE])],
        "pool",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT,
                                       ["N", 1, size // STRIDE, size // STRIDE])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "manifest.yaml").write_text(yaml.safe_dump({
        "format": "livepose-model/1", "name": "pool-test", "file": "model.onnx",
        "input": {"name": "image", "layout": "NCHW", "width": size, "height": size,
                  "channels": 1, "color": "mono", "scale": 1 / 255, "mean": [0.0],
                  "std": [1.0], "resize": "none"},
        "output": {"name": "heatmaps", "type": "heatmap", "stride": STRIDE},
        "keypoints": ["blob"],
    }))
    return folder / "model.onnx"


def config(tmp_path: Path, **model: Any) -> Config:
    return parse_config({
        "cameras": [{"name": c, "backend": "sim"} for c in CAMS],
        "sim": {"width": S, "height": S},
        "model": {"path": str(make_model(tmp_path)), "intra_op_threads": 1, **model},
    })


def blob(cx: float, cy: float) -> np.ndarray:
    y, x = np.mgrid[0:S, 0:S]
    return (250 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 18.0)).astype(np.uint8)


def test_preflight(tmp_path: Path) -> None:
    worker.preflight(config(tmp_path))
    with pytest.raises(UserError, match="sim frames are 80×64"):
        cfg = config(tmp_path)
        cfg.sim.width = 80
        worker.preflight(cfg)
    with pytest.raises(UserError, match=r"model\.providers"):
        worker.preflight(config(tmp_path, providers=["NoSuchExecutionProvider"]))


def recv_until(sub: zmq.Socket[Any], n: int, timeout_s: float = 10.0) -> list[protocol.Kp2d]:
    out: list[protocol.Kp2d] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        if sub.poll(50):
            msg = protocol.decode_strict(sub.recv_multipart(copy=False))
            assert isinstance(msg, protocol.Kp2d)
            out.append(msg)
    return out


@contextlib.contextmanager
def running_worker(tmp_path: Path, cfg: Config) -> Iterator[
        tuple[StageContext, dict[str, Any], Any, list[BaseException]]]:
    """Worker 0 of ``cfg`` running in a thread on ipc endpoints in ``tmp_path``: yields its
    context, the cameras' bound PUB sockets, a SUB connected to its kp2d, and the exceptions
    it raised; stops it, checks that it ended and closes everything on exit."""
    eps = {f"frame/{c}": f"ipc://{tmp_path}/f-{c}.sock" for c in CAMS}
    eps["kp2d/0"] = f"ipc://{tmp_path}/kp2d-0.sock"
    zctx: zmq.Context[Any] = zmq.Context()
    ctx = StageContext(name="infer0", cfg=cfg, endpoints=eps, args={"worker": 0},
                       zmq_ctx=zctx)
    pubs = {c: zctx.socket(zmq.PUB) for c in CAMS}
    for c, s in pubs.items():
        s.setsockopt(zmq.LINGER, 0)
        s.bind(eps[f"frame/{c}"])
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"kp2d")
    sub.connect(eps["kp2d/0"])
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.main(ctx)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield ctx, pubs, sub, errors
    finally:
        ctx.request_stop()
        t.join(5)
        for s in [*pubs.values(), sub]:
            s.close(linger=0)
        ctx.close()
    assert not t.is_alive()


@pytest.mark.timeout(60)
def test_worker_loop(tmp_path: Path) -> None:
    with running_worker(tmp_path, config(tmp_path)) as (ctx, pubs, sub, errors):
        deadline = time.monotonic() + 30
        while ctx._state != "ready" and time.monotonic() < deadline and not errors:
            time.sleep(0.01)
        assert not errors and ctx._state == "ready"
        assert ctx.info["provider"] == "CPUExecutionProvider" and ctx.info["model"] == "pool-test"

        def send(c: str, fid: int, image: np.ndarray, fmt: str = "Mono8") -> None:
            f = protocol.Frame(cam=c, frame_id=fid, t_grab_ns=10 + fid, pixel_format=fmt,
                               image=image, t_trigger_ns=fid * 100 + CAMS.index(c))
            pubs[c].send_multipart(protocol.encode(f))

        # wait until the subscriptions are through (slow joiner)
        b = recv_until_probe(send, sub)
        img = blob(20.5, 40.5)
        for c in CAMS:  # frame b: complete
            send(c, b, img)
        msgs = recv_until(sub, 1)
        send("cam0", b + 1, img)  # cam1, cam2 lost
        send("cam0", b + 3, img)  # frame b + 2 never sent by anyone
        send("cam1", b + 3, np.zeros((S, S, 3), np.uint8))  # bad frame: colour labelled Mono8
        send("cam2", b + 3, img)
        pubs["cam0"].send_multipart([b"frame/cam0", b"garbage"])  # malformed
        msgs += recv_until(sub, 1)
        assert [m.frame_id for m in msgs] == [b, b + 3]
        m1, m4 = msgs
        assert m1.points.shape == (3, 1, 3) and m1.cams == CAMS and m1.model == "pool-test"
        np.testing.assert_allclose(m1.points[:, 0, :2], [[20.5, 40.5]] * 3, atol=0.5)
        assert m1.t_trigger_ns == 100 * b and m1.t_grab_ns == [10 + b] * 3
        assert m1.t_set_ns <= m1.t_infer_start_ns <= m1.t_infer_end_ns <= m1.t_pub_ns
        assert m1.worker == 0 and m1.skipped == [] and m1.incomplete == []
        assert m4.incomplete == [b + 1, b + 2] and m4.skipped == []
        assert np.isnan(m4.points[1]).all() and np.isfinite(m4.points[[0, 2]]).all()
        deadline = time.monotonic() + 5
        while ctx.counters["rejected"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        cnt = ctx.counters
        assert cnt["inferred"] >= 3 and cnt["bad_frames"] == 1 and cnt["rejected"] == 1
        assert cnt["incomplete"] >= 2 and cnt["gaps/cam1"] >= 2 and cnt["gaps/cam2"] >= 2  # + probe
    assert not errors


def recv_until_probe(send: Any, sub: zmq.Socket[Any]) -> int:
    """Send frame-sets 0, 1, 2… until one's kp2d comes back (ZeroMQ subscriptions take a
    moment); return the next free frame-id."""
    img = blob(10, 10)
    deadline = time.monotonic() + 10
    fid = 0
    while time.monotonic() < deadline:
        for c in CAMS:
            send(c, fid, img)
        fid += 1
        if recv_until(sub, 1, timeout_s=0.2):
            while sub.poll(300):  # late answers to earlier probes: not the test's business
                sub.recv_multipart()
            return fid
    raise AssertionError("the worker never answered")


@pytest.mark.timeout(60)
def test_worker_reads_frames_from_rings_and_detects_overrun(tmp_path: Path) -> None:
    """Frames whose pixels are in the cameras' frame rings (livepose.transport.shmring): read in place;
    a frame overwritten in its ring while the worker held it (waiting for the other views)
    is blanked and counted (``shm_overrun``), never inferred from the wrong pixels."""
    from livepose.transport import shmring

    cfg = config(tmp_path)
    cfg.transport.frames = "shm"
    cfg.fps = 5.0  # the frame-set deadline (0.5 frame) is 100 ms: let the worker wait 2 s
    cfg.frameset.deadline_frames = 10.0
    rings = {c: shmring.FrameRing(c, 4, S * S) for c in CAMS}

    def send(c: str, fid: int, image: np.ndarray) -> None:
        f = protocol.Frame(cam=c, frame_id=fid, t_grab_ns=fid, pixel_format="Mono8",
                           image=image)
        pubs[c].send_multipart(codec.encode_in_ring(f, rings[c]))

    try:
        with running_worker(tmp_path, cfg) as (ctx, pubs, sub, errors):
            b = recv_until_probe(send, sub)
            img = blob(30.5, 20.5)
            for c in CAMS:
                send(c, b, img)
            (m,) = recv_until(sub, 1)
            np.testing.assert_allclose(m.points[:, 0, :2], [[30.5, 20.5]] * 3, atol=0.5)
            send("cam0", b + 1, img)
            time.sleep(0.5)  # the worker holds cam0's view, waiting for cam1 and cam2
            for _ in range(4):  # cam0's ring goes round: its slot is reused
                rings["cam0"].put(np.zeros((S, S), np.uint8))
            send("cam1", b + 1, img)
            send("cam2", b + 1, img)
            (m,) = recv_until(sub, 1)
            assert m.frame_id == b + 1
            assert np.isnan(m.points[0]).all() and np.isfinite(m.points[1:, 0, :2]).all()
            assert ctx.counters["shm_overrun"] == 1 and ctx.counters["bad_frames"] == 0
            # after the first frame of each camera, the worker took frames from the rings
            assert ctx.counters["shm_followed"] == len(CAMS)
            assert not errors
    finally:
        for r in rings.values():
            r.close()


@pytest.mark.timeout(60)
def test_frame_set_policy_deadline_then_gone_camera_not_waited_for(tmp_path: Path) -> None:
    """A set lacking cam2 goes out at the deadline with cam2's view NaN and named missing;
    after ``gone_after_sets`` such sets cam2 is gone and sets go out as soon as the others
    delivered (no deadline paid); cam2's next frame makes it rejoin."""
    cfg = config(tmp_path)
    cfg.fps = 0.5  # deadline: 0.5 frame = 1 s, far above the worker's own latency
    cfg.frameset.gone_after_sets = 2

    def send(c: str, fid: int, image: np.ndarray) -> None:
        f = protocol.Frame(cam=c, frame_id=fid, t_grab_ns=fid, pixel_format="Mono8",
                           image=image)
        pubs[c].send_multipart(protocol.encode(f))

    with running_worker(tmp_path, cfg) as (ctx, pubs, sub, errors):
        b = recv_until_probe(send, sub)
        img = blob(30.5, 20.5)
        waits = []
        for fid in range(b, b + 4):
            t0 = time.monotonic()
            for c in ("cam0", "cam1"):
                send(c, fid, img)
            (m,) = recv_until(sub, 1)
            waits.append(time.monotonic() - t0)
            assert m.frame_id == fid and m.missing == ["cam2"]
            assert np.isnan(m.points[2]).all() and np.isfinite(m.points[:2, 0, :2]).all()
        assert min(waits[:2]) >= 0.9  # the first two waited for the deadline
        assert max(waits[2:]) < 0.5  # then cam2 was gone: no wait
        assert wait_counter(ctx, "partial", 4) and ctx.counters["gone/cam2"] == 1
        for c in ("cam2", "cam0", "cam1"):  # cam2 is back (its frame first: a gone camera
            send(c, b + 4, img)  # is not waited for, so a later one could miss the set)
        (m,) = recv_until(sub, 1)
        assert m.missing == [] and np.isfinite(m.points[:, 0, :2]).all()
        assert wait_counter(ctx, "rejoined/cam2", 1)
        assert not errors


def wait_counter(ctx: StageContext, key: str, value: int, timeout_s: float = 2.0) -> bool:
    """Whether ``ctx.counters[key]`` reaches ``value`` (counters reach the context at the
    worker's next loop turn)."""
    deadline = time.monotonic() + timeout_s
    while ctx.counters[key] < value and time.monotonic() < deadline:
        time.sleep(0.02)
    return ctx.counters[key] == value
