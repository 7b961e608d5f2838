"""``/metrics``: the dashboard's view of the run in the Prometheus text format.

A collector turns a :meth:`~livepose.dashboard.state.DashState.snapshot` into metric
families at scrape time, in a registry of its own (never the process-global one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


class SnapshotCollector:
    """Prometheus collector over a snapshot function."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """Metric families of the current snapshot."""
        s = self.snapshot()
        fr = s["frames"]
        sets = CounterMetricFamily(
            "livepose_framesets", "Frame-sets by outcome since the dashboard started",
            labels=["outcome"],
        )
        for k in ("triggered", "fused", "skipped", "incomplete"):
            sets.add_metric([k], float(fr[k]))
        yield sets
        yield GaugeMetricFamily("livepose_fused_fps", "Recent fused frame-sets per second",
                                value=float(fr["fused_fps"]))
        lat = GaugeMetricFamily("livepose_latency_ms", "Per-stage latency over the last "
                                "300 frame-sets (ms)", labels=["stage", "quantile"])
        for stage, v in s["latency_ms"].items():
            for q, key in (("0.5", "p50"), ("0.99", "p99")):
                if v[key] is not None:
                    lat.add_metric([stage, q], float(v[key]))
        yield lat
        fps = GaugeMetricFamily("livepose_camera_fps", "Camera frame rate", labels=["camera"])
        drop = CounterMetricFamily("livepose_camera_dropped", "Frames the camera dropped",
                                   labels=["camera"])
        lost = CounterMetricFamily("livepose_camera_lost", "Frames lost in transport",
                                   labels=["camera"])
        desync = GaugeMetricFamily("livepose_camera_desync_ms", "Grab time minus the "
                                   "frame-set median (ms)", labels=["camera"])
        for cam, c in s["cameras"].items():
            if c["fps"] is not None:
                fps.add_metric([cam], float(c["fps"]))
            drop.add_metric([cam], float(c["dropped"]))
            lost.add_metric([cam], float(c["lost_in_transport"]))
            if c["desync_ms"] is not None:
                desync.add_metric([cam], float(c["desync_ms"]))
        yield from (fps, drop, lost, desync)
        up = GaugeMetricFamily("livepose_process_up", "1 while a stage process reports a "
                               "running state", labels=["process", "state"])
        for proc, p in s["processes"].items():
            up.add_metric([proc, p["state"]], 0.0 if p["state"] == "error" else 1.0)
        yield up
        yield GaugeMetricFamily("livepose_dashboard_clients", "Connected websocket clients",
                                value=float(s["clients"]))


def make_registry(snapshot: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    """A registry holding one :class:`SnapshotCollector`."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(snapshot))
    return reg


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    return generate_latest(registry)
