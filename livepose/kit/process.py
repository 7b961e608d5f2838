"""What every stage process shares: its ZeroMQ context, health reporting and stop signal.

A stage is a function ``main(ctx: StageContext) -> None``; the supervisor names it through
its registry (:mod:`livepose.runtime.stages`) and starts it in a fresh ``spawn`` process
through :func:`child_entry`, which sets up logging and signals, builds the context (one
ZeroMQ context per process) and calls it. The stage

1. opens its sockets and devices (handles are born in the process that uses them),
2. calls :meth:`StageContext.ready` once it can do its job,
3. loops until :attr:`StageContext.stopping` is true, polling sockets with a timeout and
   calling :meth:`StageContext.tick_health` now and then,
4. returns (sockets are closed by the context).

SIGINT is ignored in stage processes (Ctrl-C in a terminal reaches the whole process group;
the supervisor decides the shutdown order) and SIGTERM sets the stop flag.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from livepose.core import protocol
from livepose.core.config import Config, from_dict
from livepose.kit.realtime import enter_realtime, leave_realtime
from livepose.transport import security

log = logging.getLogger(__name__)

HEALTH_PERIOD_S = 0.5


@dataclass
class StageContext:
    """Everything a stage process gets.

    Attributes
    ----------
    name
        Process name (``cam0``, ``infer0``, ``fusion``…), unique in a run.
    cfg
        The validated config.
    endpoints
        Resolved endpoints by role (see :func:`livepose.transport.endpoints.resolve`).
    args
        Stage-specific arguments from the supervisor.
    zmq_ctx
        The process's one ZeroMQ context.
    counters
        Monotonic counters published in ``health``.
    rates, info
        Current rates and static facts published in ``health``.
    """

    name: str
    cfg: Config
    endpoints: dict[str, str]
    args: dict[str, Any] = field(default_factory=dict)
    zmq_ctx: zmq.Context[Any] = field(default_factory=zmq.Context)
    counters: Counter[str] = field(default_factory=Counter)
    rates: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    last_error: str | None = None
    #: the supervisor's pid (set by :func:`child_entry`); ``None``: no orphan check
    parent_pid: int | None = None
    _stop: bool = False
    _health: zmq.Socket[Any] | None = None
    _state: str = "starting"
    _last_health: float = 0.0
    _sockets: list[zmq.Socket[Any]] = field(default_factory=list)
    _keys: security.CurveKeys | None = None
    _keys_loaded: bool = False

    @property
    def keys(self) -> security.CurveKeys | None:
        """This process's CURVE keys (``None``: no CURVE), read on first use."""
        if not self._keys_loaded:
            self._keys = security.load_keys(self.cfg.transport)
            self._keys_loaded = True
        return self._keys

    # ------------------------------------------------------------------ sockets
    def socket(
        self,
        kind: int,
        *,
        bind: str | None = None,
        connect: list[str] | str | None = None,
        subscribe: list[bytes] | bytes | None = None,
        hwm: int | None = None,
    ) -> zmq.Socket[Any]:
        """Create a socket owned by this context (closed at exit).

        Parameters
        ----------
        kind
            ``zmq.PUB``, ``zmq.SUB``…
        bind, connect
            Endpoint(s); tcp ones get CURVE with the run's keys
            (:mod:`livepose.transport.security`).
        subscribe
            Topic prefix(es) for SUB sockets.
        hwm
            Send/receive high-water mark (messages).
        """
        s = self.zmq_ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        if hwm is not None:
            s.setsockopt(zmq.SNDHWM, hwm)
            s.setsockopt(zmq.RCVHWM, hwm)
        if kind == zmq.SUB:
            subs = subscribe if isinstance(subscribe, list) else [subscribe or b""]
            for t in subs:
                s.setsockopt(zmq.SUBSCRIBE, t)
        self._sockets.append(s)
        if bind:
            security.bind(s, bind, self.keys)
        if connect:
            for ep in [connect] if isinstance(connect, str) else connect:
                security.connect(s, ep, self.keys)
        return s

    # ------------------------------------------------------------------ lifecycle
    @property
    def stopping(self) -> bool:
        """True once the supervisor asked this process to stop."""
        return self._stop

    def request_stop(self) -> None:
        """Ask the stage loop to finish."""
        self._stop = True

    def ready(self, **info: Any) -> None:
        """Tell the supervisor this stage is ready (sockets open, models loaded)."""
        self.info.update(info)
        self.info["t_ready_ns"] = time.time_ns()
        # everything allocated so far (modules, models, kernels) lives for the whole run:
        # move it out of the collector's view so later collections stay short
        gc.collect()
        gc.freeze()
        self._state = "ready"
        self.publish_health(force=True)

    def set_state(self, state: str) -> None:
        """Change the published state (``running``, ``stopping``, ``error``)."""
        self._state = state
        self.publish_health(force=True)

    def error(self, message: str) -> None:
        """Record a non-fatal error: counted, logged, published as ``last_error``."""
        self.counters["errors"] += 1
        self.last_error = message
        named = message.startswith(f"{self.name}: ")  # many messages name their camera
        log.error("%s", message if named else f"{self.name}: {message}")

    def tick_health(self) -> None:
        """Publish health if the period elapsed (cheap to call every loop)."""
        self.publish_health(force=False)

    def publish_health(self, force: bool = False) -> None:
        """Publish a ``health`` message (always when ``force``).

        Also the orphan check: when the supervisor is gone (killed, or its process aborted)
        this process is re-parented, and it stops instead of running on unsupervised.
        """
        now = time.monotonic()
        if not force and now - self._last_health < HEALTH_PERIOD_S:
            return
        self._last_health = now
        if self.parent_pid is not None and os.getppid() != self.parent_pid and not self._stop:
            log.error("%s: the supervisor (pid %d) is gone; stopping", self.name, self.parent_pid)
            self.request_stop()
        if self._health is None:
            ep = self.endpoints.get("health")
            if not ep:
                return
            self._health = self.socket(zmq.PUB, connect=ep, hwm=100)
        msg = protocol.Health(
            proc=self.name,
            pid=os.getpid(),
            state=self._state,
            t_ns=time.time_ns(),
            counters=dict(self.counters),
            rates=dict(self.rates),
            info=dict(self.info),
            last_error=self.last_error,
        )
        with contextlib.suppress(zmq.Again):
            self._health.send_multipart(protocol.encode(msg), flags=zmq.NOBLOCK)
        n = security.refused(self.zmq_ctx)
        if n:
            self.counters["curve_refused"] = n

    def close(self) -> None:
        """Close all sockets, the CURVE authenticator and the ZeroMQ context."""
        for s in self._sockets:
            s.close(linger=0)
        self._sockets.clear()
        security.release(self.zmq_ctx)
        self.zmq_ctx.term()


def setup_logging(name: str, level: int = logging.INFO) -> None:
    """Log to stderr with the process name (called in entry points, never at import)."""
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def child_entry(
    target: Callable[[StageContext], None],
    name: str,
    cfg: dict[str, Any],
    endpoints: dict[str, str],
    args: dict[str, Any],
    log_level: int = logging.WARNING,
    nice: int = 0,
    rt_priority: int = 0,
    info: dict[str, Any] | None = None,
) -> None:
    """Entry point of every stage process (run under ``spawn``).

    ``nice`` > 0 lowers the process's priority (consumers off the latency path);
    ``rt_priority`` > 0 asks for ``SCHED_FIFO`` at that priority (:mod:`livepose.kit.realtime`)
    before anything starts a thread, so the stage's threads inherit it."""
    setup_logging(name, log_level)
    if nice > 0:
        with contextlib.suppress(OSError):
            os.nice(nice)
    if rt_priority > 0:
        sched = enter_realtime(rt_priority)
    else:  # spawned by a real-time parent (the demo's consumer): back to the fair scheduler
        leave_realtime()
        sched = "other"
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctx = StageContext(name=name, cfg=from_dict(cfg), endpoints=endpoints, args=args,
                       parent_pid=os.getppid())
    ctx.info["sched"] = sched
    ctx.info.update(info or {})  # e.g. a warm spare's warm-up times (runtime/spares.py)

    def _on_term(signum: int, frame: Any) -> None:
        ctx.request_stop()

    signal.signal(signal.SIGTERM, _on_term)
    code = 0
    try:
        target(ctx)
    except Exception as exc:
        ctx.last_error = f"{type(exc).__name__}: {exc}"
        log.error("%s crashed:\n%s", name, traceback.format_exc())
        try:
            ctx.set_state("error")
            time.sleep(0.05)  # let the last health message leave
        except Exception:  # the context itself may be broken; nothing more to say
            pass
        code = 1
    finally:
        ctx.close()
    sys.exit(code)
