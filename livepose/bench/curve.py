"""``livepose bench curve``: what CURVE costs on the frame path.

The cases of ``livepose bench transport`` (:func:`livepose.bench.transport.run_case`: real
publisher processes sending real ``frame`` messages, a subscriber that decodes them as an
inference worker does) over tcp on loopback, once in the clear and once with CURVE on both
ends (keys made for the run by :func:`livepose.transport.security.make_key_pair`, the
publisher a CURVE server behind the ZAP allow-list, the subscriber a client):

- ``saturated``, 1 camera: frames as fast as the subscriber takes them → frames/s, GB/s;
- ``paced``, 1 camera × 100 fps and 4 cameras × 100 fps (400 frames/s): latency p50/p99
  (send → decoded, the encryption and decryption inside) and frames lost.

Frames are 1280×1024 mono (1.3 MB). The whole run takes about half a minute.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from livepose.bench.transport import run_case
from livepose.transport import security

WIDTH, HEIGHT = 1280, 1024
FPS_PER_CAMERA = 100.0
CASES = [(1, "saturated"), (1, "paced"), (4, "paced")]


def run_bench(duration_s: float = 2.0) -> dict[str, Any]:
    """Every case with and without CURVE; returns the results and a summary."""
    t0 = time.monotonic()
    cases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lp-curve-") as d:
        _, secret = security.make_key_pair(Path(d) / "keys", "bench")
        public, sec = security.read_pair(secret)
        keys = security.CurveKeys(public=public, secret=sec, server=public,
                                  allowed=frozenset({public}))
        for cams, mode in CASES:
            for k in (None, keys):
                cases.append(run_case("tcp", cams, WIDTH, HEIGHT, mode, duration_s, Path(d), k,
                                      paced_fps=FPS_PER_CAMERA * cams))

    def pick(curve: bool, mode: str, cams: int = 1) -> dict[str, Any]:
        name = "tcp+curve" if curve else "tcp"
        return next(c for c in cases if c["transport"] == name and c["mode"] == mode
                    and c["cameras"] == cams)

    summary: dict[str, Any] = {}
    for curve in (False, True):
        tag = "curve" if curve else "plain"
        sat = pick(curve, "saturated")
        summary[f"{tag}_fps"] = sat["fps"]
        summary[f"{tag}_gbps"] = sat["gbps"]
        for cams in (1, 4):
            paced = pick(curve, "paced", cams)
            summary[f"{tag}_p50_ms_{cams}x100fps"] = paced["latency_ms"]["p50"]
            summary[f"{tag}_p99_ms_{cams}x100fps"] = paced["latency_ms"]["p99"]
            summary[f"{tag}_received_{cams}x100fps"] = paced["frames_received"]
            summary[f"{tag}_lost_{cams}x100fps"] = paced["frames_lost"]
    summary["curve_throughput_ratio"] = (summary["curve_fps"] / summary["plain_fps"]
                                         if summary["plain_fps"] else None)
    return {
        "benchmark": "curve",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "frame": f"{WIDTH}x{HEIGHT} mono8",
        "wall_s": time.monotonic() - t0,
        "cases": cases,
        "summary": summary,
    }


def main(json_path: Path | None, duration_s: float = 2.0) -> dict[str, Any]:
    """Run the benchmark and write ``json_path``."""
    result = run_bench(duration_s)
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2))
    return result
