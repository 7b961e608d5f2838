"""The package as it is installed, for tools that walk folders (mypy, grimp/import-linter).

An editable install maps ``livepose.acquisition`` … to the top-level stage folders through
setuptools' ``package-dir``; a tool that walks ``livepose/`` alone never sees them. This lays
the package out in a scratch folder from the same ``[tool.setuptools]`` table that builds the
wheel, so what is linted is what ships.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def package_dirs() -> dict[str, Path]:
    """Each installed package (dotted name) → the source folder it comes from."""
    st = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = st.get("package-dir", {})
    out: dict[str, Path] = {}
    for pkg in st["packages"]:
        parts = pkg.split(".")
        for i in range(len(parts), 0, -1):
            prefix = ".".join(parts[:i])
            if prefix in mapping:
                out[pkg] = REPO / mapping[prefix] / Path(*parts[i:])
                break
        else:
            out[pkg] = REPO / Path(*parts)
    return out


def stage_package(dest: Path) -> Path:
    """Copy every installed module (``*.py``) to ``dest/<package path>``; returns ``dest``."""
    for pkg, src in package_dirs().items():
        target = dest.joinpath(*pkg.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for f in src.glob("*.py"):
            shutil.copy2(f, target / f.name)
    return dest
