"""``livepose demo`` / ``livepose run``: run a pipeline with a live terminal view and a summary.

The summary (printed, and written with ``--json``) holds the frame accounting, per-camera
rates and drops, per-stage latency, inference time and — on a simulated rig — the live 3D
error against ground truth.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import signal
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from livepose import __version__
from livepose.core.config import Config, SimCameraConfig
from livepose.core.errors import UserError
from livepose.core.latency import STAGES
from livepose.kit.realtime import PRIORITY, enter_realtime
from livepose.runtime.monitor import Monitor, pct
from livepose.runtime.supervisor import Supervisor

DRAIN_TIMEOUT_S = 5.0
DETECTOR_COUNTERS = ("detector_runs", "detector_sets", "locked_sets", "redetect_sets", "lost",
                     "no_detection", "reacquired_3d")


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "–" if v is None else format(v, spec)


class _Stop:
    """Turns SIGINT/SIGTERM into a flag (restores the handlers on exit)."""

    def __init__(self) -> None:
        self.flag = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.flag = True

    def __exit__(self, *exc: object) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)


def view(cfg: Config, sup: Supervisor, mon: Monitor, elapsed: float) -> Group:
    """The live terminal view."""
    cams = Table(title="cameras", expand=False)
    for col in ("camera", "fps", "frames", "dropped", "lost in transport"):
        cams.add_column(col, justify="right")
    for c in cfg.cameras:
        h = sup.health.get(c.name)
        fr = h.counters.get("frames", 0) if h else 0
        gaps = sum(
            sup.counters(f"infer{k}").get(f"gaps/{c.name}", 0) for k in range(cfg.model.workers)
        )
        cams.add_row(
            c.name,
            _fmt(fr / elapsed if elapsed > 0 else None),
            str(fr),
            str(h.counters.get("dropped", 0) if h else 0),
            str(gaps),
        )
    lat = Table(title="latency (ms, last 300)")
    for col in ("stage", "p50", "p99"):
        lat.add_column(col, justify="right")
    for s in STAGES:
        lat.add_row(
            s, _fmt(pct(mon.recent_lat[s], 50), ".2f"), _fmt(pct(mon.recent_lat[s], 99), ".2f")
        )
    acc = Table(title="frame-sets")
    for col in (
        "triggered",
        "fused",
        "skipped",
        "incomplete",
        "fused/s",
        "3D error mm (median, last 300)",
    ):
        acc.add_column(col, justify="right")
    acc.add_row(
        str(len(mon.triggered)),
        str(len(mon.fused)),
        str(len(mon.skipped)),
        str(len(mon.incomplete)),
        _fmt(mon.fused_rate()),
        _fmt(pct(mon.recent_err, 50), ".2f"),
    )
    return Group(acc, cams, lat)


def summarize(cfg: Config, sup: Supervisor, mon: Monitor, duration_s: float) -> dict[str, Any]:
    """The run summary (the ``--json`` content)."""
    dropped: dict[str, int] = {}
    for c in cfg.cameras:
        src = sup.counters(c.name).get("dropped", 0)
        gaps = sum(
            sup.counters(f"infer{k}").get(f"gaps/{c.name}", 0) for k in range(cfg.model.workers)
        )
        dropped[c.name] = int(src + gaps)
    infer_info = sup.health.get("infer0")
    lat = mon.latency_stats()
    return {
        "livepose": __version__,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
        },
        "cameras": len(cfg.cameras),
        "camera_names": cfg.camera_names,
        "resolution": [cfg.sim.width, cfg.sim.height] if cfg.is_sim else None,
        "keypoints": mon.keypoints,
        "fps_target": cfg.fps,
        "duration_s": round(duration_s, 3),
        "framesets_triggered": len(mon.triggered),
        "framesets_fused": len(mon.fused),
        "framesets_skipped": len(mon.skipped),
        "framesets_incomplete": len(mon.incomplete),
        "frames_dropped": dropped,
        "fused_fps": round(len(mon.fused) / duration_s, 2) if duration_s > 0 else None,
        "latency_ms": lat,
        "inference_ms": lat["inference"],
        "overhead_ms": mon.overhead_stats(),
        "error_mm": mon.error_stats(),
        "frame_accounting_ok": mon.accounting_ok(),
        "provider": infer_info.info.get("provider") if infer_info else None,
        "rejected_messages": mon.decoder.rejected,
        "frames_via": _frames_via(cfg, sup),
        "shm_overruns": _workers_total(cfg, sup, "shm_overrun"),
        # cameras whose frames the workers took straight from the rings (futex doorbell)
        "rings_followed": _workers_total(cfg, sup, "shm_followed"),
        # the frame-set policy: sets fused without every view, views left out and why
        "framesets_partial": mon.partial,
        "views_missing": mon.views_missing,
        "views_desynced": mon.views_desynced,
        # views of a camera with an injected frame offset that were fused anyway (must be 0)
        "desynced_views_fused": mon.faulty_fused,
        "keypoint_status": mon.status_counts(),
        # paced runs: pulses released before fusion had accounted for the sets before them
        **({"pace_timeouts": int(sup.counters("trigger").get("pace_timeouts", 0))}
           if cfg.trigger.paced else {}),
        # two-stage models (inference/topdown.py): views and frame-sets the detector ran on
        **({"detector": {k: _workers_total(cfg, sup, k) for k in DETECTOR_COUNTERS}}
           if _workers_total(cfg, sup, "detector_sets") else {}),
    }


def _workers_total(cfg: Config, sup: Supervisor, counter: str) -> int:
    """A health counter summed over the inference workers."""
    return sum(sup.counters(f"infer{k}").get(counter, 0) for k in range(cfg.model.workers))


def _frames_via(cfg: Config, sup: Supervisor) -> str:
    """How the frames travelled: ``shm`` (every camera published through its frame ring),
    ``zmq`` (inside the messages) or ``mixed`` (a camera fell back)."""
    rings = [sup.counters(c.name).get("shm_rings", 0) > 0 for c in cfg.cameras]
    return "shm" if all(rings) else "zmq" if not any(rings) else "mixed"


def print_summary(console: Console, s: dict[str, Any]) -> None:
    """Human-readable summary."""
    t = Table(
        title=f"livepose {s['livepose']}: {s['cameras']} cameras × {s['keypoints']} keypoints "
        f"@ {s['fps_target']} fps for {s['duration_s']:.1f} s"
    )
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row(
        "frame-sets triggered / fused / skipped / incomplete",
        f"{s['framesets_triggered']} / {s['framesets_fused']} / {s['framesets_skipped']} / "
        f"{s['framesets_incomplete']}",
    )
    t.add_row(
        "frames dropped per camera", ", ".join(f"{k}={v}" for k, v in s["frames_dropped"].items())
    )
    for k, v in s["latency_ms"].items():
        t.add_row(
            f"latency {k} p50 / p99 (ms)", f"{_fmt(v['p50'], '.2f')} / {_fmt(v['p99'], '.2f')}"
        )
    o = s["overhead_ms"]
    t.add_row(
        "pipeline overhead (total − inference) p50 / p99 (ms)",
        f"{_fmt(o['p50'], '.2f')} / {_fmt(o['p99'], '.2f')}",
    )
    e = s["error_mm"]
    t.add_row(
        "3D error median / p95 / max (mm)",
        f"{_fmt(e['median'], '.2f')} / {_fmt(e['p95'], '.2f')} / {_fmt(e['max'], '.1f')}",
    )
    t.add_row("frame accounting ok", str(s["frame_accounting_ok"]))
    if "cluster" in s:  # livepose run --cluster: cross-host figures are only this good
        t.add_row("cross-host clock uncertainty (ms): latencies and desync between hosts ±",
                  f"{s['cluster']['clock']['cross_host_uncertainty_ms']:.3f}")
    t.add_row("execution provider", str(s["provider"]))
    console.print(t)


def parse_kill(cfg: Config, spec: str) -> tuple[str, float]:
    """``CAMERA@SECONDS`` → ``(camera, seconds)`` (UserError naming what is wrong)."""
    name, _, at = spec.partition("@")
    try:
        t = float(at)
    except ValueError:
        t = -1.0
    if name not in cfg.camera_names or t < 0:
        raise UserError(f"--kill-camera {spec!r}: expected CAMERA@SECONDS with CAMERA one of "
                        f"{cfg.camera_names}")
    return name, t


def parse_camera_offset(cfg: Config, spec: str) -> None:
    """``CAMERA=K``: set ``frame_offset`` of that sim camera (UserError otherwise)."""
    name, _, k = spec.partition("=")
    cams = [c for c in cfg.cameras if c.name == name and isinstance(c, SimCameraConfig)]
    if not cams or not k.lstrip("-").isdigit():
        raise UserError(f"--camera-offset {spec!r}: expected CAMERA=K with CAMERA a sim camera "
                        f"of {cfg.camera_names}")
    cams[0].frame_offset = int(k)


def run_pipeline(
    cfg: Config,
    duration_s: float | None = None,
    json_path: Path | None = None,
    live: bool = True,
    console: Console | None = None,
    log_level: int = logging.WARNING,
    pulses: int | None = None,
    dashboard: bool = False,
    kill: tuple[str, float] | None = None,
    launcher: Any = None,
) -> dict[str, Any]:
    """Run the pipeline of ``cfg`` until ``duration_s``, ``pulses`` trigger pulses or Ctrl-C.

    ``dashboard`` also runs the web dashboard (``cfg.dashboard``; the CLI's default).
    ``kill`` (camera, seconds): SIGKILL that camera's process that long after the trigger
    started (a scripted camera loss; the run goes on while ``min_cameras`` remain).
    ``launcher``: start the stages elsewhere (``livepose run --cluster``:
    :class:`livepose.cluster.live.RayLauncher`; its placement and clocks join the summary).
    Returns the summary (see :func:`summarize`).
    """
    console = console or Console(stderr=True)
    with _Stop() as stop, Supervisor(
        cfg, log_level=log_level, trigger_count=pulses, dashboard=dashboard, launcher=launcher
    ) as sup:
        console.print(
            f"[bold]livepose[/bold] starting {len(cfg.cameras)} cameras, "
            f"{cfg.model.workers} inference worker(s), fusion …"
        )
        t_start = time.monotonic()
        sup.launch()
        if sup.dashboard_login_url:
            console.print(f"dashboard: {sup.dashboard_login_url}", highlight=False)
        offsets = [i for i, c in enumerate(cfg.cameras) if getattr(c, "frame_offset", 0)]
        mon = Monitor(sup.endpoints, sup.zctx, sup.keys,  # subscribed before pulse 0
                      faulty_views=sum(1 << i for i in offsets))
        if cfg.realtime:  # this process is the demo's pose consumer (children are started)
            enter_realtime(PRIORITY["client"])
        sup.start_trigger(subscribers=[mon.hello])
        console.print(
            f"running (ready in {time.monotonic() - t_start:.1f} s); pose3d on "
            f"{sup.endpoints['pose3d']}, control on {sup.endpoints.get('control')}, camera "
            f"outputs on {sup.endpoints.get('camctl')}  — Ctrl-C to stop"
        )
        t0 = time.monotonic()
        try:
            live_view = Live(view(cfg, sup, mon, 0.0), console=console, auto_refresh=False)
            with live_view if live else contextlib.nullcontext(live_view) as lv:
                last = 0.0
                while not stop.flag and (duration_s is None or time.monotonic() - t0 < duration_s):
                    if pulses is not None and (len(mon.triggered) >= pulses or (
                            sup.health.get("trigger") is not None
                            and sup.health["trigger"].state == "done")):
                        break  # every pulse sent (the monitor may have joined after pulse 0)
                    mon.poll(20)
                    sup.poll(0)
                    now = time.monotonic()
                    if kill is not None and now - t0 >= kill[1] and mon.t_kill_ns is None:
                        sup.procs[kill[0]].kill()
                        mon.t_kill_ns = time.time_ns()
                        console.print(f"killed camera {kill[0]} (SIGKILL) at {now - t0:.1f} s")
                    if live and now - last > 0.25:
                        last = now
                        lv.update(view(cfg, sup, mon, now - t0), refresh=True)
                elapsed = time.monotonic() - t0
                sup.stop_trigger()
                deadline = time.monotonic() + DRAIN_TIMEOUT_S
                while time.monotonic() < deadline and not mon.triggered <= mon.accounted():
                    mon.poll(20)
                    sup.poll(0)
                for _ in range(5):  # last health messages
                    sup.poll(0.05)
                    mon.poll(0)
                if live:
                    lv.update(view(cfg, sup, mon, elapsed), refresh=True)
        finally:
            mon.close()
        summary = summarize(cfg, sup, mon, elapsed)
    if cfg.realtime:
        summary["scheduling"] = sup.scheduling()
    if launcher is not None:  # on a cluster: where each stage ran, the hosts' clocks
        summary["cluster"] = {"stage_nodes": launcher.stage_nodes(),
                              "clock": launcher.clock_summary()}
        launcher.close()
    if sup.takeovers:  # an inference worker died and the others took over its share
        summary["worker_takeovers"] = sup.takeovers
    if kill is not None:
        summary["camera_loss"] = {"camera": kill[0], "at_s": kill[1],
                                  "lost": sup.cameras_lost, **mon.after_kill_stats(cfg.fps)}
    print_summary(console, summary)
    if sup.recording.last is not None:  # recording: where the session went, how it closed
        rec = sup.recording.last
        summary["session"] = {k: rec.get(k) for k in ("path", "state", "reason", "frames")}
        console.print(f"session {rec['path']}: {rec['state']}"
                      + (f" ({rec['reason']})" if rec.get("reason") else ""))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(summary, indent=2))
        console.print(f"summary written to {json_path}")
    return summary
