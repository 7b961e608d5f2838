"""``livepose bench record``: record a simulated rig with the live pipeline, check every frame.

1. **Sweep** (``--sweep``): the highest rate each codec sustains here — one process per
   camera (as in a run), each encoding sim frames as fast as it can for a few seconds
   (``encode_fps_per_camera``: what a real camera's writer sustains), then each rendering a
   sim frame *and* encoding it, as a sim camera process does (``sim_rig_fps_per_camera``);
   the sustainable rate of the sim rig is 80 % of the slowest camera's render + encode
   throughput (on 2 cores the render is the larger share: an encoder-only figure
   over-promised and the sim cameras fell behind the trigger at it).
2. **Run**: ``cameras`` sim cameras at 640×512 and ``fps`` (default: 100, or the sustainable
   rate of the codec when lower) with inference and fusion running, recording for
   ``seconds``; then every camera's video is decoded and each frame's checksum compared with
   the one published (frame table), and the frames in the video counted against the pulses.

The live model is a small pooling network at the camera resolution (built with ``onnx``, a
dev dependency), so the pipeline runs at the rig's full resolution on CPU.
"""

from __future__ import annotations

import csv
import multiprocessing as mp
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from livepose.core.config import Config, RecordingConfig, parse_config
from livepose.core.errors import UserError

WIDTH, HEIGHT = 640, 512
SWEEP_S = 3.0
HEADROOM = 0.8


def pool_model(folder: Path, width: int, height: int, stride: int = 8) -> Path:
    """A one-keypoint AveragePool heatmap model of the given input size (needs ``onnx``)."""
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:
        raise UserError("bench record needs the 'onnx' package (dev dependency group)") from None
    import yaml

    graph = helper.make_graph(
        [helper.make_node("AveragePool", ["image"], ["heatmaps"],
                          kernel_shape=[stride, stride], strides=[stride, stride])],
        "pool",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, height, width])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT,
                                       ["N", 1, height // stride, width // stride])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "manifest.yaml").write_text(yaml.safe_dump({
        "format": "livepose-model/1", "name": "pool-bench", "file": "model.onnx",
        "input": {"name": "image", "layout": "NCHW", "width": width, "height": height,
                  "channels": 1, "color": "mono", "scale": 1 / 255, "mean": [0.0],
                  "std": [1.0], "resize": "none"},
        "output": {"name": "heatmaps", "type": "heatmap", "stride": stride},
        "keypoints": ["blob"],
    }))
    return folder / "model.onnx"


def bench_config(root: Path, model: Path, fps: float, codec: str, cameras: int,
                 width: int = WIDTH, height: int = HEIGHT) -> Config:
    """The sim rig of the bench (``cameras`` ≥ 2), recording into ``root``."""
    return parse_config({
        "name": "bench", "fps": fps,
        "cameras": [{"name": f"cam{i}", "backend": "sim"} for i in range(cameras)],
        "sim": {"width": width, "height": height},
        "model": {"path": str(model), "intra_op_threads": 1},
        "recording": {"enabled": True, "dir": str(root), "name": "bench", "codec": codec},
    })


def sim_frames(n: int, width: int = WIDTH, height: int = HEIGHT) -> list[np.ndarray]:
    """``n`` frames of the simulated rig (camera 0)."""
    from livepose.acquisition.sim.backend import SimCamera

    cfg = parse_config({"cameras": [{"name": "cam0", "backend": "sim"},
                                    {"name": "cam1", "backend": "sim"}],
                        "sim": {"width": width, "height": height}})
    cam = SimCamera(cfg.cameras[0], cfg=cfg, index=0)
    cam.open()
    cam.arm()
    out = []
    for i in range(n):
        cam.software_trigger(i, time.time_ns())
        g = cam.grab(5.0)
        if g is not None:
            out.append(g.image)
    cam.close()
    return out


def _encode_worker(args: tuple[str, list[np.ndarray], float, str, bool]) -> tuple[int, float, int]:
    from livepose.acquisition.encoders import open_sink

    codec, frames, seconds, folder, render = args
    rec = RecordingConfig.model_validate({"codec": codec})
    sink = open_sink(Path(folder), f"w{os.getpid()}{int(render)}", rec, 100.0, frames[0])
    cam = None
    if render:  # as a sim camera process: render each frame, then encode it
        from livepose.acquisition.sim.backend import SimCamera

        cfg = parse_config({"cameras": [{"name": "cam0", "backend": "sim"},
                                        {"name": "cam1", "backend": "sim"}],
                            "sim": {"width": frames[0].shape[1], "height": frames[0].shape[0]}})
        cam = SimCamera(cfg.cameras[0], cfg=cfg, index=0)
        cam.open()
        cam.arm()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        img = frames[n % len(frames)]
        if cam is not None:
            cam.software_trigger(n, time.time_ns())
            g = cam.grab(5.0)
            img = g.image if g is not None else img
        sink.write(img, n)
        n += 1
    if cam is not None:
        cam.close()
    sink.close()
    dt = time.perf_counter() - t0
    return n, dt, sink.path.stat().st_size


def encode_sweep(codecs: list[str], cameras: int, frames: list[np.ndarray],
          seconds: float = SWEEP_S) -> dict[str, dict[str, float]]:
    """Encode throughput per codec with one process per camera (as in a run)."""
    out: dict[str, dict[str, float]] = {}
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp, ctx.Pool(cameras) as pool:
        for codec in codecs:
            res = pool.map(_encode_worker, [(codec, frames, seconds, tmp, False)] * cameras)
            per_cam = min(n / dt for n, dt, _ in res)
            mb = sum(b for _, _, b in res) / 1e6 / max(dt for _, dt, _ in res)
            sim = pool.map(_encode_worker, [(codec, frames, seconds, tmp, True)] * cameras)
            sim_cam = min(n / dt for n, dt, _ in sim)
            out[codec] = {"encode_fps_per_camera": round(per_cam, 1),
                          "sim_rig_fps_per_camera": round(sim_cam, 1),
                          "sustainable_fps": round(HEADROOM * sim_cam, 1),
                          "disk_mb_s": round(mb, 1)}
    return out


def verify(session: Path, cams: list[str], pulses: int) -> dict[str, Any]:
    """Compare each camera's video with its frame table and the pulse count."""
    from livepose.acquisition.encoders import iter_frames
    from livepose.acquisition.recorder import image_checksum

    per_cam: dict[str, Any] = {}
    for cam in cams:
        with (session / "video" / f"{cam}_frames.csv").open() as f:
            rows = list(csv.DictReader(f))
        algo = "xxh3"
        recorded = [r for r in rows if r["recorded"] == "1"]
        video = next((session / "video").glob(f"{cam}.*[mkvraw]"))
        mismatches = decoded = 0
        for i, img in enumerate(iter_frames(video)):
            decoded += 1
            if i >= len(recorded) or image_checksum(img, algo) != recorded[i]["checksum"]:
                mismatches += 1
        ids = {int(r["frame_id"]) for r in recorded}
        per_cam[cam] = {"rows": len(rows), "recorded": len(recorded), "decoded": decoded,
                        "not_recorded": len(rows) - len(recorded),
                        "dropped_by_camera": sum(int(r["dropped_before"]) for r in rows),
                        "missing": len(set(range(pulses)) - ids),
                        "checksum_mismatches": mismatches + abs(len(recorded) - decoded),
                        "video_bytes": video.stat().st_size}
    return per_cam


def run_bench(seconds: float = 60.0, fps: float | None = None, codec: str = "ffv1",
              cameras: int = 4, sweep: bool = True, log_level: int = 30) -> dict[str, Any]:
    """Run the benchmark; returns ``{"summary": …, "sweep": …, "cameras": …}``.

    ``fps`` ``None``: 100, or the codec's sustainable rate when lower.
    """
    if cameras < 2:
        raise UserError("bench record needs at least 2 cameras (fusion)")
    frames = sim_frames(24)
    codecs = sorted({"ffv1", "h264", "raw", codec}) if sweep else [codec]
    swept = encode_sweep(codecs, cameras, frames) if sweep or fps is None else {}
    target = fps if fps is not None else min(100.0, swept[codec]["sustainable_fps"])
    pulses = round(seconds * target)
    with tempfile.TemporaryDirectory(prefix="livepose-bench-rec-") as tmp:
        root = Path(tmp)
        cfg = bench_config(root / "sessions", pool_model(root / "model", WIDTH, HEIGHT),
                           target, codec, cameras)
        run = record_run(cfg, pulses, log_level)
        session = Path(run["session"]["path"])
        per_cam = verify(session, cfg.camera_names, pulses)
    video_mb = sum(c["video_bytes"] for c in per_cam.values()) / 1e6
    cpu = run["cpu_s"]
    summary = {
        "codec": codec, "cameras": cameras, "width": WIDTH, "height": HEIGHT, "fps": target,
        "seconds": seconds, "frames_triggered": pulses * cameras,
        "frames_missing": sum(c["missing"] for c in per_cam.values()),
        "frames_not_recorded": sum(c["not_recorded"] for c in per_cam.values()),
        "frames_dropped_by_camera": sum(c["dropped_by_camera"] for c in per_cam.values()),
        "checksum_mismatches": sum(c["checksum_mismatches"] for c in per_cam.values()),
        "session_state": run["session"].get("state"),
        "session_reason": run["session"].get("reason"),
        "framesets_fused": run["fused"], "trigger_s": round(run["trigger_s"], 2),
        "cpu_cores": {"total": round(sum(cpu.values()) / run["trigger_s"], 2),
                      "cameras": round(sum(v for k, v in cpu.items() if k in cfg.camera_names)
                                       / run["trigger_s"], 2),
                "encoders": round(sum(v for k, v in cpu.items() if k.startswith("enc-"))
                                  / run["trigger_s"], 2)},
        "disk_mb_s": round(video_mb / run["trigger_s"], 1),
        "sustainable_fps": {k: v["sustainable_fps"] for k, v in swept.items()},
    }
    return {"summary": summary, "sweep": swept, "cameras": per_cam, "cpu_s": cpu,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}}


def record_run(cfg: Config, pulses: int, log_level: int = 30) -> dict[str, Any]:
    """Run the pipeline for ``pulses`` pulses, recording; CPU seconds per process while the
    trigger ran, and the session's final status."""
    from livepose.bench.acquisition import _cpu_s
    from livepose.runtime.supervisor import Supervisor

    with Supervisor(cfg, trigger_count=pulses, log_level=log_level) as sup:
        sup.launch()
        cpu0 = {n: _cpu_s(p.pid) for n, p in sup.procs.items()}
        sup.start_trigger()
        t0 = time.monotonic()
        while sup.health.get("trigger") is None or sup.health["trigger"].state != "done":
            sup.poll(0.05)
        trigger_s = time.monotonic() - t0
        cpu = {n: _cpu_s(p.pid) - cpu0.get(n, 0.0) for n, p in sup.procs.items()}
        t_end = time.monotonic() + 120.0  # cameras behind the clock catch up (or give up)
        while time.monotonic() < t_end and any(
            sup.counters(c).get("frames", 0) + sup.counters(c).get("dropped", 0) < pulses
            for c in cfg.camera_names
        ):
            sup.poll(0.05)
        t_end = time.monotonic() + 3.0  # the last frame-sets
        while time.monotonic() < t_end:
            sup.poll(0.05)
        fused = sup.counters("fusion").get("fused", 0)
    assert sup.recording.last is not None
    return {"session": sup.recording.last, "cpu_s": cpu, "trigger_s": trigger_s,
            "fused": fused}
