"""Native TensorRT engine without TensorRT: the missing-package errors, the pure helpers, the
ONNX Runtime provider options, and the engine's buffer/batch/CUDA-graph logic against a fake
``tensorrt`` + ``cuda-python`` written here.

The fake implements only what :class:`TrtEngine` calls, with the semantics of the TensorRT 10
and CUDA runtime documentation (tensor addresses read at enqueue, graph replay re-reading the
same device memory); host and "device" memory are both real host buffers, copies are
``memmove``. It checks livepose's logic, not TensorRT: the real API runs only on a GPU machine.
"""

from __future__ import annotations

import ctypes
import enum
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from livepose.core.config import ModelConfig
from livepose.inference import engine_trt
from livepose.inference.batching import chunks
from livepose.inference.engine import ENGINES
from livepose.inference.engine_trt import (
    TrtEngine,
    check_engine_io,
    engine_cache_path,
    profile_shapes,
    timing_cache_path,
)
from livepose.inference.manifest import Manifest, ModelError
from livepose.inference.providers import provider_options

H, W, S, J = 32, 40, 4, 2


def manifest(**output: Any) -> Manifest:
    return Manifest.model_validate({
        "format": "livepose-model/1", "name": "trt-pool", "file": "model.engine",
        "input": {"name": "image", "width": W, "height": H, "channels": 1, "color": "mono"},
        "output": {"name": "heatmaps", "type": "heatmap", "stride": S, **output},
        "keypoints": ["a", "b"],
    })


# --------------------------------------------------------------------------- missing packages


def test_missing_tensorrt_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    (tmp_path / "model.engine").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"'tensorrt' package.*livepose\[tensorrt\]"):
        ENGINES["tensorrt"](tmp_path / "model.engine", manifest(), ModelConfig())
    with pytest.raises(ModelError, match=r"livepose\[tensorrt\]"):
        engine_trt.build_engine(tmp_path / "m.onnx", tmp_path / "m.engine")


def test_build_engine_cli_without_tensorrt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from livepose.cli.app import app

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    r = CliRunner().invoke(app, ["model", "build-engine", "inference/models/default/model.onnx",
                                 "--out", str(tmp_path / "m.engine"), "--max-batch", "4"])
    assert r.exit_code == 2
    assert "livepose[tensorrt]" in r.output.replace("\n", "")


def test_missing_cuda_python_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("cuda", "cuda.bindings", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ModelError, match="'cuda-python'"):
        engine_trt.import_cudart()


def test_old_tensorrt_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(ModelError, match=r"TensorRT 8.6.1.*>= 10"):
        engine_trt.import_tensorrt()


# --------------------------------------------------------------------------- pure helpers


def test_profile_shapes() -> None:
    assert profile_shapes((-1, 3, 256, 320), 4) == ((1, 3, 256, 320), (4, 3, 256, 320),
                                                     (4, 3, 256, 320))
    assert profile_shapes((-1, 1, 8, 8), 6, opt_batch=2)[1] == (2, 1, 8, 8)
    with pytest.raises(ModelError, match="only the batch dimension may be dynamic"):
        profile_shapes((-1, 3, -1, 320), 4)
    with pytest.raises(ModelError, match=r"outside 1..4"):
        profile_shapes((-1, 3, 8, 8), 4, opt_batch=5)
    with pytest.raises(ModelError, match=">= 1"):
        profile_shapes((-1, 3, 8, 8), 0)


def test_cache_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert timing_cache_path(None) == tmp_path / "xdg" / "livepose" / "trt" / "timing.cache"
    assert timing_cache_path(tmp_path) == tmp_path / "timing.cache"
    args: dict[str, Any] = dict(onnx_bytes=b"model", folder=tmp_path, fp16=True, max_batch=4,
                                trt_version="10.3.0", device="NVIDIA H100 80GB HBM3-sm90")
    base = engine_cache_path(**args)
    assert base.parent == tmp_path and base.suffix == ".engine"
    assert engine_cache_path(**args) == base  # deterministic
    for key, other in (("onnx_bytes", b"model2"), ("fp16", False), ("max_batch", 8),
                       ("trt_version", "10.4.0"), ("device", "NVIDIA A100-sm80")):
        assert engine_cache_path(**{**args, key: other}) != base, key


def test_check_engine_io_names_the_field() -> None:
    man = manifest(locref="locref")
    outs = {"heatmaps": (-1, J, 8, 10), "locref": (-1, 2 * J, 8, 10)}
    assert check_engine_io({"image": (-1, 1, H, W)}, outs, man, Path("m")) == (-1, 1, H, W)
    with pytest.raises(ModelError, match=r"input.name 'image'.*\['x'\]"):
        check_engine_io({"x": (-1, 1, H, W)}, outs, man, Path("m"))
    with pytest.raises(ModelError, match=r"has width 64; the manifest says input.width: 40"):
        check_engine_io({"image": (-1, 1, H, 64)}, outs, man, Path("m"))
    with pytest.raises(ModelError, match="output 'locref' is not an output"):
        check_engine_io({"image": (-1, 1, H, W)}, {"heatmaps": (-1, J, 8, 10)}, man, Path("m"))


def test_chunks() -> None:
    assert chunks(4, 8, fixed=False) == [(0, 4, 4)]
    assert chunks(10, 4, fixed=False) == [(0, 4, 4), (4, 8, 4), (8, 10, 2)]
    assert chunks(5, 4, fixed=True) == [(0, 4, 4), (4, 5, 4)]


def test_provider_options(tmp_path: Path) -> None:
    cfg = ModelConfig(cache_dir=tmp_path / "c", fp16=False)
    out = provider_options(["TensorrtExecutionProvider", "CUDAExecutionProvider",
                            "CPUExecutionProvider"], cfg, input_name="image",
                           input_dims=(3, 256, 320), max_batch=4)
    (trt_name, trt), (cuda_name, cuda), cpu = out
    assert (trt_name, cuda_name, cpu) == ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                          "CPUExecutionProvider")
    assert trt["trt_fp16_enable"] == "False" and trt["trt_engine_cache_enable"] == "True"
    assert Path(trt["trt_engine_cache_path"]) == tmp_path / "c" / "ort"
    assert trt["trt_timing_cache_path"] == trt["trt_engine_cache_path"]
    assert (tmp_path / "c" / "ort").is_dir()
    assert trt["trt_profile_min_shapes"] == "image:1x3x256x320"
    assert trt["trt_profile_max_shapes"] == trt["trt_profile_opt_shapes"] == "image:4x3x256x320"
    assert cuda["cudnn_conv_algo_search"] == "EXHAUSTIVE" and cuda["device_id"] == "0"
    plain = provider_options(["TensorrtExecutionProvider"], ModelConfig(cache_dir=tmp_path))[0]
    assert isinstance(plain, tuple) and plain[1]["trt_fp16_enable"] == "True"
    assert "trt_profile_min_shapes" not in plain[1]
    assert provider_options(["CPUExecutionProvider"], cfg) == ["CPUExecutionProvider"]


# --------------------------------------------------------------------------- fake TensorRT


class FakeCudart(types.ModuleType):
    """Host memory stands in for device memory; stream capture records enqueued work."""

    cudaStreamNonBlocking = 1  # noqa: N815 - CUDA's names

    class cudaMemcpyKind(enum.IntEnum):  # noqa: N801 - CUDA's names
        cudaMemcpyHostToDevice = 1  # noqa: N815
        cudaMemcpyDeviceToHost = 2  # noqa: N815

    class cudaStreamCaptureMode(enum.IntEnum):  # noqa: N801
        cudaStreamCaptureModeGlobal = 0  # noqa: N815
        cudaStreamCaptureModeThreadLocal = 1  # noqa: N815

    def __init__(self) -> None:
        super().__init__("cuda.bindings.runtime")
        self.mem: dict[int, np.ndarray] = {}
        self.capturing: list[Any] | None = None
        self.launches = 0
        self.freed = 0

    def _alloc(self, n: int) -> tuple[int, int]:
        buf = np.zeros(max(n, 1), np.uint8)
        self.mem[buf.ctypes.data] = buf
        return 0, buf.ctypes.data

    def cudaGetDeviceCount(self) -> tuple[int, int]:
        return 0, 1

    def cudaStreamCreateWithFlags(self, flags: int) -> tuple[int, int]:
        return 0, 7

    def cudaMalloc(self, n: int) -> tuple[int, int]:
        return self._alloc(n)

    def cudaMallocHost(self, n: int) -> tuple[int, int]:
        return self._alloc(n)

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: Any, stream: Any) -> tuple[int]:
        assert self.capturing is None  # only the enqueue is captured
        ctypes.memmove(dst, src, n)
        return (0,)

    def cudaStreamSynchronize(self, stream: Any) -> tuple[int]:
        return (0,)

    def cudaStreamBeginCapture(self, stream: Any, mode: Any) -> tuple[int]:
        self.capturing = []
        return (0,)

    def cudaStreamEndCapture(self, stream: Any) -> tuple[int, list[Any]]:
        graph, self.capturing = self.capturing, None
        return 0, graph or []

    def cudaGraphInstantiate(self, graph: list[Any], flags: int) -> tuple[int, list[Any]]:
        return 0, list(graph)

    def cudaGraphLaunch(self, graph: list[Any], stream: Any) -> tuple[int]:
        self.launches += 1
        for work in graph:
            work()
        return (0,)

    def cudaGraphDestroy(self, graph: Any) -> tuple[int]:
        return (0,)

    def cudaGraphExecDestroy(self, graph: Any) -> tuple[int]:
        return (0,)

    def cudaFree(self, ptr: int) -> tuple[int]:
        self.freed += 1
        return (0,)

    def cudaFreeHost(self, ptr: int) -> tuple[int]:
        return (0,)

    def cudaStreamDestroy(self, stream: Any) -> tuple[int]:
        return (0,)


def _view(ptr: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape)


class FakeContext:
    """``heatmaps = avgpool4(image) * (j + 1)``, ``locref = [heatmaps, -heatmaps]``."""

    def __init__(self, engine: FakeEngine, cudart: FakeCudart) -> None:
        self.e, self.cudart = engine, cudart
        self.shape = tuple(engine.spec["input"])
        self.addr: dict[str, int] = {}
        self.executed = 0

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        if not 1 <= shape[0] <= self.e.spec["max_batch"]:
            return False
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        n, _, h, w = self.shape
        return self.shape if name == "image" else (
            n, J * (2 if name == "locref" else 1), h // S, w // S)

    def set_tensor_address(self, name: str, ptr: int) -> None:
        self.addr[name] = ptr

    def execute_async_v3(self, stream: int) -> bool:
        shape, addr = self.shape, dict(self.addr)  # captured: addresses and shapes fixed

        def work() -> None:
            self.executed += 1
            n, _, h, w = shape
            x = _view(addr["image"], shape)
            hm = np.stack([x[:, 0].reshape(n, h // S, S, w // S, S).mean(axis=(2, 4)) * (j + 1)
                           for j in range(J)], axis=1)
            _view(addr["heatmaps"], hm.shape)[...] = hm
            if "locref" in addr:
                _view(addr["locref"], (n, 2 * J, h // S, w // S))[...] = np.concatenate(
                    [hm, -hm], axis=1)

        if self.cudart.capturing is not None:
            self.cudart.capturing.append(work)
        else:
            work()
        return True


class FakeEngine:
    def __init__(self, spec: dict[str, Any], cudart: FakeCudart) -> None:
        self.spec, self.cudart = spec, cudart
        self.names = ["image", *spec["outputs"]]
        self.num_io_tensors = len(self.names)
        self.contexts: list[FakeContext] = []

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> str:
        return "in" if name == "image" else "out"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        b, _, h, w = self.spec["input"]
        return tuple(self.spec["input"]) if name == "image" else (
            b, J * (2 if name == "locref" else 1), h // S, w // S)

    def get_tensor_dtype(self, name: str) -> str:
        return "float"

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        rest = tuple(self.spec["input"][1:])
        return [(1, *rest), (self.spec["max_batch"], *rest), (self.spec["max_batch"], *rest)]

    def create_execution_context(self) -> FakeContext:
        self.contexts.append(FakeContext(self, self.cudart))
        return self.contexts[-1]


def fake_tensorrt(cudart: FakeCudart) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"  # type: ignore[attr-defined]

    class ILogger:
        class Severity(enum.IntEnum):
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self) -> None:
            pass

    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
            try:
                return FakeEngine(json.loads(data), cudart)
            except ValueError:
                return None

    trt.ILogger = ILogger  # type: ignore[attr-defined]
    trt.Runtime = Runtime  # type: ignore[attr-defined]
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")  # type: ignore[attr-defined]
    trt.nptype = lambda dtype: np.float32  # type: ignore[attr-defined]
    return trt


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeCudart:
    cudart = FakeCudart()
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    bindings.runtime = cudart  # type: ignore[attr-defined]
    cuda.bindings = bindings  # type: ignore[attr-defined]
    for name, mod in (("cuda", cuda), ("cuda.bindings", bindings),
                      ("cuda.bindings.runtime", cudart), ("tensorrt", fake_tensorrt(cudart))):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(engine_trt, "_LOGGERS", {})
    return cudart


def write_engine(path: Path, batch: int = -1, max_batch: int = 4,
                 outputs: tuple[str, ...] = ("heatmaps", "locref")) -> Path:
    path.write_text(json.dumps({"input": [batch, 1, H, W], "max_batch": max_batch,
                                "outputs": list(outputs)}))
    return path


def expected(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = len(x)
    hm = np.stack([x[:, 0].reshape(n, H // S, S, W // S, S).mean(axis=(2, 4)) * (j + 1)
                   for j in range(J)], axis=1)
    return hm, np.concatenate([hm, -hm], axis=1)


def test_engine_runs_then_replays_a_cuda_graph(fake: FakeCudart, tmp_path: Path) -> None:
    eng = TrtEngine(write_engine(tmp_path / "m.engine"), manifest(locref="locref"))
    assert (eng.name, eng.provider, eng.input_shape) == ("tensorrt", "TensorRT", (None, 1, H, W))
    rng = np.random.default_rng(0)
    for i in range(5):  # runs 1-2 plain, then captured; replays must read the new input
        x = rng.random((3, 1, H, W), dtype=np.float32)
        hm, lr = eng.run(x)
        np.testing.assert_allclose(hm, expected(x)[0], rtol=1e-6)
        np.testing.assert_allclose(lr, expected(x)[1], rtol=1e-6)
        assert fake.launches == max(0, i - 1)
    x = rng.random((2, 1, H, W), dtype=np.float32)  # a new batch size: rebind, plain run again
    np.testing.assert_allclose(eng.run(x)[0], expected(x)[0], rtol=1e-6)
    assert fake.launches == 3
    eng.close()
    assert fake.freed == 3


def test_batches_above_capacity_run_in_chunks(fake: FakeCudart, tmp_path: Path) -> None:
    eng = TrtEngine(write_engine(tmp_path / "m.engine", max_batch=4), manifest(),
                    cuda_graph=False)
    x = np.random.default_rng(1).random((6, 1, H, W), dtype=np.float32)
    (hm,) = eng.run(x)
    assert hm.shape == (6, J, H // S, W // S)
    np.testing.assert_allclose(hm, expected(x)[0], rtol=1e-6)


def test_fixed_batch_engine_pads(fake: FakeCudart, tmp_path: Path) -> None:
    eng = TrtEngine(write_engine(tmp_path / "m.engine", batch=4, outputs=("heatmaps",)),
                    manifest())
    assert eng.input_shape == (4, 1, H, W)
    x = np.random.default_rng(2).random((3, 1, H, W), dtype=np.float32)
    np.testing.assert_allclose(eng.run(x)[0], expected(x)[0], rtol=1e-6)


def test_engine_errors_are_named(fake: FakeCudart, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="engine file not found"):
        TrtEngine(tmp_path / "none.engine", manifest())
    (tmp_path / "bad.engine").write_bytes(b"\x00garbage")
    with pytest.raises(ModelError, match=r"cannot load this engine.*build-engine"):
        TrtEngine(tmp_path / "bad.engine", manifest())
    path = write_engine(tmp_path / "m.engine", outputs=("heatmaps",))
    with pytest.raises(ModelError, match="output 'locref' is not an output"):
        TrtEngine(path, manifest(locref="locref"))
    eng = TrtEngine(path, manifest())
    with pytest.raises(ModelError, match=r"batch of shape \[1, 3, 32, 40\]"):
        eng.run(np.zeros((1, 3, H, W), np.float32))


def test_registry_builds_from_config(fake: FakeCudart, tmp_path: Path) -> None:
    path = write_engine(tmp_path / "model.engine", outputs=("heatmaps",))
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(manifest().model_dump(
        mode="json", exclude_none=True)))
    eng = ENGINES["tensorrt"](path, manifest(), ModelConfig(path=str(path)))
    assert eng.name == "tensorrt"
    x = np.ones((2, 1, H, W), np.float32)
    np.testing.assert_allclose(eng.run(x)[0], expected(x)[0])
