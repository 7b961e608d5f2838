"""Control messages that are not data: the supervisor's and clients' commands to stages.

Each is a two-part ZeroMQ message ``[topic, msgpack body]`` with ``v: 1`` and a ``cmd``;
decoders return ``None`` for anything malformed (counted by the receiver), never raise.

- ``record`` (supervisor → cameras, recorder): start/stop recording at a frame.
- ``workers`` (supervisor → inference workers): a *reshard* after a worker died.
- ``camctl`` (a closed-loop client → cameras): pulse a camera's output line.
- ``ids`` (supervisor → fusion): a user's fix of the individuals' identities — swap two
  ids, or give an individual another id (docs/multi-animal.md); the supervisor publishes it
  on its ``record`` PUB when the ``control`` socket gets ``swap_ids`` / ``set_id``.

Reshard: ``model.workers: K`` workers share the frame-sets by ``frame_id % K == k``. When
worker ``d`` dies and others survive, the supervisor publishes a reshard on its control PUB
(endpoint role ``record``, topic ``workers``): from frame ``from_id`` on, the ``m`` survivors
``alive`` (ascending) own ``frame_id % m == alive.index(k)``. ``from_id`` lies a little ahead
of the newest pulse the supervisor knows of, so every survivor switches at the same frame: the
fused stream is complete again from ``from_id`` (at the survivors' throughput); the dead
worker's share between its death and ``from_id`` is lost, and shows up as missing frame-sets.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgpack

RECORD_TOPIC = b"record"
WORKERS_TOPIC = b"workers"
CAMERA_CONTROL_TOPIC = b"camctl"
IDS_TOPIC = b"ids"


# --------------------------------------------------------------------------- record


def encode_record_control(cmd: str, session: Path | None = None, frame: int | None = None) -> list[bytes]:
    """The run-time recording control message (supervisor → cameras, recorder).

    ``cmd`` ``start``: record frames with ``frame_id >= frame`` into ``session``;
    ``stop``: record no frame with ``frame_id > frame`` and close the writers. ``frame``
    ``None`` means "from/after the next frame you see".
    """
    body = {"v": 1, "cmd": cmd, "session": str(session) if session else None, "frame": frame}
    return [RECORD_TOPIC, msgpack.packb(body, use_bin_type=True)]


def decode_record_control(parts: list[bytes]) -> dict[str, Any] | None:
    """Inverse of :func:`encode_record_control`; ``None`` for anything malformed."""
    try:
        body = msgpack.unpackb(parts[1], raw=False)
    except Exception:  # msgpack raises several unrelated types; a bad message is ignored
        return None
    if not isinstance(body, dict) or body.get("v") != 1 or body.get("cmd") not in ("start", "stop"):
        return None
    frame = body.get("frame")
    if frame is not None and (not isinstance(frame, int) or isinstance(frame, bool)):
        return None
    if body["cmd"] == "start" and not isinstance(body.get("session"), str):
        return None
    return body


# --------------------------------------------------------------------------- workers


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


# --------------------------------------------------------------------------- camera outputs


def encode_camera_command(cam: str, line: str, width_us: int, frame_id: int | None) -> list[bytes]:
    """Pulse output ``line`` of camera ``cam`` for ``width_us`` (closed-loop client → camera)."""
    body = {"v": 1, "cmd": "user_output", "cam": cam, "line": line, "width_us": int(width_us),
            "frame_id": frame_id, "t_ns": time.time_ns()}
    return [CAMERA_CONTROL_TOPIC, msgpack.packb(body, use_bin_type=True)]


def decode_camera_command(parts: list[bytes]) -> dict[str, Any] | None:
    """A :class:`CameraOutput` command (camera side); ``None`` for anything malformed."""
    if len(parts) != 2 or parts[0] != CAMERA_CONTROL_TOPIC:
        return None
    try:
        body = msgpack.unpackb(parts[1], raw=False)
    except Exception:  # msgpack raises several unrelated types; a bad message is dropped
        return None
    ok = (isinstance(body, dict) and body.get("v") == 1 and body.get("cmd") == "user_output"
          and isinstance(body.get("cam"), str) and isinstance(body.get("line"), str)
          and type(body.get("width_us")) is int and body["width_us"] > 0
          and type(body.get("t_ns")) is int)
    return body if ok else None


# --------------------------------------------------------------------------- identities


def encode_ids_command(cmd: str, a: int, b: int) -> list[bytes]:
    """Fix identities (supervisor → fusion): ``swap`` ids ``a`` and ``b``, or ``set``
    individual ``a``'s id to ``b`` (swapping with its holder)."""
    body = {"v": 1, "cmd": cmd, "a": int(a), "b": int(b), "t_ns": time.time_ns()}
    return [IDS_TOPIC, msgpack.packb(body, use_bin_type=True)]


def decode_ids_command(parts: list[Any]) -> dict[str, Any] | None:
    """Inverse of :func:`encode_ids_command`; ``None`` for anything malformed."""
    if len(parts) != 2 or bytes(parts[0]) != IDS_TOPIC:
        return None
    try:
        body = msgpack.unpackb(bytes(parts[1]), raw=False)
    except Exception:  # msgpack raises several unrelated types; a bad message is dropped
        return None
    ok = (isinstance(body, dict) and body.get("v") == 1 and body.get("cmd") in ("swap", "set")
          and type(body.get("a")) is int and type(body.get("b")) is int
          and body["a"] >= 0 and body["b"] >= 0)
    return body if ok else None


def ids_request(req: dict[str, Any]) -> tuple[str, int, int]:
    """A control request ``{"cmd": "swap_ids", "a", "b"}`` or ``{"cmd": "set_id",
    "current", "new"}`` as ``(cmd, a, b)`` for :func:`encode_ids_command`.

    Raises
    ------
    ValueError
        A missing or bad field (named), one line.
    """
    cmd = req.get("cmd")
    keys = ("a", "b") if cmd == "swap_ids" else ("current", "new")
    vals = []
    for k in keys:
        v = req.get(k)
        if type(v) is not int or v < 0:
            raise ValueError(f"{cmd}: {k} must be an individual id (an int >= 0), got {v!r}")
        vals.append(v)
    if cmd == "swap_ids" and vals[0] == vals[1]:
        raise ValueError(f"swap_ids: a and b are the same id ({vals[0]})")
    return ("swap" if cmd == "swap_ids" else "set"), vals[0], vals[1]
