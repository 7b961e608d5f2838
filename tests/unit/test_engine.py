"""Model manifest and ONNX Runtime engine, on tiny ONNX graphs built here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from livepose.config import ModelConfig
from livepose.errors import UserError
from livepose.inference.decode import decode_heatmaps
from livepose.inference.engine import ENGINES, OrtEngine, create_engine, select_providers
from livepose.inference.manifest import load_manifest, resolve_model
from livepose.inference.preprocess import Preprocessor

H, W, STRIDE, J = 32, 40, 4, 2
CPU = "CPUExecutionProvider"


def pool_model(path: Path, batch: int | str = "N", j: int = J, in_name: str = "image",
               out_name: str = "heatmaps", width: int = W) -> Path:
    """``image (B, 1, H, W)`` → AveragePool(stride) → J copies → ``heatmaps (B, J, h, w)``."""
    nodes = [
        helper.make_node("AveragePool", ["image_in"], ["pooled"], kernel_shape=[STRIDE, STRIDE],
                         strides=[STRIDE, STRIDE]),
        helper.make_node("Concat", ["pooled"] * j, [out_name], axis=1),
    ]
    nodes.insert(0, helper.make_node("Identity", [in_name], ["image_in"]))
    graph = helper.make_graph(
        nodes, "pool",
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, [batch, 1, H, width])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT,
                                       [batch, j, H // STRIDE, width // STRIDE])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def manifest_dict(**over: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "format": "livepose-model/1",
        "name": "test-pool",
        "file": "model.onnx",
        "input": {"name": "image", "layout": "NCHW", "width": W, "height": H, "channels": 1,
                  "color": "mono", "scale": 1 / 255, "mean": [0.0], "std": [1.0],
                  "resize": "none"},
        "output": {"name": "heatmaps", "type": "heatmap", "stride": STRIDE, "offset": 1.5,
                   "activation": "none"},
        "keypoints": ["snout", "tail"],
        "skeleton": [["snout", "tail"]],
        "training": {"epochs": 3, "anything": [1, 2]},
    }
    for key, val in over.items():
        if isinstance(val, dict) and isinstance(m.get(key), dict):
            m[key] = {**m[key], **val}
        else:
            m[key] = val
    return m


def model_dir(tmp_path: Path, **over: Any) -> Path:
    pool_model(tmp_path / "model.onnx")
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(manifest_dict(**over)))
    return tmp_path


def blob_image(cx: float, cy: float, sigma: float = 3.0) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    return (250 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))).astype(np.uint8)


# --------------------------------------------------------------------------- manifest


def test_manifest_loads_and_resolves(tmp_path: Path) -> None:
    d = model_dir(tmp_path)
    onnx_path, m = resolve_model(ModelConfig(path=str(d / "model.onnx")))
    assert onnx_path == d / "model.onnx" and m.name == "test-pool"
    assert m.output.cell_offset == 1.5 and m.input.channel_std() == [1.0]
    assert resolve_model(ModelConfig(path=str(d)))[0] == d / "model.onnx"  # a folder works too
    other = tmp_path / "elsewhere.yaml"
    other.write_text(yaml.safe_dump(manifest_dict(name="other")))
    cfg = ModelConfig(path=str(d / "model.onnx"), manifest=other)
    assert resolve_model(cfg)[1].name == "other"


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"output": {"type": "simcc"}}, r"output\.type: unknown output type 'simcc'"),
        ({"input": {"layout": "CHW"}}, r"input\.layout"),
        ({"input": {"std": [0.0]}}, "std"),
        ({"input": {"color": "rgb"}}, "channels: 3"),
        ({"bogus": 1}, "bogus: unknown field"),
        ({"format": "other/2"}, "format"),
        ({"skeleton": [["snout", "ear"]]}, "unknown keypoints"),
        ({"keypoints": ["a", "a"]}, "unique"),
    ],
)
def test_manifest_errors_name_file_and_field(tmp_path: Path, over: dict, match: str) -> None:
    d = model_dir(tmp_path, **over)
    with pytest.raises(UserError, match=match) as err:
        load_manifest(d / "manifest.yaml")
    assert "manifest.yaml" in str(err.value) and "\n" not in str(err.value)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"model file not found \(model.path\)"):
        resolve_model(ModelConfig(path=str(tmp_path / "nope.onnx")))
    pool_model(tmp_path / "model.onnx")
    with pytest.raises(UserError, match="manifest not found"):
        resolve_model(ModelConfig(path=str(tmp_path / "model.onnx")))
    (tmp_path / "manifest.yaml").write_text("input: [unclosed")
    with pytest.raises(UserError, match="not valid YAML"):
        resolve_model(ModelConfig(path=str(tmp_path / "model.onnx")))
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(manifest_dict(file="gone.onnx")))
    with pytest.raises(UserError, match=r"gone.onnx: model file not found \(manifest field"):
        resolve_model(ModelConfig(path=str(tmp_path)))


# --------------------------------------------------------------------------- engine


def test_outputs_correct_and_keypoints_recovered(tmp_path: Path) -> None:
    d = model_dir(tmp_path)
    path, m = resolve_model(ModelConfig(path=str(d / "model.onnx")))
    eng = OrtEngine(path, m)
    assert eng.provider == CPU and eng.name == "onnxruntime"
    assert eng.input_shape[1:] == (1, H, W) and not isinstance(eng.input_shape[0], int)
    centres = [(10.0, 9.0), (25.5, 20.5), (30.0, 12.0)]
    pre = Preprocessor(m.input, len(centres))
    batch = pre([blob_image(*c) for c in centres], ["Mono8"] * len(centres))
    out = eng.run(batch)
    expect = batch.reshape(3, 1, H // STRIDE, STRIDE, W // STRIDE, STRIDE).mean(axis=(3, 5))
    assert out.shape == (3, J, H // STRIDE, W // STRIDE)
    np.testing.assert_allclose(out[:, 0], expect[:, 0], atol=1e-6)
    np.testing.assert_allclose(out[:, 1], expect[:, 0], atol=1e-6)
    pts = decode_heatmaps(out, m.output.stride, m.output.cell_offset)
    for i, (cx, cy) in enumerate(centres):
        assert np.abs(pts[i, :, :2] - [cx, cy]).max() < 0.5


def test_fixed_batch_runs_in_chunks(tmp_path: Path) -> None:
    d = model_dir(tmp_path)
    pool_model(d / "model.onnx", batch=1)
    path, m = resolve_model(ModelConfig(path=str(d / "model.onnx")))
    eng = OrtEngine(path, m)
    x = np.random.default_rng(0).random((3, 1, H, W), dtype=np.float32)
    out = eng.run(x)
    assert out.shape == (3, J, H // STRIDE, W // STRIDE)
    np.testing.assert_allclose(out[2], eng.run(x[2:3])[0], atol=1e-7)


@pytest.mark.parametrize(
    ("model_kw", "over", "match"),
    [
        ({}, {"input": {"width": 48}}, r"input\.width is 48"),
        ({}, {"input": {"name": "img"}}, r"input\.name 'img'"),
        ({}, {"output": {"name": "hm"}}, r"output\.name 'hm'"),
        ({"j": 3}, {}, "lists 2 keypoints but output 'heatmaps' has 3"),
        ({}, {"output": {"stride": 8}}, "output.stride"),
        ({}, {"input": {"channels": 3, "color": "rgb"}}, r"input\.channels is 3"),
        ({}, {"input": {"layout": "NHWC"}}, r"input\.height is 32"),
    ],
)
def test_manifest_mismatch_names_field(tmp_path: Path, model_kw: dict, over: dict,
                                       match: str) -> None:
    d = model_dir(tmp_path, **over)
    pool_model(d / "model.onnx", **model_kw)
    path, m = resolve_model(ModelConfig(path=str(d / "model.onnx")))
    with pytest.raises(UserError, match=match):
        OrtEngine(path, m)


def test_corrupt_model_file(tmp_path: Path) -> None:
    d = model_dir(tmp_path)
    (d / "model.onnx").write_bytes(b"\x08\x07this is not a protobuf" * 10)
    path, m = resolve_model(ModelConfig(path=str(d / "model.onnx")))
    with pytest.raises(UserError, match="cannot load the ONNX model") as err:
        OrtEngine(path, m)
    assert "model.onnx" in str(err.value)


def test_missing_gpu_provider(tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    d = model_dir(tmp_path)
    path, m = resolve_model(ModelConfig(path=str(d / "model.onnx")))
    with pytest.raises(UserError, match=r"CUDAExecutionProvider is not available.*fallback"):
        OrtEngine(path, m, providers=["CUDAExecutionProvider"])
    eng = OrtEngine(path, m, providers=["CUDAExecutionProvider"], allow_cpu_fallback=True)
    assert eng.provider == CPU
    cfg = ModelConfig(path=str(path), providers="auto", intra_op_threads=1)
    assert create_engine("onnxruntime", path, m, cfg).provider == CPU


def test_select_providers() -> None:
    avail = ["CUDAExecutionProvider", CPU]
    assert select_providers("auto", avail) == ["CUDAExecutionProvider", CPU]
    assert select_providers("auto", [CPU]) == [CPU]
    assert select_providers(["CUDAExecutionProvider"], avail) == ["CUDAExecutionProvider"]
    assert select_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider"], avail,
                            allow_cpu_fallback=True) == ["CUDAExecutionProvider", CPU]
    with pytest.raises(UserError, match="unknown execution provider 'CUDA'"):
        select_providers(["CUDA"], avail)
    with pytest.raises(UserError, match="empty"):
        select_providers([], avail)


def test_engine_registry(tmp_path: Path) -> None:
    assert "onnxruntime" in ENGINES
    d = model_dir(tmp_path)
    path, m = resolve_model(ModelConfig(path=str(d / "model.onnx")))
    with pytest.raises(UserError, match="unknown inference engine 'tensorrt'"):
        create_engine("tensorrt", path, m, ModelConfig())
