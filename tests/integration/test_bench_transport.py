"""``livepose bench transport``'s cases, small and short: real publisher processes, the
pipeline's receive path (FrameFeed), every frame accounted for. The timings are not checked
(benchmarks measure speed; tests check that what they measure is whole)."""

from __future__ import annotations

from pathlib import Path

import pytest

from livepose.bench.transport import run_case
from livepose.transport import doorbell, shmring


@pytest.mark.timeout(120)
@pytest.mark.parametrize("transport", ["shm", "ipc"])
@pytest.mark.parametrize("mode", ["paced", "saturated"])
def test_every_frame_arrives(tmp_path: Path, transport: str, mode: str) -> None:
    if transport == "shm" and not shmring.available():
        pytest.skip("no writable /dev/shm")
    c = run_case(transport, 2, 64, 48, mode, 0.3, tmp_path)
    assert c["frames_received"] == c["frames_sent"] and c["frames_lost"] == 0, c
    assert c["shm_overruns"] == 0
    lat = c["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"]
    assert 0 < c["send_to_decoded_ms"]["p50"] <= lat["p50"]  # the hop is part of the total
    if transport == "shm":
        assert not list(shmring.SHM_DIR.glob("livepose-*-cam[01]-*")) or doorbell.supported()
