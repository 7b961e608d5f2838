"""``livepose model import mediapipe-pose``: MediaPipe BlazePose (TFLite, in the ``mediapipe``
wheel) → the two ONNX files of the bundled ``blazepose`` model, with manifest, notice and
hashes.

What it does (verified on mediapipe 0.10.21, tf2onnx 1.17, tensorflow-cpu 2.19, opset 17):

- ``pose_landmark_full.tflite`` → ONNX with tf2onnx; the batch dimension of the input and
  outputs is made symbolic (``N``) and the one Reshape whose constant target starts with a
  hard-coded 1 gets -1, so a batch of views runs in one call with outputs identical to
  single calls;
- ``pose_detection.tflite`` stores 38 weights *sparse* (TFLite ``DENSIFY``; tf2onnx cannot
  read them, mediapipe issue 3641): their dense values are read once from the TFLite
  interpreter (reference kernels, no XNNPACK, all tensors preserved), substituted while
  tf2onnx parses the flatbuffer, and ``DENSIFY`` becomes ``Identity``; same batch fix;
- internal tensor names are made canonical (tf2onnx appends a process-wide counter), so with
  ``PYTHONHASHSEED=0`` the files are byte-reproducible (same sha256 as the bundled ones);
- both models are checked against the TFLite interpreter (random inputs, per-sample TFLite vs
  a batch of 4 in ONNX Runtime).

Its dependencies (``tensorflow-cpu``, ``tf2onnx``, ``onnx``) are the ``convert`` extra, imported
only here and only when it runs; run time never needs them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from livepose.core.errors import UserError

DET_REL = "mediapipe/modules/pose_detection/pose_detection.tflite"
LMK_REL = "mediapipe/modules/pose_landmark/pose_landmark_full.tflite"
EXTRA = "convert"
NEEDS = ("tensorflow", "tf2onnx", "onnx")


class ConvertError(UserError):
    """The conversion cannot run (missing extra, wheel, file)."""


def check_extra() -> None:
    """Raise a one-line :class:`ConvertError` naming the extra when its modules are absent."""
    missing = [m for m in NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        raise ConvertError(
            f"model import needs {', '.join(missing)}: pip install 'livepose[{EXTRA}]' "
            "(tensorflow-cpu, tf2onnx; a separate venv is fine, see docs/inference.md)")


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def locate_models(src: Path | None, workdir: Path) -> tuple[Path, Path]:
    """``(pose_detection.tflite, pose_landmark_full.tflite)`` from a mediapipe wheel, a
    folder holding ``mediapipe/`` (site-packages), or the installed package (``None``).

    Raises
    ------
    ConvertError
        Nothing found where it should be.
    """
    if src is None:
        spec = importlib.util.find_spec("mediapipe")
        if spec is None or not spec.submodule_search_locations:
            raise ConvertError("mediapipe is not installed here: pass --wheel (pip download "
                               "mediapipe==0.10.21 --no-deps)")
        src = Path(next(iter(spec.submodule_search_locations))).parent
    if src.suffix == ".whl":
        if not src.is_file():
            raise ConvertError(f"{src}: wheel not found (--wheel)")
        with zipfile.ZipFile(src) as z:
            for rel in (DET_REL, LMK_REL):
                try:
                    z.extract(rel, workdir)
                except KeyError:
                    raise ConvertError(f"{src}: no {rel} in this wheel") from None
        src = workdir
    det, lmk = src / DET_REL, src / LMK_REL
    for p in (det, lmk):
        if not p.is_file():
            raise ConvertError(f"{p}: not found (--wheel: a mediapipe wheel or site-packages)")
    return det, lmk


def _interpreter(path: Path, preserve: bool = False) -> Any:
    """TFLite interpreter with the reference kernels (no XNNPACK delegate)."""
    import tensorflow as tf

    resolver = tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return tf.lite.Interpreter(model_path=str(path), experimental_op_resolver_type=resolver,
                               experimental_preserve_all_tensors=preserve)


def run_tflite(path: Path, x: np.ndarray) -> list[np.ndarray]:
    """The single-batch TFLite model on each row of ``x`` ``(N, …)``; outputs stacked."""
    it = _interpreter(path)
    it.allocate_tensors()
    inp = it.get_input_details()[0]["index"]
    outs = it.get_output_details()
    res: list[list[np.ndarray]] = [[] for _ in outs]
    for row in x:
        it.set_tensor(inp, row[None].astype(np.float32))
        it.invoke()
        for k, d in enumerate(outs):
            res[k].append(it.get_tensor(d["index"])[0].copy())
    return [np.stack(r) for r in res]


def dense_weights(path: Path) -> dict[bytes, np.ndarray]:
    """Raw bytes of each sparse constant (a ``DENSIFY`` input) → its dense value (that op's
    output, read from the interpreter after one run with every tensor preserved)."""
    from tf2onnx.tflite.Model import Model

    it = _interpreter(path, preserve=True)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.zeros(d["shape"], np.float32))
    it.invoke()
    model = Model.GetRootAsModel(bytearray(path.read_bytes()), 0)
    g = model.Subgraphs(0)
    out: dict[bytes, np.ndarray] = {}
    for op in it._get_ops_details():  # the public API has no op list
        if op["op_name"] != "DENSIFY":
            continue
        t_in, t_out = int(op["inputs"][0]), int(op["outputs"][0])
        raw = model.Buffers(g.Tensors(t_in).Buffer()).DataAsNumpy().tobytes()
        out[raw] = np.array(it.get_tensor(t_out))
    return out


def tf2onnx_convert(path: Path, opset: int, dense: dict[bytes, np.ndarray] | None) -> Any:
    """tf2onnx on a TFLite file, sparse constants replaced by ``dense``; ``DENSIFY`` →
    ``Identity``."""
    import tf2onnx
    from tf2onnx import tflite_utils
    from tf2onnx.handler import tfl_op

    if "TFL_DENSIFY" not in getattr(tfl_op, "_livepose_registered", set()):
        @tfl_op(["TFL_DENSIFY"], onnx_op="Identity")
        class _Densify:  # registered by the decorator
            @classmethod
            def version_1(cls, ctx: Any, node: Any, **kwargs: Any) -> None:
                """The input already is the dense constant."""

        tfl_op._livepose_registered = {"TFL_DENSIFY"}
    real = tflite_utils.tensor_util

    class _Shim:
        def __getattr__(self, k: str) -> Any:
            return getattr(real, k)

        @staticmethod
        def MakeNdarray(t: Any) -> np.ndarray:
            if dense and t.tensor_content in dense:
                return dense[t.tensor_content]
            return np.asarray(real.MakeNdarray(t))

    tflite_utils.tensor_util = _Shim()
    try:
        model, _ = tf2onnx.convert.from_tflite(str(path), opset=opset)
    finally:
        tflite_utils.tensor_util = real
    return model


def make_batch_dynamic(model: Any, dim_name: str = "N") -> list[str]:
    """Symbolic batch dimension on the graph's inputs and outputs; Reshapes whose constant
    target starts with a hard-coded 1 get -1 there (0 when the shape already has a -1).
    Returns the patched Reshapes."""
    from onnx import numpy_helper

    g = model.graph
    for vi in list(g.input) + list(g.output):
        d0 = vi.type.tensor_type.shape.dim[0]
        d0.ClearField("dim_value")
        d0.dim_param = dim_name
    del g.value_info[:]  # stale static shapes; ONNX Runtime infers them again
    inits = {i.name: i for i in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    patched = []
    for n in g.node:
        if n.op_type != "Reshape":
            continue
        src = n.input[1]
        if src in inits:
            holder = inits[src]
        elif src in consts:
            holder = consts[src].attribute[0].t
        else:
            continue
        arr = numpy_helper.to_array(holder).copy()
        if arr.ndim == 1 and arr.size >= 2 and arr[0] == 1:
            arr[0] = 0 if (arr == -1).any() else -1
            holder.CopyFrom(numpy_helper.from_array(arr.astype(np.int64), holder.name))
            patched.append(f"{n.name}: {arr.tolist()}")
    return patched


def canonicalize_names(model: Any) -> None:
    """Nodes in a deterministic topological order (post-order from the outputs), internal
    tensors renamed ``t<i>`` and nodes ``n<i>``, initializers sorted: reproducible files."""
    g = model.graph
    prod = {o: n for n in g.node for o in n.output}
    order: list[Any] = []
    seen: set[int] = set()
    stack: list[tuple[Any, bool]] = [(prod[o.name], False) for o in reversed(g.output)]
    while stack:  # iterative post-order DFS, inputs in order
        n, done = stack.pop()
        if done:
            order.append(n)
            continue
        if id(n) in seen:
            continue
        seen.add(id(n))
        stack.append((n, True))
        stack.extend((prod[x], False) for x in reversed(n.input) if x in prod)
    nodes = []
    for n in order:
        c = type(n)()
        c.CopyFrom(n)
        nodes.append(c)
    del g.node[:]
    g.node.extend(nodes)
    keep = {v.name for v in list(g.input) + list(g.output)}
    ren: dict[str, str] = {}

    def nm(x: str) -> str:
        if x == "" or x in keep:
            return x
        return ren.setdefault(x, f"t{len(ren)}")

    for i, n in enumerate(g.node):
        n.name = f"n{i}"
        for k, x in enumerate(n.input):
            n.input[k] = nm(x)
        for k, x in enumerate(n.output):
            n.output[k] = nm(x)
    inits = sorted(g.initializer, key=lambda t: int(ren.get(t.name, "t999999")[1:]))
    for t in inits:
        t.name = ren.get(t.name, t.name)
    del g.initializer[:]
    g.initializer.extend(inits)


def verify(tfl: Path, onnx_path: Path, x: np.ndarray) -> dict[str, tuple[float, float]]:
    """Per output: ``(max |ONNX batch − TFLite per sample|, max |batch − single ONNX|)``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    iname = sess.get_inputs()[0].name
    ref = run_tflite(tfl, x)
    names = [d["name"] for d in _interpreter(tfl).get_output_details()]
    onames = [o.name for o in sess.get_outputs()]
    batch = sess.run(None, {iname: x})
    single = [np.concatenate(z) for z in
              zip(*[sess.run(None, {iname: x[i:i + 1]}) for i in range(len(x))], strict=True)]
    res = {}
    for k, name in enumerate(names):
        j = onames.index(name) if name in onames else k
        res[name] = (float(np.abs(batch[j] - ref[k]).max()),
                     float(np.abs(batch[j] - single[j]).max()))
    return res


def import_mediapipe_pose(
    out: Path, wheel: Path | None = None, opset: int = 17,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Convert and write ``out/{pose_detection,pose_landmark_full}.onnx`` with the bundled
    model's ``manifest.yaml``, ``LICENSE`` (Apache-2.0 + notice) and a ``README.md`` of hashes.

    Returns
    -------
    dict
        Files with sizes and sha256, and the verification's max differences.

    Raises
    ------
    ConvertError
        Missing extra, wheel or models.
    """
    check_extra()
    import onnx

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {"files": {}, "verify": {}}
    with tempfile.TemporaryDirectory() as tmp:
        det, lmk = locate_models(wheel, Path(tmp))
        result["tflite_sha256"] = {det.name: sha256(det), lmk.name: sha256(lmk)}
        for name, tfl, sparse, x in (
            ("pose_detection", det, True, rng.uniform(-1, 1, (4, 224, 224, 3))),
            ("pose_landmark_full", lmk, False, rng.uniform(0, 1, (4, 256, 256, 3))),
        ):
            dense = dense_weights(tfl) if sparse else None
            model = tf2onnx_convert(tfl, opset, dense)
            patched = make_batch_dynamic(model)
            canonicalize_names(model)
            onnx.checker.check_model(model)
            path = out / f"{name}.onnx"
            onnx.save(model, str(path))
            result["files"][path.name] = {"bytes": path.stat().st_size, "sha256": sha256(path)}
            result["verify"][name] = verify(tfl, path, x.astype(np.float32))
            log(f"{name}: {len(dense or {})} sparse constants densified, reshapes {patched}")
    bundled = Path(__file__).parent / "models" / "blazepose"  # the manifest describes these
    for f in ("manifest.yaml", "LICENSE"):
        if (bundled / f).is_file() and not (out / f).exists():
            shutil.copy2(bundled / f, out / f)
    lines = [f"| `{k}` | {v['bytes']:,} | `{v['sha256']}` |" for k, v in result["files"].items()]
    (out / "README.md").write_text(
        "# MediaPipe BlazePose as ONNX (made by `livepose model import mediapipe-pose`)\n\n"
        f"Command: `{' '.join(['livepose', *sys.argv[1:]])}`, "
        f"opset {opset}.\n\n| file | bytes | sha256 |\n|---|---|---|\n" + "\n".join(lines) + "\n")
    return result
