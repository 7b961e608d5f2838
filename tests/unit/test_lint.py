"""ruff and mypy are clean (style is part of the test suite, so CI enforces it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from livepose_layout import REPO, stage_package


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (dev dependency group)")
    return found


def test_ruff_clean() -> None:
    r = subprocess.run(
        [_tool("ruff"), "check", "--no-cache", "."],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-4000:]


def test_mypy_clean(tmp_path: Path) -> None:
    """mypy cannot follow setuptools' package-dir mapping in an editable install, so lint the
    package laid out as it is installed (:func:`livepose_layout.stage_package`)."""
    site = stage_package(tmp_path / "site")
    r = subprocess.run(
        [
            _tool("mypy"),
            "--config-file",
            str(REPO / "pyproject.toml"),
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            "-p",
            "livepose",
        ],
        cwd=site,
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-4000:]
