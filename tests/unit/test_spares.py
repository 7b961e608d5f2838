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
