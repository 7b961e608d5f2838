"""Warm spares: stage processes started ahead of need, so a restart skips the start-up.

A restarted stage used to spend most of its recovery starting up — a fresh ``spawn``
interpreter importing NumPy, pydantic, ZeroMQ, ONNX Runtime, numba and the stage's modules,
and loading numba kernels from their cache — not doing its job. A *spare* does all of that
before anyone dies: it is a ``spawn`` process that runs its stage's warm-up
(:data:`livepose.runtime.stages.WARM`: the imports, and kernels loaded) and then waits on a
pipe. When a stage of that kind dies, the supervisor hands the spare the dead stage's
``child_entry`` arguments; the spare becomes that stage (its pid is the one the supervisor
then trusts for health), and a new spare is started a little later for the next death.

A spare that is never used gets ``None`` (or loses its pipe when the supervisor dies) and
exits. ``restart.spares: false`` turns them off.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing.connection
import signal
import sys
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
    """

    def __init__(self, mp_ctx: Any, cfg: dict[str, Any], log_level: int) -> None:
        self.mp = mp_ctx
        self.cfg = cfg
        self.log_level = log_level
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
        for target, (p, conn) in self.ready.items():
            if target not in self.warm:
                with contextlib.suppress(EOFError, OSError):
                    if conn.poll() and conn.recv() == b"warm":
                        self.warm.add(target)
                if target not in self.warm and not p.is_alive():  # died warming up: the
                    self.warm.add(target)  # stage starts fresh (take() sees it); go on

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
