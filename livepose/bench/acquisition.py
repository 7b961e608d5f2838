"""Acquisition alone in real processes: the camera processes and the trigger clock, no
inference or fusion. Used by the pylon-emulation tests and by ``livepose bench acquisition``.

:func:`run_acquisition` spawns every camera of a config and the trigger (the same stage
mains and supervisor as ``livepose run``), subscribes to every ``frame/<cam>`` before pulse 0,
hands each frame to a callback, and returns per-camera facts: frame ids received, the
cameras' own health counters (dropped, failed buffers, reconnects), CPU time.

``bench acquisition``: ``PYLON_CAMEMU`` emulated Basler cameras serving numbered PNGs,
software-triggered at 90 fps; every frame is checked against the image its exposure must
show (``frames_misaligned``), and every pulse must be delivered or counted as dropped. A pulse
the camera could not be fired for within ``desync_tolerance_ms`` is skipped and counted
(``trigger_late``, ``trigger_not_ready``; acquisition/swtrigger.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from livepose.core import protocol
from livepose.core.config import Config
from livepose.core.sync import DesyncTracker, frame_time_ns
from livepose.runtime.supervisor import CAMERA, TRIGGER, ProcSpec, Supervisor
from livepose.transport import codec, security
from livepose.transport import endpoints as eps


class AcquisitionSupervisor(Supervisor):
    """A :class:`~livepose.runtime.supervisor.Supervisor` that runs only the cameras and the trigger."""

    def preflight(self) -> None:
        """Nothing to check beyond the config: no model, no calibration needed."""
        self.calibration = ""
        self.keys = security.load_keys(self.cfg.transport)

    def launch(self, ready_timeout_s: float = 60.0) -> None:
        """Start the cameras and wait until each is armed (``ready``)."""
        self.preflight()
        self.endpoints = eps.resolve(self.cfg, self.run_dir)
        sub = self.zctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 100_000)
        sub.setsockopt(zmq.SUBSCRIBE, b"health/")
        security.bind(sub, self.endpoints["health"], self.keys)
        self._health_sub = sub
        self._specs = [ProcSpec(c.name, CAMERA, {"camera": i}) for i, c in enumerate(self.cfg.cameras)]
        self._specs.append(ProcSpec("trigger", TRIGGER, {"count": self.trigger_count}))
        for spec in self._specs[:-1]:
            self._spawn(spec)
        self.wait_state([s.name for s in self._specs[:-1]], "ready", ready_timeout_s)


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CameraResult:
    """What one camera delivered."""

    frame_ids: list[int] = field(default_factory=list)
    dropped_before: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    cpu_s: float = 0.0


def run_acquisition(
    cfg: Config,
    pulses: int,
    on_frame: Callable[[protocol.Frame, int], None] | None = None,
    timeout_s: float = 120.0,
) -> dict[str, CameraResult]:
    """Run the cameras of ``cfg`` for ``pulses`` trigger pulses.

    Parameters
    ----------
    cfg
        A config (any backends); ``cfg.fps`` is the trigger rate.
    pulses
        Trigger pulses to send.
    on_frame
        Called with every received frame and its receive time (``time.time_ns()``).
    timeout_s
        Give up waiting for the last frames after this long.

    Returns
    -------
    dict
        Camera name → :class:`CameraResult`.
    """
    out = {c: CameraResult() for c in cfg.camera_names}
    decoder = codec.Decoder(expect=["frame"])
    with AcquisitionSupervisor(cfg, trigger_count=pulses) as sup:
        sup.launch()
        sub = sup.zctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 100_000)
        sub.setsockopt(zmq.SUBSCRIBE, b"frame/")
        for cam in cfg.camera_names:
            security.connect(sub, sup.endpoints[f"frame/{cam}"], sup.keys)
        cpu0 = {c: _cpu_s(sup.procs[c].pid) for c in cfg.camera_names}
        sup.start_trigger()
        deadline = time.monotonic() + timeout_s
        idle_since: float | None = None
        try:
            while time.monotonic() < deadline:
                sup.poll(0)
                got = sub.poll(50)
                while got:
                    try:
                        parts = sub.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    msg = decoder.decode(parts)
                    if isinstance(msg, protocol.Frame):
                        r = out[msg.cam]
                        r.frame_ids.append(msg.frame_id)
                        r.dropped_before += msg.dropped_before
                        if on_frame is not None:
                            on_frame(msg, time.time_ns())
                h = sup.health.get("trigger")
                if h is None or h.state != "done":
                    continue
                last = [r.frame_ids[-1] if r.frame_ids else -1 for r in out.values()]
                if min(last) >= pulses - 1:
                    break
                if got:
                    idle_since = None
                    continue
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 2.0:
                    break
            for c in cfg.camera_names:
                out[c].cpu_s = _cpu_s(sup.procs[c].pid) - cpu0[c]
            # final counters: from health sent after the last frame arrived here
            for c, counters in sup.fresh_counters(cfg.camera_names).items():
                out[c].counters = counters
        finally:
            sub.close(0)
    return out


# --------------------------------------------------------------------------- the benchmark

SKIPS = ("trigger_late", "trigger_not_ready", "trigger_failed", "exposures_lost")
"""Pulses that gave no image, by cause (camera health counters; each is also in ``dropped``)."""


def numbered_images(folder: Path, n: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """Write ``n`` distinct noise PNGs ``000.png``… and return them (image ``k`` is what
    frame ``k mod n`` must show)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    imgs = []
    for k in range(n):
        im = rng.integers(0, 256, (height, width), dtype=np.uint8)
        Image.fromarray(im).save(folder / f"{k:03d}.png")
        imgs.append(im)
    return imgs


def bench_config(cameras: int, fps: float, width: int, height: int, image_root: Path) -> Config:
    """Emulated pylon cameras ``0815-000k`` serving ``image_root/cam<k>``."""
    from livepose.core.config import parse_config

    cams = [
        {
            "backend": "pylon",
            "name": f"cam{k}",
            "serial": f"0815-{k:04d}",
            "exposure_us": 100,
            "roi": {"width": width, "height": height},
            "emulation": {"image_dir": str(image_root / f"cam{k}")},
        }
        for k in range(cameras)
    ]
    return parse_config(
        {"fps": fps, "cameras": cams, "calibration": "unused.toml", "fusion": {"min_views": 2},
         # the checker compares every frame's pixels; a deep ring (5.7 s at 90 fps) so that a
         # slow moment of the checker is not a frame lost to an overwritten slot (it would
         # show as unaccounted)
         "transport": {"shm_slots": 512}}
    )


def run_bench(
    cameras: int = 3, fps: float = 90.0, duration_s: float = 60.0, width: int = 640,
    height: int = 512, images: int = 32,
) -> dict[str, Any]:
    """The acquisition benchmark (pylon emulation); returns the JSON-able result."""
    if cameras < 2:
        raise ValueError("cameras must be >= 2 (a frame-set needs two views)")
    root = Path(tempfile.mkdtemp(prefix="livepose-acqbench-"))
    expected = {f"cam{k}": numbered_images(root / f"cam{k}", images, width, height, seed=k)
                for k in range(cameras)}
    cfg = bench_config(cameras, fps, width, height, root)
    pulses = round(duration_s * fps)
    lat_pub: list[int] = []
    lat_trig: list[int] = []
    lat_trig_pub: list[int] = []
    span: dict[str, list[int]] = {}
    misaligned = 0
    desync = DesyncTracker(cfg.camera_names, cfg.desync_tolerance_ms)
    exposures = dict.fromkeys(cfg.camera_names, 0)  # frames each emulated camera exposed
    last_id = dict.fromkeys(cfg.camera_names, -1)

    def check(f: protocol.Frame, t_recv: int) -> None:
        """Misaligned: the image is not the one of this exposure (the emulator serves its
        PNGs one per exposure, so the image names the exposure), or the frame_id is not
        the previous one + 1 + the pulses counted as dropped in between (a pulse the camera
        never executed must be a counted gap, never a shift)."""
        nonlocal misaligned
        shown = exposures[f.cam] % images
        exposures[f.cam] += 1
        gap_ok = f.frame_id == last_id[f.cam] + 1 + f.dropped_before
        last_id[f.cam] = f.frame_id
        if not gap_ok or not np.array_equal(f.image, expected[f.cam][shown]):
            misaligned += 1
        if f.t_pub_ns is not None:
            lat_pub.append(f.t_pub_ns - f.t_grab_ns)
        if f.t_trigger_ns is not None:
            lat_trig.append(f.t_grab_ns - f.t_trigger_ns)
            if f.t_pub_ns is not None:
                lat_trig_pub.append(f.t_pub_ns - f.t_trigger_ns)
        desync.add(f.cam, f.frame_id, frame_time_ns(f.t_exposure_ns, f.t_grab_ns))
        s = span.setdefault(f.cam, [f.t_grab_ns, f.t_grab_ns])
        s[1] = f.t_grab_ns

    old = os.environ.get("PYLON_CAMEMU")
    os.environ["PYLON_CAMEMU"] = str(cameras)
    t0 = time.monotonic()
    try:
        res = run_acquisition(cfg, pulses, check, timeout_s=duration_s + 60)
    finally:
        if old is None:
            os.environ.pop("PYLON_CAMEMU", None)
        else:
            os.environ["PYLON_CAMEMU"] = old
        with contextlib.suppress(OSError):
            for p in sorted(root.rglob("*"), reverse=True):
                p.unlink() if p.is_file() else p.rmdir()
            root.rmdir()
    wall = time.monotonic() - t0
    per_cam = {}
    for cam, r in res.items():
        ids = set(r.frame_ids)
        # gaps the frames themselves declare (the health counter may miss the last report)
        dropped = max(int(r.counters.get("dropped", 0)), r.dropped_before)
        reached = (max(ids) + 1) if ids else 0  # pulses up to the last one the camera took
        per_cam[cam] = {
            "frames": len(r.frame_ids),
            "dropped": dropped,
            "failed_buffers": int(r.counters.get("failed_buffers", 0)),
            "duplicates": int(r.counters.get("duplicates", 0)),
            "unaccounted": reached - len(ids) - dropped,
            "pulses_not_reached": pulses - reached,  # still queued when the bench ended
            **{k: int(r.counters.get(k, 0)) for k in SKIPS},
            "cpu_ms_per_frame": 1e3 * r.cpu_s / max(1, len(r.frame_ids)),
        }
    rates = [
        (per_cam[c]["frames"] - 1) / ((b - a) / 1e9) for c, (a, b) in span.items() if b > a
    ]

    def pct(v: list[int], q: float) -> float | None:
        return float(np.percentile(v, q)) / 1e6 if v else None

    frames = sum(p["frames"] for p in per_cam.values())
    return {
        "benchmark": "acquisition",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "backend": "pylon camera emulation (PYLON_CAMEMU), software trigger",
        "config": {"cameras": cameras, "fps": fps, "duration_s": duration_s,
                   "width": width, "height": height, "pulses": pulses},
        "wall_s": wall,
        "cameras": per_cam,
        "latency_ms": {
            "grab_to_publish": {"p50": pct(lat_pub, 50), "p99": pct(lat_pub, 99)},
            "trigger_to_grab": {"p50": pct(lat_trig, 50), "p99": pct(lat_trig, 99)},
            "trigger_to_publish": {"p50": pct(lat_trig_pub, 50), "p99": pct(lat_trig_pub, 99)},
        },
        "desync": {"tolerance_ms": cfg.desync_tolerance_ms, **desync.counters,
                   "grab_spread_p99_ms": pct(desync.spreads_ns, 99)},
        "summary": {
            "cameras": cameras,
            "fps_achieved": float(np.mean(rates)) if rates else 0.0,
            "frames_received": frames,
            "frames_dropped": sum(p["dropped"] for p in per_cam.values()),
            "frames_misaligned": misaligned,
            "frames_unaccounted": sum(p["unaccounted"] for p in per_cam.values()),
            "pulses_not_reached": sum(p["pulses_not_reached"] for p in per_cam.values()),
            **{k: sum(p[k] for p in per_cam.values()) for k in SKIPS},
            "grab_to_publish_p99_ms": pct(lat_pub, 99),
            "trigger_to_publish_p99_ms": pct(lat_trig_pub, 99),
            "cpu_ms_per_frame": float(np.mean([p["cpu_ms_per_frame"] for p in per_cam.values()])),
        },
    }


def main(json_path: Path | None, **kwargs: Any) -> dict[str, Any]:
    """Run the benchmark and write ``json_path``."""
    result = run_bench(**kwargs)
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2))
    return result
