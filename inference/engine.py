"""Inference engines: a batch of preprocessed images in, raw network output out.

Backends sit behind the :class:`Engine` contract and are chosen by name from
:data:`ENGINES`. The only backend so far is ONNX Runtime (:class:`OrtEngine`); this module is
the only place that imports ``onnxruntime`` (the CPU and GPU builds share the module name).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import onnxruntime as ort

from livepose.config import ModelConfig
from livepose.inference.manifest import Manifest, ModelError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
#: Providers tried, best first, when ``model.providers: auto``.
AUTO_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", CPU)
_GPU_HINT = "install onnxruntime-gpu instead of onnxruntime (docs/inference.md)"

Dim = int | str | None


class Engine(Protocol):
    """What the inference worker needs from a backend.

    Attributes
    ----------
    name
        Backend name (a key of :data:`ENGINES`).
    provider
        The device/provider actually running the model (e.g. ``CPUExecutionProvider``).
    input_shape
        The model's input shape as declared, ``None`` or a name for dynamic dimensions.
    """

    name: str
    provider: str
    input_shape: tuple[Dim, ...]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """``(N, C, H, W)`` (or NHWC) float32 → raw output, ``(N, J, h, w)`` for heatmaps."""
        ...


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers."""
    return list(ort.get_available_providers())


def select_providers(
    requested: Sequence[str] | Literal["auto"],
    available: Sequence[str],
    allow_cpu_fallback: bool = False,
) -> list[str]:
    """The execution providers to ask ONNX Runtime for, best first.

    Parameters
    ----------
    requested
        ``model.providers``: a list of provider names or ``"auto"`` (best of
        :data:`AUTO_ORDER` that is available).
    available
        ``onnxruntime.get_available_providers()``.
    allow_cpu_fallback
        Drop unavailable providers and run on CPU instead of failing.

    Raises
    ------
    ModelError
        A provider name is unknown, or a requested provider is not available and CPU
        fallback is not allowed.
    """
    if requested == "auto":
        chosen = [p for p in AUTO_ORDER if p in available]
        return chosen or [CPU]
    if not requested:
        raise ModelError("model.providers: empty list; name at least one provider or use 'auto'")
    known = set(ort.get_all_providers())
    unknown = [p for p in requested if p not in known]
    if unknown:
        raise ModelError(
            f"model.providers: unknown execution provider {unknown[0]!r}; "
            f"available here: {', '.join(available)}"
        )
    missing = [p for p in requested if p not in available]
    if missing and not allow_cpu_fallback:
        raise ModelError(
            f"model.providers: {missing[0]} is not available in this onnxruntime "
            f"(available: {', '.join(available)}); {_GPU_HINT}, or set "
            "model.allow_cpu_fallback: true"
        )
    chosen = [p for p in requested if p in available]
    if missing:
        log.warning("execution provider(s) %s not available; falling back to CPU", missing)
    if CPU not in chosen and (missing or not chosen):
        chosen.append(CPU)
    return chosen


def _dim_ok(declared: Dim, expected: int) -> bool:
    return not isinstance(declared, int) or declared in (expected, -1, 0)


def check_io(
    sess: Any, manifest: Manifest, source: Path
) -> tuple[tuple[Dim, ...], int | None]:
    """Check the session's input/output names and shapes against the manifest.

    Returns
    -------
    tuple
        The declared input shape and its batch dimension (an int if fixed).

    Raises
    ------
    ModelError
        Naming the manifest field that disagrees with the ONNX graph.
    """
    spec, out = manifest.input, manifest.output
    inputs = {i.name: i for i in sess.get_inputs()}
    outputs = {o.name: o for o in sess.get_outputs()}
    if spec.name not in inputs:
        raise ModelError(
            f"{source}: manifest input.name {spec.name!r} is not an input of the model "
            f"(inputs: {sorted(inputs)})"
        )
    if len(inputs) != 1:
        raise ModelError(f"{source}: the model must have exactly one input, has {sorted(inputs)}")
    if out.name not in outputs:
        raise ModelError(
            f"{source}: manifest output.name {out.name!r} is not an output of the model "
            f"(outputs: {sorted(outputs)})"
        )
    inp = inputs[spec.name]
    if inp.type != "tensor(float)":
        raise ModelError(f"{source}: input {spec.name!r} is {inp.type}; only float32 is supported")
    shape = tuple(inp.shape)
    if len(shape) != 4:
        raise ModelError(f"{source}: input {spec.name!r} has shape {list(shape)}; expected 4-D")
    dims = {"NCHW": ("channels", "height", "width"), "NHWC": ("height", "width", "channels")}
    for field, declared in zip(dims[spec.layout], shape[1:], strict=True):
        want = getattr(spec, field)
        if not _dim_ok(declared, want):
            raise ModelError(
                f"{source}: manifest input.{field} is {want} but the model's input "
                f"{spec.name!r} has shape {list(shape)} (layout {spec.layout})"
            )
    oshape = tuple(outputs[out.name].shape)
    if len(oshape) != 4:
        raise ModelError(
            f"{source}: output {out.name!r} has shape {list(oshape)}; a heatmap output is "
            "(N, J, h, w)"
        )
    if not _dim_ok(oshape[1], len(manifest.keypoints)):
        raise ModelError(
            f"{source}: manifest lists {len(manifest.keypoints)} keypoints but output "
            f"{out.name!r} has {oshape[1]} channels"
        )
    for field, declared, size in (("height", oshape[2], spec.height),
                                  ("width", oshape[3], spec.width)):
        fixed = isinstance(declared, int) and declared > 0
        if fixed and abs(declared * out.stride - size) >= out.stride:
            raise ModelError(
                f"{source}: output {out.name!r} {field} {declared} does not match "
                f"input.{field} {size} / output.stride {out.stride:g}"
            )
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return shape, batch


def check_output(out: np.ndarray, manifest: Manifest, n: int) -> None:
    """Check an actual output (dynamic dimensions resolved) for a batch of ``n``."""
    spec = manifest.input
    stride = manifest.output.stride
    j = len(manifest.keypoints)
    ok = (
        out.ndim == 4 and out.shape[0] == n and out.shape[1] == j
        and abs(out.shape[2] * stride - spec.height) < stride
        and abs(out.shape[3] * stride - spec.width) < stride
    )
    if not ok:
        raise ModelError(
            f"model {manifest.name!r}: output {manifest.output.name!r} has shape "
            f"{list(out.shape)} for a batch of {n}; expected ({n}, {j}, "
            f"~{spec.height / stride:g}, ~{spec.width / stride:g}) from the manifest"
        )


class OrtEngine:
    """ONNX Runtime session for one model.

    Parameters
    ----------
    onnx_path
        The ONNX file.
    manifest
        Its manifest (names and shapes are checked against the graph).
    providers
        Provider names or ``"auto"`` (see :func:`select_providers`).
    allow_cpu_fallback
        Run on CPU when a requested GPU provider is missing or fails to load.
    intra_op_threads
        Threads per operator (0: ONNX Runtime's default).
    """

    name = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | Path,
        manifest: Manifest,
        providers: Sequence[str] | Literal["auto"] = (CPU,),
        allow_cpu_fallback: bool = False,
        intra_op_threads: int = 0,
    ) -> None:
        path = Path(onnx_path)
        if not path.is_file():
            raise ModelError(f"{path}: model file not found (model.path)")
        chosen = select_providers(
            providers if providers == "auto" else list(providers),
            ort.get_available_providers(), allow_cpu_fallback,
        )
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        # ORT's pool threads busy-wait between calls by default; on a rig computer that steals
        # cores from the camera and fusion processes, which hurts their latency more than the
        # wake-up costs inference.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        try:
            self._sess = ort.InferenceSession(str(path), sess_options=opts, providers=chosen)
        except Exception as exc:  # ORT raises its own unrelated exception types
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
            raise ModelError(f"{path}: cannot load the ONNX model ({first})") from None
        used = self._sess.get_providers()
        explicit = providers != "auto"
        if explicit and chosen[0] not in used and chosen[0] != CPU and not allow_cpu_fallback:
            raise ModelError(
                f"model.providers: {chosen[0]} failed to initialise (running on {used[0]}); "
                f"{_GPU_HINT}, or set model.allow_cpu_fallback: true"
            )
        self.provider: str = used[0]
        self.providers: list[str] = list(used)
        self.input_shape, self._batch = check_io(self._sess, manifest, path)
        self._in = manifest.input.name
        self._out = [manifest.output.name]
        log.info("model %s on %s (providers %s)", manifest.name, self.provider, used)

    @classmethod
    def from_config(cls, onnx_path: str | Path, manifest: Manifest, cfg: ModelConfig) -> OrtEngine:
        """Build from the ``model`` section of the config."""
        return cls(onnx_path, manifest, cfg.providers, cfg.allow_cpu_fallback,
                   cfg.intra_op_threads)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on ``batch`` ``(N, …)`` float32 (C-contiguous).

        A model with a fixed batch size ``B`` is run in chunks of ``B`` (the last one padded).
        """
        b = self._batch
        if b is None or batch.shape[0] == b:
            out: np.ndarray = self._sess.run(self._out, {self._in: batch})[0]
            return out
        parts = []
        for s in range(0, batch.shape[0], b):
            chunk = batch[s : s + b]
            if chunk.shape[0] < b:
                pad = np.zeros((b - chunk.shape[0], *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            parts.append(self._sess.run(self._out, {self._in: chunk})[0])
        return np.concatenate(parts)[: batch.shape[0]]


EngineFactory = Callable[[Path, Manifest, ModelConfig], Engine]

#: Engine backends by name.
ENGINES: dict[str, EngineFactory] = {"onnxruntime": OrtEngine.from_config}


#: ``model.engine: auto`` picks the engine by the model file's suffix.
ENGINE_BY_SUFFIX = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt",
                    ".pt": "torch", ".pt2": "torch", ".ts": "torch"}


def engine_name(cfg: ModelConfig, model_path: Path) -> str:
    """The engine to run ``model_path`` with: ``model.engine``, or by suffix when ``auto``.

    Raises
    ------
    ModelError
        ``auto`` and a suffix no engine reads.
    """
    if cfg.engine != "auto":
        return cfg.engine
    try:
        return ENGINE_BY_SUFFIX[model_path.suffix.lower()]
    except KeyError:
        raise ModelError(
            f"{model_path}: model.engine: auto cannot tell the engine from the suffix "
            f"{model_path.suffix!r}; known: {', '.join(sorted(ENGINE_BY_SUFFIX))}, or set "
            "model.engine"
        ) from None


def create_engine(name: str, onnx_path: Path, manifest: Manifest, cfg: ModelConfig) -> Engine:
    """Build the engine ``name`` (a key of :data:`ENGINES`)."""
    try:
        factory = ENGINES[name]
    except KeyError:
        raise ModelError(f"unknown inference engine {name!r}; known: {sorted(ENGINES)}") from None
    return factory(onnx_path, manifest, cfg)
