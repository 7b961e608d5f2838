"""Reading a user's YAML file with one-line errors (configs, model manifests, export specs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from livepose.core.errors import UserError


def read_yaml(path: str | Path, error: type[UserError], what: str) -> Any:
    """The parsed document of ``path``.

    Parameters
    ----------
    path
        The file.
    error
        The :class:`UserError` subclass to raise.
    what
        What the file is, for the messages (``"config file"``, ``"model manifest
        (model.manifest)"``).

    Raises
    ------
    UserError
        ``error``: the file is missing or unreadable, or not valid YAML (with its line).
    """
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise error(f"{p}: {what} not found") from None
    except OSError as exc:
        raise error(f"{p}: cannot read the {what} ({exc.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise error(f"{p}:{where} not valid YAML") from None
