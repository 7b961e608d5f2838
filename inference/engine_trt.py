"""Native TensorRT engine (TensorRT ≥ 10) and the engine builder.

:class:`TrtEngine` runs a serialized engine (``.engine``/``.plan``) with the TensorRT 10
tensor-name API: ``set_input_shape``, ``set_tensor_address`` and ``execute_async_v3`` on one
CUDA stream. Device buffers (``cudaMalloc``) and pinned host buffers (``cudaMallocHost``) are
allocated once, for the largest batch the engine accepts, and reused for every frame-set; after
two runs at a batch size the execution is captured into a CUDA graph and replayed (disabled, with
a log line, when the engine cannot be captured). CUDA is driven through ``cuda-python``
(``cuda.bindings.runtime``), so torch is not needed.

:func:`build_engine` turns an ONNX model into an engine with an optimisation profile for batches
``1..max_batch`` and a timing cache file in the cache folder (rebuilds take seconds).

``tensorrt`` and ``cuda-python`` (the ``tensorrt`` extra) are imported only inside these
functions; without them every entry point raises a :class:`ModelError` naming the extra.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from livepose.core.config import ModelConfig
from livepose.inference.batching import run_in_chunks
from livepose.inference.manifest import Manifest, ModelError
from livepose.inference.providers import cache_dir as config_cache_dir
from livepose.inference.providers import default_cache_dir

log = logging.getLogger(__name__)

TRT_HINT = ("install the tensorrt extra: pip install 'livepose[tensorrt]' "
            "(TensorRT 10 and cuda-python; needs an NVIDIA GPU and driver)")
#: Batch capacity of engines built automatically for ``engine: tensorrt`` with an .onnx model
#: (the architecture's largest rig); ``livepose model build-engine --max-batch C`` sets it.
DEFAULT_MAX_BATCH = 8
#: Plain runs at one batch size before its CUDA graph is captured.
GRAPH_WARMUP = 2
TIMING_CACHE_NAME = "timing.cache"

_LOGGERS: dict[str, Any] = {}  # TensorRT wants one logger per process


# --------------------------------------------------------------------------- imports


def import_tensorrt() -> Any:
    """``tensorrt`` (≥ 10), or a :class:`ModelError` naming the extra to install."""
    try:
        import tensorrt as trt
    except ImportError:
        raise ModelError(f"the tensorrt engine needs the 'tensorrt' package; {TRT_HINT}") from None
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise ModelError(
            f"TensorRT {trt.__version__} is installed; livepose needs TensorRT >= 10 "
            f"(tensor-name API); {TRT_HINT}"
        )
    return trt


def import_cudart() -> Any:
    """``cuda-python``'s runtime module, or a :class:`ModelError` naming the extra."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            raise ModelError(
                f"the tensorrt engine needs 'cuda-python' for its CUDA buffers; {TRT_HINT}"
            ) from None
    return cudart


def _trt_logger(trt: Any) -> Any:
    """One TensorRT logger per process, forwarding to :mod:`logging`."""
    if "trt" not in _LOGGERS:

        class _Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity: Any, msg: str) -> None:
                level = int(severity)
                if level <= int(trt.ILogger.Severity.ERROR):
                    self.errors.append(msg)
                    log.error("TensorRT: %s", msg)
                elif level == int(trt.ILogger.Severity.WARNING):
                    log.warning("TensorRT: %s", msg)
                else:
                    log.debug("TensorRT: %s", msg)

        _LOGGERS["trt"] = _Logger()
    return _LOGGERS["trt"]


def _check(result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(err, *values)`` tuple; a CUDA error becomes a ModelError."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:  # cudaSuccess
        raise ModelError(f"CUDA error in {what}: {err}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def _handle(obj: Any) -> int:
    """A CUDA handle object (stream, pointer) as the integer TensorRT wants."""
    try:
        return int(obj)
    except TypeError:
        return int(obj.getPtr())


# --------------------------------------------------------------------------- pure helpers


def profile_shapes(
    shape: Sequence[int], max_batch: int, opt_batch: int | None = None
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Optimisation-profile ``(min, opt, max)`` shapes for a network input ``shape`` whose
    batch (first) dimension is dynamic (``-1``) and every other dimension fixed.

    ``opt`` defaults to ``max_batch``: the worker always runs all C views at once.
    """
    if max_batch < 1:
        raise ModelError(f"--max-batch must be >= 1, got {max_batch}")
    opt = max_batch if opt_batch is None else opt_batch
    if not 1 <= opt <= max_batch:
        raise ModelError(f"the optimal batch {opt} is outside 1..{max_batch}")
    rest = tuple(int(d) for d in shape[1:])
    if any(d < 1 for d in rest):
        raise ModelError(
            f"input shape {list(shape)}: only the batch dimension may be dynamic for a "
            "TensorRT engine; export the ONNX model with a fixed image size"
        )
    return (1, *rest), (opt, *rest), (max_batch, *rest)


def timing_cache_path(folder: Path | None) -> Path:
    """The TensorRT timing cache file in ``folder`` (default: :func:`default_cache_dir`)."""
    return (folder if folder is not None else default_cache_dir()) / TIMING_CACHE_NAME


def engine_cache_path(
    onnx_bytes: bytes, folder: Path, fp16: bool, max_batch: int, trt_version: str, device: str
) -> Path:
    """Where an engine built from an ONNX model is cached: keyed on the model's content, the
    precision, the batch capacity, the TensorRT version and the GPU (engines are specific to
    all of them)."""
    digest = hashlib.sha256(onnx_bytes).hexdigest()[:16]
    gpu = "".join(c if c.isalnum() else "-" for c in device).strip("-").lower() or "gpu"
    prec = "fp16" if fp16 else "fp32"
    return folder / f"{digest}-{prec}-b{max_batch}-trt{trt_version}-{gpu}.engine"


def check_engine_io(
    inputs: dict[str, tuple[int, ...]],
    outputs: dict[str, tuple[int, ...]],
    manifest: Manifest,
    source: Path,
) -> tuple[int, ...]:
    """Check an engine's I/O tensors (name → shape, ``-1`` dynamic) against the manifest.

    Returns
    -------
    tuple[int, ...]
        The input shape as the engine declares it.

    Raises
    ------
    ModelError
        Naming the manifest field that disagrees with the engine.
    """
    spec = manifest.input
    if spec.name not in inputs:
        raise ModelError(f"{source}: manifest input.name {spec.name!r} is not an input of the "
                         f"engine (inputs: {sorted(inputs)})")
    if len(inputs) != 1:
        raise ModelError(f"{source}: the engine must have exactly one input, has {sorted(inputs)}")
    shape = inputs[spec.name]
    if len(shape) != 4:
        raise ModelError(f"{source}: input {spec.name!r} has shape {list(shape)}; expected 4-D")
    fields = ("channels", "height", "width") if spec.layout == "NCHW" else (
        "height", "width", "channels")
    for field, dim in zip(fields, shape[1:], strict=True):
        if dim != -1 and dim != getattr(spec, field):
            raise ModelError(f"{source}: input {spec.name!r} has {field} {dim}; the manifest "
                             f"says input.{field}: {getattr(spec, field)} (layout {spec.layout})")
    for name in manifest.output.tensor_names():
        if name not in outputs:
            raise ModelError(f"{source}: manifest output {name!r} is not an output of the engine "
                             f"(outputs: {sorted(outputs)})")
    return shape


# --------------------------------------------------------------------------- build


def build_engine(
    onnx: str | Path,
    out: str | Path,
    fp16: bool = True,
    cache_dir: Path | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    opt_batch: int | None = None,
    workspace_mib: int | None = None,
) -> Path:
    """Build a TensorRT engine from an ONNX model and write it to ``out``.

    Parameters
    ----------
    onnx
        The ONNX model (batch dimension dynamic or fixed, every other dimension fixed).
    out
        The engine file to write (``.engine``/``.plan``).
    fp16
        Allow fp16 kernels (inputs and outputs stay float32).
    cache_dir
        Folder of the timing cache ``timing.cache`` (read before, updated after the build);
        default :func:`~livepose.inference.providers.default_cache_dir`.
    max_batch, opt_batch
        Optimisation profile for batches ``1..max_batch``, tuned for ``opt_batch`` (default
        ``max_batch``). Ignored, with a warning, when the model's batch is fixed.
    workspace_mib
        Builder workspace limit (default: TensorRT's, the GPU's memory).

    Returns
    -------
    Path
        ``out``.
    """
    trt = import_tensorrt()
    src, dst = Path(onnx), Path(out)
    if not src.is_file():
        raise ModelError(f"{src}: ONNX model not found")
    logger = _trt_logger(trt)
    logger.errors.clear()
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # TensorRT raises plain RuntimeError/TypeError without a GPU
        msg = f"cannot start the TensorRT builder ({exc}); is a CUDA GPU visible?"
        raise ModelError(msg) from None
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(src)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ModelError(f"{src}: TensorRT cannot parse the ONNX model: {'; '.join(errors)}")
    config = builder.create_builder_config()
    if fp16:
        if not getattr(builder, "platform_has_fast_fp16", True):
            log.warning("this GPU has no fast fp16; building with fp16 allowed anyway")
        config.set_flag(trt.BuilderFlag.FP16)
    if workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    profile = builder.create_optimization_profile()
    dynamic = False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if shape and shape[0] == -1:
            dynamic = True
            profile.set_shape(tensor.name, *profile_shapes(shape, max_batch, opt_batch))
        elif any(d < 0 for d in shape):
            profile_shapes((-1, *shape[1:]), max_batch)  # raises: a non-batch dim is dynamic
    if dynamic:
        config.add_optimization_profile(profile)
    else:
        log.warning("%s has a fixed batch size; --max-batch %d is ignored", src, max_batch)
    cache_file = timing_cache_path(cache_dir)
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    log.info("building %s (%s, batch 1..%d) - this takes a while the first time", dst,
             "fp16" if fp16 else "fp32", max_batch)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        detail = "; ".join(logger.errors[-3:]) or "see the log"
        raise ModelError(f"{src}: TensorRT could not build an engine ({detail})")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    tmp.write_bytes(memoryview(serialized))
    tmp.replace(dst)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return dst


def cached_engine(onnx: Path, cfg: ModelConfig, max_batch: int = DEFAULT_MAX_BATCH) -> Path:
    """The engine for ``onnx`` in ``model.cache_dir``, built on first use."""
    trt = import_tensorrt()
    cudart = import_cudart()
    props = _check(cudart.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    device = f"{name}-sm{props.major}{props.minor}"
    folder = config_cache_dir(cfg)
    path = engine_cache_path(onnx.read_bytes(), folder, cfg.fp16, max_batch,
                             str(trt.__version__), device)
    if not path.is_file():
        build_engine(onnx, path, cfg.fp16, folder, max_batch)
    return path


# --------------------------------------------------------------------------- runtime


class _Buffer:
    """A pinned host array and a device allocation of the same size (bytes)."""

    def __init__(self, cudart: Any, count: int, dtype: np.dtype) -> None:
        self.nbytes = int(count) * dtype.itemsize
        self.device = _check(cudart.cudaMalloc(self.nbytes), "cudaMalloc")
        ptr = _check(cudart.cudaMallocHost(self.nbytes), "cudaMallocHost")
        ctype = np.ctypeslib.as_ctypes_type(dtype)
        self.host: np.ndarray = np.ctypeslib.as_array(
            ctypes.cast(ptr, ctypes.POINTER(ctype)), (int(count),))
        self._ptr = ptr

    @property
    def host_ptr(self) -> int:
        return int(self.host.ctypes.data)

    def free(self, cudart: Any) -> None:
        cudart.cudaFree(self.device)
        cudart.cudaFreeHost(self._ptr)


class TrtEngine:
    """A serialized TensorRT engine on the first CUDA device.

    Parameters
    ----------
    path
        ``.engine``/``.plan`` built by :func:`build_engine` (or ``trtexec``) with the same
        TensorRT version on the same GPU model.
    manifest
        Its manifest (input name and size, output names are checked against the engine).
    cuda_graph
        Capture and replay a CUDA graph once a batch size has run :data:`GRAPH_WARMUP` times.
    """

    name = "tensorrt"

    def __init__(self, path: str | Path, manifest: Manifest, cuda_graph: bool = True) -> None:
        trt = import_tensorrt()
        cudart = import_cudart()
        self._cudart = cudart
        self._path = Path(path)
        if not self._path.is_file():
            raise ModelError(f"{self._path}: engine file not found (model.path)")
        count = _check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount") or 0
        if count < 1:
            raise ModelError(f"{self._path}: a TensorRT engine needs a CUDA GPU; none is visible")
        logger = _trt_logger(trt)
        self._runtime = trt.Runtime(logger)
        self._engine = self._runtime.deserialize_cuda_engine(self._path.read_bytes())
        if self._engine is None:
            raise ModelError(
                f"{self._path}: TensorRT {trt.__version__} cannot load this engine (built by "
                "another TensorRT version or for another GPU?); rebuild it with "
                "`livepose model build-engine`"
            )
        eng = self._engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        is_in = {n: eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        shapes = {n: tuple(int(d) for d in eng.get_tensor_shape(n)) for n in names}
        in_shape = check_engine_io({n: s for n, s in shapes.items() if is_in[n]},
                                   {n: s for n, s in shapes.items() if not is_in[n]},
                                   manifest, self._path)
        self._in = manifest.input.name
        self._outs = manifest.output.tensor_names()
        self._dynamic = in_shape[0] == -1
        if self._dynamic:
            max_shape = tuple(eng.get_tensor_profile_shape(self._in, 0)[2])
            self._capacity = int(max_shape[0])
        else:
            max_shape, self._capacity = in_shape, int(in_shape[0])
        self._per_sample = tuple(int(d) for d in in_shape[1:])
        self.input_shape: tuple[int | str | None, ...] = (
            None if self._dynamic else self._capacity, *self._per_sample)
        self.provider = "TensorRT"
        self._context = eng.create_execution_context()
        if self._dynamic and not self._context.set_input_shape(self._in, max_shape):
            raise ModelError(f"{self._path}: cannot set input shape {list(max_shape)}")
        self._stream = _check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
                              "cudaStreamCreateWithFlags")
        self._handle = _handle(self._stream)
        self._closed = False
        self._buffers: dict[str, _Buffer] = {}
        for n in [self._in, *self._outs]:
            shape = max_shape if n == self._in else tuple(self._context.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise ModelError(f"{self._path}: output {n!r} has a data-dependent shape "
                                 f"{list(shape)}; not supported")
            dtype = np.dtype(trt.nptype(eng.get_tensor_dtype(n)))
            self._buffers[n] = _Buffer(cudart, int(np.prod(shape)), dtype)
        for n in names:  # every I/O tensor needs an address, even outputs the decoder ignores
            if n not in self._buffers:
                shape = tuple(self._context.get_tensor_shape(n))
                dtype = np.dtype(trt.nptype(eng.get_tensor_dtype(n)))
                self._buffers[n] = _Buffer(cudart, max(int(np.prod(shape)), 1), dtype)
            self._context.set_tensor_address(n, int(self._buffers[n].device))
        self._bound: int | None = None
        self._out_shapes: list[tuple[int, ...]] = []
        self._runs = 0
        self._use_graph = cuda_graph
        self._graph: Any = None
        log.info("model %s on TensorRT %s (%s, batch <= %d)", manifest.name, trt.__version__,
                 self._path.name, self._capacity)

    @classmethod
    def from_config(cls, path: Path, manifest: Manifest, cfg: ModelConfig) -> TrtEngine:
        """Build from the ``model`` section; an ``.onnx`` path is built into an engine in
        ``model.cache_dir`` first (batch capacity :data:`DEFAULT_MAX_BATCH`)."""
        if path.suffix.lower() == ".onnx":
            path = cached_engine(path, cfg)
        return cls(path, manifest)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run on ``batch`` ``(N, C, H, W)`` (or NHWC) float32.

        Returns
        -------
        list[numpy.ndarray]
            float32 outputs in ``manifest.output.tensor_names()`` order. Batches above the
            engine's capacity run in chunks; a fixed-batch engine pads the last chunk.
        """
        if tuple(batch.shape[1:]) != self._per_sample:
            raise ModelError(f"{self._path}: batch of shape {list(batch.shape)}; the engine "
                             f"takes {list(self._per_sample)} per view")
        return run_in_chunks(batch, self._capacity, not self._dynamic, self._run)

    def _bind(self, n: int) -> None:
        """Set the batch size ``n`` (dynamic engines) and the output shapes it gives."""
        if self._dynamic and not self._context.set_input_shape(self._in, (n, *self._per_sample)):
            raise ModelError(f"{self._path}: batch {n} is outside the engine's profile "
                             f"1..{self._capacity}")
        self._out_shapes = [tuple(int(d) for d in self._context.get_tensor_shape(o))
                            for o in self._outs]
        self._drop_graph()
        self._bound, self._runs = n, 0

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        cudart, stream = self._cudart, self._stream
        if x.shape[0] != self._bound:
            self._bind(x.shape[0])
        inp = self._buffers[self._in]
        np.copyto(inp.host[: x.size], x.reshape(-1), casting="same_kind")
        nbytes = x.size * inp.host.dtype.itemsize
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(cudart.cudaMemcpyAsync(inp.device, inp.host_ptr, nbytes, h2d, stream),
               "cudaMemcpyAsync H2D")
        if self._graph is not None:
            _check(cudart.cudaGraphLaunch(self._graph, stream), "cudaGraphLaunch")
        elif not self._context.execute_async_v3(self._handle):
            raise ModelError(f"{self._path}: TensorRT execution failed (see the log)")
        sizes = [int(np.prod(s)) for s in self._out_shapes]
        for name, size in zip(self._outs, sizes, strict=True):
            buf = self._buffers[name]
            _check(cudart.cudaMemcpyAsync(buf.host_ptr, buf.device,
                                          size * buf.host.dtype.itemsize, d2h, stream),
                   "cudaMemcpyAsync D2H")
        _check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        out = [self._buffers[name].host[:size].reshape(shape).astype(np.float32)  # copies
               for name, size, shape in zip(self._outs, sizes, self._out_shapes, strict=True)]
        self._runs += 1
        if self._use_graph and self._graph is None and self._runs >= GRAPH_WARMUP:
            self._capture()
        return out

    def _capture(self) -> None:
        """Capture ``execute_async_v3`` at the bound batch size into a CUDA graph."""
        cudart, stream = self._cudart, self._stream
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        graph = None
        try:
            _check(cudart.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
            ok = self._context.execute_async_v3(self._handle)
            graph = _check(cudart.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
            if not ok:
                raise ModelError("execute_async_v3 failed during capture")
            self._graph = _check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
            log.info("TensorRT: CUDA graph captured for batch %d", self._bound)
        except ModelError as exc:
            log.warning("TensorRT: CUDA graph capture failed (%s); running without", exc)
            self._use_graph = False
            self._graph = None
        finally:
            if graph is not None:
                cudart.cudaGraphDestroy(graph)

    def _drop_graph(self) -> None:
        if self._graph is not None:
            self._cudart.cudaGraphExecDestroy(self._graph)
            self._graph = None

    def close(self) -> None:
        """Free the CUDA graph, buffers and stream (also done when garbage-collected)."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self._drop_graph()
        for buf in self._buffers.values():
            buf.free(self._cudart)
        self._buffers.clear()
        self._cudart.cudaStreamDestroy(self._stream)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: CUDA may be gone
            self.close()
