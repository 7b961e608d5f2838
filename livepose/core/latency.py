"""Per-stage latency of a pose from the timestamps every stage stamps on it."""

from __future__ import annotations

from livepose.core import protocol

STAGES = ("acquire", "transport", "queue", "inference", "fusion", "total")


def stage_latencies_ms(msg: protocol.Pose3d) -> dict[str, float]:
    """Per-stage latency of one pose, in milliseconds.

    ``acquire``: trigger → last camera's grab; ``transport``: → the frame-set complete at the
    inference worker; ``queue``: → inference starts; ``inference``: the batched model call with
    pre-processing and decoding; ``fusion``: kp2d transport, triangulation and filtering until
    ``pose3d`` is published; ``total``: trigger → ``pose3d`` published.
    """
    out: dict[str, float] = {}
    t_trig = msg.t_trigger_ns
    t_grab = max(msg.t_grab_ns) if msg.t_grab_ns else None
    if t_trig is not None and t_grab is not None:
        out["acquire"] = (t_grab - t_trig) / 1e6
    if t_grab is not None and msg.t_set_ns:
        out["transport"] = (msg.t_set_ns - t_grab) / 1e6
    if msg.t_set_ns and msg.t_infer_start_ns:
        out["queue"] = (msg.t_infer_start_ns - msg.t_set_ns) / 1e6
    if msg.t_infer_start_ns and msg.t_infer_end_ns:
        out["inference"] = (msg.t_infer_end_ns - msg.t_infer_start_ns) / 1e6
    if msg.t_infer_end_ns and msg.t_fused_ns:
        out["fusion"] = (msg.t_fused_ns - msg.t_infer_end_ns) / 1e6
    if t_trig is not None and msg.t_fused_ns:
        out["total"] = (msg.t_fused_ns - t_trig) / 1e6
    return out


__all__ = ["STAGES", "stage_latencies_ms"]
