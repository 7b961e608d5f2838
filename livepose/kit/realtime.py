"""Real-time scheduling for the processes on the latency path (``realtime: true``).

On a busy rig computer the kernel's fair scheduler lets a camera process or the fusion
wait behind whatever else is runnable — rendering, encoding, a browser — which is where a
closed loop's latency tail comes from. With ``realtime: true`` the trigger, camera,
inference and fusion processes run under ``SCHED_FIFO`` (Linux), each at a fixed priority
(:data:`PRIORITY`): a stage that wakes up preempts any ordinary task at once. Threads that do
bulk work inside those processes (rendering ahead, video encoding) call
:func:`leave_realtime` to drop back to the ordinary scheduler. The kernel's real-time
throttling (``/proc/sys/kernel/sched_rt_runtime_us``, 95 % by default) keeps the machine
responsive even if a stage misbehaved; every stage blocks on its sockets between messages.

It needs root or ``CAP_SYS_NICE`` or an ``rtprio`` limit (``/etc/security/limits.conf``:
``@lab - rtprio 50``). Without it the process stays on the ordinary scheduler, says so in the
log and publishes ``sched: other`` in its ready message.
"""

from __future__ import annotations

import contextlib
import logging
import os

log = logging.getLogger(__name__)

#: SCHED_FIFO priority by stage role: a stage the next one waits on preempts it.
PRIORITY = {"trigger": 40, "camera": 35, "fusion": 30, "client": 25, "inference": 20}


def enter_realtime(priority: int) -> str:
    """Put the calling thread (and threads it starts later) under ``SCHED_FIFO``.

    Parameters
    ----------
    priority
        1 (lowest) … 99.

    Returns
    -------
    str
        ``"fifo:<priority>"``, or ``"other (<why>)"`` when it was not allowed.
    """
    if not hasattr(os, "sched_setscheduler"):
        return "other (no SCHED_FIFO on this platform)"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (PermissionError, OSError) as exc:
        why = "not permitted: run as root, grant CAP_SYS_NICE or an rtprio limit"
        log.info("real-time scheduling refused (%s); %s", exc.strerror or exc, why)
        return f"other ({why})"
    return f"fifo:{priority}"


def leave_realtime(nice: int = 0) -> None:
    """Move the calling thread back to the ordinary scheduler (at ``nice``, per thread)."""
    if hasattr(os, "sched_setscheduler"):
        with contextlib.suppress(OSError):
            if os.sched_getscheduler(0) != os.SCHED_OTHER:
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    if nice > 0:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, nice)  # who=0: this thread on Linux
