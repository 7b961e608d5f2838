"""``livepose run CONFIG --cluster ADDRESS``: every stage placed by Ray, data over ZeroMQ.

The supervisor (:class:`~livepose.runtime.supervisor.Supervisor`) runs as on one host — start
order, health, restarts, recording, stops — with a :class:`RayLauncher` in place of
``multiprocessing``: each stage process is started by a small Ray actor (:class:`StageHost`)
on the node Ray picks for it, as a ``spawn`` child of that actor running the same
``child_entry`` as on one host (its own process: signals, ``SCHED_FIFO``, devices).

Placement (custom resources, :mod:`livepose.cluster.raycluster`): a camera and the trigger
clock ask for ``camera:<name>``; an inference worker asks for every camera's
``camera:<name>`` (so it runs on the camera host and raw frames never cross the network —
Braid's layout) unless ``--gpus-per-worker`` sends it to a GPU node; fusion, the recorder and
the dashboard ask for ``livepose:fusion``. Each request is a small fraction, so one host's
resource holds all the stages that need it.

Endpoints: the sockets a stage binds (``frame/<cam>``, ``kp2d/<k>``, ``pose3d``,
``trigger``) get the IP of the node that stage was placed on (a node on the supervisor's
own machine keeps ``transport.host``); the supervisor's own (``health``, ``control``,
``record``) keep ``transport.host``, which must be the supervisor host's address.

Restarts have one owner, the supervisor's policy (``restart.*``): the actors are created
with ``max_restarts=0`` and a dead stage (its process, or its actor, or its node) is started
again by the supervisor on a new actor, which Ray places by the same resources.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from livepose.cluster.raycluster import FUSION_RESOURCE, camera_resource, import_ray
from livepose.core.config import Config
from livepose.core.errors import UserError

if TYPE_CHECKING:
    from livepose.transport.clocksync import ClockServer

log = logging.getLogger(__name__)

#: how often the clocks are measured again while running (s)
CLOCK_EVERY_S = 10.0
#: how often the supervisor's liveness poll really asks Ray about a stage (s)
CHECK_EVERY_S = 0.1

#: how much of a node's resource one stage takes (a host holds all the stages that need it)
SHARE = 0.01


def binders(cams: list[str], workers: int) -> dict[str, str]:
    """Which stage binds each stage-bound endpoint role."""
    out = {"trigger": "trigger", "pose3d": "fusion"}
    out.update({f"frame/{c}": c for c in cams})
    out.update({f"kp2d/{k}": f"infer{k}" for k in range(workers)})
    return out


def resources_for(name: str, cams: list[str], gpus_per_worker: float = 0.0
                  ) -> tuple[dict[str, float], float]:
    """The custom resources and GPUs a stage asks for."""
    if name in cams:
        return {camera_resource(name): SHARE}, 0.0
    if name.startswith("enc-") and name[4:] in cams:  # a camera's encoder reads its ring
        return {camera_resource(name[4:]): SHARE}, 0.0
    if name == "trigger":
        return {camera_resource(cams[0]): SHARE}, 0.0
    if name.startswith("infer"):
        if gpus_per_worker > 0:
            return {}, gpus_per_worker
        return {camera_resource(c): SHARE for c in cams}, 0.0
    return {FUSION_RESOURCE: SHARE}, 0.0  # fusion, recorder, dashboard


class StageHost:
    """The Ray actor that runs one stage process on its node (threaded: ``max_concurrency``
    4, so :meth:`terminate` can arrive while :meth:`wait` blocks)."""

    def __init__(self) -> None:
        self.proc: mp.process.BaseProcess | None = None
        self._lock = threading.Lock()

    def node(self) -> dict[str, Any]:
        import ray

        return {"ip": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context()
                .get_node_id(), "host": os.uname().nodename, "actor_pid": os.getpid()}

    def start(self, args: tuple[Any, ...]) -> int:
        """Spawn the stage (``child_entry(*args)``); its pid."""
        from livepose.kit.process import child_entry

        with self._lock:
            self.proc = mp.get_context("spawn").Process(target=child_entry, name=args[1],
                                                        args=args)
            self.proc.start()
            assert self.proc.pid is not None
            return self.proc.pid

    def wait(self) -> int | None:
        """Block until the stage process ends; its exit code."""
        assert self.proc is not None
        self.proc.join()
        return self.proc.exitcode

    def terminate(self) -> None:
        if self.proc is not None and self.proc.pid is not None and self.proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)

    def kill(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()

    def clock(self, endpoint: str, transport: dict[str, Any], rounds: int = 20
              ) -> dict[str, Any]:
        """The supervisor's clock minus this node's (:mod:`livepose.transport.clocksync`),
        over the run's transport (CURVE with its keys)."""
        from livepose.core.config import TransportConfig
        from livepose.transport.clocksync import measure, sync_status
        from livepose.transport.security import load_keys

        keys = load_keys(TransportConfig.model_validate(transport))
        return {**measure(endpoint, rounds, keys).as_dict(), "sync": sync_status()}


class RayStage:
    """A stage process on a Ray node, with the part of ``multiprocessing.Process``'s
    interface the supervisor uses (``pid``, ``is_alive``, ``exitcode``, ``terminate``,
    ``kill``, ``join``)."""

    def __init__(self, name: str, actor: Any, node: dict[str, Any]) -> None:
        self.name = name
        self.actor = actor
        self.node = node
        self.pid: int | None = None
        self._done: Any = None
        self._code: int | None = None
        self._finished = False
        self._checked = 0.0

    def start(self, args: tuple[Any, ...]) -> None:
        import ray

        self.pid = ray.get(self.actor.start.remote(args))
        self._done = self.actor.wait.remote()

    def _check(self, timeout: float | None = 0.0) -> bool:
        import ray
        from ray.exceptions import RayActorError, RayError

        if self._finished:
            return True
        if self._done is None:
            return False
        now = time.monotonic()
        if timeout == 0.0 and now - self._checked < CHECK_EVERY_S:
            return False  # the supervisor polls every few ms: ask Ray at most every 0.1 s
        self._checked = now
        ready, _ = ray.wait([self._done], timeout=timeout)
        if not ready:
            return False
        try:
            self._code = ray.get(ready[0])
        except RayActorError:  # the actor (or its node) died: the stage with it
            self._code = -signal.SIGKILL
        except RayError:
            self._code = 1
        self._finished = True
        return True

    def is_alive(self) -> bool:
        return self._done is not None and not self._check()

    @property
    def exitcode(self) -> int | None:
        self._check()
        return self._code

    def terminate(self) -> None:
        with contextlib.suppress(Exception):
            self.actor.terminate.remote()

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.actor.kill.remote()

    def join(self, timeout: float | None = None) -> None:
        self._check(timeout)
        if self._finished:
            import ray

            with contextlib.suppress(Exception):
                ray.kill(self.actor)


class RayLauncher:
    """Starts the supervisor's stage processes on Ray (see the module docstring).

    Parameters
    ----------
    cfg
        The run's config (cameras, workers, transport, ``desync_tolerance_ms``).
    gpus_per_worker
        > 0: inference workers go to GPU nodes (frames then cross the network).
    """

    def __init__(self, cfg: Config, gpus_per_worker: float = 0.0,
                 clock_every_s: float = CLOCK_EVERY_S) -> None:
        self.ray = import_ray()
        self.cfg = cfg
        self.cams = list(cfg.camera_names)
        self.workers = cfg.model.workers
        self.gpus = gpus_per_worker
        #: per node id: the last clock measurement (offset of the supervisor's clock)
        self.clocks: dict[str, dict[str, Any]] = {}
        #: per node id: the largest |offset| + uncertainty seen (ms)
        self.clock_worst_ms: dict[str, float] = {}
        self.clock_every_s = clock_every_s
        self._clock_server: ClockServer | None = None
        self._clock_ctx: Any = None
        self._clock_stop = threading.Event()
        self._clock_thread: threading.Thread | None = None
        self.host_cls = self.ray.remote(num_cpus=0, max_restarts=0, max_concurrency=4)(StageHost)
        self.placed: dict[str, dict[str, Any]] = {}
        self._pending: dict[str, RayStage] = {}
        self.started: dict[str, RayStage] = {}

    def _actor(self, name: str) -> RayStage:
        res, gpus = resources_for(name, self.cams, self.gpus)
        want = {**res, **({"GPU": gpus} if gpus else {})}
        have = self.ray.cluster_resources()
        lacking = sorted(k for k in want if have.get(k, 0.0) <= 0.0)
        if lacking:
            raise UserError(f"stage {name!r} needs a node with {', '.join(lacking)}: no node of "
                            "the cluster offers it (ray start --resources '{\"" + lacking[0]
                            + "\": 1}'; docs/cluster.md)")
        actor = self.host_cls.options(resources=res, num_gpus=gpus, name=None).remote()
        try:
            node = self.ray.get(actor.node.remote(), timeout=60)
        except self.ray.exceptions.GetTimeoutError:
            self.ray.kill(actor)
            raise UserError(f"stage {name!r}: no Ray node with {want} could take it within "
                            "60 s (all busy, or the resources are on different nodes)") from None
        self.placed[name] = node
        return RayStage(name, actor, node)

    def place(self, names: list[str], endpoints: dict[str, str]) -> dict[str, str]:
        """Create every stage's actor (where Ray puts it) and point each stage-bound endpoint
        at its node's IP; returns the new endpoints."""
        try:
            return self._place(names, endpoints)
        except BaseException:
            self.close()  # no actor left behind by a refused start
            raise

    def _place(self, names: list[str], endpoints: dict[str, str]) -> dict[str, str]:
        for n in names:
            self._pending[n] = self._actor(n)
        out = dict(endpoints)
        for role, stage in binders(self.cams, self.workers).items():
            node = self.placed.get(stage)
            if role not in out or node is None or not out[role].startswith("tcp://"):
                continue
            if node["host"] == os.uname().nodename:
                continue  # a node on the supervisor's machine: transport.host as configured
            out[role] = f"tcp://{node['ip']}:{urlsplit(out[role]).port}"
        self.check_clocks()
        self._clock_thread = threading.Thread(target=self._monitor, name="clock-monitor",
                                              daemon=True)
        self._clock_thread.start()
        return out

    def _node_actors(self) -> dict[str, Any]:
        """One live stage actor per node (to measure that node's clock)."""
        out: dict[str, Any] = {}
        for name, stage in list(self._pending.items()) + list(self.started.items()):
            out.setdefault(self.placed[name]["node_id"], stage.actor)
        return out

    def measure_clocks(self) -> dict[str, dict[str, Any]]:
        """Measure every node's clock against the supervisor's (a ZeroMQ ping exchange)."""
        from livepose.transport.clocksync import ClockServer
        from livepose.transport.security import load_keys

        if self._clock_server is None:
            import zmq

            t = self.cfg.transport
            self._clock_ctx = zmq.Context()
            self._clock_server = ClockServer(self._clock_ctx, f"tcp://{t.host}:*",
                                             load_keys(t))
        ep = self._clock_server.endpoint
        transport = self.cfg.transport.model_dump(mode="json")
        refs = {nid: a.clock.remote(ep, transport) for nid, a in self._node_actors().items()}
        for nid, ref in refs.items():
            with contextlib.suppress(Exception):  # a node gone meanwhile: its stages say so
                m = self.ray.get(ref, timeout=10)
                worst = (abs(m["offset_ns"]) + m["uncertainty_ns"]) / 1e6
                self.clocks[nid] = {**m, "worst_ms": round(worst, 3)}
                self.clock_worst_ms[nid] = max(self.clock_worst_ms.get(nid, 0.0), worst)
        return self.clocks

    def check_clocks(self) -> None:
        """Refuse to start when a node's clock is off by more than the desync tolerance.

        Raises
        ------
        UserError
            Naming the node, its offset and uncertainty, and ``desync_tolerance_ms``.
        """
        tol = float(self.cfg.desync_tolerance_ms)
        for nid, m in self.measure_clocks().items():
            if m["worst_ms"] > tol:
                hosts = sorted({d["host"] for d in self.placed.values() if d["node_id"] == nid})
                raise UserError(
                    f"the clock of node {nid[:8]} ({', '.join(hosts)}) is "
                    f"{m['offset_ns'] / 1e6:+.3f} ms ± {m['uncertainty_ns'] / 1e6:.3f} ms off "
                    f"the supervisor's, more than desync_tolerance_ms ({tol:g}): sync the "
                    "hosts (PTP or chrony) before running")

    def _monitor(self) -> None:
        while not self._clock_stop.wait(self.clock_every_s):
            self.measure_clocks()
            for nid, m in self.clocks.items():
                if m["worst_ms"] > float(self.cfg.desync_tolerance_ms):
                    log.warning("clock of node %s drifted: %+.3f ms ± %.3f ms", nid[:8],
                                m["offset_ns"] / 1e6, m["uncertainty_ns"] / 1e6)

    def clock_summary(self) -> dict[str, Any]:
        """Per node: offset and uncertainty (ms); ``cross_host_uncertainty_ms``: what a
        latency or desync figure between two hosts may be off by (the worst node)."""
        per = {nid[:8]: {"offset_ms": round(m["offset_ns"] / 1e6, 3),
                         "uncertainty_ms": round(m["uncertainty_ns"] / 1e6, 3),
                         "worst_seen_ms": round(self.clock_worst_ms.get(nid, 0.0), 3),
                         "sync": m.get("sync", {"source": "none"})}
               for nid, m in self.clocks.items()}
        worst = max(self.clock_worst_ms.values(), default=0.0)
        return {"nodes": per, "cross_host_uncertainty_ms": round(worst, 3)}

    def close(self) -> None:
        """Stop the clock monitor, kill every actor still held."""
        self._clock_stop.set()
        if self._clock_thread is not None:
            self._clock_thread.join(15)
        if self._clock_server is not None:
            self._clock_server.close()
            self._clock_ctx.term()
        for st in list(self._pending.values()) + list(self.started.values()):
            with contextlib.suppress(Exception):
                self.ray.kill(st.actor)

    def process(self, name: str, args: tuple[Any, ...]) -> RayStage:
        """Start stage ``name`` (``child_entry`` args); a restart gets a new actor."""
        stage = self._pending.pop(name, None) or self._actor(name)
        stage.start(args)
        self.started[name] = stage
        return stage

    def stage_nodes(self) -> dict[str, str]:
        """Each stage's node (host name and IP)."""
        return {n: f"{d['host']} {d['ip']} {d['node_id'][:8]}" for n, d in self.placed.items()}


def cluster_launcher(cfg: Config, address: str, gpus_per_worker: float = 0.0) -> RayLauncher:
    """Join the cluster at ``address`` and make the launcher of ``livepose run --cluster``.

    Raises
    ------
    UserError
        Ray missing, the cluster unreachable, or a transport other than tcp.
    """
    from livepose.cluster.raycluster import connect

    if cfg.transport.kind != "tcp":
        raise UserError(f"--cluster: transport.kind must be tcp (stages on several hosts talk "
                        f"over tcp + CURVE), got {cfg.transport.kind!r}")
    connect(address)
    return RayLauncher(cfg, gpus_per_worker)
