"""Which inference worker owns which frame-set, and the takeover when one dies.

``model.workers: K`` workers share the frame-sets by ``frame_id % K == k``. When worker
``d`` dies and others survive, the supervisor publishes a *reshard* on its control PUB
(endpoint role ``record``, topic ``workers``): from frame ``from_id`` on, the ``m``
survivors ``alive`` (ascending) own ``frame_id % m == alive.index(k)``. ``from_id`` lies
a little ahead of the newest pulse the supervisor knows of, so every survivor switches at
the same frame: the fused stream is complete again from ``from_id`` (at the survivors'
throughput); the dead worker's share between its death and ``from_id`` is lost, and
shows up as missing frame-sets.
"""

from __future__ import annotations

from typing import Any

import msgpack

WORKERS_TOPIC = b"workers"


def encode_reshard(alive: list[int], from_id: int) -> list[bytes]:
    """The reshard message (supervisor → inference workers)."""
    body = {"v": 1, "cmd": "reshard", "alive": sorted(alive), "from": int(from_id)}
    return [WORKERS_TOPIC, msgpack.packb(body, use_bin_type=True)]


def decode_reshard(parts: list[Any]) -> tuple[list[int], int] | None:
    """Inverse of :func:`encode_reshard`: ``(alive, from_id)``; ``None`` if malformed."""
    try:
        body = msgpack.unpackb(bytes(parts[1]), raw=False)
    except Exception:  # msgpack raises several unrelated types; a bad message is ignored
        return None
    if not isinstance(body, dict) or body.get("v") != 1 or body.get("cmd") != "reshard":
        return None
    alive, start = body.get("alive"), body.get("from")
    if not isinstance(alive, list) or not alive or type(start) is not int or start < 0:
        return None
    ids = [a for a in alive if type(a) is int and a >= 0]
    if len(ids) != len(alive) or len(set(ids)) != len(ids):
        return None
    return sorted(ids), start
