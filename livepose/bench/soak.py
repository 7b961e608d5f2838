"""``livepose bench soak --hours H``: the simulated rig for hours, its resources sampled.

Every ``interval_s`` (a minute by default) it samples, per stage process, the resident memory
(``VmRSS``) and the open file descriptors, plus the frame rings in ``/dev/shm``, the run
folder's disk use and the drop counters (frames dropped, frame-sets skipped and incomplete,
rejected messages). At the end it fits a line through each series after a warm-up and
reports the slopes per hour, so a leak shows as a slope far above the noise, and checks that
no ring outlives the run. Monotonic counters are reported as totals with their causes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from livepose.core.config import load_default_config
from livepose.runtime.monitor import Monitor
from livepose.runtime.supervisor import Supervisor
from livepose.transport import shmring

WARMUP_S = 120.0  # the first minutes (allocator and caches growing) are not a leak


def _rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _disk_kb(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                continue
    return total // 1024


def _rings(pids: set[int] | None = None) -> int:
    """Frame rings in ``/dev/shm`` (of the writer processes ``pids`` only, when given: on a
    shared machine other users' runs have theirs)."""
    try:
        names = [p.name for p in shmring.SHM_DIR.glob(shmring.PREFIX + "*")]
    except OSError:
        return -1
    if pids is None:
        return len(names)
    return sum(1 for n in names if n.split("-")[1].isdigit() and int(n.split("-")[1]) in pids)


def _slope_per_hour(t: list[float], v: list[float]) -> float | None:
    """Least-squares slope of ``v`` against ``t`` (s), per hour, after the warm-up."""
    pts = [(a, b) for a, b in zip(t, v, strict=True) if a >= WARMUP_S and b is not None]
    if len(pts) < 3:
        return None
    x, y = np.array(pts, dtype=float).T
    return float(np.polyfit(x, y, 1)[0] * 3600.0)


def _report(hours: float, interval_s: float, fps: float, samples: list[dict[str, Any]],
            end: dict[str, Any] | None) -> dict[str, Any]:
    """The report from the samples so far (``end``: the run's final accounting, if over)."""
    t = [s["t_s"] for s in samples]
    names = sorted({n for s in samples for n in s["rss_kb"]})
    slopes = {
        "rss_kb_per_h": {n: _slope_per_hour(t, [s["rss_kb"].get(n) for s in samples])
                         for n in names},
        "fds_per_h": {n: _slope_per_hour(t, [s["fds"].get(n) for s in samples]) for n in names},
        "rings_per_h": _slope_per_hour(t, [s["rings"] for s in samples]),
        "run_dir_kb_per_h": _slope_per_hour(t, [s["run_dir_kb"] for s in samples]),
    }
    last = samples[-1] if samples else {}
    totals = {k: last.get(k) for k in ("triggered", "fused", "skipped", "incomplete",
                                       "dropped", "rejected")}
    return {"hours": hours, "interval_s": interval_s, "fps": fps, "complete": end is not None,
            "samples": samples, "slopes": slopes, "totals": {**totals, **(end or {})},
            "machine": os.uname().nodename}


def run(hours: float, json_path: str | Path | None, interval_s: float = 60.0,
        fps: float | None = None) -> dict[str, Any]:
    """Run the demo rig for ``hours``; sample every ``interval_s``; return the report.

    The JSON is rewritten after every sample (``complete: false`` until the run is over), so
    a soak stopped early keeps what it measured. At the end the trigger stops, the pipeline
    drains, and every triggered frame-set must be fused, skipped or incomplete
    (``unaccounted`` counts those that are none of these: unexplained drops).
    """
    from livepose.bench.results import write_json

    cfg = load_default_config()
    cfg.realtime = False
    if fps is not None:
        cfg.fps = fps
    pids: set[int] = set()
    samples: list[dict[str, Any]] = []
    t_end = time.monotonic() + hours * 3600.0
    with Supervisor(cfg) as sup:
        sup.launch()
        mon = Monitor(sup.endpoints, sup.zctx, sup.keys)
        sup.start_trigger(subscribers=[mon.hello])
        t0 = time.monotonic()
        next_sample = t0
        try:
            while time.monotonic() < t_end:
                mon.poll(20)
                sup.poll(0)
                now = time.monotonic()
                if now < next_sample:
                    continue
                next_sample += interval_s
                procs = {n: p.pid for n, p in sup.procs.items() if p.is_alive() and p.pid}
                pids.update(procs.values())
                samples.append({
                    "t_s": round(now - t0, 1),
                    "rss_kb": {n: _rss_kb(pid) for n, pid in procs.items()},
                    "fds": {n: _fds(pid) for n, pid in procs.items()},
                    "rings": _rings(set(procs.values())),
                    "run_dir_kb": _disk_kb(sup.run_dir),
                    "fused": len(mon.fused), "skipped": len(mon.skipped),
                    "incomplete": len(mon.incomplete), "triggered": len(mon.triggered),
                    "dropped": sum(int(sup.counters(c).get("dropped", 0))
                                   for c in cfg.camera_names),
                    "rejected": mon.decoder.rejected,
                })
                if json_path is not None:
                    write_json(_report(hours, interval_s, cfg.fps, samples, None), json_path)
            sup.stop_trigger()
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and not mon.triggered <= mon.accounted():
                mon.poll(20)
                sup.poll(0)
            end = {"triggered": len(mon.triggered), "fused": len(mon.fused),
                   "skipped": len(mon.skipped), "incomplete": len(mon.incomplete),
                   "unaccounted": len(mon.triggered - mon.accounted()),
                   "accounting_ok": mon.accounting_ok(),
                   "dropped_by_camera": {c: int(sup.counters(c).get("dropped", 0))
                                         for c in cfg.camera_names}}
        finally:
            mon.close()
        restarts = list(sup.restarts)
    time.sleep(0.5)
    result = _report(hours, interval_s, cfg.fps, samples, end)
    result["restarts"] = restarts
    result["rings_left_behind"] = _rings(pids)
    return write_json(result, json_path)
