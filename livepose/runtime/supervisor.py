"""The supervisor: starts every stage as its own ``spawn`` process, wires the endpoints,
watches health, reports a child that dies, and shuts everything down in order.

Start order: consumers first (fusion, inference workers), then cameras; once all report
``ready`` (cameras armed), the trigger clock starts. Stop order: trigger first (so no new
frame-sets enter), then — after the caller let the pipeline drain — everything else with
SIGTERM, then SIGKILL for anything still alive after a grace period.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import multiprocessing.connection
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from livepose.core import protocol
from livepose.core.config import Config, to_dict
from livepose.core.control import encode_reshard
from livepose.core.errors import UserError
from livepose.core.modelinfo import apply_model_defaults
from livepose.kit.process import StageContext, child_entry
from livepose.kit.realtime import PRIORITY
from livepose.kit.session import encoder_name
from livepose.recording.control import Recording
from livepose.runtime import stages
from livepose.runtime.address import dashboard_address
from livepose.runtime.spares import FIRST_DELAY_S, Spares
from livepose.transport import codec, security, shmring
from livepose.transport import endpoints as eps

log = logging.getLogger(__name__)

FUSION = stages.fusion
INFER = stages.inference
CAMERA = stages.camera
TRIGGER = stages.trigger
ENCODER = stages.encoder
RECORDER = stages.recorder
DASHBOARD = stages.dashboard
COLLECTOR = stages.collector
#: a reshard starts this far ahead of the newest pulse the supervisor knows of (health
#: reaches it every ~0.5 s; the message reaches the workers within milliseconds)
TAKEOVER_LEAD_S = 1.0


class ProcessDied(RuntimeError):
    """A stage process exited while the run was going."""

    def __init__(self, name: str, exitcode: int | None, last_error: str | None) -> None:
        detail = f"; last error: {last_error}" if last_error else ""
        super().__init__(f"process {name!r} exited with code {exitcode}{detail}")
        self.name = name
        self.exitcode = exitcode


@dataclass
class ProcSpec:
    """One stage process to start."""

    name: str
    target: Callable[[StageContext], None]
    args: dict[str, Any] = field(default_factory=dict)
    optional: bool = False  # its death is logged and the run goes on (the dashboard)
    nice: int = 0  # raise to run a consumer that is off the latency path at lower priority
    rt: str | None = None  # its role in realtime.PRIORITY: SCHED_FIFO when cfg.realtime


def plan(
    cfg: Config,
    calibration: str,
    trigger_count: int | None = None,
    record: dict[str, Any] | None = None,
    keypoints: list[str] | None = None,
    dashboard: dict[str, Any] | None = None,
    collect: dict[str, Any] | None = None,
) -> list[ProcSpec]:
    """The processes of a run, in start order (trigger last).

    ``collect`` (the collector's arguments, :mod:`livepose.calibrate.live`) makes a
    calibration run: the collector ``calib`` instead of fusion, workers and recorder.

    ``record`` (``{"session", "frame"}``) makes the encoders (one per camera: the video and
    frame table, docs/recording.md) and the recorder record from launch; ``keypoints``
    (names) adds the recorder process (see docs/recording.md).
    ``dashboard`` (``{"host", "port", "token"}``) adds the web dashboard, a consumer only whose death
    does not stop the run (see docs/dashboard.md).
    """
    if collect is not None:
        specs = [ProcSpec("calib", COLLECTOR, collect)]
    else:
        specs = [ProcSpec("fusion", FUSION, {"calibration": calibration}, rt="fusion")]
        specs += [ProcSpec(f"infer{k}", INFER, {"worker": k, "calibration": calibration},
                           rt="inference")
                  for k in range(cfg.model.workers)]  # calibration: 3D-guided crops
    if keypoints is not None and cfg.recording.predictions and collect is None:
        specs.append(ProcSpec("recorder", RECORDER, {"keypoints": keypoints, "record": record},
                              optional=True, nice=5))  # its crash never stops the experiment
    if dashboard is not None:
        args = {"calibration": calibration, **dashboard}
        specs.append(ProcSpec("dashboard", DASHBOARD, args, optional=True))
    # encoders before their cameras: subscribed when the first frame goes out; optional
    # (restarted; past the limit the experiment goes on without that camera's video)
    specs += [ProcSpec(encoder_name(c.name), ENCODER, {"camera": i, "record": record},
                       optional=True) for i, c in enumerate(cfg.cameras)]
    specs += [ProcSpec(c.name, CAMERA, {"camera": i}, rt="camera")
              for i, c in enumerate(cfg.cameras)]
    specs.append(ProcSpec("trigger", TRIGGER, {"count": trigger_count}, rt="trigger"))
    return specs


class Supervisor:
    """Run the pipeline of a config.

    Parameters
    ----------
    cfg
        Validated config.
    run_dir
        Working folder (ipc sockets, generated calibration); a temporary one by default,
        removed at :meth:`close`.
    trigger_count
        Stop the trigger after this many pulses (``None``: until stopped).
    log_level
        Logging level inside the stage processes.
    dashboard
        Also run the web dashboard (``cfg.dashboard``; its URL is :attr:`dashboard_url`
        after :meth:`launch`). The CLI turns it on unless ``--no-dashboard``.
    launcher
        Start the stage processes elsewhere (``livepose run --cluster``:
        ``livepose.cluster.live.RayLauncher``); restarts stay this class's policy.
    collect
        A calibration run (``livepose calibrate live``): the collector stage with these
        arguments (:mod:`livepose.calibrate.live`) instead of inference and fusion; no
        model and no calibration file are needed.
    """

    def __init__(
        self,
        cfg: Config,
        run_dir: Path | None = None,
        trigger_count: int | None = None,
        log_level: int = logging.WARNING,
        dashboard: bool = False,
        launcher: Any = None,
        collect: dict[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        #: starts stage processes elsewhere (``place(names, endpoints)``, ``process(name,
        #: args)``: livepose.cluster.live.RayLauncher); ``None``: ``spawn`` children here
        self.launcher = launcher
        self.collect = collect
        self._own_dir = run_dir is None
        self.run_dir = run_dir or Path(tempfile.mkdtemp(prefix="livepose-"))
        self.trigger_count = trigger_count
        self.log_level = log_level
        self.endpoints: dict[str, str] = {}
        self.procs: dict[str, Any] = {}  # multiprocessing.Process (or a cluster's stage)
        self.health: dict[str, protocol.Health] = {}
        self.exited: dict[str, int | None] = {}
        self.zctx: zmq.Context[Any] = zmq.Context()
        self._health_sub: zmq.Socket[Any] | None = None
        self._decoder = codec.Decoder(expect=["health"])
        self._mp = mp.get_context("spawn")
        self.calibration = ""
        self._stopping = False
        self._poll_lock = threading.RLock()
        #: inference workers that died while others took over their share (see sharding.py)
        self.takeovers: list[dict[str, Any]] = []
        #: cameras that died while enough others went on (``cfg.min_cameras``)
        self.cameras_lost: list[dict[str, Any]] = []
        self._specs: list[ProcSpec] = []
        self.recording = Recording(self)
        self.dashboard = dashboard
        self.dashboard_url: str | None = None
        #: the token every dashboard request needs (``?token=``, cookie or Bearer)
        self.dashboard_token: str | None = None
        self._dash_args: dict[str, Any] | None = None
        self._health_relay: zmq.Socket[Any] | None = None
        #: the run's CURVE keys (tcp with ``transport.keys_dir``), read in :meth:`preflight`
        self.keys: security.CurveKeys | None = None
        #: health messages ignored because no process of this run sent them (by pid)
        self.foreign_health = 0
        #: restarts done: ``{name, exitcode, died_s, back_s, first_frame, error}`` each
        self.restarts: list[dict[str, Any]] = []
        self._restart_due: dict[str, tuple[float, dict[str, Any]]] = {}
        self._restart_times: dict[str, list[float]] = {}
        self.spares: Spares | None = None  # warm processes for restarts (runtime/spares.py)

    @property
    def dashboard_login_url(self) -> str | None:
        """The dashboard's address with its token (what the CLI prints)."""
        if self.dashboard_url is None or self.dashboard_token is None:
            return None
        return f"{self.dashboard_url}?token={self.dashboard_token}"

    # ------------------------------------------------------------------ start
    def preflight(self) -> None:
        """Check everything a user can get wrong before any process starts (UserError)."""
        self.keys = security.load_keys(self.cfg.transport)  # files, permissions: UserError
        facts = stages.prepare_acquisition(self.cfg, self.run_dir,
                                           need_calibration=self.collect is None)
        self.calibration = facts["calibration"]
        if self.collect is None:
            stages.preflight_inference(self.cfg)
            applied = apply_model_defaults(self.cfg)  # before the config reaches any process
            if applied:
                log.info("from the model's manifest: %s", applied)
        try:
            if shmring.frames_in_shm(self.cfg.transport):
                stale = shmring.remove_stale()  # rings of cameras killed with -9
                if stale:
                    log.info("removed %d stale frame ring(s) from %s", len(stale),
                             shmring.SHM_DIR)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if self.dashboard:
            self._dash_args = dashboard_address(self.cfg)
            host = self._dash_args["host"]
            if host in ("0.0.0.0", "::"):  # every interface: browsers use the host's name
                host = socket.gethostname()
            self.dashboard_url = f"http://{'[' + host + ']' if ':' in host else host}:" \
                f"{self._dash_args['port']}/"
            # one token per run (Jupyter-style), unless the config fixes one
            self.dashboard_token = self.cfg.dashboard.token or secrets.token_urlsafe(32)
            self._dash_args["token"] = self.dashboard_token

    def start(self, ready_timeout_s: float = 120.0) -> None:
        """:meth:`launch` then :meth:`start_trigger`."""
        self.launch(ready_timeout_s)
        self.start_trigger(ready_timeout_s)

    def launch(self, ready_timeout_s: float = 120.0) -> None:
        """Preflight and start every stage but the trigger; wait until all are ready.

        Subscribe your monitors after this and before :meth:`start_trigger`, so they see
        pulse 0.
        """
        self.preflight()
        self.endpoints = eps.resolve(self.cfg, self.run_dir)
        self._health_sub = self.zctx.socket(zmq.SUB)
        self._health_sub.setsockopt(zmq.LINGER, 0)
        self._health_sub.setsockopt(zmq.RCVHWM, 100_000)
        self._health_sub.setsockopt(zmq.SUBSCRIBE, b"health/")
        security.bind(self._health_sub, self.endpoints["health"], self.keys)
        record = self.recording.bind()  # record/control sockets; the launch session
        if self._dash_args is not None:
            self._bind_health_relay()
        self._specs = plan(
            self.cfg, self.calibration, self.trigger_count, record, self.recording.keypoints,
            self._dash_args, self.collect,
        )
        if self.launcher is not None:  # place every stage, then bind where each landed
            self.endpoints = self.launcher.place([s.name for s in self._specs], self.endpoints)
        for spec in self._specs[:-1]:
            self._spawn(spec)
        self.wait_state([s.name for s in self._specs[:-1]], "ready", ready_timeout_s)

    def start_trigger(self, ready_timeout_s: float = 120.0,
                      subscribers: Sequence[str] = ()) -> None:
        """Start the trigger clock (after every other stage is ready).

        ``subscribers``: the hello names of other subscribers to the clock (a
        :class:`~livepose.runtime.monitor.Monitor`'s ``hello``) that pulse 0 waits for, as it
        waits for every camera's — so they see every pulse (ZeroMQ's slow joiner)."""
        time.sleep(0.2)  # let subscriptions settle (ZeroMQ's slow joiner)
        self._specs[-1].args["hellos"] = list(subscribers)
        self._spawn(self._specs[-1])
        self.wait_state(["trigger"], "ready", ready_timeout_s)
        if self.cfg.realtime:
            refused = {n: h.info.get("sched") for n, h in self.health.items()
                       if any(s.name == n and s.rt for s in self._specs)
                       and not str(h.info.get("sched", "")).startswith("fifo")}
            if refused:
                log.warning("realtime: true, but these processes run on the ordinary "
                            "scheduler: %s", refused)
        if self.cfg.restart.enabled and self.cfg.restart.spares and self.launcher is None:
            self.spares = Spares(self._mp, to_dict(self.cfg), self.log_level,
                                 self.cfg.restart.spare_cpu)
            for spec in self._specs:
                if spec.name not in ("trigger", "recorder"):
                    self.spares.want(spec.target, stages.WARM.get(spec.target), spec.args,
                                     delay_s=FIRST_DELAY_S)

    def scheduling(self) -> dict[str, str]:
        """How each process is scheduled (``fifo:<priority>`` or ``other``), from its ready
        message."""
        return {n: str(h.info.get("sched", "?")) for n, h in self.health.items()}

    def _spawn(self, spec: ProcSpec, restart: bool = False) -> None:
        with self._poll_lock:  # a poll() in another thread iterates ``procs``
            self._spawn_locked(spec, restart)

    def _spawn_locked(self, spec: ProcSpec, restart: bool) -> None:
        job = (spec.target, spec.name, to_dict(self.cfg), self.endpoints, spec.args,
               self.log_level, spec.nice,
               PRIORITY[spec.rt] if self.cfg.realtime and spec.rt else 0)
        if self.launcher is not None:  # on a cluster (livepose/cluster/live.py)
            self.procs[spec.name] = self.launcher.process(spec.name, job)
            return
        spare = self.spares.take(spec.target, job) if restart and self.spares else None
        if spare is not None:  # warm: imports done (livepose/runtime/spares.py)
            self.procs[spec.name] = spare
            return
        p = self._mp.Process(target=child_entry, name=spec.name, args=job)
        p.start()
        self.procs[spec.name] = p

    def wait_state(self, names: list[str], state: str, timeout_s: float) -> None:
        """Wait until every named process has published ``state`` (or a later state)."""
        order = ["starting", "ready", "running", "done", "stopping"]
        deadline = time.monotonic() + timeout_s
        while True:

            def reached(n: str) -> bool:
                h = self.health.get(n)
                return (
                    h is not None
                    and h.state in order
                    and order.index(h.state) >= order.index(state)
                )

            gone = {n for n in self.exited if n in self._optional()}  # optional, died
            missing = [n for n in names if not reached(n) and n not in gone]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"processes not {state} after {timeout_s:.0f} s: {missing}")
            self.poll(0.05)

    # ------------------------------------------------------------------ watch
    def poll(self, timeout_s: float = 0.0) -> None:
        """Take in health messages; raise :class:`ProcessDied` if a stage died unexpectedly.

        Safe to call from several threads (a UI thread and the main loop): the supervisor's
        sockets are used by one thread at a time (libzmq aborts the process otherwise).
        """
        with self._poll_lock:
            self._poll(timeout_s)

    def _poll(self, timeout_s: float) -> None:
        sub = self._health_sub
        if sub is not None and sub.poll(int(timeout_s * 1000)):
            while True:
                try:
                    parts = sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                msg = self._decoder.decode(parts)
                if isinstance(msg, protocol.Health):
                    if not self._ours(msg):
                        continue
                    self.health[msg.proc] = msg
                    self.recording.on_health(msg)
                    if self._health_relay is not None:
                        with contextlib.suppress(zmq.Again):
                            self._health_relay.send_multipart(parts, zmq.NOBLOCK)
        self.recording.poll()
        self._check_children()
        self._respawn_due()
        if self.spares is not None and not self._stopping:
            self.spares.tick()

    def _check_children(self) -> None:
        alive = [n for n in self.procs if n not in self.exited]
        if not alive:
            return
        for n, p in self.procs.items():
            if n in self.exited or p.is_alive():
                continue
            p.join(0)
            self.exited[n] = p.exitcode
            if not self._stopping and self._schedule_restart(n, p.exitcode):
                pass
            elif not self._stopping and n in self._optional():
                log.error("%s exited with code %s; the run goes on without it", n, p.exitcode)
                h = self.health.get(n)
                self.recording.on_died(n, p.exitcode, h.last_error if h else None)
            elif (not self._stopping and self._camera_lost(n, p.exitcode)) or (not self._stopping and self._take_over(n, p.exitcode)):
                pass
            elif not self._stopping:
                h = self.health.get(n)
                self.recording.on_died(n, p.exitcode, h.last_error if h else None)
                raise ProcessDied(n, p.exitcode, h.last_error if h else None)

    def _schedule_restart(self, name: str, exitcode: int | None) -> bool:
        """Schedule ``name`` to start again (True), within ``restart.max_restarts`` per
        ``restart.window_s``; the trigger clock is never restarted."""
        r = self.cfg.restart
        spec = next((s for s in self._specs if s.name == name), None)
        if not r.enabled or spec is None or name in ("trigger", "recorder"):
            return False  # the clock's numbering is frame identity; a recorder restarted
            # mid-session would reopen its CSVs (it is optional: the run goes on without it)
        now = time.monotonic()
        recent = [t for t in self._restart_times.get(name, []) if now - t < r.window_s]
        if len(recent) >= r.max_restarts:
            log.error("%s died %d times within %.0f s: not restarted again", name,
                      len(recent) + 1, r.window_s)
            return False
        delay = min(1.0, r.backoff_s * 2 ** len(recent))
        self._restart_times[name] = [*recent, now]
        h = self.health.get(name)
        err = h.last_error if h else None
        log.error("%s exited with code %s (%s); starting it again in %.2f s", name, exitcode,
                  err or "no error reported", delay)
        self.recording.on_died(name, exitcode, err)
        self._restart_due[name] = (now + delay, {"name": name, "exitcode": exitcode,
                                                 "error": err, "died_s": now,
                                                 "first_frame": self._newest_pulse()})
        return True

    def _newest_pulse(self) -> int:
        h = self.health.get("trigger")
        return int(h.counters.get("pulses", 0)) if h else 0

    def _respawn_due(self) -> None:
        """Start again the stages whose back-off passed."""
        now = time.monotonic()
        for name, (due, record) in list(self._restart_due.items()):
            if now < due or self._stopping:
                continue
            del self._restart_due[name]
            spec = next(s for s in self._specs if s.name == name)
            if name.startswith("infer"):  # account from the next pulse on (docs: Restarts)
                spec = ProcSpec(spec.name, spec.target, {**spec.args,
                                "start_frame_id": self._newest_pulse() + 1},
                                spec.optional, spec.nice, spec.rt)
            elif name in self.cfg.camera_names:
                spec = ProcSpec(spec.name, spec.target, {**spec.args, "restarted": True},
                                spec.optional, spec.nice, spec.rt)
            elif spec.target is ENCODER:  # goes on recording the session being recorded
                spec = ProcSpec(spec.name, spec.target, {**spec.args, "restarted": True,
                                "record": self.recording.current()},
                                spec.optional, spec.nice, spec.rt)
            self.exited.pop(name, None)
            self.health.pop(name, None)
            self._spawn(spec, restart=True)
            record["back_s"] = now
            record["restarted_after_s"] = round(now - record["died_s"], 3)
            self.restarts.append(record)
            log.warning("%s started again (%.2f s after it died)", name,
                        record["restarted_after_s"])

    def _camera_lost(self, name: str, exitcode: int | None) -> bool:
        """A camera process died: the run goes on (True) while at least
        ``cfg.min_cameras`` cameras remain; the workers' frame-set policy stops waiting for
        it (docs/inference.md, "Frame-set policy")."""
        cams = self.cfg.camera_names
        if name not in cams:
            return False
        alive = [c for c in cams if c not in self.exited]
        if len(alive) < self.cfg.min_cameras:
            return False
        h = self.health.get(name)
        err = h.last_error if h else None
        log.error("camera %s exited with code %s (%s); the run goes on with %s (at least %d "
                  "needed)", name, exitcode, err or "no error reported", alive,
                  self.cfg.min_cameras)
        self.recording.on_died(name, exitcode, err)
        self.cameras_lost.append({"camera": name, "exitcode": exitcode, "error": err,
                                  "alive": alive})
        return True

    def _take_over(self, name: str, exitcode: int | None) -> bool:
        """An inference worker died: hand its share to the survivors (True), if any."""
        workers = self.cfg.model.workers
        dead = [k for k in range(workers) if f"infer{k}" in self.exited]
        if not name.startswith("infer") or len(dead) >= workers or self.recording.pub is None:
            return False
        alive = [k for k in range(workers) if k not in dead]
        h = self.health.get("trigger")
        newest = int(h.counters.get("pulses", 0)) if h else 0
        from_id = newest + int(TAKEOVER_LEAD_S * self.cfg.fps) + 1
        self.recording.pub.send_multipart(encode_reshard(alive, from_id))
        err = self.health[name].last_error if name in self.health else None
        log.error("%s exited with code %s (%s); workers %s take over its share from frame %d",
                  name, exitcode, err or "no error reported", alive, from_id)
        self.recording.on_died(name, exitcode, err)
        self.takeovers.append({"dead": name, "exitcode": exitcode, "alive": alive,
                               "from_frame": from_id, "error": err})
        return True

    def _ours(self, msg: protocol.Health) -> bool:
        """True when ``msg`` comes from the process of that name this supervisor started
        (same pid); anything else is ignored and counted in :attr:`foreign_health`, so a
        stray or spoofed sender cannot drive takeovers, recording starts or readiness."""
        p = self.procs.get(msg.proc)
        if p is not None and p.pid == msg.pid:
            return True
        self.foreign_health += 1
        if self.foreign_health == 1 or self.foreign_health % 1000 == 0:
            log.warning("ignored %d health message(s) from processes this run did not start "
                        "(last: %r, pid %s)", self.foreign_health, msg.proc, msg.pid)
        return False

    def _optional(self) -> set[str]:
        return {s.name for s in self._specs if s.optional}

    def _bind_health_relay(self) -> None:
        """A PUB re-publishing every health message (for the dashboard, which cannot bind
        ``health``: the supervisor does). Drops at its high-water mark, never blocks."""
        s = self.zctx.socket(zmq.PUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 1000)
        t = self.cfg.transport
        ep = f"ipc://{self.run_dir / 'health-relay'}.sock" if t.kind == "ipc" else f"tcp://{t.host}:*"
        self.endpoints["health/relay"] = security.bind(s, ep, self.keys)
        self._health_relay = s

    def counters(self, proc: str) -> dict[str, int]:
        """Latest counters of a process (empty if none seen)."""
        h = self.health.get(proc)
        return dict(h.counters) if h else {}

    def fresh_counters(self, names: list[str], timeout_s: float = 15.0
                       ) -> dict[str, dict[str, int]]:
        """Counters of each named process from a health message it sent after this call
        began (health comes every 0.5 s, later on a loaded host): the final counts of
        what happened before the call. After ``timeout_s``, the latest ones seen."""
        t0, deadline = time.time_ns(), time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(
                (h := self.health.get(n)) is None or h.t_ns <= t0 for n in names):
            self.poll(0.1)
        return {n: self.counters(n) for n in names}

    # ------------------------------------------------------------------ stop
    def stop_trigger(self, timeout_s: float = 5.0) -> None:
        """Stop the trigger clock (no new frame-sets)."""
        with self._poll_lock:  # a poll() in another thread reads ``procs`` and ``exited``
            p = self.procs.get("trigger")
            if p is not None and p.is_alive():
                self._stopping = True
                self._terminate("trigger", timeout_s)

    def _terminate(self, name: str, timeout_s: float) -> None:
        p = self.procs[name]
        if p.is_alive() and p.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()  # SIGTERM (on a cluster: sent by the stage's host)
        p.join(timeout_s)
        if p.is_alive():
            log.warning("%s did not stop within %.1f s; killing it", name, timeout_s)
            p.kill()
            p.join(2.0)
        self.exited[name] = p.exitcode

    def stop(self, timeout_s: float = 5.0) -> dict[str, int | None]:
        """Stop every process (trigger, cameras, inference, fusion); return exit codes."""
        with self._poll_lock:  # no poll() in another thread while the sockets wind down
            return self._stop(timeout_s)

    def _stop(self, timeout_s: float) -> dict[str, int | None]:
        self._stopping = True
        if self.spares is not None:
            self.spares.close()
        encoders = [encoder_name(c) for c in self.cfg.camera_names]
        order = ["trigger", "dashboard"] + [c.name for c in self.cfg.cameras] + encoders
        order += [f"infer{k}" for k in range(self.cfg.model.workers)]
        order += ["fusion", "recorder", "calib"]
        writers = {"recorder", *encoders}  # may drain a queue: more time
        for name in order:
            if name in self.procs:
                self._terminate(name, max(timeout_s, 60.0) if name in writers else timeout_s)
        self.recording.finalize()
        return {n: self.exited.get(n) for n in self.procs}

    def close(self) -> None:
        """Stop everything and release sockets and the temporary folder."""
        try:
            self.stop()
        finally:
            if self._health_sub is not None:
                self._health_sub.close(0)
            if self._health_relay is not None:
                self._health_relay.close(0)
            self.recording.close()
            security.release(self.zctx)
            self.zctx.destroy(linger=0)  # closes sockets a caller left open; never blocks
            if self._own_dir:
                shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_config_runnable(cfg: Config) -> None:
    """Preflight a config without starting anything (``livepose check-config``)."""
    tmp = Path(tempfile.mkdtemp(prefix="livepose-check-"))
    try:
        Supervisor(cfg, run_dir=tmp).preflight()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["ProcSpec", "ProcessDied", "Supervisor", "UserError", "check_config_runnable", "plan"]
