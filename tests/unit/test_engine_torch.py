"""Torch engine on tiny scripted/exported nets whose outputs are known by construction.

The net average-pools the mono image by 4 (the heatmap of keypoint j is that times j + 1) and
returns a location-refinement map ``[hm, -hm]``; the expected values are computed here with
NumPy. Tests that need torch skip without it (torch is not in CI).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from livepose.core.config import ModelConfig
from livepose.inference.engine import ENGINES, create_engine, engine_name
from livepose.inference.engine_torch import select_outputs
from livepose.inference.manifest import ModelError, load_manifest, resolve_model

H, W, S, J = 32, 40, 4, 2


def manifest(**output: Any) -> dict[str, Any]:
    return {
        "format": "livepose-model/1", "name": "torch-pool", "file": "model.pt",
        "input": {"name": "image", "layout": "NCHW", "width": W, "height": H, "channels": 1,
                  "color": "mono"},
        "output": {"name": "heatmaps", "type": "heatmap", "stride": S, "locref": "locref",
                   **output},
        "keypoints": ["a", "b"],
    }


def expected(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pooled = x[:, 0].reshape(len(x), H // S, S, W // S, S).mean(axis=(2, 4))
    hm = np.stack([pooled * (j + 1) for j in range(J)], axis=1)
    return hm, np.concatenate([hm, -hm], axis=1)


@pytest.fixture
def torch() -> Any:
    return pytest.importorskip("torch")


def pool_net(torch: Any, kind: str) -> Any:
    class Pool(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pool = torch.nn.AvgPool2d(S)

        def forward(self, image: Any) -> Any:
            p = self.pool(image)
            hm = torch.cat([p * (j + 1) for j in range(J)], dim=1)
            lr = torch.cat([hm, -hm], dim=1)
            if kind == "dict":
                return {"unused": p, "locref": lr, "heatmaps": hm}
            if kind == "three":
                return hm, lr, p
            return hm, lr

    return Pool().eval()


def save(torch: Any, folder: Path, kind: str, fmt: str, batch: int | None = None) -> Path:
    net = pool_net(torch, kind)
    x = torch.zeros(2 if batch is None else batch, 1, H, W)
    if fmt == "pt2":
        dyn = None if batch else {"image": {0: torch.export.Dim("batch", min=1, max=64)}}
        path = folder / "model.pt2"
        torch.export.save(torch.export.export(net, (x,), dynamic_shapes=dyn), str(path))
    else:
        path = folder / "model.pt"
        torch.jit.trace(net, (x,), strict=False).save(str(path))
    (folder / "manifest.yaml").write_text(yaml.safe_dump({**manifest(), "file": path.name}))
    return path


def engine(path: Path, **cfg: Any) -> Any:
    mcfg = ModelConfig(path=str(path), **cfg)
    model, man = resolve_model(mcfg)
    assert model == path
    return create_engine(engine_name(mcfg, model), model, man, mcfg)


def test_torchscript_dict_outputs_by_name(torch: Any, tmp_path: Path) -> None:
    eng = engine(save(torch, tmp_path, "dict", "pt"), device="cpu")
    assert (eng.name, eng.provider, eng.input_shape) == ("torch", "cpu", (None, 1, H, W))
    x = np.random.default_rng(0).random((3, 1, H, W), dtype=np.float32)
    hm, lr = eng.run(x)
    want_hm, want_lr = expected(x)
    assert hm.dtype == np.float32 and hm.shape == (3, J, H // S, W // S)
    np.testing.assert_allclose(hm, want_hm, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(lr, want_lr, rtol=1e-6, atol=1e-6)


def test_exported_program_dynamic_batch(torch: Any, tmp_path: Path) -> None:
    eng = engine(save(torch, tmp_path, "tuple", "pt2"), device="auto", allow_cpu_fallback=True)
    assert eng.input_shape == (None, 1, H, W)
    x = np.random.default_rng(1).random((5, 1, H, W), dtype=np.float32)
    for got, want in zip(eng.run(x), expected(x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_exported_program_fixed_batch_runs_in_padded_chunks(torch: Any, tmp_path: Path) -> None:
    eng = engine(save(torch, tmp_path, "tuple", "pt2", batch=2), device="cpu")
    assert eng.input_shape == (2, 1, H, W)
    x = np.random.default_rng(2).random((3, 1, H, W), dtype=np.float32)
    hm, lr = eng.run(x)
    assert hm.shape[0] == 3
    np.testing.assert_allclose(hm, expected(x)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lr, expected(x)[1], rtol=1e-5, atol=1e-6)


def test_output_count_mismatch_is_named(torch: Any, tmp_path: Path) -> None:
    eng = engine(save(torch, tmp_path, "three", "pt"), device="cpu")
    with pytest.raises(ModelError, match=r"returns 3 outputs.*reads 2 \(heatmaps, locref\)"):
        eng.run(np.zeros((1, 1, H, W), np.float32))
    with pytest.raises(ModelError, match=r"batch of shape \[1, 1, 8, 8\]"):
        eng.run(np.zeros((1, 1, 8, 8), np.float32))


def test_cuda_requested_without_cuda(torch: Any, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    path = save(torch, tmp_path, "dict", "pt")
    with pytest.raises(ModelError, match=r"model.device: cuda.*allow_cpu_fallback"):
        engine(path, device="cuda")
    assert engine(path, device="cuda", allow_cpu_fallback=True).provider == "cpu"


def test_state_dict_is_not_a_torchscript_model(torch: Any, tmp_path: Path) -> None:
    torch.save({"model": pool_net(torch, "dict").state_dict()}, tmp_path / "model.pt")
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(manifest()))
    with pytest.raises(ModelError, match=r"not a TorchScript archive.*livepose model export"):
        engine(tmp_path / "model.pt", device="cpu")


def test_select_outputs_mapping() -> None:
    a, b = np.zeros(1), np.ones(1)
    assert select_outputs({"x": a, "y": b, "z": a}, ["y", "x"], "m") == [b, a]
    assert select_outputs((a, b), ["h", "l"], "m") == [a, b]
    assert select_outputs(a, ["h"], "m") == [a]
    with pytest.raises(ModelError, match=r"without 'l'.*keys: \['h'\]"):
        select_outputs({"h": a}, ["h", "l"], "m")
    with pytest.raises(ModelError, match=r"returns one tensor.*reads 2"):
        select_outputs(a, ["h", "l"], "m")


def test_missing_torch_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    (tmp_path / "model.pt").write_bytes(b"x")
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(manifest()))
    man = load_manifest(tmp_path / "manifest.yaml")
    with pytest.raises(ModelError, match=r"livepose\[torch\]"):
        ENGINES["torch"](tmp_path / "model.pt", man, ModelConfig(path=str(tmp_path)))


def test_resolve_model_accepts_engine_and_torch_files(tmp_path: Path) -> None:
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(manifest()))
    for name in ("model.pt", "model.pt2", "model.ts", "model.engine", "model.plan"):
        (tmp_path / name).write_bytes(b"x")
        assert resolve_model(ModelConfig(path=str(tmp_path / name)))[0] == tmp_path / name
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"model file \(\.onnx, \.engine"):
        resolve_model(ModelConfig(path=str(tmp_path / "model.bin")))
