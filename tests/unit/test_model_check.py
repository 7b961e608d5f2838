"""``livepose model check`` (inference/check.py and the CLI command)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper
from typer.testing import CliRunner

from livepose.cli.app import app
from livepose.core.config import ModelConfig
from livepose.core.errors import UserError
from livepose.inference.check import DUMMY_VIEWS, check_model
from livepose.inference.manifest import default_model_dir

H, W, STRIDE = 32, 40, 4


def pool_dir(tmp_path: Path, **output: Any) -> Path:
    """``image (N, 1, H, W)`` → AveragePool(4) → 2 copies → ``heatmaps (N, 2, 8, 10)``: a
    bright blob in the image is both keypoints' peak."""
    graph = helper.make_graph(
        [helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[STRIDE, STRIDE],
                          strides=[STRIDE, STRIDE]),
         helper.make_node("Concat", ["pooled", "pooled"], ["heatmaps"], axis=1)],
        "pool", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, H, W])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT,
                                       ["N", 2, H // STRIDE, W // STRIDE])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "model.onnx"))
    manifest = {
        "format": "livepose-model/1", "name": "pool", "keypoints": ["snout", "tail"],
        "input": {"name": "image", "width": W, "height": H, "channels": 1, "color": "mono"},
        "output": {"name": "heatmaps", "type": "heatmap", "stride": STRIDE, "offset": 1.5,
                   **output},
    }
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    return tmp_path


def blob(cx: float, cy: float) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    return (250 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 18.0)).astype(np.uint8)


def test_check_reports_shapes_keypoints_and_error(tmp_path: Path) -> None:
    cfg = ModelConfig(path=str(pool_dir(tmp_path)))
    rng = np.random.default_rng(0)
    centres = np.stack([rng.uniform(6, W - 7, (2, 3)), rng.uniform(6, H - 7, (2, 3))], -1)
    sets = [[blob(*centres[f, c]) for c in range(3)] for f in range(2)]
    # truth rows named in another order, with one the model does not have
    truth = np.stack([centres, np.full_like(centres, -100.0), centres], axis=2)  # (F, C, 3, 2)
    names = ["tail", "ear", "snout"]
    r = check_model(cfg, sets, "Mono8", truth, names, repeats=5)
    assert r["provider"] == "CPUExecutionProvider" and r["engine"] == "onnxruntime"
    assert r["input"]["name"] == "image" and r["input"]["shape"] == ["N", 1, H, W]
    assert r["outputs"] == [{"name": "heatmaps", "shape": [3, 2, H // STRIDE, W // STRIDE]}]
    assert r["views"] == 3 and r["frames"] == 2 and r["repeats"] == 5
    first = r["first_frame"]
    assert [k["keypoint"] for k in first] == ["snout", "tail"]
    for k in first:
        assert abs(k["x"] - centres[0, 0, 0]) < 0.5 and abs(k["y"] - centres[0, 0, 1]) < 0.5
    assert set(r["timing_ms"]) == {"preprocess", "run", "decode", "total"}
    assert all(v > 0 for v in r["timing_ms"].values())
    e = r["error"]
    assert e["points"] == 2 * 3 * 2 and e["missing"] == 0
    assert e["median_px"] < 0.5 and set(e["per_keypoint_median_px"]) == {"snout", "tail"}
    # truth moved by (3, 4): the error is 5 px
    moved = check_model(cfg, sets, "Mono8", truth + np.array([3.0, 4.0]), names, repeats=1)["error"]
    assert abs(moved["median_px"] - 5.0) < 0.5
    assert check_model(cfg, sets, "Mono8", truth, ["a", "b", "c"], repeats=1)["error"] is None


def test_check_dummy_batch_and_bad_frames(tmp_path: Path) -> None:
    cfg = ModelConfig(path=str(pool_dir(tmp_path)))
    r = check_model(cfg, repeats=3)
    assert r["frames"] == 0 and r["views"] == DUMMY_VIEWS and r["error"] is None
    assert r["outputs"][0]["shape"][0] == DUMMY_VIEWS
    with pytest.raises(UserError, match=r"frame-set 0 view 1: frame is 20×10"):
        check_model(cfg, [[blob(5, 5), np.zeros((10, 20), np.uint8)]])
    with pytest.raises(UserError, match=r"truth must be \(F, C, J, 2\)"):
        check_model(cfg, [[blob(5, 5)]], truth=np.zeros((2, 1, 2, 2)), truth_keypoints=["a"])


def test_check_bad_manifest_and_graph(tmp_path: Path) -> None:
    d = pool_dir(tmp_path, locref="lr")
    with pytest.raises(UserError, match=r"output\.locref 'lr' is not an output of the model"):
        check_model(ModelConfig(path=str(d)))


# --------------------------------------------------------------------------- CLI


def _run(*args: str) -> Any:
    return CliRunner().invoke(app, ["model", "check", *args])


def test_cli_default_model_on_sim_frames() -> None:
    if not (default_model_dir() / "model.onnx").is_file():
        pytest.skip("the bundled default model is not installed")
    r = _run("default", "--frames", "2")
    assert r.exit_code == 0, r.output
    out = r.output
    assert "sim-rodent-heatmap-v1" in out and "CPUExecutionProvider" in out
    assert "heatmaps [4, 14, 64, 80]" in out  # 4 sim cameras, 14 keypoints, stride 4
    assert "snout" in out and "right_hindpaw" in out
    assert re.search(r"preprocess [\d.]+ ms, run [\d.]+ ms, decode [\d.]+ ms", out)
    m = re.search(r"2D error vs sim truth over 112 points \(0 missing\): median ([\d.]+) px", out)
    assert m, out
    # the default model's held-out median is ~0.8 px: a wrong keypoint order, scale or
    # coordinate convention would be tens of pixels off
    assert float(m.group(1)) < 2.0


def test_cli_no_sim_uses_dummy_batch(tmp_path: Path) -> None:
    r = _run(str(pool_dir(tmp_path)))  # 40×32 input: not the sim size, so no sim by default
    assert r.exit_code == 0, r.output
    assert "mid-grey dummy batch" in r.output and "2D error" not in r.output
    assert "heatmaps [4, 2, 8, 10]" in r.output


def test_cli_model_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    d = pool_dir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"format": "livepose-model/1", "name": "x",
                                   "input": {"name": "image", "width": W, "height": H,
                                             "channels": 1, "color": "mono"},
                                   "output": {"name": "heatmaps", "type": "blob"},
                                   "keypoints": ["a"]}))
    r = _run(str(d / "model.onnx"), "--manifest", str(bad))
    assert r.exit_code == 2
    assert re.fullmatch(r"error: .*bad\.yaml: output\.type: unknown output type 'blob'; "
                        r"supported: heatmap, simcc, regression\n", r.output)
    (d / "model.onnx").write_bytes(np.random.default_rng(1).bytes(2048))
    r = _run(str(d))
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert "model.onnx: cannot load the ONNX model" in r.output
    r = _run(str(tmp_path / "missing.onnx"))
    assert r.exit_code == 2 and "model file not found" in r.output
