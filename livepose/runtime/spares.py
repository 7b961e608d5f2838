"""Warm spares: stage processes started ahead of need, so a restart skips the start-up.

A restarted stage used to spend most of its recovery starting up — a fresh ``spawn``
interpreter importing NumPy, pydantic, ZeroMQ, ONNX Runtime, numba and the stage's modules,
and loading numba kernels from their cache — not doing its job. A *spare* does all of that
before anyone dies: it is a ``spawn`` process that runs its stage's warm-up
(:data:`livepose.runtime.stages.WARM`: the imports, and kernels loaded) and then waits on a
pipe. When a stage of that kind dies, the supervisor hands the spare the dead stage's
``child_entry`` arguments; the spare becomes that stage (its pid is the one the supervisor
then trusts for health), and a new spare is started a little later for the next death.

A spare warms up while the pipeline runs, so its imports compete with the stages for the
CPU; on a small machine running near its capacity that burst alone makes the pipeline skip
frame-sets. So a warming spare is *throttled* the way ``cpulimit`` does it: the supervisor
stops it (``SIGSTOP``) and lets it go on (``SIGCONT``) in turn, so that it uses at most
``restart.spare_cpu`` of one core (a 100 ms cycle) until it reports that it is warm. An
unprivileged process cannot raise its priority back once it lowered it (``nice`` or
``SCHED_IDLE``), and a spare must run as its stage would once it takes over, so stopping
and continuing is the portable way. A stopped spare whose supervisor dies is continued and
hung up by the kernel (an orphaned process group with a stopped member gets ``SIGHUP`` and
``SIGCONT``), and a spare also exits when its pipe closes.

A spare that is never used gets ``None`` (or loses its pipe when the supervisor dies) and
exits. ``restart.spares: false`` turns them off.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from livepose.kit.process import child_entry, setup_logging

log = logging.getLogger(__name__)
#: a stage's warm-up: ``(config as a dict, the stage's args) -> None``
Warm = Callable[[dict[str, Any], dict[str, Any]], None]

#: a new spare starts this long after the last one was taken (not during the recovery)
REFILL_DELAY_S = 3.0
#: the first spare starts this long after the run began (not during its first seconds,
#: when a short run would pay for warm-ups it never uses)
FIRST_DELAY_S = 20.0
#: the throttle's cycle: a warming spare runs ``spare_cpu`` of it and is stopped the rest
THROTTLE_PERIOD_S = 0.1


def spare_entry(conn: multiprocessing.connection.Connection, warm: Warm | None,
                cfg: dict[str, Any], args: dict[str, Any], log_level: int) -> None:
    """Entry point of a spare (run under ``spawn``): warm up, wait for a job, run it."""
    t0 = time.monotonic()
    setup_logging("spare", log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # until it becomes a stage
    if warm is not None:
        try:
            warm(cfg, args)
        except Exception as exc:  # a failed warm-up costs the stage its start-up, no more
            log.warning("spare: warm-up failed (%s: %s)", type(exc).__name__, exc)
    # what was loaded lives as long as the stage: out of the collector's view now, so the
    # stage's own collection at ready (StageContext.ready) scans only what it adds
    gc.collect()
    gc.freeze()
    warmed = time.monotonic()
    with contextlib.suppress(OSError):
        conn.send(b"warm")
    try:
        job = conn.recv()
    except (EOFError, OSError):
        return  # the supervisor is gone
    finally:
        conn.close()
    if job is None:
        return
    target, name, run_cfg, endpoints, stage_args, level, nice, rt = job
    child_entry(target, name, run_cfg, endpoints, stage_args, level, nice, rt,
                info={"spare": {"warm_up_s": round(warmed - t0, 2),
                                "waited_s": round(time.monotonic() - warmed, 2)}})


class Spares:
    """One warm spare per stage kind (keyed by the stage's target function).

    Parameters
    ----------
    mp_ctx
        The supervisor's ``spawn`` context.
    cfg
        The run's config as a dict (what warm-ups read).
    log_level
        Logging level in the spares.
    cpu_share
        The share of one core a warming spare may use (``restart.spare_cpu``); 1: not
        throttled.
    """

    def __init__(self, mp_ctx: Any, cfg: dict[str, Any], log_level: int,
                 cpu_share: float = 1.0) -> None:
        self.mp = mp_ctx
        self.cfg = cfg
        self.log_level = log_level
        self.cpu_share = cpu_share
        self._lock = threading.Lock()  # the throttle thread and the supervisor's calls
        self._throttled: set[int] = set()  # pids of warming spares under the throttle
        self._throttle: threading.Thread | None = None
        self._closing = threading.Event()
        self.ready: dict[Callable[..., None], tuple[Any, Any]] = {}
        self._due: dict[Callable[..., None], float] = {}
        self._warm: dict[Callable[..., None], tuple[Warm | None, dict[str, Any]]] = {}
        self.used = 0
        self.warm: set[Callable[..., None]] = set()  # spares done warming up

    def want(self, target: Callable[..., None], warm: Warm | None, args: dict[str, Any],
             delay_s: float = 0.0) -> None:
        """Have a spare for ``target`` (started now, or after ``delay_s``), warmed up with
        ``args`` (those of one stage of that kind)."""
        if target not in self.ready:
            self._due[target] = time.monotonic() + delay_s
            self._warm[target] = (warm, args)

    def tick(self) -> None:
        """Start the spares that are due (call from the supervisor's poll), one at a time:
        the next starts once the previous one is warm, so their warm-ups never take more
        than about one core from the running pipeline."""
        now = time.monotonic()
        warming = any(t not in self.warm for t in self.ready)
        for target, due in list(self._due.items()):
            if now < due or warming:
                continue
            warming = True
            del self._due[target]
            mine, theirs = self.mp.Pipe()
            p = self.mp.Process(target=spare_entry, name=f"spare-{target.__name__}",
                                args=(theirs, *self._warm[target][:1], self.cfg,
                                      self._warm[target][1], self.log_level))
            p.start()
            theirs.close()
            self.ready[target] = (p, mine)
            self._limit(p.pid)
        for target, (p, conn) in self.ready.items():
            if target not in self.warm:
                with contextlib.suppress(EOFError, OSError):
                    if conn.poll() and conn.recv() == b"warm":
                        self.warm.add(target)
                if target not in self.warm and not p.is_alive():  # died warming up: the
                    self.warm.add(target)  # stage starts fresh (take() sees it); go on
                if target in self.warm:
                    self._release(p.pid)

    # ------------------------------------------------------------------ the throttle

    def _limit(self, pid: int | None) -> None:
        """Put a warming spare under the throttle (no-op when not throttling)."""
        if pid is None or self.cpu_share >= 1.0:
            return
        with self._lock:
            self._throttled.add(pid)
        if self._throttle is None:
            self._throttle = threading.Thread(target=self._run_throttle, daemon=True,
                                              name="spare-throttle")
            self._throttle.start()

    def _release(self, pid: int | None) -> None:
        """Take a spare off the throttle and make sure it runs (before it gets a job)."""
        with self._lock:
            if pid in self._throttled:
                self._throttled.discard(pid)
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGCONT)

    def _run_throttle(self) -> None:
        on = THROTTLE_PERIOD_S * max(self.cpu_share, 0.01)
        off = THROTTLE_PERIOD_S - on
        while not self._closing.is_set():
            with self._lock:
                pids = list(self._throttled)
                for pid in pids:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGCONT)
            if self._closing.wait(on):
                break
            with self._lock:  # only those still throttled: one released meanwhile runs
                for pid in list(self._throttled):
                    try:
                        os.kill(pid, signal.SIGSTOP)
                    except OSError:  # gone
                        self._throttled.discard(pid)
            self._closing.wait(off)
        with self._lock:
            for pid in self._throttled:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGCONT)
            self._throttled.clear()

    def all_warm(self) -> bool:
        """Whether every spare wanted is started and warmed up."""
        return not self._due and all(t in self.warm for t in self.ready)

    def take(self, target: Callable[..., None], job: tuple[Any, ...]) -> Any | None:
        """Hand ``job`` (``child_entry``'s arguments) to the spare of ``target``; returns
        its process, or ``None`` when there is no live spare (start a fresh process)."""
        entry = self.ready.pop(target, None)
        self.warm.discard(target)
        if entry is None:
            return None
        p, send = entry
        self._release(p.pid)
        try:
            if not p.is_alive():
                raise BrokenPipeError("spare died")
            send.send(job)
        except (BrokenPipeError, OSError) as exc:
            log.warning("spare for %s unusable (%s); starting a fresh process",
                        target.__name__, exc)
            send.close()
            return None
        send.close()
        self.used += 1
        self.want(target, *self._warm[target], delay_s=REFILL_DELAY_S)
        return p

    def close(self) -> None:
        """Tell every unused spare to exit (and make sure it does)."""
        self._due.clear()
        self._closing.set()
        if self._throttle is not None:
            self._throttle.join(1.0)
        for p, _ in self.ready.values():
            self._release(p.pid)
        for _p, send in self.ready.values():
            with contextlib.suppress(OSError):
                send.send(None)
            send.close()
        for p, _ in self.ready.values():
            p.join(2.0)
            if p.is_alive():
                p.kill()
                p.join(1.0)
        self.ready.clear()
