"""CURVE on every tcp socket: key pairs, the allow-list and the one place sockets are wired.

Every ZeroMQ socket of livepose is bound or connected through :func:`bind` or :func:`connect`
(a test checks that no other module calls ``.bind(``/``.connect(`` on a ZeroMQ socket). For
an ``ipc://`` or ``inproc://`` endpoint they only bind or connect: filesystem permissions
guard those. For ``tcp://`` with keys they turn on CURVE (libzmq's elliptic-curve
encryption and authentication):

- a socket that **binds** is the CURVE server: it proves it holds the run host's secret key,
  and a ZAP handler (:class:`zmq.auth.thread.ThreadAuthenticator`, one per ZeroMQ context,
  started on the first such bind) admits only clients whose public key is listed in
  ``transport.allowed_keys``; a refused handshake is counted (:func:`refused`) and the
  peer's messages never reach the socket;
- a socket that **connects** is a CURVE client: it proves its own key pair and checks the
  server's public key, so it talks to nobody who lacks the run host's secret key.

A tcp endpoint off loopback without keys is refused here too (the config refuses it first).

Keys are zmq's certificate files (``zmq.auth.create_certificates``): ``<name>.key`` (public)
and ``<name>.key_secret`` (both keys) in a folder that only its owner may read (0700, the
secret file 0600); :func:`make_key_pair` makes them (``livepose keys``), :func:`load_keys`
reads them back and checks the permissions.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from livepose.core.config.services import TransportConfig, is_loopback
from livepose.core.errors import UserError

ALLOWED_DIR = "allowed"


@dataclass(frozen=True)
class CurveKeys:
    """The CURVE keys of one process (z85-encoded, 40 bytes each).

    Attributes
    ----------
    public, secret
        This host's key pair.
    server
        The public key of the host whose sockets this process connects to (the run's host).
    allowed
        Public keys a socket this process binds accepts.
    """

    public: bytes
    secret: bytes
    server: bytes
    allowed: frozenset[bytes] = field(default_factory=frozenset)


# ---------------------------------------------------------------------- files
def check_private(path: Path) -> None:
    """Raise :class:`UserError` unless ``path`` is readable by its owner only.

    A folder must not be open to group or others (``chmod 700``), a secret key file neither
    (``chmod 600``)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise UserError(f"keys: cannot read {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        want = "700" if path.is_dir() else "600"
        raise UserError(f"keys: {path} is readable by others (mode {stat.S_IMODE(mode):o}); "
                        f"run chmod {want} {path}")


def make_key_pair(directory: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Make a CURVE key pair ``<directory>/<name>.key`` + ``.key_secret``.

    The folder is created with mode 0700, the secret file gets 0600, and the public key is
    also copied into ``<directory>/allowed/`` (the default allow-list), so a single-host run
    works at once; copy other hosts' ``.key`` files there to admit them.

    Returns
    -------
    (public, secret)
        The two files.

    Raises
    ------
    UserError
        A bad name, a key pair of that name exists (without ``force``), or a folder others
        can read.
    """
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise UserError(f"keys: name {name!r} must be letters, digits, '-', '_' or '.'")
    directory = Path(directory).expanduser()
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    if (public.exists() or secret.exists()) and not force:
        raise UserError(f"keys: {secret} exists; use --force to replace it")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private(directory)
    old = os.umask(0o077)  # the secret file is never readable by others, not even briefly
    try:
        zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    allowed = directory / ALLOWED_DIR
    allowed.mkdir(mode=0o700, exist_ok=True)
    shutil.copyfile(public, allowed / public.name)
    return public, secret


def _secret_file(keys_dir: Path, name: str | None) -> Path:
    if name:
        f = keys_dir / f"{name}.key_secret"
        if not f.is_file():
            raise UserError(f"transport.key_name: no {f}; make it with `livepose keys "
                            f"{keys_dir} --name {name}`")
        return f
    found = sorted(keys_dir.glob("*.key_secret"))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise UserError(f"transport.keys_dir: {what} *.key_secret files in {keys_dir}; make "
                        "one with `livepose keys DIR`, or set transport.key_name")
    return found[0]


def _public_keys(folder: Path) -> frozenset[bytes]:
    if not folder.is_dir():
        raise UserError(f"transport.allowed_keys: {folder} is not a folder of public .key files")
    if folder.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH):  # anyone could admit themselves
        raise UserError(f"transport.allowed_keys: {folder} is writable by others; run "
                        f"chmod go-w {folder}")
    try:
        keys = zmq.auth.load_certificates(folder)
    except (OSError, ValueError) as exc:
        raise UserError(f"transport.allowed_keys: cannot read {folder}: {exc}") from None
    if not keys:
        raise UserError(f"transport.allowed_keys: no .key files in {folder}; copy the public "
                        "key of every host of the run there")
    return frozenset(keys)


def read_public(path: Path, field_name: str = "transport.server_key") -> bytes:
    """The public key of a ``.key`` (or ``.key_secret``) certificate file."""
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"{field_name}: cannot read a public key from {path}: {exc}") from None
    return public


def read_pair(secret_file: Path) -> tuple[bytes, bytes]:
    """``(public, secret)`` from a ``.key_secret`` file (permissions checked)."""
    secret_file = Path(secret_file).expanduser()
    check_private(secret_file)
    check_private(secret_file.parent)
    try:
        public, secret = zmq.auth.load_certificate(secret_file)
    except (OSError, ValueError) as exc:
        raise UserError(f"keys: cannot read {secret_file}: {exc}") from None
    if not secret:
        raise UserError(f"keys: {secret_file} holds no secret key")
    return public, secret


def load_keys(t: TransportConfig) -> CurveKeys | None:
    """The keys a run's process uses (``None``: no CURVE — ipc, or tcp without keys).

    Raises
    ------
    UserError
        Missing files, unreadable keys, or files others can read; one line naming the field.
    """
    if t.kind != "tcp" or t.keys_dir is None:
        return None
    if not zmq.has("curve"):
        raise UserError("transport.keys_dir: this libzmq was built without CURVE; install "
                        "pyzmq's binary wheel (it bundles libsodium)")
    keys_dir = Path(t.keys_dir).expanduser()
    if not keys_dir.is_dir():
        raise UserError(f"transport.keys_dir: {keys_dir} is not a folder; make it with "
                        f"`livepose keys {keys_dir}`")
    check_private(keys_dir)
    public, secret = read_pair(_secret_file(keys_dir, t.key_name))
    allowed = _public_keys(Path(t.allowed_keys).expanduser() if t.allowed_keys
                           else keys_dir / ALLOWED_DIR)
    server = read_public(Path(t.server_key).expanduser()) if t.server_key else public
    return CurveKeys(public=public, secret=secret, server=server, allowed=allowed)


def client_keys(secret_file: str | Path, server_key: str | Path | bytes) -> CurveKeys:
    """Keys for a client on another host (:class:`~livepose.closedloop.PoseClient`).

    Parameters
    ----------
    secret_file
        This host's ``.key_secret`` (its public key must be in the run's allow-list).
    server_key
        The run host's public ``.key`` file, or its z85 public key.
    """
    public, secret = read_pair(Path(secret_file))
    if isinstance(server_key, bytes):
        server = server_key
    else:
        server = read_public(Path(server_key).expanduser(), "server_key")
    if len(server) != 40:
        raise UserError("server_key: a CURVE public key is 40 z85 characters")
    return CurveKeys(public=public, secret=secret, server=server)


# ---------------------------------------------------------------------- sockets
class _Allow:
    """The ZAP credentials check: a listed key passes, anything else is refused and counted."""

    def __init__(self, allowed: frozenset[bytes]) -> None:
        self.allowed = allowed
        self.refused = 0

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.allowed
        if not ok:
            self.refused += 1
        return ok


_lock = threading.Lock()
_auth: dict[int, tuple[zmq.Context[Any], ThreadAuthenticator, _Allow]] = {}


def _authenticator(ctx: zmq.Context[Any], keys: CurveKeys) -> None:
    with _lock:
        if id(ctx) in _auth:
            return
        auth = ThreadAuthenticator(ctx)
        auth.start()
        allow = _Allow(keys.allowed)
        auth.configure_curve_callback("*", credentials_provider=allow)
        _auth[id(ctx)] = (ctx, auth, allow)


def refused(ctx: zmq.Context[Any]) -> int:
    """CURVE handshakes refused so far by the sockets of ``ctx`` (keys not in the list)."""
    entry = _auth.get(id(ctx))
    return entry[2].refused if entry else 0


def release(ctx: zmq.Context[Any]) -> None:
    """Stop ``ctx``'s authenticator (call before ``ctx.term()``/``destroy()``)."""
    with _lock:
        entry = _auth.pop(id(ctx), None)
    if entry is not None:
        entry[1].stop()


def _tcp_host(endpoint: str) -> str | None:
    if not endpoint.startswith("tcp://"):
        return None
    rest = endpoint[6:]
    host = rest.rsplit(":", 1)[0]
    return host.strip("[]")


def _needs_curve(endpoint: str, keys: CurveKeys | None) -> bool:
    host = _tcp_host(endpoint)
    if host is None:
        return False
    if keys is None:
        if not is_loopback(host):
            raise UserError(f"refusing {endpoint}: tcp off loopback needs CURVE keys "
                            "(transport.keys_dir; make them with `livepose keys DIR`)")
        return False
    return True


def bind(sock: zmq.Socket[Any], endpoint: str, keys: CurveKeys | None) -> str:
    """Bind ``sock`` (a CURVE server on tcp with keys); returns the bound endpoint."""
    if _needs_curve(endpoint, keys):
        assert keys is not None
        _authenticator(sock.context, keys)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.bind(endpoint)
    last = sock.getsockopt(zmq.LAST_ENDPOINT)
    return last.decode() if isinstance(last, bytes) else str(last)


def connect(sock: zmq.Socket[Any], endpoint: str, keys: CurveKeys | None) -> None:
    """Connect ``sock`` (a CURVE client of the run host on tcp with keys)."""
    if _needs_curve(endpoint, keys):
        assert keys is not None
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
        sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server)
    sock.connect(endpoint)


__all__ = ["CurveKeys", "bind", "check_private", "client_keys", "connect", "load_keys",
           "make_key_pair", "read_pair", "read_public", "refused", "release"]
