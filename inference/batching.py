"""Running a batch of views on an engine whose batch size is bounded or fixed.

Every engine (ONNX Runtime, PyTorch, native TensorRT) shares this: a batch above the engine's
capacity runs in chunks, and an engine built for one fixed batch size gets its last chunk
zero-padded; the outputs are concatenated and cut back to the views asked for.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def chunks(n: int, capacity: int, fixed: bool) -> list[tuple[int, int, int]]:
    """Split a batch of ``n`` into runs ``(start, stop, run_batch)``: at most ``capacity``
    each; a fixed-batch engine always runs ``capacity`` (the tail zero-padded)."""
    out = []
    for s in range(0, n, capacity):
        stop = min(s + capacity, n)
        out.append((s, stop, capacity if fixed else stop - s))
    return out


def run_in_chunks(batch: np.ndarray, capacity: int, fixed: bool,
                  run: Callable[[np.ndarray], list[np.ndarray]]) -> list[np.ndarray]:
    """``run`` over ``batch`` ``(N, …)`` in chunks (see :func:`chunks`).

    Returns
    -------
    list[numpy.ndarray]
        ``run``'s outputs for the ``N`` views, in ``run``'s order (padding removed).
    """
    n = batch.shape[0]
    parts = []
    for start, stop, size in chunks(n, capacity, fixed):
        x = batch[start:stop]
        if size > x.shape[0]:
            x = np.concatenate([x, np.zeros((size - x.shape[0], *x.shape[1:]), x.dtype)])
        parts.append(run(x))
    if len(parts) == 1:
        return [p[:n] for p in parts[0]]
    return [np.concatenate([p[k] for p in parts])[:n] for k in range(len(parts[0]))]
