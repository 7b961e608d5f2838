"""``livepose bench latency``: trigger → pose3d → client callback → action, with and without
the dashboard.

For each condition the sim rig runs ``frames`` frame-sets at ``fps``. A closed-loop client in
its own process (as a user's would be) takes every pose, runs a :class:`RuleEngine` whose rule
fires on every pose, and the action writes a TTL command to a pseudo-terminal standing in for
the trigger box's serial port (the write is the real cost of issuing it). Per pose it keeps the
pipeline's stage latencies, ``delivery`` (pose3d published → callback), ``decide`` (callback →
rule decided), ``action`` (decided → command written) and ``to_action`` (trigger → command
written). The second condition adds the dashboard with ``clients`` websocket clients reading
everything it sends.

The JSON's ``summary``: ``overhead_p99_ms`` (trigger → client callback minus inference, p99),
``total_p99_ms`` (trigger → action issued, p99), ``dashboard_rate_change_pct`` (fused
frame-sets per second, dashboard with clients vs none) and ``dashboard_p99_change_ms``.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

STEPS = ("acquire", "transport", "queue", "inference", "fusion", "delivery", "decide", "action",
         "overhead", "to_callback", "to_action")


def _stats(v: list[float]) -> dict[str, float | None]:
    a = np.asarray(v, dtype=np.float64)
    a = a[np.isfinite(a)]
    if not a.size:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    return {"p50": round(float(np.percentile(a, 50)), 3),
            "p99": round(float(np.percentile(a, 99)), 3),
            "max": round(float(a.max()), 3), "n": int(a.size)}


def _client_main(endpoint: str, keypoints: list[str], tty: str | None, out: Any,
                 ready: Any, idle_s: float, realtime: bool = False) -> None:
    """The closed-loop client process: every pose through a rule that always fires."""
    from livepose.closedloop.actions import TTLPulse
    from livepose.closedloop.client import PoseClient
    from livepose.closedloop.rules import ActionEvent, HalfSpace, Rule, RuleEngine
    from livepose.kit.realtime import PRIORITY, enter_realtime

    if realtime:  # as a user's closed-loop script would (docs/closed-loop.md)
        enter_realtime(PRIORITY["client"])

    action: Any = TTLPulse(tty, width_us=500) if tty else (lambda e: None)
    rule = Rule("always", keypoints[0], HalfSpace((0, 0, 1), -1e9), action=action,
                refractory_s=0.0, fire="while")
    eng = RuleEngine(keypoints, [rule])
    rows: dict[str, list[float]] = {k: [] for k in STEPS}
    with PoseClient(endpoint, latest_only=False) as client:
        ready.set()
        first = True
        while True:
            pose = client.recv(60.0 if first else idle_s)
            if pose is None:
                break
            first = False
            events: list[ActionEvent] = eng.update(pose)
            m, lat = pose.message, pose.latency_ms
            for k in ("acquire", "transport", "queue", "inference", "fusion", "delivery"):
                rows[k].append(lat.get(k, float("nan")))
            if m.t_trigger_ns is None or not events:
                continue
            ev = events[0]
            rows["decide"].append((ev.t_decided_ns - pose.t_recv_ns) / 1e6)
            rows["action"].append((ev.t_action_ns - ev.t_decided_ns) / 1e6)
            to_cb = (pose.t_recv_ns - m.t_trigger_ns) / 1e6
            rows["to_callback"].append(to_cb)
            rows["overhead"].append(to_cb - lat.get("inference", float("nan")))
            rows["to_action"].append((ev.t_action_ns - m.t_trigger_ns) / 1e6)
    out.put({**rows, "cpu_s": [time.process_time()]})


def _ws_reader(url: str, stop: threading.Event, counts: list[int], i: int) -> None:
    from websockets.sync.client import connect

    try:
        with connect(url, max_size=None) as ws:
            while not stop.is_set():
                try:
                    ws.recv(timeout=0.5)
                    counts[i] += 1
                except TimeoutError:
                    continue
    except Exception as exc:  # a client that fails is reported in the result, not fatal
        counts[i] = -1
        print(f"websocket client {i}: {exc}")


def _viewers_main(url: str, n: int, stop: Any, out: Any) -> None:
    """``n`` websocket clients (threads) reading everything, in a process of their own at
    nice 10: viewers, which on a rig would rather be on other computers."""
    with contextlib.suppress(OSError):
        os.nice(10)
    counts = [0] * n
    flag = threading.Event()
    threads = [threading.Thread(target=_ws_reader, args=(url, flag, counts, i), daemon=True)
               for i in range(n)]
    for t in threads:
        t.start()
    stop.wait()
    flag.set()
    for t in threads:
        t.join(5)
    out.put(counts)


def _cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system) used so far by a process (Linux)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return round((int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK"), 2)
    except (OSError, IndexError, ValueError):
        return None


def run_condition(frames: int, fps: float, dashboard: bool, clients: int,
                  realtime: bool = False) -> dict[str, Any]:
    """One run of the sim rig: counts, the fused span (s) and the raw per-pose rows (ms)."""
    from livepose.core.config import load_default_config
    from livepose.core.modelinfo import model_keypoints
    from livepose.runtime.monitor import Monitor
    from livepose.runtime.supervisor import Supervisor

    cfg = load_default_config()
    cfg.fps = fps
    cfg.dashboard.port = 0
    cfg.realtime = realtime
    names, _ = model_keypoints(cfg)
    tty, box, slave = emulated_box()  # the "trigger box": its protocol on a pseudo-terminal
    ctx = mp.get_context("spawn")
    q, ready = ctx.Queue(), ctx.Event()
    counts: list[int] = []
    vq, vstop = ctx.Queue(), ctx.Event()
    with Supervisor(cfg, trigger_count=frames, dashboard=dashboard) as sup:
        sup.launch()
        proc = ctx.Process(target=_client_main,
                           args=(sup.endpoints["pose3d"], names, tty, q, ready, 3.0,
                                 realtime))
        proc.start()
        ready.wait(60)
        viewers = None
        if dashboard and clients and sup.dashboard_url:
            url = f"{sup.dashboard_url.replace('http', 'ws')}ws?token={sup.dashboard_token}"
            viewers = ctx.Process(target=_viewers_main, args=(url, clients, vstop, vq))
            viewers.start()
        mon = Monitor(sup.endpoints, sup.zctx, sup.keys)
        sup.start_trigger(subscribers=[mon.hello])
        t0 = time.monotonic()
        deadline = t0 + frames / fps + 30
        while time.monotonic() < deadline:
            mon.poll(20)
            sup.poll(0)
            if len(mon.triggered) >= frames and mon.triggered <= mon.accounted():
                break
        elapsed = time.monotonic() - t0
        cpu = {"dashboard": _cpu_s(sup.procs["dashboard"].pid) if dashboard else None,
               "viewers": _cpu_s(viewers.pid) if viewers else None}
        rows = q.get(timeout=60)
        cpu["client"] = round(rows.pop("cpu_s")[0], 2)
        proc.join(10)
        if viewers is not None:
            vstop.set()
            counts = vq.get(timeout=30)
            viewers.join(10)
        mon.close()
    box.halt()
    os.close(slave)
    span = ((mon.fused_times[-1] - (mon.t_first_trigger or 0)) / 1e9) if mon.fused_times else 0
    return {
        "dashboard": dashboard,
        "websocket_clients": len(counts),
        "websocket_messages": counts,
        "cpu_s": cpu,
        "framesets_triggered": len(mon.triggered),
        "framesets_fused": len(mon.fused),
        "framesets_skipped": len(mon.skipped),
        "framesets_incomplete": len(mon.incomplete),
        "frame_accounting_ok": mon.accounting_ok(),
        "span_s": span,
        "duration_s": round(elapsed, 2),
        "poses_at_client": len(rows["delivery"]),
        "ttl_pulses_at_box": box.pulses,
        "rows": rows,
    }


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool the runs of one condition: summed counts, pooled latencies."""
    out: dict[str, Any] = {"runs": len(runs), "dashboard": runs[0]["dashboard"],
                           "websocket_clients": runs[0]["websocket_clients"],
                           "websocket_messages": [r["websocket_messages"] for r in runs]}
    for k in ("framesets_triggered", "framesets_fused", "framesets_skipped",
              "framesets_incomplete", "poses_at_client", "ttl_pulses_at_box"):
        out[k] = sum(r[k] for r in runs)
    out["frame_accounting_ok"] = all(r["frame_accounting_ok"] for r in runs)
    span = sum(r["span_s"] for r in runs)
    out["fused_fps"] = round(out["framesets_fused"] / span, 3) if span > 0 else None
    out["fused_fps_per_run"] = [round(r["framesets_fused"] / r["span_s"], 3) if r["span_s"]
                                else None for r in runs]
    out["duration_s"] = round(sum(r["duration_s"] for r in runs), 2)
    out["cpu_s"] = [r["cpu_s"] for r in runs]
    out["latency_ms"] = {k: _stats([v for r in runs for v in r["rows"][k]]) for k in STEPS}
    return out


class BoxEmulator(threading.Thread):
    """The trigger box's serial protocol on the master side of a pseudo-terminal (replies
    like ``firmware/triggerbox``; counts ``START`` commands as pulses)."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.pulses = 0
        self.commands: list[str] = []
        self.refuse_start = False
        self._stop_evt = threading.Event()

    def reply(self, cmd: str) -> str:
        """The firmware's answer to one command line."""
        word, _, arg = cmd.partition(" ")
        if word == "ID?":
            return "LIVEPOSE-TRIGGERBOX 1"
        if word in ("RATE", "WIDTH", "COUNT") and arg:
            return f"OK {word} {arg}"
        if word == "START":
            if self.refuse_start:
                return "ERR width must be shorter than the period"
            self.pulses += 1
            return "OK START"
        if word == "STOP":
            return f"OK STOP {self.pulses}"
        if word == "PULSES?":
            return f"PULSES {self.pulses} 0"
        return "ERR unknown command"

    def run(self) -> None:
        """Answer commands until :meth:`halt`."""
        import select

        buf = b""
        while not self._stop_evt.is_set():
            if not select.select([self.fd], [], [], 0.1)[0]:
                continue
            try:
                buf += os.read(self.fd, 4096)
            except OSError:
                return
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd = line.decode("ascii", "replace").strip()
                self.commands.append(cmd)
                os.write(self.fd, (self.reply(cmd) + "\n").encode())

    def halt(self) -> None:
        """Stop answering."""
        self._stop_evt.set()
        self.join(2)


def emulated_box() -> tuple[str, BoxEmulator, int]:
    """A pty with a :class:`BoxEmulator` on it: ``(device path, emulator, slave fd)``."""
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)
    emu = BoxEmulator(master)
    emu.start()
    return os.ttyname(slave), emu, slave


def run_latency(frames: int = 3000, fps: float = 30.0, clients: int = 10,
                json_path: Path | None = None, rounds: int = 2,
                realtime: bool = False) -> dict[str, Any]:
    """Both conditions and the summary (see the module docstring). ``frames`` per condition,
    split over ``rounds`` runs in the order none, dashboard, dashboard, none, … (so a drift
    of the machine's load hits both conditions alike)."""
    n = max(1, frames // rounds)
    order = [c for i in range(rounds) for c in ((False, True) if i % 2 == 0 else (True, False))]
    runs = [run_condition(n, fps, dashboard=d, clients=clients if d else 0, realtime=realtime)
            for d in order]
    base = _merge([r for r in runs if not r["dashboard"]])
    dash = _merge([r for r in runs if r["dashboard"]])

    def p99(r: dict[str, Any], k: str) -> float | None:
        v: float | None = r["latency_ms"][k]["p99"]
        return v

    def change(k: str) -> float | None:
        a, b = p99(base, k), p99(dash, k)
        return round(b - a, 3) if a is not None and b is not None else None

    rate0, rate1 = base["fused_fps"], dash["fused_fps"]
    summary = {
        "frames": n * rounds,
        "fps": fps,
        "rounds": rounds,
        "websocket_clients": clients,
        "frame_period_ms": round(1000 / fps, 3),
        "realtime": realtime,
        "overhead_p99_ms": p99(base, "overhead"),
        "total_p99_ms": p99(base, "to_action"),
        "inference_p99_ms": p99(base, "inference"),
        "dashboard_rate_change_pct": round(100 * (rate1 - rate0) / rate0, 3)
        if rate0 and rate1 else None,
        "dashboard_p99_change_ms": change("to_action"),
        "dashboard_overhead_p99_change_ms": change("overhead"),
    }
    out = {
        "summary": summary,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "without_dashboard": base,
        "with_dashboard": dash,
    }
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(out, indent=2))
    return out
