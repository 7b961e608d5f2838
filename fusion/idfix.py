"""A user's fixes of identities in the running fusion process (several animals).

The dashboard (``POST /api/ids``) or any client of the supervisor's ``control`` socket
(``{"cmd": "swap_ids", "a": 0, "b": 1}`` / ``{"cmd": "set_id", "current": 2, "new": 0}``)
asks the supervisor, which publishes the command on its ``record`` PUB (topic ``ids``,
:func:`livepose.core.control.encode_ids_command`); fusion subscribes to it while
``fusion.multi`` is on and applies it here to its :class:`MultiTracker`
(:meth:`~livepose.fusion.multitrack.MultiTracker.swap_ids` /
:meth:`~livepose.fusion.multitrack.MultiTracker.set_id`, which log it). Every command is
counted in fusion's health: ``id_fixes`` (applied; the last one in ``info["ids"]``) or
``id_rejected`` (malformed, no individuals yet, or an id fusion does not hold — with the
reason as the last error); a recording session gets both counters as events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq

from livepose.core.control import decode_ids_command
from livepose.kit.process import StageContext


def fix_ids(tracker: Any, cmd: dict[str, Any]) -> dict[str, object]:
    """Apply one decoded command to ``tracker`` (a ``MultiTracker``, or ``None`` before
    the first frame-set): ``swap`` ids ``a`` and ``b``, or ``set`` individual ``a``'s id to
    ``b``. Returns the tracker's log entry.

    Raises
    ------
    RuntimeError
        No tracker (yet).
    KeyError, ValueError
        No individual with that id / an id outside ``0..individuals-1``.
    """
    if tracker is None:
        raise RuntimeError("no individuals tracked yet (fusion.multi)")
    if cmd["cmd"] == "swap":
        tracker.swap_ids(cmd["a"], cmd["b"])
    else:
        tracker.set_id(cmd["a"], cmd["b"])
    return dict(tracker.id_log[-1])


def drain_id_commands(ctx: StageContext, tracker: Any, ctl: zmq.Socket[Any],
                      report: Callable[[str], None]) -> None:
    """Apply every command waiting on ``ctl`` (module docstring); never raises for a bad
    one."""
    while True:
        try:
            parts = ctl.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        cmd = decode_ids_command(parts)
        if cmd is None:
            ctx.counters["id_rejected"] += 1
            continue
        try:
            entry = fix_ids(tracker, cmd)
        except (KeyError, ValueError, RuntimeError) as exc:
            ctx.counters["id_rejected"] += 1
            report(f"ids {cmd['cmd']} {cmd['a']} {cmd['b']}: {exc}")
            continue
        ctx.counters["id_fixes"] += 1
        ctx.info["ids"] = {"last": entry, "fixes": ctx.counters["id_fixes"]}
