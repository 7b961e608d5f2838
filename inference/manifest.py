"""The model manifest: what a 2D keypoint model expects and produces.

A model is an ONNX file plus a ``manifest.yaml`` next to it::

    format: livepose-model/1
    name: sim-rodent-heatmap-v1
    file: model.onnx
    input: {name: image, layout: NCHW, width: 320, height: 256, channels: 1, color: mono,
            scale: 0.00392156862745098, mean: [0.5], std: [0.25], resize: none}
    output: {name: heatmaps, type: heatmap, stride: 4, offset: 1.5, activation: none}
    keypoints: [snout, left_ear, ...]
    skeleton: [[snout, left_ear], ...]
    training: {...}   # free-form

A pixel value ``v`` (8-bit range; deeper pixels are first brought to it) becomes
``(v * scale - mean[c]) / std[c]`` in channel ``c``. Every error is a :class:`ModelError`
(a :class:`~livepose.errors.UserError`) that names the file and the field.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from livepose.config import ModelConfig
from livepose.errors import UserError

MANIFEST_FORMAT = "livepose-model/1"
MANIFEST_NAME = "manifest.yaml"
OUTPUT_TYPES = ("heatmap",)  # SimCC and regression heads come later


class ModelError(UserError):
    """The model file or its manifest is missing or wrong."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """The network input. ``color`` is what the network was trained on; ``channels`` may be
    3 with ``color: mono`` (grey replicated)."""

    name: str
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    width: int = Field(gt=0, le=16384)
    height: int = Field(gt=0, le=16384)
    channels: Literal[1, 3]
    color: Literal["mono", "rgb", "bgr"]
    scale: float = Field(1.0 / 255.0, gt=0)
    mean: list[float] = [0.0]
    std: list[float] = [1.0]
    resize: Literal["none", "stretch", "letterbox"] = "none"

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        if self.color != "mono" and self.channels != 3:
            raise ValueError(f"color {self.color!r} needs channels: 3, got {self.channels}")
        for key in ("mean", "std"):
            vals = getattr(self, key)
            if len(vals) not in (1, self.channels):
                raise ValueError(f"{key} must have 1 or {self.channels} values, got {len(vals)}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        return self

    def channel_mean(self) -> list[float]:
        """``mean`` expanded to one value per channel."""
        return self.mean * self.channels if len(self.mean) == 1 else list(self.mean)

    def channel_std(self) -> list[float]:
        """``std`` expanded to one value per channel."""
        return self.std * self.channels if len(self.std) == 1 else list(self.std)


class OutputSpec(_Strict):
    """The network output. ``heatmap``: ``(N, J, h, w)``, cell ``i`` centred on input pixel
    ``offset + i * stride``; ``offset`` defaults to ``(stride - 1) / 2``."""

    name: str
    type: str
    stride: float = Field(gt=0)
    offset: float | None = None
    activation: Literal["none", "sigmoid"] = "none"

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if v not in OUTPUT_TYPES:
            raise ValueError(
                f"unknown output type {v!r}; supported: {', '.join(OUTPUT_TYPES)}"
            )
        return v

    @property
    def cell_offset(self) -> float:
        """Input-pixel position of heatmap cell 0."""
        return (self.stride - 1.0) / 2.0 if self.offset is None else self.offset


class Manifest(_Strict):
    """A model manifest (``format: livepose-model/1``)."""

    format: Literal["livepose-model/1"]
    name: str = Field(min_length=1)
    file: str = "model.onnx"
    input: InputSpec
    output: OutputSpec
    keypoints: list[str] = Field(min_length=1)
    skeleton: list[tuple[str, str]] = []
    training: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> Manifest:
        dup = sorted({k for k in self.keypoints if self.keypoints.count(k) > 1})
        if dup:
            raise ValueError(f"keypoints must be unique; repeated: {dup}")
        known = set(self.keypoints)
        bad = sorted({k for edge in self.skeleton for k in edge if k not in known})
        if bad:
            raise ValueError(f"skeleton names unknown keypoints: {bad}")
        return self


def _format_errors(source: Path, err: ValidationError) -> str:
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "literal_error":
            msg = f"got {e.get('input')!r}; {msg[:1].lower()}{msg[1:]}"
        out.append(f"{loc}: {msg}" if loc else msg)
    return f"{source}: " + "; ".join(out)


def load_manifest(path: str | Path) -> Manifest:
    """Load and validate a manifest file.

    Raises
    ------
    ModelError
        The file is missing, not YAML, or does not follow the schema (names the field).
    """
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ModelError(f"{p}: model manifest not found (model.manifest)") from None
    except OSError as exc:
        raise ModelError(f"{p}: cannot read the model manifest ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ModelError(f"{p}:{where} not valid YAML") from None
    if not isinstance(data, dict):
        raise ModelError(f"{p}: a manifest must be a mapping, got {type(data).__name__}")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ModelError(_format_errors(p, exc)) from None


def default_model_dir() -> Path:
    """Folder of the bundled default model (``livepose.inference`` ``models/default/``)."""
    return Path(str(files("livepose.inference") / "models" / "default"))


def resolve_model(model_cfg: ModelConfig) -> tuple[Path, Manifest]:
    """Find the ONNX file and load its manifest.

    ``model.path`` is ``default`` (the bundled model), an ``.onnx`` file, or a folder holding
    ``manifest.yaml`` (whose ``file`` names the ONNX file). The manifest is
    ``model.manifest`` when set, else ``manifest.yaml`` next to the model.

    Returns
    -------
    tuple[Path, Manifest]
        The ONNX file and its validated manifest.
    """
    raw = model_cfg.path
    if raw == "default":
        folder, onnx = default_model_dir(), None
        if model_cfg.manifest is None and not (folder / MANIFEST_NAME).is_file():
            raise ModelError(
                f"{folder / MANIFEST_NAME}: the bundled default model is not installed "
                "(model.path: default); set model.path to an .onnx file"
            )
    elif Path(raw).is_dir():
        folder, onnx = Path(raw), None
    else:
        onnx = Path(raw)
        folder = onnx.parent
        if onnx.suffix.lower() != ".onnx":
            raise ModelError(f"{onnx}: model.path must be 'default', a folder or an .onnx file")
        if not onnx.is_file():
            raise ModelError(f"{onnx}: model file not found (model.path)")
    manifest = load_manifest(model_cfg.manifest or folder / MANIFEST_NAME)
    if onnx is None:
        onnx = folder / manifest.file
        if not onnx.is_file():
            raise ModelError(f"{onnx}: model file not found (manifest field 'file')")
    return onnx, manifest
