"""Ray, imported lazily: connecting, naming resources, local test clusters.

Ray is the control plane only (placement, start-up, resources); every frame, ``kp2d`` and
``pose3d`` still travels over ZeroMQ (docs/cluster.md). Nothing here imports Ray at import
time: ``livepose[cluster]`` is an extra, and a single-host run never loads it.

Resources: a node declares what it has with ``ray start --resources``; livepose asks for

- ``camera:<name>`` — the host that has camera ``<name>`` (its cable, its frame grabber);
- ``livepose:fusion`` — the host that runs fusion (and the consumers: recorder, dashboard);
- ``GPU`` — Ray's own, for an inference worker with ``--gpus-per-worker``.

e.g. ``ray start --address HEAD:6379 --resources '{"camera:cam0": 1, "camera:cam1": 1}'``.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

from livepose.core.errors import UserError

FUSION_RESOURCE = "livepose:fusion"
PROBE_S = 5.0  # how long to wait for the head's port before saying it is not there


def camera_resource(cam: str) -> str:
    """The custom resource naming the host of camera ``cam``."""
    return f"camera:{cam}"


def import_ray() -> Any:
    """``import ray``, or a one-line error naming the extra."""
    try:
        import ray
    except ImportError:
        raise UserError("the cluster commands need Ray: pip install 'livepose[cluster]'") \
            from None
    return ray


def connect(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Join the cluster at ``address`` (``None``: the one this process is connected to, else
    a new local one with ``num_cpus``) and return the ``ray`` module."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if address and ":" in address and "://" not in address:  # HOST:PORT: fail fast
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=PROBE_S).close()
        except (OSError, ValueError) as exc:
            raise UserError(f"--cluster {address}: no Ray head answers there ({exc}); start "
                            "one with `ray start --head` (docs/cluster.md)") from None
    try:
        ray.init(address=address, num_cpus=None if address else num_cpus,
                 include_dashboard=False, log_to_driver=True, logging_level="WARNING",
                 configure_logging=True)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise UserError(f"--cluster {address}: cannot join the Ray cluster ({exc})") from None
    return ray


def node_resources() -> dict[str, dict[str, float]]:
    """Each live node's id and its total resources (``ray.nodes()``)."""
    ray = import_ray()
    return {n["NodeID"]: dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")}


@contextlib.contextmanager
def local_cluster(nodes: list[dict[str, Any]]) -> Iterator[Any]:
    """A multi-node Ray cluster on this machine (loopback; Ray's ``cluster_utils``), this
    process connected to it; shut down on exit.

    Parameters
    ----------
    nodes
        ``ray.init``-style arguments per node (``num_cpus``, ``resources``); the first is the
        head.
    """
    ray = import_ray()
    from ray.cluster_utils import Cluster

    head = {"num_cpus": 1, **nodes[0], "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        for spec in nodes[1:]:
            cluster.add_node(**{"num_cpus": 1, **spec})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False, logging_level="WARNING",
                 log_to_driver=False)
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        cluster.shutdown()
