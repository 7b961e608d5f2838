"""PyTorch engine: TorchScript (``.pt``/``.ts``) and ``torch.export`` programs (``.pt2``).

``torch`` is imported only when a model is loaded (the ``torch`` extra). The network's outputs
are mapped to the manifest's :meth:`~livepose.inference.manifest.OutputSpec.tensor_names`
(``[heatmaps]``, ``[heatmaps, locref]``, ``[x, y]`` …) by :func:`select_outputs`:

* a **dict** is read by key: every name must be a key (other keys are ignored);
* a **tuple/list** is read by position, in ``tensor_names`` order, and must have exactly that
  many entries;
* a single **tensor** is accepted when the decoder reads one output.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from livepose.core.config import ModelConfig
from livepose.inference.batching import run_in_chunks
from livepose.inference.manifest import Manifest, ModelError

log = logging.getLogger(__name__)

TORCH_HINT = "install the torch extra: pip install 'livepose[torch]'"
TORCHSCRIPT_SUFFIXES = (".pt", ".ts")
EXPORTED_SUFFIXES = (".pt2",)


def import_torch() -> Any:
    """``torch``, or a :class:`ModelError` naming the extra to install."""
    try:
        import torch
    except ImportError:
        msg = f"the torch engine needs PyTorch, which is not installed; {TORCH_HINT}"
        raise ModelError(msg) from None
    return torch


def select_outputs(out: Any, names: Sequence[str], source: str) -> list[Any]:
    """The network output(s) ``out`` in the order of ``names`` (see the module docstring).

    Raises
    ------
    ModelError
        A name is not a key of a dict output, a tuple has the wrong length, or one tensor
        came back where several outputs are read.
    """
    if isinstance(out, Mapping):
        missing = [n for n in names if n not in out]
        if missing:
            raise ModelError(
                f"{source}: the model returns a dict without {missing[0]!r} (manifest output "
                f"names {list(names)}; dict keys: {sorted(map(str, out))})"
            )
        return [out[n] for n in names]
    if isinstance(out, list | tuple):
        if len(out) != len(names):
            raise ModelError(
                f"{source}: the model returns {len(out)} outputs; the manifest's decoder reads "
                f"{len(names)} ({', '.join(names)}), matched by position"
            )
        return list(out)
    if len(names) != 1:
        raise ModelError(
            f"{source}: the model returns one tensor; the manifest's decoder reads "
            f"{len(names)} ({', '.join(names)}): return a tuple in that order or a dict by name"
        )
    return [out]


def pick_device(torch: Any, device: str, allow_cpu_fallback: bool) -> Any:
    """``model.device`` → a ``torch.device`` (``auto``: CUDA when present, else CPU).

    Raises
    ------
    ModelError
        ``cuda`` requested, none available, and CPU fallback not allowed.
    """
    has_cuda = bool(torch.cuda.is_available())
    if device == "cpu" or (device == "auto" and not has_cuda):
        return torch.device("cpu")
    if has_cuda:
        return torch.device("cuda", torch.cuda.current_device())
    if allow_cpu_fallback:
        log.warning("model.device: cuda requested but not available; running on CPU")
        return torch.device("cpu")
    build = torch.version.cuda or "none (a CPU-only build)"
    raise ModelError(
        f"model.device: cuda requested but torch {torch.__version__} sees no CUDA device "
        f"(CUDA build: {build}); install a CUDA build of torch or set "
        "model.allow_cpu_fallback: true"
    )


def load_module(torch: Any, path: Path, device: Any) -> tuple[Any, int | None]:
    """Load a TorchScript archive or an exported program onto ``device``.

    Returns
    -------
    tuple
        The callable module and its fixed batch size (``None`` when the batch is dynamic or
        unknown, as for TorchScript).
    """
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ModelError(f"{path}: model file not found (model.path)")
    if suffix in EXPORTED_SUFFIXES:
        try:
            program = torch.export.load(str(path))
        except Exception as exc:  # torch raises RuntimeError/ValueError/… for a bad archive
            raise ModelError(f"{path}: not a torch.export program ({_first_line(exc)})") from None
        module = program.module().to(device)  # exported modules are already in eval mode
        return module, _exported_batch(program)
    if suffix not in TORCHSCRIPT_SUFFIXES:
        raise ModelError(
            f"{path}: the torch engine reads TorchScript ({', '.join(TORCHSCRIPT_SUFFIXES)}) "
            f"or torch.export programs ({', '.join(EXPORTED_SUFFIXES)})"
        )
    try:
        with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript; it still runs
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # a state dict / pickled module / checkpoint is not an archive
        raise ModelError(
            f"{path}: not a TorchScript archive ({_first_line(exc)}); a checkpoint or state dict "
            "cannot be run directly: save the model with torch.jit.script/trace(...).save(), or "
            "convert it with `livepose model export` (docs/inference.md)"
        ) from None
    module.eval()
    return module, None


def _exported_batch(program: Any) -> int | None:
    """The fixed batch size of an exported program's first user input, ``None`` if dynamic."""
    names = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in names:
            val = node.meta.get("val")
            dim = None if val is None or not len(val.shape) else val.shape[0]
            return dim if isinstance(dim, int) else None
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


class TorchEngine:
    """A TorchScript or ``torch.export`` model on CPU or one CUDA device.

    Parameters
    ----------
    path
        ``.pt``/``.ts`` (TorchScript) or ``.pt2`` (``torch.export.save``).
    manifest
        Its manifest: input name/size/layout and the output names to return.
    device
        ``auto``, ``cpu`` or ``cuda`` (``model.device``).
    allow_cpu_fallback
        Run on CPU when CUDA is requested but missing.
    threads
        CPU threads for torch (0: torch's default). Applied process-wide.
    """

    name = "torch"

    def __init__(
        self,
        path: str | Path,
        manifest: Manifest,
        device: str = "auto",
        allow_cpu_fallback: bool = False,
        threads: int = 0,
    ) -> None:
        torch = import_torch()
        self._torch = torch
        self._path = Path(path)
        self._device = pick_device(torch, device, allow_cpu_fallback)
        if threads > 0 and self._device.type == "cpu":
            torch.set_num_threads(threads)
        if self._device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
        self._module, self._batch = load_module(torch, self._path, self._device)
        spec = manifest.input
        per_sample: tuple[int, ...] = (
            (spec.channels, spec.height, spec.width) if spec.layout == "NCHW"
            else (spec.height, spec.width, spec.channels)
        )
        self.input_shape: tuple[int | str | None, ...] = (self._batch, *per_sample)
        self.provider: str = str(self._device)
        self._per_sample = per_sample
        self._names = manifest.output.tensor_names()
        self._host: Any = None  # pinned staging buffer (CUDA only), sized on first use
        self._dev_in: Any = None
        log.info("model %s on torch %s (%s)", manifest.name, self.provider, self._path.name)

    @classmethod
    def from_config(cls, path: Path, manifest: Manifest, cfg: ModelConfig) -> TorchEngine:
        """Build from the ``model`` section of the config."""
        return cls(path, manifest, cfg.device, cfg.allow_cpu_fallback, cfg.intra_op_threads)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run on ``batch`` ``(N, C, H, W)`` (or NHWC) float32.

        Returns
        -------
        list[numpy.ndarray]
            float32 outputs in ``manifest.output.tensor_names()`` order. A program exported
            with a fixed batch ``B`` runs in chunks of ``B`` (the last one zero-padded).
        """
        if tuple(batch.shape[1:]) != self._per_sample:
            raise ModelError(
                f"{self._path}: batch of shape {list(batch.shape)}; the manifest input is "
                f"{list(self._per_sample)} per view"
            )
        b = self._batch
        if b is None or batch.shape[0] == b:
            return self._run(batch)
        return run_in_chunks(batch, b, True, self._run)

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        torch = self._torch
        x = np.ascontiguousarray(batch, dtype=np.float32)
        with torch.inference_mode():
            if self._device.type == "cuda":
                if self._host is None or tuple(self._host.shape) != x.shape:
                    self._host = torch.empty(x.shape, dtype=torch.float32, pin_memory=True)
                    self._dev_in = torch.empty(x.shape, dtype=torch.float32, device=self._device)
                self._host.numpy()[...] = x
                self._dev_in.copy_(self._host, non_blocking=True)
                inp = self._dev_in
            else:
                inp = torch.from_numpy(x)
            out = select_outputs(self._module(inp), self._names, str(self._path))
            # .cpu() waits for the stream, so the staging buffer is free for the next call
            return [np.ascontiguousarray(t.detach().float().cpu().numpy()) for t in out]
