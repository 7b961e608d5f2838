"""Errors that are the user's to fix (exit code 2, one clear line, no traceback)."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in input the user controls: config, paths, models, calibration."""

    exit_code = 2
