"""Every module imports with no optional extras, and importing starts nothing."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import threading

import livepose

PACKAGES = [
    "livepose",
    "livepose.acquisition",
    "livepose.inference",
    "livepose.fusion",
    "livepose.dashboard",
    "livepose.configs",
]


def all_modules() -> list[str]:
    out = []
    for pkg in PACKAGES:
        mod = importlib.import_module(pkg)
        out.append(pkg)
        for info in pkgutil.walk_packages(mod.__path__, prefix=pkg + "."):
            if info.name != "livepose.__main__":
                out.append(info.name)
    return sorted(set(out))


def test_every_module_imports_without_side_effects() -> None:
    mods = all_modules()
    assert len(mods) > 15
    threads_before = threading.active_count()
    code = (
        "import importlib, threading, sys\n"
        + "".join(f"importlib.import_module({m!r})\n" for m in mods)
        + "assert threading.active_count() == 1, threading.enumerate()\n"
        "bad = [m for m in ('pypylon', 'PySpin', 'harvesters', 'tensorrt', 'torch', 'ray') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert threading.active_count() == threads_before
    assert livepose.__version__
