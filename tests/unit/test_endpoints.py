"""Endpoint resolution: free tcp ports stay out of the kernel's ephemeral range."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from livepose.core.config import load_default_config
from livepose.transport import endpoints as eps


def test_tcp_roles_get_distinct_ports_below_the_ephemeral_range() -> None:
    cfg = load_default_config()
    cfg.transport.kind = "tcp"
    out = eps.resolve(cfg)
    ports = [int(e.rsplit(":", 1)[1]) for e in out.values()]
    assert len(set(ports)) == len(ports) == len(eps.roles(cfg))
    assert all(p in eps.FREE_PORTS for p in ports)
    rng = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if rng.exists():  # Linux: what bind(0) and outgoing connections draw from
        low = int(rng.read_text().split()[0])
        assert max(ports) < low


class _Scripted(random.Random):
    """Chooses the given ports in turn (to make a collision happen on purpose)."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__()
        self.ports = ports

    def choice(self, seq):  # type: ignore[no-untyped-def, override]
        return self.ports.pop(0)


def test_a_busy_or_already_given_port_is_skipped() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        b = busy.getsockname()[1]
        free, free2 = _two_free_ports()
        taken = {free}  # given to an earlier role of the same run
        got = eps.free_port("127.0.0.1", taken, _Scripted([b, free, free2]))
    assert got == free2 and taken == {free, free2}


def _two_free_ports() -> tuple[int, int]:
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        return a.getsockname()[1], b.getsockname()[1]
