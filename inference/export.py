"""``livepose model export``: DeepLabCut 3.x / Lightning Pose checkpoints and TorchScript
models → ONNX + ``manifest.yaml`` (``livepose-model/1``).

The network is rebuilt from the checkpoint (:mod:`.export_nets`), exported with
``torch.onnx.export(dynamo=False, opset_version=17)`` with a dynamic batch axis, run once in
ONNX Runtime against torch, and described by a manifest whose preprocessing and heatmap
geometry are those of the source library, so livepose decodes the same keypoints the library's
own predictor would. Needs torch (``pip install 'livepose[export]'``); DeepLabCut and Lightning
Pose themselves are not needed.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from livepose.core.yamlfile import read_yaml
from livepose.inference.engine_torch import import_torch, load_module
from livepose.inference.export_nets import (
    LP_BACKBONE_INDEX,
    load_strict,
    lp_upsampling,
    nets,
    resnet_from_state_dict,
    strip_prefix,
)
from livepose.inference.manifest import MANIFEST_FORMAT, MANIFEST_NAME, ModelError, load_manifest

log = logging.getLogger(__name__)

SOURCES = ("dlc", "lightning-pose", "torchscript")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
OPSET = 17
#: ONNX Runtime must reproduce torch within ``ATOL + RTOL * max|torch|``.
ATOL, RTOL = 1e-4, 1e-3


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote."""

    onnx: Path
    manifest: Path
    max_abs_diff: float
    notes: tuple[str, ...] = ()


def export_model(
    source: str,
    checkpoint: str | Path,
    out_dir: str | Path,
    config: str | Path | None = None,
    manifest: str | Path | None = None,
    width: int | None = None,
    height: int | None = None,
    name: str | None = None,
    head: str = "bodypart",
    allow_pickle: bool = False,
) -> ExportResult:
    """Export ``checkpoint`` to ``out_dir/model.onnx`` + ``out_dir/manifest.yaml``.

    Parameters
    ----------
    source
        ``dlc`` (a DeepLabCut 3.x PyTorch snapshot ``snapshot-*.pt`` + its
        ``pytorch_config.yaml``), ``lightning-pose`` (a ``.ckpt`` + the model's
        ``config.yaml``) or ``torchscript`` (a ``.pt``/``.ts`` TorchScript archive or ``.pt2``
        exported program + a livepose ``manifest``).
    config
        The training config (dlc, lightning-pose).
    manifest
        The manifest describing the model (torchscript).
    width, height
        Input size. DeepLabCut models are fully convolutional and trained on whole frames:
        give the camera frame size. Lightning Pose: default ``data.image_resize_dims``.
    name
        Manifest ``name`` (default: source and checkpoint name).
    head
        DeepLabCut head to export (``bodypart``).
    allow_pickle
        Load checkpoints with full unpickling (``torch.load(weights_only=False)``): only for
        files you trust.
    """
    if source not in SOURCES:
        raise ModelError(f"--from {source!r}: choose one of {', '.join(SOURCES)}")
    torch = import_torch()
    ckpt, out = Path(checkpoint), Path(out_dir)
    if not ckpt.is_file():
        raise ModelError(f"{ckpt}: checkpoint not found")
    if source == "torchscript":
        if manifest is None:
            raise ModelError("--from torchscript needs --manifest (input size, output names, "
                             "keypoints of the model)")
        man = load_manifest(manifest).model_dump(mode="json", exclude_none=True)
        module, _ = load_module(torch, ckpt, torch.device("cpu"))
        wrapper = nets().Select(module, _output_names(man["output"]), str(ckpt)).eval()
        # ONNX export cannot trace into a loaded ScriptModule from a Python wrapper; a traced
        # wrapper (a ScriptModule returning a tuple) exports fine
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            net = torch.jit.trace(wrapper, torch.zeros(2, *_per_sample(man["input"])),
                                  strict=False, check_trace=False)
        notes: list[str] = []
    else:
        if config is None:
            raise ModelError(f"--from {source} needs --config (the model's training config)")
        cfg = _read_yaml(Path(config))
        sd = _load_checkpoint(torch, ckpt, allow_pickle)
        if source == "dlc":
            net, man, notes = dlc_model(sd, cfg, Path(config), width, height, head)
        else:
            net, man, notes = lightning_pose_model(sd, cfg, Path(config), width, height)
    training = dict(man.get("training") or {})
    training.update({"exported_from": source, "checkpoint": ckpt.name,
                     "exporter": "livepose model export", "torch": str(torch.__version__)})
    head_fields = {"format": MANIFEST_FORMAT, "name": name or man.get("name") or
                   f"{source}-{ckpt.stem}", "file": "model.onnx"}
    man = {**head_fields, **{k: v for k, v in man.items() if k not in head_fields},
           "training": training}
    return write_onnx(net, man, out, notes)


# --------------------------------------------------------------------------- sources


def dlc_model(
    sd: dict[str, Any], cfg: dict[str, Any], cfg_path: Path, width: int | None,
    height: int | None, head: str = "bodypart",
) -> tuple[Any, dict[str, Any], list[str]]:
    """A DeepLabCut 3.x single-animal ResNet + ``HeatmapHead`` model from its snapshot's
    ``model`` state dict and ``pytorch_config.yaml``, and its manifest.

    Output ``heatmaps`` are the head's logits (``activation: sigmoid`` when the predictor
    applies one, DLC's default), ``locref`` the raw location refinement (``locref_std``
    scales it); heatmap cell ``i`` is input pixel ``i * stride + stride / 2``, as in DLC's
    ``HeatmapPredictor``.
    """
    where = str(cfg_path)
    model = _get(cfg, "model", where)
    bb = _get(model, "backbone", f"{where}: model")
    if bb.get("type") != "ResNet":
        raise ModelError(f"{where}: model.backbone.type {bb.get('type')!r} is not supported; "
                         "livepose exports DeepLabCut ResNet models (type: ResNet)")
    if model.get("neck"):
        raise ModelError(f"{where}: models with a neck (model.neck) are not supported")
    heads = _get(model, "heads", f"{where}: model")
    if head not in heads:
        raise ModelError(f"{where}: no head {head!r} in model.heads ({', '.join(heads)})")
    hcfg = heads[head]
    if hcfg.get("type") != "HeatmapHead":
        raise ModelError(f"{where}: model.heads.{head}.type {hcfg.get('type')!r} is not "
                         "supported (single-animal HeatmapHead models only)")
    if width is None or height is None:
        raise ModelError("--from dlc needs --width and --height: the camera frame size the "
                         "model will run on (DeepLabCut models take whole frames)")
    ns = nets()
    os_ = int(bb.get("output_stride", 32))
    backbone = resnet_from_state_dict(strip_prefix(sd, "backbone.model."), os_,
                                      f"{where}: backbone")
    hm_cfg = _get(hcfg, "heatmap_config", f"{where}: model.heads.{head}")
    heatmap = _deconv(ns, hm_cfg, strip_prefix(sd, f"heads.{head}.heatmap_head."),
                      f"{where}: heads.{head}.heatmap_head")
    pred = dict(hcfg.get("predictor") or {})
    use_locref = bool(pred.get("location_refinement", True)) and bool(hcfg.get("locref_config"))
    locref = None
    if use_locref:
        locref = _deconv(ns, hcfg["locref_config"], strip_prefix(sd, f"heads.{head}.locref_head."),
                         f"{where}: heads.{head}.locref_head")
    head_stride = int(np.prod(hm_cfg.get("strides") or [1]))
    stride = os_ / head_stride
    bodyparts = list(_get(_get(cfg, "metadata", where), "bodyparts", f"{where}: metadata"))
    out_ch = _deconv_out(hm_cfg)
    if out_ch != len(bodyparts):
        raise ModelError(f"{where}: the heatmap head has {out_ch} channels but metadata has "
                         f"{len(bodyparts)} bodyparts")
    data = cfg.get("data") or {}
    if not (data.get("inference") or {}).get("normalize_images", True):
        raise ModelError(f"{where}: data.inference.normalize_images: false is not supported")
    color = str(data.get("colormode", "RGB")).lower()
    if color not in ("rgb", "bgr"):
        raise ModelError(f"{where}: data.colormode {data.get('colormode')!r} (RGB or BGR)")
    output: dict[str, Any] = {"name": "heatmaps", "type": "heatmap", "stride": stride,
                              "offset": stride / 2,
                              "activation": "sigmoid" if pred.get("apply_sigmoid", True)
                              else "none"}
    if use_locref:
        output.update(locref="locref", locref_std=float(pred.get("locref_std", 7.2801)))
    man = {"format": MANIFEST_FORMAT, "name": None,
           "input": _rgb_input(width, height, color, "none"), "output": output,
           "keypoints": bodyparts, "skeleton": [],
           "training": {"config": cfg_path.name, "net_type": cfg.get("net_type"),
                        "backbone": bb.get("model_name"), "output_stride": os_}}
    notes = [f"ignored head {h!r}" for h in heads if h != head]
    return ns.DlcNet(backbone, heatmap, locref).eval(), man, notes


def lightning_pose_model(
    sd: dict[str, Any], cfg: dict[str, Any], cfg_path: Path, width: int | None,
    height: int | None,
) -> tuple[Any, dict[str, Any], list[str]]:
    """A Lightning Pose heatmap model (torchvision ResNet + ``upsampling_layers``) from a
    checkpoint's ``state_dict`` and its ``config.yaml``, and its manifest.

    Output ``heatmaps`` are spatial-softmax maps, as the tracker's ``forward`` returns; cell
    ``i`` is input pixel ``i * stride`` (LP's soft-argmax offsets), ``stride`` =
    ``2 ** data.downsample_factor``; the frame is stretched to ``data.image_resize_dims``.
    """
    where = str(cfg_path)
    data = _get(cfg, "data", where)
    model = cfg.get("model") or {}
    mtype = model.get("model_type", "heatmap")
    if mtype != "heatmap":
        raise ModelError(f"{where}: model.model_type {mtype!r} is not supported (heatmap only; "
                         "context models need 5 frames per prediction)")
    arch = str(model.get("backbone", "resnet50"))
    if not arch.startswith("resnet"):
        raise ModelError(f"{where}: model.backbone {arch!r} is not supported (ResNet backbones)")
    dims = data.get("image_resize_dims") or {}
    width = width or dims.get("width")
    height = height or dims.get("height")
    if not width or not height:
        raise ModelError(f"{where}: data.image_resize_dims is not set; give --width/--height")
    ds = int(data.get("downsample_factor", 2))
    bb_sd = {_lp_key(k): v for k, v in strip_prefix(sd, "backbone.").items()}
    backbone = resnet_from_state_dict(bb_sd, 32, f"{where}: backbone")
    prefix = "head.upsampling_layers." if any(k.startswith("head.upsampling_layers.")
                                              for k in sd) else "upsampling_layers."
    upsampling = lp_upsampling(strip_prefix(sd, prefix), f"{where}: {prefix.rstrip('.')}")
    n_up = len(upsampling) - 1
    if 32 // 2 // 2**n_up != 2**ds:
        raise ModelError(f"{where}: data.downsample_factor {ds} does not match the checkpoint "
                         f"({n_up} upsampling layers give heatmaps at 1/{32 // 2 // 2**n_up})")
    j = int(upsampling[-1].out_channels)
    names = data.get("keypoint_names") or data.get("keypoints")
    notes = []
    if not names:
        names = [f"kp{i}" for i in range(j)]
        notes.append(f"data.keypoint_names is not set: keypoints named kp0..kp{j - 1}")
    if len(names) != j:
        raise ModelError(f"{where}: {len(names)} keypoint names but the model outputs {j}")
    stride = 2.0**ds
    man = {"format": MANIFEST_FORMAT, "name": None,
           "input": _rgb_input(int(width), int(height), "rgb", "stretch"),
           "output": {"name": "heatmaps", "type": "heatmap", "stride": stride, "offset": 0.0,
                      "activation": "none"},
           "keypoints": list(names), "skeleton": [],
           "training": {"config": cfg_path.name, "backbone": arch, "downsample_factor": ds}}
    return nets().LpNet(backbone, upsampling).eval(), man, notes


# --------------------------------------------------------------------------- ONNX


def write_onnx(
    net: Any, man: dict[str, Any], out_dir: Path, notes: list[str] | None = None
) -> ExportResult:
    """Export ``net`` (image → tuple of outputs in the manifest's tensor order) to ONNX, check
    ONNX Runtime against torch on a batch of 3, write and validate the manifest."""
    import onnxruntime as ort

    torch = import_torch()
    spec = man["input"]
    per = _per_sample(spec)
    names = _output_names(man["output"])
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path, man_path = out_dir / "model.onnx", out_dir / MANIFEST_NAME
    axes = {n: {0: "batch"} for n in [spec["name"], *names]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(net, (torch.zeros(2, *per),), str(onnx_path),
                          input_names=[spec["name"]], output_names=names, dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)
        x = np.random.default_rng(0).standard_normal((3, *per)).astype(np.float32)
        ref = [t.numpy() for t in net(torch.from_numpy(x))]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(names, {spec["name"]: x})
    diff = 0.0
    for n, a, b in zip(names, got, ref, strict=True):
        if a.shape != b.shape:
            raise ModelError(f"export check: ONNX output {n!r} has shape {list(a.shape)}, "
                             f"torch {list(b.shape)}")
        d = float(np.max(np.abs(a - b))) if a.size else 0.0
        if d > ATOL + RTOL * float(np.max(np.abs(b), initial=0.0)):
            raise ModelError(f"export check: ONNX Runtime differs from torch on {n!r} by {d:.3g}")
        diff = max(diff, d)
    man["training"] = {**man.get("training", {}), "onnx_check_max_abs_diff": diff}
    man_path.write_text(yaml.safe_dump(man, sort_keys=False, width=100))
    load_manifest(man_path)  # the written manifest follows the schema
    log.info("exported %s (max |onnx - torch| %.2g)", onnx_path, diff)
    return ExportResult(onnx_path, man_path, diff, tuple(notes or ()))


# --------------------------------------------------------------------------- helpers


def _per_sample(spec: dict[str, Any]) -> tuple[int, int, int]:
    if spec.get("layout", "NCHW") == "NCHW":
        return spec["channels"], spec["height"], spec["width"]
    return spec["height"], spec["width"], spec["channels"]


def _output_names(output: dict[str, Any]) -> list[str]:
    if output.get("type") == "simcc":
        return [output["name"], output["name_y"]]
    return [output["name"], *([output["locref"]] if output.get("locref") else [])]


def _rgb_input(width: int, height: int, color: str, resize: str) -> dict[str, Any]:
    return {"name": "image", "layout": "NCHW", "width": int(width), "height": int(height),
            "channels": 3, "color": color, "scale": 1.0 / 255.0, "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD, "resize": resize}


def _deconv(ns: Any, cfg: dict[str, Any], sd: dict[str, Any], what: str) -> Any:
    try:
        module = ns.Deconv([_int(c) for c in cfg["channels"]], cfg["kernel_size"],
                           cfg["strides"], cfg.get("final_conv"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{what}: bad head config ({exc})") from None
    load_strict(module, sd, what)
    return module


def _deconv_out(cfg: dict[str, Any]) -> int:
    final = cfg.get("final_conv")
    return int(final["out_channels"]) if final else _int(cfg["channels"][-1])


def _int(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        raise ModelError(f"head config value {v!r} is not a number (an unfilled template "
                         "placeholder such as 'num_bodyparts'?)") from None


def _lp_key(k: str) -> str:
    head, _, rest = k.partition(".")
    return f"{LP_BACKBONE_INDEX.get(head, head)}.{rest}"


def _get(d: Any, key: str, where: str) -> Any:
    if not isinstance(d, dict) or d.get(key) is None:
        raise ModelError(f"{where}: missing {key!r}")
    return d[key]


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml(path, ModelError, "config")
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a mapping")
    return data


def _load_checkpoint(torch: Any, path: Path, allow_pickle: bool) -> dict[str, Any]:
    """The weights of a DeepLabCut snapshot (``model``) or Lightning checkpoint
    (``state_dict``)."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=not allow_pickle)
    except Exception as exc:  # UnpicklingError, RuntimeError, … depending on the file
        hint = "" if allow_pickle else (" (if it holds Python objects beyond tensors and you "
                                        "trust the file, add --trust-pickle)")
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else repr(exc)
        raise ModelError(f"{path}: cannot load the checkpoint: {first}{hint}") from None
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                return dict(obj[key])
    raise ModelError(f"{path}: expected a DeepLabCut snapshot (a dict with 'model') or a "
                     "Lightning checkpoint (a dict with 'state_dict')")
