"""CURVE on tcp (real sockets on loopback), the keys on disk, and the config's refusal."""

from __future__ import annotations

import ast
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from typer.testing import CliRunner

from livepose.core import protocol
from livepose.core.config import ConfigError, load_default_config, parse_config, to_dict
from livepose.core.config.services import TransportConfig
from livepose.core.errors import UserError
from livepose.transport import codec, security

ROOT = Path(__file__).resolve().parents[2]


def _keys(d: Path, name: str, server: bytes | None = None,
          allowed: frozenset[bytes] | None = None) -> security.CurveKeys:
    _, secret = security.make_key_pair(d, name)
    public, sec = security.read_pair(secret)
    return security.CurveKeys(public, sec, server or public, allowed or frozenset({public}))


@pytest.fixture
def zctx() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    security.release(ctx)
    ctx.destroy(linger=0)


def _free_tcp() -> str:
    from livepose.transport.endpoints import free_port

    return f"tcp://127.0.0.1:{free_port()}"


def _sub(zctx: zmq.Context[Any], ep: str, keys: security.CurveKeys | None) -> zmq.Socket[Any]:
    s = zctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    security.connect(s, ep, keys)
    return s


def _frame(k: int) -> list[bytes]:
    img = np.full((4, 6), k, np.uint8)
    return protocol.encode(protocol.Frame(cam="cam0", frame_id=k, t_grab_ns=1,
                                          pixel_format="Mono8", image=img))


def _received(sock: zmq.Socket[Any], wait_s: float) -> list[Any]:
    dec = codec.Decoder(expect=["frame", "health"])
    out = []
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if sock.poll(20):
            msg = dec.decode(sock.recv_multipart())
            if msg is not None:
                out.append(msg)
    return out


def test_unauthenticated_subscriber_receives_nothing(tmp_path: Path,
                                                     zctx: zmq.Context[Any]) -> None:
    run = _keys(tmp_path / "rig", "rig")
    stranger = _keys(tmp_path / "other", "other", server=run.public)  # valid CURVE, not listed
    ep = _free_tcp()
    pub = zctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    security.bind(pub, ep, run)
    good = _sub(zctx, ep, run)
    plain = _sub(zctx, ep, None)  # no CURVE at all
    unlisted = _sub(zctx, ep, stranger)
    got: dict[str, list[Any]] = {"good": [], "plain": [], "unlisted": []}
    deadline = time.monotonic() + 10
    k = 0
    while len(got["good"]) < 20 and time.monotonic() < deadline:
        pub.send_multipart(_frame(k))
        k += 1
        for name, s in (("good", good), ("plain", plain), ("unlisted", unlisted)):
            got[name] += _received(s, 0.01)
    assert len(got["good"]) >= 20  # the listed subscriber gets frames…
    assert got["plain"] == [] and got["unlisted"] == []  # …nobody else gets a byte
    until = time.monotonic() + 10  # the unlisted key is turned away by the ZAP check
    while security.refused(zctx) < 1 and time.monotonic() < until:
        time.sleep(0.05)
    assert security.refused(zctx) >= 1


def test_unauthenticated_publisher_is_never_decoded(tmp_path: Path,
                                                    zctx: zmq.Context[Any]) -> None:
    run = _keys(tmp_path / "rig", "rig")
    ep = _free_tcp()
    sink = zctx.socket(zmq.SUB)  # as the supervisor's health SUB: it binds
    sink.setsockopt(zmq.LINGER, 0)
    sink.setsockopt(zmq.SUBSCRIBE, b"")
    security.bind(sink, ep, run)
    rogue = zctx.socket(zmq.PUB)
    rogue.setsockopt(zmq.LINGER, 0)
    security.connect(rogue, ep, None)
    friend = zctx.socket(zmq.PUB)
    friend.setsockopt(zmq.LINGER, 0)
    security.connect(friend, ep, run)
    spoof = protocol.encode(protocol.Health(proc="trigger", pid=1, state="running", t_ns=1,
                                            counters={"pulses": 10**9}))
    real = protocol.encode(protocol.Health(proc="cam0", pid=2, state="ready", t_ns=1))
    got: list[Any] = []
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        rogue.send_multipart(spoof)
        friend.send_multipart(real)
        got += _received(sink, 0.05)
    for _ in range(20):  # and more of the rogue's afterwards
        rogue.send_multipart(spoof)
    got += _received(sink, 0.3)
    assert got and {m.proc for m in got} == {"cam0"}


def test_plain_tcp_off_loopback_is_refused_by_the_socket_helper(zctx: zmq.Context[Any]) -> None:
    s = zctx.socket(zmq.PUB)
    s.setsockopt(zmq.LINGER, 0)
    with pytest.raises(UserError, match="needs CURVE keys"):
        security.bind(s, "tcp://0.0.0.0:*", None)
    s.close(0)


def test_key_pair_permissions_and_errors(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    public, secret = security.make_key_pair(d, "rig")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert (d / "allowed" / "rig.key").read_bytes() == public.read_bytes()
    with pytest.raises(UserError, match="exists; use --force"):
        security.make_key_pair(d, "rig")
    t = TransportConfig(kind="tcp", host="10.1.2.3", keys_dir=d)
    keys = security.load_keys(t)
    assert keys is not None and keys.server == keys.public and keys.public in keys.allowed
    os.chmod(secret, 0o644)
    with pytest.raises(UserError, match=r"readable by others .*chmod 600"):
        security.load_keys(t)
    os.chmod(secret, 0o600)
    os.chmod(d, 0o755)
    with pytest.raises(UserError, match=r"chmod 700"):
        security.load_keys(t)
    os.chmod(d, 0o700)
    os.chmod(d / "allowed", 0o777)  # anyone could add their key to the allow-list
    with pytest.raises(UserError, match=r"allowed_keys: .* writable by others"):
        security.load_keys(t)
    os.chmod(d / "allowed", 0o700)
    with pytest.raises(UserError, match="must be letters"):
        security.make_key_pair(d, "../evil")
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o700)
    with pytest.raises(UserError, match=r"transport.keys_dir: no \*.key_secret"):
        security.load_keys(TransportConfig(kind="tcp", host="10.1.2.3", keys_dir=empty))


def test_keys_command_makes_a_private_pair(tmp_path: Path) -> None:
    from livepose.cli.app import app

    d = tmp_path / "k"
    r = CliRunner().invoke(app, ["keys", str(d), "--name", "rig1"])
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE((d / "rig1.key_secret").stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    r = CliRunner().invoke(app, ["keys", str(d), "--name", "rig1"])
    assert r.exit_code == 2 and "--force" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_config_refuses_tcp_off_loopback_without_keys(tmp_path: Path) -> None:
    data = to_dict(load_default_config())
    data["transport"] = {"kind": "tcp", "host": "192.168.1.20"}
    with pytest.raises(ConfigError) as ei:
        parse_config(data, source="rig.yaml")
    msg = str(ei.value)
    assert "\n" not in msg and "transport" in msg and "keys_dir" in msg and "192.168.1.20" in msg
    data["transport"] = {"kind": "tcp", "host": "localhost"}  # loopback: allowed in the clear
    parse_config(data)
    data["transport"] = {"kind": "tcp", "host": "192.168.1.20", "keys_dir": "keys"}
    cfg = parse_config(data, base_dir=tmp_path)
    assert cfg.transport.keys_dir == tmp_path / "keys"  # relative to the config file
    data["transport"] = {"kind": "tcp", "host": "127.0.0.1", "allowed_keys": "a"}
    with pytest.raises(ConfigError, match=r"need transport\.keys_dir"):
        parse_config(data)


def test_check_config_refuses_plain_tcp_off_loopback_and_open_keys(tmp_path: Path) -> None:
    import yaml

    from livepose.cli.app import app

    data = to_dict(load_default_config())
    data["transport"] = {"kind": "tcp", "host": "10.0.0.5"}
    cfg = tmp_path / "rig.yaml"
    cfg.write_text(yaml.safe_dump(data))
    r = CliRunner().invoke(app, ["check-config", str(cfg)])
    assert r.exit_code == 2 and "transport.keys_dir" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    security.make_key_pair(tmp_path / "k", "rig")
    os.chmod(tmp_path / "k", 0o750)
    data["transport"]["keys_dir"] = "k"
    cfg.write_text(yaml.safe_dump(data))
    r = CliRunner().invoke(app, ["check-config", str(cfg)])
    assert r.exit_code == 2 and "chmod 700" in r.output, r.output


def test_no_zmq_socket_is_bound_or_connected_outside_the_helper() -> None:
    """Every ZeroMQ bind/connect goes through livepose.transport.security (so none skips
    CURVE). Calls on stdlib sockets (``.bind((host, port))``, a tuple) are not ZeroMQ."""
    not_sockets = {"self.recording.bind"}  # Recording.bind(): binds through the helper
    offenders = []
    folders = ["livepose", "acquisition", "inference", "fusion", "dashboard"]
    for path in (p for f in folders for p in (ROOT / f).rglob("*.py")):
        if path.name == "security.py" and path.parent.name == "transport":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("bind", "connect")
                    and not (node.args and isinstance(node.args[0], ast.Tuple))
                    and not (isinstance(node.func.value, ast.Name)
                             and node.func.value.id == "security")
                    and ast.unparse(node.func) not in not_sockets):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
