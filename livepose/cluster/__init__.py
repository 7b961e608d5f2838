"""Bigger than one machine: Ray as the control plane, ZeroMQ as the data plane
(docs/cluster.md). Ray is imported lazily, inside the functions that need it."""
