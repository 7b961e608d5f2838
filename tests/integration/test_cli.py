"""The command line: user mistakes exit with code 2 and one clear line, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from livepose.core.calibration import write_calibration
from livepose.core.camera import CameraModel

CAMS = [{"name": "a", "backend": "sim"}, {"name": "b", "backend": "sim"}]


def livepose(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "livepose", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def user_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def config(tmp_path: Path, **extra: object) -> Path:
    p = tmp_path / "rig.yaml"
    p.write_text(yaml.safe_dump({"cameras": CAMS, **extra}))
    return p


def test_check_config_ok_on_the_demo_config() -> None:
    r = livepose("check-config", str(Path(__file__).parents[2] / "configs" / "demo.yaml"))
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stderr


def test_unknown_backend(tmp_path: Path) -> None:
    p = config(tmp_path, cameras=[{"name": "a", "backend": "baslr"}])
    user_error(livepose("check-config", str(p)), "baslr", "allowed: sim", str(p))
    user_error(livepose("run", str(p), "--duration", "1"), "baslr")


def test_missing_calibration_file(tmp_path: Path) -> None:
    p = config(tmp_path, calibration="nope.toml")
    user_error(livepose("check-config", str(p)), "nope.toml", "not found")


def test_calibration_names_do_not_match(tmp_path: Path) -> None:
    cams = [
        CameraModel(
            name=n,
            size=(320, 256),
            matrix=np.array([[300, 0, 160], [0, 300, 128], [0, 0, 1.0]]),
            dist=np.zeros(5),
            rvec=np.zeros(3),
            tvec=np.array([0, 0, 500.0]),
        )
        for n in ("a", "c")
    ]
    write_calibration(tmp_path / "calib.toml", cams)
    p = config(tmp_path, calibration="calib.toml")
    user_error(livepose("check-config", str(p)), "['b']", "not in the calibration")


def test_missing_model_file(tmp_path: Path) -> None:
    p = config(tmp_path, model={"path": "missing.onnx"})
    user_error(livepose("check-config", str(p)), "missing.onnx")


def test_model_input_disagrees_with_manifest(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 128, 160])
    y = helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, ["N", 14, 32, 40])
    node = helper.make_node(
        "AveragePool", ["image"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]
    )
    tile = helper.make_node("Tile", ["pooled", "reps"], ["heatmaps"])
    reps = helper.make_tensor("reps", TensorProto.INT64, [4], [1, 14, 1, 1])
    graph = helper.make_graph([node, tile], "g", [x], [y], initializer=[reps])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "small.onnx")
    from importlib.resources import files

    manifest = yaml.safe_load(
        (files("livepose.inference") / "models/default/manifest.yaml").read_text()
    )
    manifest["file"] = "small.onnx"
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(manifest))
    p = config(tmp_path, model={"path": "small.onnx", "manifest": "small.yaml"})
    r = livepose("check-config", str(p))
    user_error(r, "small")
    assert "256" in r.stderr or "320" in r.stderr or "height" in r.stderr or "width" in r.stderr


def test_doctor_lists_providers_and_backends() -> None:
    r = livepose("doctor")
    assert r.returncode == 0, r.stderr
    assert "CPUExecutionProvider" in r.stdout
    assert "camera backend sim" in r.stdout


def test_demo_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    import json
    import signal
    import time

    out = tmp_path / "s.json"
    proc = subprocess.Popen([sys.executable, "-m", "livepose", "demo", "--no-live", "--json", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        assert proc.stderr is not None
        for line in proc.stderr:  # wait until it runs
            if "running" in line or time.monotonic() > deadline:
                break
        time.sleep(3)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0
    s = json.loads(out.read_text())
    assert s["framesets_fused"] > 0 and s["frame_accounting_ok"]
