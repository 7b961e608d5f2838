"""Model manifest and ONNX Runtime engine, on tiny ONNX graphs built here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from livepose.core.config import ModelConfig
from livepose.core.errors import UserError
from livepose.inference.decode import decode_outputs
from livepose.inference.engine import (
    ENGINES,
    OrtEngine,
    check_output,
    create_engine,
    select_providers,
)
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
        ({"output": {"type": "centroid"}},
         r"output\.type: unknown output type 'centroid'; supported: heatmap, simcc, regression"),
        ({"output": {"type": "simcc"}}, r"output\.stride does not apply to output\.type 'simcc'"),
        ({"output": {"type": "simcc", "stride": None, "offset": None}},
         r"output\.name_y .* is required"),
        ({"output": {"stride": None}}, r"output\.stride is required"),
        ({"output": {"locref_std": 7.0}}, r"output\.locref_std needs output\.locref"),
        ({"output": {"locref": "heatmaps"}}, "tensor names must differ"),
        ({"output": {"coords": "pixels"}}, r"output\.coords does not apply"),
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
    outs = eng.run(batch)
    assert isinstance(outs, list) and len(outs) == 1
    out = outs[0]
    expect = batch.reshape(3, 1, H // STRIDE, STRIDE, W // STRIDE, STRIDE).mean(axis=(3, 5))
    assert out.shape == (3, J, H // STRIDE, W // STRIDE)
    np.testing.assert_allclose(out[:, 0], expect[:, 0], atol=1e-6)
    np.testing.assert_allclose(out[:, 1], expect[:, 0], atol=1e-6)
    pts = decode_outputs(outs, m)
    for i, (cx, cy) in enumerate(centres):
        assert np.abs(pts[i, :, :2] - [cx, cy]).max() < 0.5


def test_fixed_batch_runs_in_chunks(tmp_path: Path) -> None:
    d = model_dir(tmp_path)
    pool_model(d / "model.onnx", batch=1)
    path, m = resolve_model(ModelConfig(path=str(d / "model.onnx")))
    eng = OrtEngine(path, m)
    x = np.random.default_rng(0).random((3, 1, H, W), dtype=np.float32)
    (out,) = eng.run(x)
    assert out.shape == (3, J, H // STRIDE, W // STRIDE)
    np.testing.assert_allclose(out[2], eng.run(x[2:3])[0][0], atol=1e-7)
    expect = x.reshape(3, 1, H // STRIDE, STRIDE, W // STRIDE, STRIDE).mean(axis=(3, 5))
    np.testing.assert_allclose(out[:, 1], expect[:, 0], atol=1e-6)


@pytest.mark.parametrize(
    ("model_kw", "over", "match"),
    [
        ({}, {"input": {"width": 48}}, r"input\.width is 48"),
        ({}, {"input": {"name": "img"}}, r"input\.name 'img'"),
        ({}, {"output": {"name": "hm"}}, r"output\.name 'hm'"),
        ({"j": 3}, {}, r"lists 2 keypoints but output 'heatmaps' \(shape \['N', 3, 8, 10\]\) "
         "has 3 channels"),
        ({}, {"output": {"locref": "lr"}}, r"output\.locref 'lr' is not an output.*heatmaps \["),
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
    with pytest.raises(UserError, match="unknown inference engine 'openvino'; known: "):
        create_engine("openvino", path, m, ModelConfig())


# --------------------------------------------------------------------------- other decoders
# Graphs that flatten the (N, 1, 16, 24) input and reshape consecutive slices of it into the
# outputs; declared output shapes may differ from the actual ones (dynamic dimensions).

SH, SW = 16, 24


def slice_model(path: Path, parts: dict[str, list[int]],
                declared: dict[str, list[Any]] | None = None) -> Path:
    """``image (N, 1, SH, SW)`` → output ``name`` = next ``prod(shape)`` values as
    ``(N, *shape)``."""
    def i64(name: str, vals: list[int]) -> Any:
        return helper.make_tensor(name, TensorProto.INT64, [len(vals)], vals)

    nodes = [helper.make_node("Reshape", ["image", "flat_shape"], ["flat"])]
    inits = [i64("flat_shape", [0, -1]), i64("axes", [1])]
    start = 0
    for name, shape in parts.items():
        size = int(np.prod(shape))
        inits += [i64(f"{name}_s", [start]), i64(f"{name}_e", [start + size]),
                  i64(f"{name}_shape", [0, *shape])]
        nodes += [helper.make_node("Slice", ["flat", f"{name}_s", f"{name}_e", "axes"],
                                   [f"{name}_flat"]),
                  helper.make_node("Reshape", [f"{name}_flat", f"{name}_shape"], [name])]
        start += size
    assert start <= SH * SW
    declared = declared or {k: ["N", *v] for k, v in parts.items()}
    graph = helper.make_graph(
        nodes, "slices",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, SH, SW])],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in declared.items()],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def slice_dir(tmp_path: Path, parts: dict[str, list[int]], output: dict[str, Any], j: int,
              declared: dict[str, list[Any]] | None = None) -> tuple[Path, Any]:
    slice_model(tmp_path / "model.onnx", parts, declared)
    m = manifest_dict(keypoints=[f"k{i}" for i in range(j)], skeleton=[],
                      input={"width": SW, "height": SH})
    m["output"] = output
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(m))
    return resolve_model(ModelConfig(path=str(tmp_path)))


SIMCC = {"name": "sx", "name_y": "sy", "type": "simcc"}


@pytest.mark.parametrize(
    ("parts", "output", "j", "match"),
    [
        ({"sx": [3, 48], "sy": [3, 32]}, {**SIMCC, "split_ratio": 3},  3,
         r"output\.name: output 'sx' \(shape \['N', 3, 48\]\) has 48 bins but input\.width 24 "
         r"× output\.split_ratio 3 = 72"),
        ({"sx": [3, 48], "sy": [3, 30]}, SIMCC, 3,
         r"output\.name_y: output 'sy' \(shape \['N', 3, 30\]\) has 30 bins but input\.height "
         r"16 × output\.split_ratio 2 = 32"),
        ({"sx": [3, 48], "sy": [3, 32]}, {**SIMCC, "name_y": "simcc_y"}, 3,
         r"output\.name_y 'simcc_y' is not an output of the model \(outputs: sx \['N', 3, 48\], "
         r"sy \['N', 3, 32\]\)"),
        ({"sx": [3, 48], "sy": [3, 32]}, SIMCC, 2,
         r"lists 2 keypoints but output 'sx' \(shape \['N', 3, 48\]\) has 3 rows"),
        ({"sx": [3, 48, 1], "sy": [3, 32]}, SIMCC, 3, r"output\.name: .*simcc needs \(N, J, bins\)"),
        ({"kp": [5, 4]}, {"name": "kp", "type": "regression"}, 5,
         r"regression needs \(N, J, 2\) or \(N, J, 3\).*\['N', 5, 4\]"),
        ({"kp": [5, 2]}, {"name": "kp", "type": "regression"}, 4,
         r"lists 4 keypoints but output 'kp' \(shape \['N', 5, 2\]\) has 5 rows"),
        ({"hm": [2, 4, 6], "lr": [2, 4, 6]}, {"name": "hm", "type": "heatmap", "stride": 4,
                                              "locref": "lr"}, 2,
         r"output\.locref: output 'lr' \(shape \['N', 2, 4, 6\]\) must be \(N, 2J, h, w\) = "
         r"\(N, 4, h, w\)"),
        ({"hm": [2, 4, 6], "lr": [4, 4, 5]}, {"name": "hm", "type": "heatmap", "stride": 4,
                                              "locref": "lr"}, 2,
         r"output\.locref: output 'lr' \(shape \['N', 4, 4, 5\]\) width 5 differs from output "
         r"'hm'"),
    ],
)
def test_decoder_outputs_checked_at_start(tmp_path: Path, parts: dict, output: dict, j: int,
                                          match: str) -> None:
    path, m = slice_dir(tmp_path, parts, output, j)
    with pytest.raises(UserError, match=match) as err:
        OrtEngine(path, m)
    assert "model.onnx" in str(err.value) and "\n" not in str(err.value)


def test_good_decoder_outputs_accepted(tmp_path: Path) -> None:
    path, m = slice_dir(tmp_path, {"sx": [3, 48], "sy": [3, 32]}, SIMCC, 3)
    outs = OrtEngine(path, m).run(np.zeros((2, 1, SH, SW), np.float32))
    assert [o.shape for o in outs] == [(2, 3, 48), (2, 3, 32)]
    check_output(outs, m, 2)


def test_check_output_actual_shapes(tmp_path: Path) -> None:
    """Outputs whose shapes a graph leaves dynamic are checked on the first (warm-up) batch."""
    _, m = slice_dir(tmp_path, {"sx": [3, 48], "sy": [3, 32]}, SIMCC, 3)
    outs = [np.zeros((2, 3, 40), np.float32), np.zeros((2, 3, 32), np.float32)]
    with pytest.raises(UserError, match=r"output 'sx' \(shape \[2, 3, 40\]\) has 40 bins but "
                       r"input\.width 24 × output\.split_ratio 2 = 48 for a batch of 2"):
        check_output(outs, m, 2)
    outs[0] = np.zeros((2, 3, 48), np.float32)
    check_output(outs, m, 2)
    with pytest.raises(UserError, match=r"output 'sx' has shape \[2, 3, 48\] for a batch of 3"):
        check_output(outs, m, 3)
    with pytest.raises(UserError, match=r"returned 1 outputs; output.type simcc reads 2"):
        check_output(outs[:1], m, 2)


def test_random_bytes_model_file(tmp_path: Path) -> None:
    d = model_dir(tmp_path)
    (d / "model.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    path, m = resolve_model(ModelConfig(path=str(d)))
    with pytest.raises(UserError, match=r"model\.onnx: cannot load the ONNX model \(") as err:
        OrtEngine(path, m)
    assert "\n" not in str(err.value)


def test_heatmap_size_allows_unpadded_deconvolutions() -> None:
    """DeepLabCut's heads turn n cells into 2n + 1: 256×320 at stride 8 gives 35×43, not
    32×40. A few cells more than size / stride are accepted; fewer, or many more, are not."""
    from livepose.inference.manifest import Manifest

    m = Manifest.model_validate({
        "format": "livepose-model/1", "name": "dlc-like", "keypoints": ["a", "b"],
        "input": {"name": "image", "width": 320, "height": 256, "channels": 3, "color": "rgb"},
        "output": {"name": "hm", "type": "heatmap", "stride": 8, "offset": 4},
    })
    check_output([np.zeros((1, 2, 35, 43), np.float32)], m, 1)
    check_output([np.zeros((1, 2, 32, 40), np.float32)], m, 1)
    for h, w in ((31, 40), (32, 45), (40, 40)):
        with pytest.raises(UserError, match="does not match input"):
            check_output([np.zeros((1, 2, h, w), np.float32)], m, 1)
