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

``output.type`` selects the decoder (:mod:`livepose.inference.decode`): ``heatmap``
(optionally with DeepLabCut location refinement, ``locref``), ``simcc`` (RTMPose: ``name``
is the x vector, ``name_y`` the y vector) or ``regression`` (coordinates straight out of the
network). Fields of another type are refused.

A pixel value ``v`` (8-bit range; deeper pixels are first brought to it) becomes
``(v * scale - mean[c]) / std[c]`` in channel ``c``. Every error is a :class:`ModelError`
(a :class:`~livepose.core.errors.UserError`) that names the file and the field.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from livepose.core.config import ModelConfig
from livepose.core.errors import UserError
from livepose.core.modelinfo import BUNDLED_MODELS, check_multi_defaults
from livepose.core.yamlfile import read_yaml

MANIFEST_FORMAT = "livepose-model/1"
MANIFEST_NAME = "manifest.yaml"
OUTPUT_TYPES = ("heatmap", "simcc", "regression")
#: DeepLabCut's default ``locref_stdev`` (location-refinement scale, input pixels).
DLC_LOCREF_STD = 7.2801


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
    """The network output(s) and how to decode them (``type``).

    ``heatmap``
        ``name``: ``(N, J, h, w)``; cell ``i`` centred on input pixel ``offset + i * stride``
        (``offset`` defaults to ``(stride - 1) / 2``). ``locref`` (optional): a DeepLabCut
        location-refinement output ``(N, 2J, h, w)``, x and y interleaved per keypoint,
        scaled by ``locref_std``.
    ``simcc``
        ``name``: x vectors ``(N, J, round(width * split_ratio))``; ``name_y``: y vectors
        ``(N, J, round(height * split_ratio))``.
    ``regression``
        ``name``: ``(N, J, 2)`` or ``(N, J, 3)`` (x, y[, confidence]), ``coords`` in input
        ``pixels`` or ``normalized`` to 0..1 of the input width and height.

    ``activation`` applies to the values read as confidence (heatmap, SimCC vectors, the
    regression confidence column): ``none`` or ``sigmoid`` (the network emits logits).
    """

    name: str
    type: str
    activation: Literal["none", "sigmoid"] = "none"
    # heatmap
    stride: float | None = Field(None, gt=0)
    offset: float | None = None
    locref: str | None = None
    locref_std: float | None = Field(None, gt=0)
    # simcc
    name_y: str | None = None
    split_ratio: float | None = Field(None, gt=0)
    # regression
    coords: Literal["pixels", "normalized"] | None = None
    values: int | None = Field(None, ge=2, description="flat (N, R·values) output: values per row")
    confidence_index: int | None = Field(None, ge=2, description="flat output: confidence column")
    heatmap: str | None = None  # regression refined from a heatmap output (N, h, w, R), logits
    heatmap_kernel: int | None = Field(None, ge=1)
    heatmap_min_confidence: float | None = Field(None, ge=0, le=1)

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if v not in OUTPUT_TYPES:
            raise ValueError(
                f"unknown output type {v!r}; supported: {', '.join(OUTPUT_TYPES)}"
            )
        return v

    @model_validator(mode="after")
    def _fields_of_type(self) -> OutputSpec:
        own = {
            "heatmap": ("stride", "offset", "locref", "locref_std"),
            "simcc": ("name_y", "split_ratio"),
            "regression": ("coords", "values", "confidence_index", "heatmap", "heatmap_kernel",
                           "heatmap_min_confidence"),
        }
        foreign = [f for t, fields in own.items() if t != self.type for f in fields
                   if getattr(self, f) is not None]
        if foreign:
            raise ValueError(
                f"output.{foreign[0]} does not apply to output.type {self.type!r} "
                f"(its fields: {', '.join(('name', 'activation', *own[self.type]))})"
            )
        if self.type == "heatmap" and self.stride is None:
            raise ValueError("output.stride is required for output.type 'heatmap'")
        if self.type == "heatmap" and self.locref_std is not None and self.locref is None:
            raise ValueError("output.locref_std needs output.locref (the refinement output)")
        if self.type == "simcc" and not self.name_y:
            raise ValueError("output.name_y (the y vectors) is required for output.type 'simcc'")
        names = self.tensor_names()
        if len(set(names)) != len(names):
            raise ValueError(f"the decoder's tensor names must differ, got {names}")
        return self

    def tensor_names(self) -> list[str]:
        """The model outputs the decoder reads, in the order :meth:`Engine.run` returns them:
        heatmap ``[name]`` or ``[name, locref]``; simcc ``[name, name_y]``; regression
        ``[name]``."""
        if self.type == "simcc":
            return [self.name, str(self.name_y)]
        if self.type == "heatmap" and self.locref is not None:
            return [self.name, self.locref]
        return [self.name]

    @property
    def cell_stride(self) -> float:
        """Heatmap cell size in input pixels (``stride``; 1 for other types)."""
        return 1.0 if self.stride is None else self.stride

    @property
    def cell_offset(self) -> float:
        """Input-pixel position of heatmap cell 0."""
        return (self.cell_stride - 1.0) / 2.0 if self.offset is None else self.offset

    @property
    def locref_scale(self) -> float:
        """``locref_std`` or DeepLabCut's default :data:`DLC_LOCREF_STD`."""
        return DLC_LOCREF_STD if self.locref_std is None else self.locref_std

    @property
    def simcc_ratio(self) -> float:
        """SimCC bins per input pixel (``split_ratio``, RTMPose's default 2.0)."""
        return 2.0 if self.split_ratio is None else self.split_ratio

    def simcc_lengths(self, width: int, height: int) -> tuple[int, int]:
        """Expected SimCC vector lengths ``(Wx, Wy)`` for an input of ``width × height``
        (mmpose: ``round(size * split_ratio)``)."""
        k = self.simcc_ratio
        return round(width * k), round(height * k)  # half to even, as np.around


class AnchorSpec(_Strict):
    """SSD anchors (MediaPipe's ``SsdAnchorsCalculator`` options; centres only when
    ``fixed_anchor_size``)."""

    num_layers: int = Field(gt=0)
    strides: list[int] = Field(min_length=1)
    min_scale: float = Field(gt=0)
    max_scale: float = Field(gt=0)
    offset_x: float = 0.5
    offset_y: float = 0.5
    aspect_ratios: list[float] = [1.0]
    interpolated_scale_aspect_ratio: float = 1.0
    fixed_anchor_size: bool = True

    @model_validator(mode="after")
    def _check(self) -> AnchorSpec:
        if len(self.strides) != self.num_layers:
            raise ValueError(f"anchors.strides needs num_layers ({self.num_layers}) values")
        if not self.fixed_anchor_size:
            raise ValueError("anchors.fixed_anchor_size: false is not supported")
        return self


class DetectorSpec(_Strict):
    """The first stage of a two-stage (top-down) model: a detector run on the whole frame
    (``input.resize: letterbox``) that proposes one region per view.

    ``type: ssd``: ``boxes`` ``(N, A, 4 + 2K)`` (box centre/size then ``K`` keypoints;
    ÷ ``box_scale`` in input sides, relative to the anchor centre) and ``scores`` ``(N, A, 1)``
    (logits with ``score_activation: sigmoid``), decoded against ``anchors`` and merged by
    ``nms`` (``weighted``: MediaPipe's score-weighted clusters; ``hard``: keep the best).
    ``border``: what the letterbox bars hold (``zero``: pixel value 0).
    """

    file: str
    input: InputSpec
    type: Literal["ssd"] = "ssd"
    boxes: str
    scores: str
    anchors: AnchorSpec
    box_scale: float = Field(gt=0)
    box_order: Literal["xywh", "yxhw"] = "xywh"
    keypoints: int = Field(0, ge=0)
    score_activation: Literal["none", "sigmoid"] = "sigmoid"
    score_clip: float = Field(100.0, gt=0)
    min_score: float = Field(0.5, ge=0, le=1)
    nms: Literal["weighted", "hard"] = "weighted"
    nms_iou: float = Field(0.3, gt=0, le=1)
    border: Literal["zero", "replicate"] = "zero"


class OneEuroSpec(_Strict):
    """A One-Euro filter on the ROI's alignment points (pixels), timed at ``rate_hz``
    per frame step (MediaPipe's legacy API: 30 whatever the video)."""

    min_cutoff: float = Field(gt=0)
    beta: float = Field(ge=0)
    derivate_cutoff: float = Field(gt=0)
    rate_hz: float = Field(30.0, gt=0)


class ReprojectSpec(_Strict):
    """The ROI rule from the model's own named keypoints (re-acquiring a lost view from the
    fused 3D pose's reprojection instead of the detector): ``p0`` = mean of ``centre``,
    ``p1 = p0 + length·(mean of toward − p0)``; then the same size/rotation rule."""

    centre: list[str] = Field(min_length=1)
    toward: list[str] = Field(min_length=1)
    length: float = Field(1.0, gt=0)


class RoiSpec(_Strict):
    """How a two-stage model's crop is made: a rotated square from two alignment points.

    From a detection: ``detector_points`` (centre, scale point; detector keypoint indices);
    when tracking: ``keypoint_points`` (rows of the keypoint model's output, which may be
    auxiliary rows past ``keypoints``). Size ``2·|p1 − p0|·scale`` (``square: long``),
    rotated so that ``p1 − p0`` points at ``target_angle_deg`` (``null``: upright).
    ``presence`` names the keypoint model's output with the whole-object score (already in
    [0, 1] or ``presence_activation: sigmoid``): below ``min_presence`` the view has lost its
    target and the detector runs again on its next frame — or, with ``reproject``, the ROI
    comes from the fused 3D pose projected into the view (the detector only if that fails).
    """

    detector_points: tuple[int, int]
    keypoint_points: tuple[int, int] | None = None
    target_angle_deg: float | None = 90.0
    scale: float = Field(1.25, gt=0)
    square: Literal["long"] = "long"
    border: Literal["zero", "replicate"] = "replicate"
    smoothing: OneEuroSpec | None = None
    presence: str | None = None
    presence_activation: Literal["none", "sigmoid"] = "none"
    min_presence: float = Field(0.5, ge=0, le=1)
    reproject: ReprojectSpec | None = None


class NoiseSpec(_Strict):
    """The model's 2D keypoint noise, as fusion weighs its views: σ of a keypoint of
    confidence ``c`` is ``sigma_px / c`` (frame pixels). Measure it for each model at the
    resolution it runs at; the sim rodent's is 1 px at 320×256. ``confidence_power``: the
    exponent of ``c`` (fusion uses 1, the only value accepted for now); ``measured``: how σ
    was found (free text)."""

    sigma_px: float = Field(gt=0)
    confidence_power: float = Field(1.0, ge=1.0, le=1.0)
    measured: str | None = None


class Manifest(_Strict):
    """A model manifest (``format: livepose-model/1``)."""

    format: Literal["livepose-model/1"]
    name: str = Field(min_length=1)
    file: str = "model.onnx"
    input: InputSpec
    output: OutputSpec
    keypoints: list[str] = Field(min_length=1)
    skeleton: list[tuple[str, str]] = []
    noise: NoiseSpec | None = None
    training: dict[str, Any] | None = None
    detector: DetectorSpec | None = None
    roi: RoiSpec | None = None
    multi: dict[str, Any] | None = Field(
        None, description="fusion.multi defaults for this model's subject (its gates in mm, "
        "its distractor rules); a config that sets a field keeps its own value "
        "(livepose.core.modelinfo.apply_model_defaults)")

    @model_validator(mode="after")
    def _check(self) -> Manifest:
        if self.multi is not None:
            check_multi_defaults(self.multi)
        dup = sorted({k for k in self.keypoints if self.keypoints.count(k) > 1})
        if dup:
            raise ValueError(f"keypoints must be unique; repeated: {dup}")
        known = set(self.keypoints)
        bad = sorted({k for edge in self.skeleton for k in edge if k not in known})
        if bad:
            raise ValueError(f"skeleton names unknown keypoints: {bad}")
        if (self.detector is None) != (self.roi is None):
            raise ValueError("a two-stage model needs both detector and roi sections")
        if self.detector is not None and self.output.type != "regression":
            raise ValueError("two-stage models support output.type 'regression' only for now")
        rp = self.roi.reproject if self.roi is not None else None
        unknown = sorted({k for k in (rp.centre + rp.toward if rp else []) if k not in known})
        if unknown:
            raise ValueError(f"roi.reproject names unknown keypoints: {unknown}")
        return self

    @property
    def two_stage(self) -> bool:
        """A detector proposes the regions the keypoint model runs on."""
        return self.detector is not None


def _format_errors(source: Path, err: ValidationError) -> str:
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "literal_error":
            msg = f"got {e.get('input')!r}; {msg[:1].lower()}{msg[1:]}"
        out.append(f"{loc}: {msg}" if loc and not msg.startswith(f"{loc}.") else msg)
    return f"{source}: " + "; ".join(out)


def load_manifest(path: str | Path) -> Manifest:
    """Load and validate a manifest file.

    Raises
    ------
    ModelError
        The file is missing, not YAML, or does not follow the schema (names the field).
    """
    p = Path(path)
    data = read_yaml(p, ModelError, "model manifest")
    if not isinstance(data, dict):
        raise ModelError(f"{p}: a manifest must be a mapping, got {type(data).__name__}")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ModelError(_format_errors(p, exc)) from None


def default_model_dir(name: str = "default") -> Path:
    """Folder of a bundled model (``livepose.inference`` ``models/<name>/``)."""
    return Path(str(files("livepose.inference") / "models" / name))


BUNDLED = BUNDLED_MODELS


#: Model files ``model.path`` may name (the engine is picked by suffix: ``engine_name``).
MODEL_SUFFIXES = (".onnx", ".engine", ".plan", ".pt", ".pt2", ".ts")


def resolve_model(model_cfg: ModelConfig) -> tuple[Path, Manifest]:
    """Find the model file and load its manifest.

    ``model.path`` is a bundled model (:data:`BUNDLED`), a model file (:data:`MODEL_SUFFIXES`:
    ONNX, TensorRT engine, TorchScript or ``torch.export`` program), or a folder holding
    ``manifest.yaml`` (whose ``file`` names the model file). The manifest is
    ``model.manifest`` when set, else ``manifest.yaml`` next to the model.

    Returns
    -------
    tuple[Path, Manifest]
        The model file and its validated manifest.
    """
    raw = model_cfg.path
    if raw in BUNDLED:
        folder, onnx = default_model_dir(raw), None
        if model_cfg.manifest is None and not (folder / MANIFEST_NAME).is_file():
            raise ModelError(
                f"{folder / MANIFEST_NAME}: the bundled {raw} model is not installed "
                f"(model.path: {raw}); set model.path to an .onnx file"
            )
    elif Path(raw).is_dir():
        folder, onnx = Path(raw), None
    else:
        onnx = Path(raw)
        folder = onnx.parent
        if onnx.suffix.lower() not in MODEL_SUFFIXES:
            raise ModelError(
                f"{onnx}: model.path must be a bundled model ({', '.join(BUNDLED)}), a folder or a model file "
                f"({', '.join(MODEL_SUFFIXES)})"
            )
        if not onnx.is_file():
            raise ModelError(f"{onnx}: model file not found (model.path)")
    manifest = load_manifest(model_cfg.manifest or folder / MANIFEST_NAME)
    if onnx is None:
        onnx = folder / manifest.file
        if not onnx.is_file():
            raise ModelError(f"{onnx}: model file not found (manifest field 'file')")
    return onnx, manifest
