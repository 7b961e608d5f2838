"""The dashboard's client of the supervisor's ``control`` REQ/REP socket.

Requests are JSON objects ``{"cmd": "status" | "record_start" | "record_stop", ...}``
(``record_start`` takes ``name``); the reply is a JSON object (msgpack is accepted too).
Each request uses a fresh REQ socket with a timeout, so a supervisor that does not answer
(an older one without recording control, or a busy one) costs one timeout and never wedges
the socket — the dashboard then shows "recording control unavailable".

The dashboard polls ``status`` every second with a short timeout. A command that changes
something (``record_start`` opens the encoder and writes the session's files) gets a long
one: a command that timed out may still have taken effect, so the dashboard must not report
a start that happened as a failure merely because a loaded host answered late.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack
import zmq

from livepose.transport import security

#: timeout of a ``status`` request (polled every second)
TIMEOUT_S = 1.0
#: timeout of every other command
COMMAND_TIMEOUT_S = 10.0


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
    zctx: zmq.Context[Any], endpoint: str, body: dict[str, Any],
    timeout_s: float | None = None, keys: security.CurveKeys | None = None,
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
    timeout_s
        Seconds to wait for the reply; by default :data:`TIMEOUT_S` for ``status`` and
        :data:`COMMAND_TIMEOUT_S` for any other command.
    keys
        CURVE keys for a tcp endpoint (the stage context's :attr:`keys`).

    Raises
    ------
    ControlUnavailable
        No reply within ``timeout_s`` or an unreadable reply.
    """
    status = body.get("cmd") == "status"
    if timeout_s is None:
        timeout_s = TIMEOUT_S if status else COMMAND_TIMEOUT_S
    sock = zctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        security.connect(sock, endpoint, keys)
        sock.send(json.dumps(body).encode())
        if not sock.poll(int(timeout_s * 1000)):
            late = "" if status else (f"; {body.get('cmd')} may still take effect: "
                                      "see the recording status")
            raise ControlUnavailable(
                f"no answer from the supervisor's control socket within {timeout_s:.1f} s{late}"
            )
        return _decode_reply(sock.recv())
    finally:
        sock.close(0)
