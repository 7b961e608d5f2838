"""The base of every config section: unknown fields are errors, defaults are validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from livepose.core.errors import UserError


class ConfigError(UserError):
    """A configuration file or value is wrong."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_default=True)
