"""The layer contracts (``[tool.importlinter]`` in pyproject.toml) hold, and they bite.

import-linter's graph (grimp) walks the package's folder; an editable install hides the stage
folders from it, so the package is laid out as installed first (:mod:`livepose_layout`). The
planted-violation tests prove that the contracts see the stages: a forbidden import in a
scratch copy must make ``lint-imports`` fail, naming the offending import.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from livepose_layout import REPO, stage_package

pytest.importorskip("importlinter")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "importlinter.cli"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([*cmd, "--no-cache", str(REPO / "pyproject.toml")], cwd=root,
                          env=env, capture_output=True, text=True, check=False, timeout=300)


def _plant(root: Path, module: str, line: str) -> None:
    path = root.joinpath(*module.split(".")).with_suffix(".py")
    assert path.exists(), path
    path.write_text(path.read_text() + f"\n{line}\n")


@pytest.fixture
def staged(tmp_path: Path) -> Path:
    return stage_package(tmp_path / "site")


def test_layers_kept(staged: Path) -> None:
    r = _lint(staged)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "BROKEN" not in out
    # the stages are in the graph (an editable install would hide them)
    assert (staged / "livepose" / "acquisition" / "camera.py").exists()


@pytest.mark.parametrize(
    ("module", "line", "culprit"),
    [
        ("livepose.acquisition.video", "import livepose.fusion.triangulate",
         "livepose.acquisition.video -> livepose.fusion.triangulate"),
        ("livepose.inference.decode", "from livepose.dashboard import state",
         "livepose.inference.decode -> livepose.dashboard.state"),
        ("livepose.core.camera", "import livepose.runtime.supervisor",
         "livepose.core.camera -> livepose.runtime.supervisor"),
        ("livepose.transport.endpoints", "import livepose.acquisition.camera",
         "livepose.transport.endpoints -> livepose.acquisition.camera"),
    ],
    ids=["stage-imports-stage", "stage-imports-dashboard", "core-imports-app",
         "transport-imports-stage"],
)
def test_planted_violation_fails(staged: Path, module: str, line: str, culprit: str) -> None:
    _plant(staged, module, line)
    r = _lint(staged)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-4000:]
    assert culprit in out, out[-4000:]
