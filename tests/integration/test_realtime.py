"""``realtime: true``: the latency path under SCHED_FIFO, bulk threads and consumers not.

Real processes. Where this machine refuses real-time scheduling (not root, no CAP_SYS_NICE,
no rtprio limit) the run must go on on the ordinary scheduler and say so.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from livepose.core.config import load_default_config
from livepose.kit.realtime import PRIORITY, enter_realtime
from livepose.runtime.supervisor import Supervisor

pytestmark = pytest.mark.integration


def _allowed() -> bool:
    import subprocess
    import sys

    code = "from livepose.kit.realtime import enter_realtime; print(enter_realtime(5))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "fifo:5"


def _policies(pid: int) -> dict[str, int]:
    """Scheduling policy of every thread of a process (0 other, 1 fifo), by thread name."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        out[f"{name}/{task.name}"] = int(fields[38])  # field 41 of proc(5): policy
    return out


@pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="Linux only")
def test_latency_path_is_fifo_and_bulk_work_is_not() -> None:
    allowed = _allowed()
    cfg = load_default_config()
    cfg.realtime = True
    with Supervisor(cfg, trigger_count=90, dashboard={"host": "127.0.0.1", "port": 0}) as sup:
        sup.launch()
        sup.start_trigger()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            sup.poll(0.05)
        sched = sup.scheduling()
        pids = {n: p.pid for n, p in sup.procs.items()}
        fifo_expected = ["trigger", "fusion", "infer0", *cfg.camera_names]
        if not allowed:  # the run goes on and says why
            assert all(sched[n].startswith("other (") for n in fifo_expected), sched
            return
        assert sched["trigger"] == f"fifo:{PRIORITY['trigger']}"
        assert sched["cam0"] == f"fifo:{PRIORITY['camera']}"
        assert sched["infer0"] == f"fifo:{PRIORITY['inference']}"
        assert sched["fusion"] == f"fifo:{PRIORITY['fusion']}"
        assert sched["dashboard"] == "other"
        for n in fifo_expected:
            pid = pids[n]
            assert pid is not None and os.sched_getscheduler(pid) == os.SCHED_FIFO, n
        dash = sup.procs["dashboard"].pid
        assert dash is not None and set(_policies(dash).values()) == {0}
        cam = sup.procs["cam0"].pid
        assert cam is not None
        pol = _policies(cam)
        # the main loop (and ZeroMQ's I/O thread) are FIFO; the render-ahead thread is not
        assert 1 in pol.values() and 0 in pol.values(), pol


def test_enter_realtime_reports_what_it_got() -> None:
    import subprocess
    import sys

    code = ("import os; from livepose.kit.realtime import enter_realtime, leave_realtime; "
            "s = enter_realtime(3); a = os.sched_getscheduler(0); leave_realtime(5); "
            "print(s, a, os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    if out[0] == "fifo:3":
        assert out[1:] == [str(os.SCHED_FIFO), str(os.SCHED_OTHER), "5"]
    else:
        assert out[0] == "other" and out[2] == str(os.SCHED_OTHER)
    assert enter_realtime.__doc__
