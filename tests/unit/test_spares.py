"""Warm spares (livepose/runtime/spares.py): a spare warms up, reports it, and becomes the
stage it is handed — in its own, already running process."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

from livepose.core.config import load_default_config, to_dict
from livepose.kit.process import StageContext
from livepose.runtime.spares import Spares


def warm(cfg: dict[str, Any], args: dict[str, Any]) -> None:
    Path(args["path"]).with_suffix(".warm").write_text(str(os.getpid()))


def stage(ctx: StageContext) -> None:
    Path(ctx.args["path"]).write_text(json.dumps({"pid": os.getpid(), "name": ctx.name,
                                                  "info": ctx.info}))


def test_a_warm_spare_becomes_the_stage_it_is_handed(tmp_path: Path) -> None:
    cfg = to_dict(load_default_config())
    spares = Spares(mp.get_context("spawn"), cfg, 30)
    out = tmp_path / "stage.json"
    try:
        spares.want(stage, warm, {"path": str(out)})
        deadline = time.monotonic() + 60
        while not spares.all_warm():
            assert time.monotonic() < deadline, "the spare never warmed up"
            spares.tick()
            time.sleep(0.05)
        job = (stage, "cam9", cfg, {}, {"path": str(out)}, 30, 0, 0)
        p = spares.take(stage, job)
        assert p is not None and spares.take(stage, job) is None  # one spare, used
        p.join(30)
        assert p.exitcode == 0
        ran = json.loads(out.read_text())
        assert ran["pid"] == p.pid == int(out.with_suffix(".warm").read_text())
        assert ran["name"] == "cam9" and ran["info"]["spare"]["warm_up_s"] >= 0
        assert spares.used == 1 and stage in spares._due  # a new one is due later
    finally:
        spares.close()


def busy_warm(cfg: dict[str, Any], args: dict[str, Any]) -> None:
    t_wall, t_cpu = time.monotonic(), time.process_time()
    while time.process_time() - t_cpu < 0.4:  # a warm-up that needs 0.4 s of CPU
        pass
    Path(args["path"]).with_suffix(".warm").write_text(
        json.dumps({"wall": time.monotonic() - t_wall, "cpu": time.process_time() - t_cpu}))


def test_a_warming_spare_is_held_to_its_share_of_a_core(tmp_path: Path) -> None:
    """``restart.spare_cpu``: stopped and continued in turn, a warming spare's 0.4 s of CPU
    take at least twice as long in wall time at a 20 % share (5 × ideally; unthrottled,
    about 1 ×), and once handed a job it runs free."""
    cfg = to_dict(load_default_config())
    spares = Spares(mp.get_context("spawn"), cfg, 30, cpu_share=0.2)
    out = tmp_path / "stage.json"
    try:
        spares.want(stage, busy_warm, {"path": str(out)})
        deadline = time.monotonic() + 60
        while not spares.all_warm():
            assert time.monotonic() < deadline, "the spare never warmed up"
            spares.tick()
            time.sleep(0.05)
        took = json.loads(out.with_suffix(".warm").read_text())
        assert took["cpu"] >= 0.4 and took["wall"] >= 2.0 * took["cpu"], took
        p = spares.take(stage, (stage, "cam9", cfg, {}, {"path": str(out)}, 30, 0, 0))
        assert p is not None
        p.join(30)  # a spare left stopped would never finish
        assert p.exitcode == 0 and json.loads(out.read_text())["name"] == "cam9"
    finally:
        spares.close()
