"""ONNX Runtime execution-provider options: TensorRT and CUDA.

:func:`provider_options` turns the chosen provider names into the ``providers`` argument of
``onnxruntime.InferenceSession``, with options from the ``model`` config (fp16, cache folder).
Option names are those of ONNX Runtime ≥ 1.18 (``tensorrt_execution_provider_info.cc``,
``cuda_execution_provider_info.cc``). Nothing here imports ``onnxruntime``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from livepose.core.config import ModelConfig

TRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"

ProviderSpec = str | tuple[str, dict[str, str]]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/livepose/trt`` (``~/.cache/livepose/trt``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "livepose" / "trt"


def cache_dir(cfg: ModelConfig) -> Path:
    """``model.cache_dir`` or :func:`default_cache_dir`."""
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir is not None else default_cache_dir()


def profile_option(name: str, dims: Sequence[int], batch: int) -> str:
    """ONNX Runtime's shape-profile syntax: ``image:4x3x256x320``."""
    return f"{name}:" + "x".join(str(d) for d in (batch, *dims))


def _flag(on: bool) -> str:
    return "True" if on else "False"  # what ONNX Runtime's Python API makes of a bool


def provider_options(
    providers: Sequence[str],
    cfg: ModelConfig,
    *,
    input_name: str | None = None,
    input_dims: Sequence[int] | None = None,
    max_batch: int | None = None,
    device_id: int = 0,
    make_dirs: bool = True,
) -> list[ProviderSpec]:
    """Provider names (best first, as chosen by ``select_providers``) with their options.

    Parameters
    ----------
    providers
        Execution-provider names.
    cfg
        The ``model`` section: ``fp16`` and ``cache_dir`` configure TensorRT.
    input_name, input_dims, max_batch
        When all are given, TensorRT gets an explicit optimisation profile for batches
        ``1..max_batch`` of ``input_dims`` (the per-view shape, e.g. ``(3, 256, 320)``), so
        it builds one engine for every batch size instead of one per shape seen.
    device_id
        CUDA device index.
    make_dirs
        Create the TensorRT cache folder (ONNX Runtime does not).

    Returns
    -------
    list
        ``"CPUExecutionProvider"`` and other names as they are; ``(name, options)`` for the
        TensorRT and CUDA providers (option values as strings).
    """
    out: list[ProviderSpec] = []
    for name in providers:
        if name == TRT_EP:
            out.append((name, tensorrt_options(cfg, input_name, input_dims, max_batch,
                                               device_id, make_dirs)))
        elif name == CUDA_EP:
            out.append((name, cuda_options(device_id)))
        else:
            out.append(name)
    return out


def tensorrt_options(
    cfg: ModelConfig,
    input_name: str | None = None,
    input_dims: Sequence[int] | None = None,
    max_batch: int | None = None,
    device_id: int = 0,
    make_dirs: bool = True,
) -> dict[str, str]:
    """TensorRT EP options: fp16, engine and timing caches under ``cache_dir/ort``, and a
    batch profile when the input is known (see :func:`provider_options`)."""
    folder = cache_dir(cfg) / "ort"
    if make_dirs:
        folder.mkdir(parents=True, exist_ok=True)
    opts = {
        "device_id": str(device_id),
        "trt_fp16_enable": _flag(cfg.fp16),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(folder),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(folder),
    }
    if input_name is not None and input_dims is not None and max_batch is not None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        opts["trt_profile_min_shapes"] = profile_option(input_name, input_dims, 1)
        opts["trt_profile_opt_shapes"] = profile_option(input_name, input_dims, max_batch)
        opts["trt_profile_max_shapes"] = profile_option(input_name, input_dims, max_batch)
    return opts


def cuda_options(device_id: int = 0) -> dict[str, str]:
    """CUDA EP options for fixed-shape, real-time inference: exhaustive cuDNN algorithm search
    (paid once, during the worker's warm-up), copies in the default stream, cuDNN allowed its
    maximum workspace."""
    return {
        "device_id": str(device_id),
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "do_copy_in_default_stream": "1",
        "cudnn_conv_use_max_workspace": "1",
    }
