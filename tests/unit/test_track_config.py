"""``livepose track``'s config: ``--individuals`` and ``--config`` name what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from livepose.cli.track import _merge, video_config
from livepose.core.errors import UserError


@pytest.mark.parametrize(("individuals", "text", "message"), [
    ("two", None, "--individuals: 'two': a number ≥ 1, or 'free'"),
    ("0", None, "--individuals: '0'"),
    (None, "cameras: []\nrecording: {}\n", "--config cannot set cameras, recording"),
    (None, "- a list\n", "--config must be a mapping"),
])
def test_bad_track_options_name_the_option(tmp_path: Path, individuals: str | None,
                                           text: str | None, message: str) -> None:
    extra = None
    if text is not None:
        extra = tmp_path / "extra.yaml"
        extra.write_text(text)
    with pytest.raises(UserError, match=message.replace("[", r"\[")):
        video_config(tmp_path, tmp_path / "c.toml", "default", tmp_path / "out", True,
                     individuals=individuals, extra=extra)


def test_sections_merge_recursively() -> None:
    base = {"fusion": {"min_views": 2, "multi": {"enabled": False, "gate_mm": 30}}, "fps": 60}
    over = {"fusion": {"multi": {"enabled": True}}}
    assert _merge(base, over) == {"fusion": {"min_views": 2, "multi": {
        "enabled": True, "gate_mm": 30}}, "fps": 60}
