"""The dashboard's client of the supervisor's ``control`` REQ/REP socket.

Requests are JSON objects ``{"cmd": "status" | "record_start" | "record_stop", ...}``
(``record_start`` takes ``name``); the reply is a JSON object (msgpack is accepted too).
Each request uses a fresh REQ socket with a timeout, so a supervisor that does not answer
(an older one without recording control, or a busy one) costs one timeout and never wedges
the socket — the dashboard then shows "recording control unavailable".
"""

from __future__ import annotations

import json
from typing import Any

import msgpack
import zmq

from livepose.transport import security

TIMEOUT_S = 1.0


class ControlUnavailable(RuntimeError):
    """The supervisor did not answer (no control server, or it timed out)."""


def _decode_reply(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        try:
            data = msgpack.unpackb(raw, raw=False)
        except Exception:  # msgpack raises several unrelated exception types
            raise ControlUnavailable("the supervisor's reply is neither JSON nor msgpack") from None
    if not isinstance(data, dict):
        raise ControlUnavailable(f"the supervisor's reply is not an object: {data!r:.80}")
    return data


def request(
    zctx: zmq.Context[Any], endpoint: str, body: dict[str, Any], timeout_s: float = TIMEOUT_S,
    keys: security.CurveKeys | None = None,
) -> dict[str, Any]:
    """Send one control request and return the reply.

    Parameters
    ----------
    zctx
        The calling process's ZeroMQ context.
    endpoint
        The supervisor's ``control`` endpoint.
    body
        ``{"cmd": ..., ...}``.
    keys
        CURVE keys for a tcp endpoint (the stage context's :attr:`keys`).

    Raises
    ------
    ControlUnavailable
        No reply within ``timeout_s`` or an unreadable reply.
    """
    sock = zctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        security.connect(sock, endpoint, keys)
        sock.send(json.dumps(body).encode())
        if not sock.poll(int(timeout_s * 1000)):
            raise ControlUnavailable(
                f"no answer from the supervisor's control socket within {timeout_s:.1f} s"
            )
        return _decode_reply(sock.recv())
    finally:
        sock.close(0)
