"""The receive side of the wire protocol on this host: :class:`Decoder` (decode in a receive
loop, count and drop what is malformed, resolve frame-ring references) and
:func:`encode_in_ring` (publish a frame whose pixels go into a ring).

The schema itself, and the strict encoder/decoder, are :mod:`livepose.core.protocol`; this
module adds what needs the same-host transport (:mod:`livepose.transport.shmring`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from livepose.core.protocol import (
    DEFAULT_LIMITS,
    Buffer,
    Limits,
    Message,
    ProtocolError,
    decode_strict,
    encode,
)
from livepose.transport.shmring import FrameRing, RingReader

log = logging.getLogger(__name__)


def encode_in_ring(msg: Message, ring: FrameRing, array: str = "image",
                   staged: bool = False) -> list[Buffer]:
    """Encode ``msg`` with its array ``array`` in a frame ring, and commit it.

    The array is copied into the ring's next slot (``staged``: the caller already wrote it
    into the loaned slot), the encoded ``[topic, header]`` is stored beside it, and the
    commit rings the ring's doorbell for followers. Returns the parts to send over ZeroMQ.
    """
    arr = getattr(msg, array)
    if not staged:
        np.copyto(ring.loan(arr.shape, arr.dtype), arr)
    parts = encode(msg, {array: ring.pending_ref()})
    ring.commit(parts)
    return parts




class Decoder:
    """Decode messages in a receive loop without ever raising for bad input.

    Parameters
    ----------
    limits
        Upper bounds on sizes.
    expect
        If given, only these kinds are accepted; others are counted as ``unexpected_kind``.

    Attributes
    ----------
    errors
        Counter of rejected messages by reason.
    received
        Number of messages accepted.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS, expect: Sequence[str] = (),
                 copy_shared: bool = True) -> None:
        self.limits = limits
        self.expect = frozenset(expect)
        self.copy_shared = copy_shared
        self.rings = RingReader()
        self.errors: Counter[str] = Counter()
        self.received = 0
        self._last_log = 0.0

    @property
    def rejected(self) -> int:
        """Total number of rejected messages."""
        return sum(self.errors.values())

    def decode(self, parts: Sequence[Any]) -> Message | None:
        """Decode ``parts``; on a protocol violation count it, log it and return ``None``."""
        try:
            msg = decode_strict(parts, self.limits, self.rings, self.copy_shared)
            if self.expect and msg.KIND not in self.expect:
                raise ProtocolError("unexpected_kind", msg.KIND)
        except ProtocolError as exc:
            self._reject(exc.reason, exc.detail)
            return None
        except Exception as exc:  # a bug of ours must not kill the receive loop either
            self._reject("internal", repr(exc)[:200])
            return None
        self.received += 1
        return msg

    def _reject(self, reason: str, detail: str) -> None:
        self.errors[reason] += 1
        now = time.monotonic()
        if now - self._last_log > 1.0:
            self._last_log = now
            log.warning(
                "dropped malformed message (%s: %s); %d rejected so far",
                reason,
                detail,
                self.rejected,
            )
