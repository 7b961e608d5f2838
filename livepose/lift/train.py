"""Train a lifter with torch and export it to ONNX (needs the ``torch`` extra).

The network is LiftPose3D's (Günel et al. 2021, after Martinez et al. 2017): a linear layer
to ``width`` units, ``blocks`` residual blocks of two (linear, batch norm, ReLU, dropout)
layers, and a linear layer to ``3J`` root-relative coordinates. The inputs' and outputs'
standardisation (means and standard deviations of the training pairs) is part of the
exported graph, so ONNX Runtime takes :func:`livepose.fusion.lift.features` rows and returns
millimetres. The loss is over measured targets only: by default the absolute error, no
dropout and 30 epochs (LiftPose3D: squared error, dropout, fewer epochs; on the sim benchmark
those defaults took the held-out camera's error from 4.65 to 4.00 mm, docs/benchmarks.md).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from livepose.core.errors import UserError
from livepose.fusion.lift import MODEL
from livepose.lift.pairs import Pairs

OPSET = 17


@dataclass(frozen=True)
class TrainConfig:
    """Network size and optimisation."""

    width: int = 512
    blocks: int = 2
    dropout: float = 0.0
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay (0: Adam, LiftPose3D's)."""
    loss: str = "l1"
    """``l1`` (absolute error over standardised coordinates) or ``mse`` (LiftPose3D's)."""
    epochs: int = 30
    batch: int = 256
    lr: float = 1e-3
    seed: int = 0
    threads: int = 2


def _require_torch() -> Any:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise UserError("training a lifter needs torch: pip install 'livepose[torch]'")
    import torch

    return torch


def _net(torch: Any, n_in: int, n_out: int, cfg: TrainConfig, stats: dict[str, np.ndarray]) -> Any:
    nn = torch.nn

    class Block(nn.Module):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            w, p = cfg.width, cfg.dropout
            self.f = nn.Sequential(nn.Linear(w, w), nn.BatchNorm1d(w), nn.ReLU(), nn.Dropout(p),
                                   nn.Linear(w, w), nn.BatchNorm1d(w), nn.ReLU(), nn.Dropout(p))

        def forward(self, x: Any) -> Any:
            return x + self.f(x)

    class LiftNet(nn.Module):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            for k, v in stats.items():
                self.register_buffer(k, torch.from_numpy(v.astype(np.float32)))
            w = cfg.width
            self.inp = nn.Sequential(nn.Linear(n_in, w), nn.BatchNorm1d(w), nn.ReLU(),
                                     nn.Dropout(cfg.dropout))
            self.blocks = nn.Sequential(*[Block() for _ in range(cfg.blocks)])
            self.out = nn.Linear(w, n_out)

        def standardised(self, x: Any) -> Any:
            return self.out(self.blocks(self.inp((x - self.in_mean) / self.in_std)))

        def forward(self, x: Any) -> Any:
            return self.standardised(x) * self.out_std + self.out_mean

    return LiftNet()


@dataclass(slots=True)
class Trained:
    """A trained lifter: the torch module (eval mode) and its training record."""

    net: Any
    history: list[dict[str, float]]
    seconds: float


def fit(train: Pairs, cfg: TrainConfig, progress: Callable[[str], None] | None = None) -> Trained:
    """Train on ``train``; returns the network in eval mode."""
    torch = _require_torch()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    x, y, w = train.x, train.y, train.w
    wsum = np.maximum(w.sum(axis=0), 1.0)
    out_mean = (y * w).sum(axis=0) / wsum
    out_std = np.sqrt(((y - out_mean) ** 2 * w).sum(axis=0) / wsum)
    stats = {"in_mean": x.mean(axis=0), "in_std": np.maximum(x.std(axis=0), 1e-3),
             "out_mean": out_mean, "out_std": np.maximum(out_std, 1e-3)}
    net = _net(torch, x.shape[1], y.shape[1], cfg, stats)
    X, Y, W = (torch.from_numpy(a) for a in (x, y, w))
    Yn = (Y - net.out_mean) / net.out_std
    opt = (torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
           if cfg.weight_decay > 0 else torch.optim.Adam(net.parameters(), lr=cfg.lr))
    steps = cfg.epochs * max(1, len(train) // cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    history, t0, step = [], time.perf_counter(), 0
    net.train()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(train), generator=gen)
        total = 0.0
        for k in range(max(1, len(train) // cfg.batch)):
            b = perm[k * cfg.batch : (k + 1) * cfg.batch]
            d = net.standardised(X[b]) - Yn[b]
            d = (d.abs() if cfg.loss == "l1" else d**2) * W[b]
            loss = d.sum() / W[b].sum().clamp(min=1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step < steps - 1:
                sched.step()
            step += 1
            total += float(loss.detach())
        history.append({"epoch": epoch + 1, "loss": total / max(1, len(train) // cfg.batch)})
        if progress is not None:
            progress(f"epoch {epoch + 1}/{cfg.epochs}: loss {history[-1]['loss']:.4f}")
    net.eval()
    return Trained(net, history, time.perf_counter() - t0)


def predict(net: Any, x: np.ndarray) -> np.ndarray:
    """``(N, F)`` → ``(N, 3J)`` mm with the torch network (eval mode)."""
    torch = _require_torch()
    with torch.no_grad():
        return np.asarray(net(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy())


def export(net: Any, folder: Path, sample: np.ndarray) -> Path:
    """Write ``folder/lifter.onnx`` (dynamic batch) and check it against torch in ONNX
    Runtime on ``sample`` ``(N, F)`` training inputs (max |diff| ≤ 0.01 mm)."""
    import onnxruntime as ort

    torch = _require_torch()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MODEL
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(net, (torch.zeros(2, sample.shape[1]),), str(path), input_names=["features"],
                          output_names=["rel3d"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"features": {0: "batch"}, "rel3d": {0: "batch"}})
    x = np.ascontiguousarray(sample[:64], np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diff = float(np.abs(sess.run(None, {"features": x})[0] - predict(net, x)).max())
    if diff > 1e-2:
        raise UserError(f"lifter export: ONNX Runtime differs from torch by {diff:.3g} mm")
    return path


def errors_mm(pred: np.ndarray, pairs: Pairs) -> np.ndarray:
    """Per measured keypoint distance (mm) between ``(N, 3J)`` predictions and targets,
    root excluded (its target is 0 by construction)."""
    n = len(pairs)
    d = np.linalg.norm((pred - pairs.y).reshape(n, -1, 3), axis=2)
    m = pairs.w.reshape(n, -1, 3)[:, :, 0] > 0
    m &= np.abs(pairs.y.reshape(n, -1, 3)).sum(axis=2) > 0  # the root (zero offset)
    return d[m]
