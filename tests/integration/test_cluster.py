"""The cluster on a real local 3-node Ray cluster (``ray.cluster_utils``, loopback, 1 CPU per
node): the head holds no stage, node A has the cameras (``camera:<name>``), node B fusion
(``livepose:fusion``).

- ``livepose reanalyse``: the cluster's 3D equals the single-process run frame for frame
  (≤ 1e-6), a worker killed with SIGKILL mid-run has its unit redone, and the reanalysis with
  the live model reproduces the live run's 3D.
- ``livepose run --cluster``: cameras, trigger and worker on node A, fusion on node B, every
  frame-set accounted for over ZeroMQ tcp; a camera whose actor is killed with SIGKILL is
  started again by the supervisor (the one owner of restarts); a clock tolerance below what
  the ping exchange can prove refuses the run.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from livepose.core.errors import UserError

pytestmark = pytest.mark.integration
pytest.importorskip("ray")
pytest.importorskip("onnx")
pytest.importorskip("av")

CAMS = ["cam0", "cam1", "cam2"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    from livepose.cluster.raycluster import local_cluster

    nodes = [{"num_cpus": 1},
             {"num_cpus": 1, "resources": {f"camera:{c}": 1 for c in CAMS}},
             {"num_cpus": 1, "resources": {"livepose:fusion": 1}}]
    with local_cluster(nodes) as cl:
        import ray

        ids = {n["NodeID"][:8]: n["Resources"] for n in ray.nodes() if n["Alive"]}
        yield {"A": next(i for i, r in ids.items() if "camera:cam0" in r),
               "B": next(i for i, r in ids.items() if "livepose:fusion" in r), "cluster": cl}


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], str]:
    """One recorded sim session, and a copy with cam0's and cam1's recordings swapped (a
    different session for the pipeline: a mix-up of sessions would show)."""
    from livepose.bench.cluster import record_sessions

    root = tmp_path_factory.mktemp("reanalyse")
    (orig,) = record_sessions(root, 1, 30, filter="none")
    other = orig.with_name(orig.name.replace("sim0", "swapped"))
    shutil.copytree(orig, other)
    v = other / "video"
    for ext in (".mkv", "_frames.csv"):
        (v / f"cam0{ext}").rename(v / f"tmp{ext}")
        (v / f"cam1{ext}").rename(v / f"cam0{ext}")
        (v / f"tmp{ext}").rename(v / f"cam1{ext}")
    return [orig, other], str(root / "model" / "model.onnx")


def test_reanalyse_identical_on_the_cluster_and_redone_after_kill(
    cluster: dict[str, Any], sessions: tuple[list[Path], str], tmp_path: Path
) -> None:
    from livepose.bench.cluster import max_diff
    from livepose.cluster.reanalyse import run_local, run_ray
    from livepose.formats.anipose3d import read_anipose3d
    from livepose.formats.dlc import read_dlc_csv

    paths, model = sessions
    ref = run_local(paths, model, tmp_path / "local")
    assert [Path(s.session).name for s in ref.sessions] == [p.name for p in paths]
    for s in ref.sessions:
        assert len(s.frame_ids) == 30 and np.isfinite(s.xyz).any()
    assert max_diff([ref.sessions[0]], [ref.sessions[1]]) > 1.0  # the sessions differ
    # the live model again: the reanalysis reproduces the live run's 2D of every frame the
    # live worker inferred, and its 3D (per-frame triangulation) wherever live used all views
    out = tmp_path / "local" / paths[0].name
    for cam in CAMS:
        live2 = read_dlc_csv(paths[0] / "pose2d" / f"{cam}.csv").points
        mine2 = read_dlc_csv(out / "pose2d" / f"{cam}.csv").points
        seen = np.isfinite(live2[..., 0])
        assert seen.mean() > 0.5
        np.testing.assert_allclose(mine2[seen], live2[seen], atol=1e-3)
    live = read_anipose3d(paths[0] / "pose3d.csv")
    mine = read_anipose3d(out / "pose3d.csv")
    assert list(mine.fnum) == list(live.fnum)
    full = (live.ncams == len(CAMS)) & np.isfinite(live.xyz).all(-1)
    assert full.any()
    np.testing.assert_allclose(mine.xyz[full], live.xyz[full], atol=1e-3)

    r = run_ray(paths, model, tmp_path / "ray", workers=2)
    assert max_diff(ref.sessions, r.sessions) <= 1e-6
    assert r.redone == 0
    k = run_ray(paths, model, tmp_path / "kill", workers=2, kill_first=True)
    assert k.redone == 1  # the killed worker's unit went back in the queue, once
    assert max_diff(ref.sessions, k.sessions) <= 1e-6
    assert (tmp_path / "kill" / "reanalyse.json").is_file()


def test_live_stages_on_their_nodes_restart_and_clock_refusal(
    cluster: dict[str, Any], tmp_path: Path
) -> None:
    from livepose.bench.cluster_live import live_config, run_live
    from livepose.bench.record import pool_model
    from livepose.cluster.live import RayLauncher
    from livepose.runtime.supervisor import Supervisor

    cfg = live_config(pool_model(tmp_path / "m", 96, 64, 4), CAMS)
    r: dict[str, Any] = run_live(cfg, 4.0, RayLauncher(cfg), kill="cam1")
    where = {n: v.split()[-1] for n, v in r["stage_nodes"].items()}
    assert {where[n] for n in [*CAMS, "trigger", "infer0"]} == {cluster["A"]}
    assert where["fusion"] == cluster["B"]
    assert r["frame_accounting_ok"], r
    assert r["fused"] > 30
    assert [x["name"] for x in r["restarts"]] == ["cam1"]
    assert r["back_s"] is not None and r["back_s"] < 15.0  # the 5 s bar: bench cluster
    assert r["clock"]["cross_host_uncertainty_ms"] < cfg.desync_tolerance_ms

    stray = cfg.model_copy(deep=True)  # a camera no node has: one line naming its resource
    stray.cameras[2].name = "cam9"
    with pytest.raises(UserError, match="camera:cam9"), Supervisor(
            stray, launcher=RayLauncher(stray)) as sup:
        sup.launch()

    strict = cfg.model_copy(deep=True)
    strict.desync_tolerance_ms = 1e-6  # 1 ns: no ping exchange can prove that
    launcher = RayLauncher(strict)
    try:
        with pytest.raises(UserError, match="desync_tolerance_ms"), Supervisor(
                strict, launcher=launcher) as sup:
            sup.launch()
    finally:
        launcher.close()


def test_data_plane_outlives_the_head(cluster: dict[str, Any], tmp_path: Path) -> None:
    """The head's GCS killed mid-run (the last test of the module: the cluster is gone after
    it): frames, kp2d and poses keep flowing over ZeroMQ, no stage dies, and the run stops
    cleanly. (The head's raylet is left: this process, the supervisor, is attached to it.)"""
    import time

    from livepose.bench.cluster_live import live_config
    from livepose.bench.record import pool_model
    from livepose.cluster.live import RayLauncher
    from livepose.runtime.monitor import Monitor
    from livepose.runtime.supervisor import Supervisor

    cfg = live_config(pool_model(tmp_path / "m", 96, 64, 4), CAMS)
    launcher = RayLauncher(cfg)
    try:
        with Supervisor(cfg, launcher=launcher) as sup:
            sup.launch()
            mon = Monitor(sup.endpoints, sup.zctx, sup.keys)
            sup.start_trigger(subscribers=[mon.hello])
            t0 = time.monotonic()
            t_kill = fused_at_kill = None
            while time.monotonic() - t0 < 6.0:
                mon.poll(20)
                sup.poll(0)
                if t_kill is None and time.monotonic() - t0 > 2.0:
                    cluster["cluster"].head_node.kill_gcs_server()
                    t_kill, fused_at_kill = time.monotonic(), len(mon.fused)
            assert t_kill is not None and fused_at_kill is not None
            after = len(mon.fused) - fused_at_kill
            assert after >= 0.5 * cfg.fps * (time.monotonic() - t_kill), after
            assert all(p.is_alive() for p in sup.procs.values())
            assert not sup.restarts
            sup.stop_trigger()
            mon.close()
            codes = sup.stop()
        assert set(codes.values()) == {0}, codes
    finally:
        launcher.close()
