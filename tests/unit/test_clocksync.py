"""The clock ping exchange over real ZeroMQ tcp (loopback: both ends share one clock, so
the true offset is 0 and must lie within the reported uncertainty)."""

from __future__ import annotations

from typing import Any

import zmq

from livepose.transport.clocksync import ClockServer, measure


def test_offset_within_uncertainty_and_malformed_counted() -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    server = ClockServer(ctx, "tcp://127.0.0.1:*")
    try:
        m = measure(server.endpoint, rounds=30)
        assert m.rounds == 30 and m.rtt_ns > 0
        assert abs(m.offset_ns) <= m.uncertainty_ns + 1  # same clock: 0 within ±rtt/2
        assert m.worst_ms() < 50.0
        bad = ctx.socket(zmq.DEALER)
        bad.setsockopt(zmq.LINGER, 0)
        bad.connect(server.endpoint)
        bad.send(b"not a ping")
        assert measure(server.endpoint, rounds=1).rounds == 1  # still answering
        assert server.malformed == 1
        assert server.answered == 31
        bad.close(0)
    finally:
        server.close()
        ctx.term()
