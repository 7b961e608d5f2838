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

from livepose.core.config import ModelConfig
from livepose.inference.batching import run_in_chunks
from livepose.inference.manifest import Manifest, ModelError
from livepose.inference.providers import provider_options

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

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """``(N, C, H, W)`` (or NHWC) float32 → the raw outputs named by
        ``manifest.output.tensor_names()``, in that order (e.g. ``[(N, J, h, w)]`` for
        heatmaps); decode them with :func:`~livepose.inference.decode.decode_outputs`."""
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


def _fixed(d: Dim) -> bool:
    return isinstance(d, int) and d > 0


def _output_problem(
    shapes: Sequence[tuple[Dim, ...]], manifest: Manifest, strict: bool = False
) -> str | None:
    """The first disagreement between the output shapes (in ``tensor_names()`` order) and
    the manifest, or ``None``. ``strict``: actual shapes (every dimension must match);
    else declared ones (a named or -1 dimension matches anything)."""
    out, inp = manifest.output, manifest.input
    j = len(manifest.keypoints)
    names = out.tensor_names()

    def ok(declared: Dim, want: int) -> bool:
        return declared == want if strict else _dim_ok(declared, want)

    def desc(i: int) -> str:
        return f"output {names[i]!r} (shape {list(shapes[i])})"

    kp = f"the manifest lists {j} keypoints but "
    s = shapes[0]
    if out.type == "heatmap":
        stride = out.cell_stride
        if len(s) != 4:
            return f"output.type heatmap needs (N, J, h, w) but {desc(0)} is {len(s)}-D"
        if not ok(s[1], j):
            return f"{kp}{desc(0)} has {s[1]} channels"
        for field, d, size in (("height", s[2], inp.height), ("width", s[3], inp.width)):
            # d · stride ≈ size; up to 4 cells more: unpadded deconvolutions (DeepLabCut's
            # heads turn n cells into 2n + 1, so 256 px at stride 8 gives 35, not 32)
            if isinstance(d, int) and d > 0 and not -stride < d * stride - size <= 4 * stride:
                return (f"{desc(0)}: heatmap {field} {d} does not match input.{field} {size} "
                        f"/ output.stride {stride:g}")
        if out.locref is not None:
            lr = shapes[1]
            if len(lr) != 4 or not ok(lr[1], 2 * j):
                return (f"output.locref: {desc(1)} must be (N, 2J, h, w) = (N, {2 * j}, h, w): "
                        f"x and y offsets for each of the {j} keypoints")
            for field, a, b in (("height", lr[2], s[2]), ("width", lr[3], s[3])):
                if _fixed(a) and _fixed(b) and a != b:
                    return f"output.locref: {desc(1)} {field} {a} differs from {desc(0)}"
    elif out.type == "simcc":
        lengths = out.simcc_lengths(inp.width, inp.height)
        for i, key, field, size in ((0, "output.name", "width", inp.width),
                                    (1, "output.name_y", "height", inp.height)):
            s = shapes[i]
            if len(s) != 3:
                return f"{key}: output.type simcc needs (N, J, bins) but {desc(i)} is {len(s)}-D"
            if not ok(s[1], j):
                return f"{kp}{desc(i)} has {s[1]} rows"
            if not ok(s[2], lengths[i]):
                return (f"{key}: {desc(i)} has {s[2]} bins but input.{field} {size} × "
                        f"output.split_ratio {out.simcc_ratio:g} = {lengths[i]}")
    elif out.type == "regression":
        if len(s) != 3 or ((strict or _fixed(s[2])) and s[2] not in (2, 3)):
            return (f"output.type regression needs (N, J, 2) or (N, J, 3) (x, y[, confidence]) "
                    f"but {desc(0)} is not")
        if not ok(s[1], j):
            return f"{kp}{desc(0)} has {s[1]} rows"
    else:
        return f"unknown output.type {out.type!r}"
    return None


def check_io(
    sess: Any, manifest: Manifest, source: Path
) -> tuple[tuple[Dim, ...], int | None]:
    """Check the session's input/output names and shapes against the manifest.

    Every output the decoder reads (``manifest.output.tensor_names()``) must exist with the
    shape its ``output.type`` needs: ``heatmap`` ``(N, J, ~H/stride, ~W/stride)`` (and a
    ``locref`` ``(N, 2J, h, w)``), ``simcc`` ``(N, J, round(W·k))`` and
    ``(N, J, round(H·k))``, ``regression`` ``(N, J, 2|3)``.

    Returns
    -------
    tuple
        The declared input shape and its batch dimension (an int if fixed).

    Raises
    ------
    ModelError
        Naming the manifest field that disagrees with the ONNX graph, and the ONNX shapes.
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
    fields = {"heatmap": ("name", "locref"), "simcc": ("name", "name_y"),
              "regression": ("name",)}[out.type]
    names = out.tensor_names()
    for field, name in zip(fields, names, strict=False):
        if name not in outputs:
            have = ", ".join(f"{k} {list(v.shape)}" for k, v in outputs.items())
            raise ModelError(
                f"{source}: manifest output.{field} {name!r} is not an output of the model "
                f"(outputs: {have})"
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
    problem = _output_problem([tuple(outputs[n].shape) for n in names], manifest)
    if problem:
        raise ModelError(f"{source}: {problem}")
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return shape, batch


def check_output(outputs: Sequence[np.ndarray], manifest: Manifest, n: int) -> None:
    """Check the actual outputs of :meth:`Engine.run` (dynamic dimensions resolved) for a
    batch of ``n``, in the order of ``manifest.output.tensor_names()``.

    Raises
    ------
    ModelError
        Wrong number of outputs, batch size, or a shape the decoder cannot read.
    """
    names = manifest.output.tensor_names()
    where = f"model {manifest.name!r}"
    if len(outputs) != len(names):
        raise ModelError(
            f"{where}: the engine returned {len(outputs)} outputs; output.type "
            f"{manifest.output.type} reads {len(names)} ({', '.join(names)})"
        )
    shapes = [tuple(int(d) for d in np.shape(o)) for o in outputs]
    for name, shp in zip(names, shapes, strict=True):
        if not shp or shp[0] != n:
            raise ModelError(
                f"{where}: output {name!r} has shape {list(shp)} for a batch of {n}"
            )
    problem = _output_problem(shapes, manifest, strict=True)
    if problem:
        raise ModelError(f"{where}: {problem} for a batch of {n}")


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
    model_cfg
        The ``model`` config, for the TensorRT and CUDA provider options (fp16, cache folder;
        :func:`livepose.inference.providers.provider_options`); default values if ``None``.
    """

    name = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | Path,
        manifest: Manifest,
        providers: Sequence[str] | Literal["auto"] = (CPU,),
        allow_cpu_fallback: bool = False,
        intra_op_threads: int = 0,
        model_cfg: ModelConfig | None = None,
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
            specs = provider_options(chosen, model_cfg or ModelConfig())
            self._sess = ort.InferenceSession(str(path), sess_options=opts, providers=specs)
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
        self._out = manifest.output.tensor_names()
        log.info("model %s on %s (providers %s)", manifest.name, self.provider, used)

    @classmethod
    def from_config(cls, onnx_path: str | Path, manifest: Manifest, cfg: ModelConfig) -> OrtEngine:
        """Build from the ``model`` section of the config."""
        return cls(onnx_path, manifest, cfg.providers, cfg.allow_cpu_fallback,
                   cfg.intra_op_threads, cfg)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run the model on ``batch`` ``(N, …)`` float32 (C-contiguous).

        Returns the outputs ``manifest.output.tensor_names()``, in that order. A model with
        a fixed batch size ``B`` is run in chunks of ``B`` (the last one padded).
        """
        b = self._batch
        if b is None or batch.shape[0] == b:
            return self._run_once(batch)
        return run_in_chunks(batch, b, True, self._run_once)

    def _run_once(self, batch: np.ndarray) -> list[np.ndarray]:
        return list(self._sess.run(self._out, {self._in: batch}))


EngineFactory = Callable[[Path, Manifest, ModelConfig], Engine]

def _torch_engine(path: Path, manifest: Manifest, cfg: ModelConfig) -> Engine:
    from livepose.inference.engine_torch import TorchEngine  # torch is imported in there, lazily

    return TorchEngine.from_config(path, manifest, cfg)


def _tensorrt_engine(path: Path, manifest: Manifest, cfg: ModelConfig) -> Engine:
    from livepose.inference.engine_trt import TrtEngine  # tensorrt/cuda-python: lazily, inside

    return TrtEngine.from_config(path, manifest, cfg)


#: Engine backends by name.
ENGINES: dict[str, EngineFactory] = {
    "onnxruntime": OrtEngine.from_config,
    "tensorrt": _tensorrt_engine,
    "torch": _torch_engine,
}


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
