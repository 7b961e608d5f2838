"""The MediaPipe converter's TF-free parts: the missing-extra error, locating the models in a
wheel, and the ONNX graph surgery (dynamic batch, Reshape fix, canonical names) on a small
graph run in ONNX Runtime. The full conversion needs the ``convert`` extra (TensorFlow) and
is checked by hand (inference/models/blazepose/README.md)."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import pytest

from livepose.inference.convert_mediapipe import (
    DET_REL,
    LMK_REL,
    ConvertError,
    canonicalize_names,
    check_extra,
    locate_models,
    make_batch_dynamic,
)


@pytest.mark.skipif(importlib.util.find_spec("tf2onnx") is not None,
                    reason="the convert extra is installed")
def test_missing_extra_names_it() -> None:
    with pytest.raises(ConvertError, match=r"livepose\[convert\]"):
        check_extra()


def test_locate_models_in_wheel(tmp_path: Path) -> None:
    whl = tmp_path / "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr(DET_REL, b"det")
        z.writestr(LMK_REL, b"lmk")
    det, lmk = locate_models(whl, tmp_path / "x")
    assert det.read_bytes() == b"det" and lmk.read_bytes() == b"lmk"
    with zipfile.ZipFile(tmp_path / "bad.whl", "w") as z:
        z.writestr(DET_REL, b"det")
    with pytest.raises(ConvertError, match="pose_landmark_full"):
        locate_models(tmp_path / "bad.whl", tmp_path / "y")
    with pytest.raises(ConvertError, match="not found"):
        locate_models(tmp_path / "none.whl", tmp_path / "z")


def test_batch_surgery_runs_a_batch() -> None:
    onnx = pytest.importorskip("onnx")
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12])
    shape = numpy_helper.from_array(np.array([1, 12], np.int64), "shape_1__77")
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["relu__3"], name="relu__9"),
         helper.make_node("Reshape", ["relu__3", "shape_1__77"], ["y"], name="reshape__5")],
        "g", [x], [y], [shape])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    patched = make_batch_dynamic(m)
    canonicalize_names(m)
    onnx.checker.check_model(m)
    assert patched == ["reshape__5: [-1, 12]"]
    assert [n.name for n in m.graph.node] == ["n0", "n1"]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    data = np.random.default_rng(0).normal(size=(3, 4, 3)).astype(np.float32)
    out = sess.run(None, {"x": data})[0]
    assert out.shape == (3, 12) and np.allclose(out, np.maximum(data, 0).reshape(3, 12))
