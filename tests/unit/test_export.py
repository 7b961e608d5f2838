"""``livepose model export`` on stand-in DeepLabCut 3.x and Lightning Pose networks.

The stand-ins are written here, independently of ``inference/export_nets.py``: the same
module layout and state-dict names as DLC 3.x (``PoseModel`` with ``backbone.model`` = a timm
ResNet, ``heads.bodypart.{heatmap,locref}_head.deconv_layers``) and Lightning Pose
(``backbone`` = torchvision ResNet children in an ``nn.Sequential``, ``upsampling_layers`` =
PixelShuffle + ConvTranspose2d, spatial softmax), at reduced width and depth. They are saved the
way those libraries save checkpoints; the export must rebuild them from the weights alone and
ONNX Runtime must reproduce the stand-in's own outputs. Real DLC/LP checkpoints are not tested.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
nn = torch.nn
ort = pytest.importorskip("onnxruntime")

from livepose.inference.export import export_model  # noqa: E402
from livepose.inference.manifest import ModelError, load_manifest  # noqa: E402

STEM, PLANES, BLOCKS, J = 8, (4, 8, 16, 32), (2, 1, 1, 1), 3
KP = ["snout", "left_ear", "tail"]


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, dilation: int) -> None:
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.act = nn.ReLU()
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: Any) -> Any:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.act(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.act(y + (x if self.downsample is None else self.downsample(x)))


class TinyResNet(nn.Module):
    """torchvision/timm ResNet layout (conv1, bn1, relu, maxpool, layer1-4, avgpool, fc).
    ``dilate_last``: layer4 keeps stride 1 and dilates by 2 (output stride 16)."""

    def __init__(self, dilate_last: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, STEM, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes, layers = STEM, []
        for i, (planes, n) in enumerate(zip(PLANES, BLOCKS, strict=True)):
            stride, dil = (1 if i == 0 else 2), 1
            if dilate_last and i == 3:
                stride = 1
            blocks = []
            for b in range(n):
                # torchvision/timm: the first block of a dilated stage keeps the previous dilation
                d = 2 if dilate_last and i == 3 and b > 0 else dil
                blocks.append(Bottleneck(inplanes, planes, stride if b == 0 else 1, d))
                inplanes = planes * 4
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, 10)

    def forward_features(self, x: Any) -> Any:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def randomise(module: Any, seed: int) -> Any:
    """Non-trivial weights and BatchNorm statistics, so a misplaced layer changes outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return module.eval()


# --------------------------------------------------------------------------- DeepLabCut 3.x


class DeconvModule(nn.Module):
    def __init__(self, channels: list[int], strides: list[int]) -> None:
        super().__init__()
        layers: list[Any] = []
        for cin, cout, s in zip(channels[:-1], channels[1:], strides, strict=True):
            layers += [nn.ConvTranspose2d(cin, cout, kernel_size=3, stride=s), nn.ReLU()]
        self.deconv_layers = nn.Sequential(*layers[:-1])
        self.final_conv = nn.Identity()

    def forward(self, x: Any) -> Any:
        return self.final_conv(self.deconv_layers(x))


class HeatmapHead(nn.Module):
    def __init__(self, hm: list[int], lr: list[int], strides: list[int]) -> None:
        super().__init__()
        self.heatmap_head = DeconvModule(hm, strides)
        self.locref_head = DeconvModule(lr, strides)

    def forward(self, x: Any) -> dict[str, Any]:
        return {"heatmap": self.heatmap_head(x), "locref": self.locref_head(x)}


class ResNetBackbone(nn.Module):
    def __init__(self, dilate_last: bool) -> None:
        super().__init__()
        self.model = TinyResNet(dilate_last)
        self.model.fc = nn.Identity()  # DLC removes the classifier

    def forward(self, x: Any) -> Any:
        return self.model.forward_features(x)


class PoseModel(nn.Module):
    def __init__(self, output_stride: int = 32) -> None:
        super().__init__()
        c = PLANES[-1] * 4
        strides = [2, 2] if output_stride == 32 else [2]
        mid = [] if output_stride == 16 else [24]
        self.backbone = ResNetBackbone(dilate_last=output_stride == 16)
        self.heads = nn.ModuleDict({"bodypart": HeatmapHead([c, *mid, J], [c, *mid, 2 * J],
                                                            strides)})
        self.cfg_strides, self.cfg_channels = strides, mid

    def forward(self, x: Any) -> dict[str, dict[str, Any]]:
        f = self.backbone(x)
        return {name: head(f) for name, head in self.heads.items()}


def dlc_config(model: PoseModel, output_stride: int = 32, bodyparts: list[str] = KP) -> dict:
    c = PLANES[-1] * 4
    mid, strides = model.cfg_channels, model.cfg_strides
    return {
        "data": {"colormode": "RGB", "inference": {"normalize_images": True}},
        "device": "auto",
        "metadata": {"project_path": "/x", "pose_config_path": "/x/pytorch_config.yaml",
                     "bodyparts": bodyparts, "unique_bodyparts": [], "individuals": ["animal"],
                     "with_identity": None},
        "method": "bu",
        "model": {
            "backbone": {"type": "ResNet", "model_name": "resnet50_gn",
                         "output_stride": output_stride, "freeze_bn_stats": True},
            "backbone_output_channels": c,
            "heads": {"bodypart": {
                "type": "HeatmapHead",
                "predictor": {"type": "HeatmapPredictor", "location_refinement": True,
                              "locref_std": 7.2801},
                "target_generator": {"type": "HeatmapPlateauGenerator", "num_heatmaps": J},
                "criterion": {"heatmap": {"type": "WeightedBCECriterion", "weight": 1.0}},
                "heatmap_config": {"channels": [c, *mid, J], "kernel_size": [3] * len(strides),
                                   "strides": strides},
                "locref_config": {"channels": [c, *mid, 2 * J],
                                  "kernel_size": [3] * len(strides), "strides": strides},
            }},
        },
        "net_type": "resnet_50",
    }


def save_dlc(tmp: Path, output_stride: int = 32) -> tuple[PoseModel, Path, Path]:
    torch.manual_seed(1)
    model = randomise(PoseModel(output_stride), 2)
    snap = tmp / "snapshot-005.pt"
    torch.save({"model": model.state_dict(), "metadata": {"epoch": 5}}, snap)
    cfg = tmp / "pytorch_config.yaml"
    cfg.write_text(yaml.safe_dump(dlc_config(model, output_stride)))
    return model, snap, cfg


def run_onnx(path: Path, names: list[str], x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(names, {"image": x})


@pytest.mark.parametrize("output_stride", [32, 16])
def test_dlc_snapshot_exports_and_matches_torch(tmp_path: Path, output_stride: int) -> None:
    model, snap, cfg = save_dlc(tmp_path, output_stride)
    res = export_model("dlc", snap, tmp_path / "out", config=cfg, width=96, height=64)
    man = load_manifest(res.manifest)
    assert man.output.tensor_names() == ["heatmaps", "locref"]
    # output stride 32 with two stride-2 deconvs, or 16 with one: 8 either way; DLC's
    # HeatmapPredictor puts cell i at input pixel i * 8 + 8 / 2
    assert man.output.stride == 8.0 and man.output.cell_offset == 4.0
    assert man.output.activation == "sigmoid" and man.output.locref_std == pytest.approx(7.2801)
    assert man.keypoints == KP and man.input.color == "rgb" and man.input.channels == 3
    assert (man.input.width, man.input.height, man.input.resize) == (96, 64, "none")
    assert man.input.mean == pytest.approx([0.485, 0.456, 0.406])

    x = np.random.default_rng(3).standard_normal((4, 3, 64, 96)).astype(np.float32)
    hm, lr = run_onnx(res.onnx, ["heatmaps", "locref"], x)  # batch 4: the batch axis is dynamic
    with torch.no_grad():
        ref = model(torch.from_numpy(x))["bodypart"]
    np.testing.assert_allclose(hm, ref["heatmap"].numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(lr, ref["locref"].numpy(), atol=1e-4, rtol=1e-4)
    assert hm.shape[:2] == (4, J) and lr.shape[1] == 2 * J
    assert res.max_abs_diff < 1e-4


def test_dlc_bad_inputs_are_named(tmp_path: Path) -> None:
    model, snap, cfg = save_dlc(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(ModelError, match="--width and --height"):
        export_model("dlc", snap, out, config=cfg)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump(dlc_config(model, bodyparts=["a", "b"])))
    with pytest.raises(ModelError, match="3 channels but metadata has 2 bodyparts"):
        export_model("dlc", snap, out, config=wrong, width=96, height=64)
    sd = model.state_dict()
    sd.pop("backbone.model.layer2.0.conv2.weight")
    torch.save({"model": sd}, tmp_path / "broken.pt")
    with pytest.raises(ModelError, match=r"missing layer2\.0\.conv2\.weight"):
        export_model("dlc", tmp_path / "broken.pt", out, config=cfg, width=96, height=64)
    torch.save({"optimizer": {}}, tmp_path / "opt.pt")
    with pytest.raises(ModelError, match="DeepLabCut snapshot"):
        export_model("dlc", tmp_path / "opt.pt", out, config=cfg, width=96, height=64)


# --------------------------------------------------------------------------- Lightning Pose


class LpHead(nn.Module):
    def __init__(self, layers: Any) -> None:
        super().__init__()
        self.upsampling_layers = layers


class HeatmapTracker(nn.Module):
    """LP's layout: ``backbone`` = ResNet children[:-2]; ``upsampling_layers`` (older LP) or
    ``head.upsampling_layers`` (LP with ``heads/heatmap.py``); spatial softmax in forward."""

    def __init__(self, nested_head: bool) -> None:
        super().__init__()
        base = TinyResNet()
        self.backbone = nn.Sequential(*list(base.children())[:-2])
        c = PLANES[-1] * 4
        up = nn.Sequential(
            nn.PixelShuffle(2),
            nn.ConvTranspose2d(c // 4, J, (3, 3), (2, 2), (1, 1), (1, 1)),
            nn.ConvTranspose2d(J, J, (3, 3), (2, 2), (1, 1), (1, 1)),
        )
        if nested_head:
            self.head = LpHead(up)
        else:
            self.upsampling_layers = up
        self.unnormalized_weights = nn.Parameter(torch.full((1, 5), 0.2), requires_grad=False)

    def forward(self, x: Any) -> Any:
        up = self.head.upsampling_layers if hasattr(self, "head") else self.upsampling_layers
        h = up(self.backbone(x))
        n, j, hh, ww = h.shape
        return torch.softmax(h.reshape(n, j, -1), -1).reshape(n, j, hh, ww)


def lp_config(names: list[str] | None = KP) -> dict:
    return {
        "data": {"image_resize_dims": {"height": 64, "width": 96}, "data_dir": "/x",
                 "video_dir": "/x", "csv_file": "CollectedData.csv", "downsample_factor": 2,
                 "num_keypoints": J, "keypoint_names": names},
        "training": {"imgaug": "dlc", "train_batch_size": 16},
        "model": {"losses_to_use": [], "backbone": "resnet50", "model_type": "heatmap",
                  "heatmap_loss_type": "mse", "model_name": "test"},
    }


def save_lp(tmp: Path, nested_head: bool = False) -> tuple[Any, Path, Path]:
    torch.manual_seed(4)
    model = randomise(HeatmapTracker(nested_head), 5)
    ckpt = tmp / "epoch=3-step=40.ckpt"
    torch.save({"epoch": 3, "global_step": 40, "pytorch-lightning_version": "2.4.0",
                "state_dict": model.state_dict(),
                "hyper_parameters": {"num_keypoints": J, "backbone": "resnet50",
                                     "downsample_factor": 2, "torch_seed": 123}}, ckpt)
    cfg = tmp / "config.yaml"
    cfg.write_text(yaml.safe_dump(lp_config()))
    return model, ckpt, cfg


@pytest.mark.parametrize("nested_head", [False, True])
def test_lightning_pose_checkpoint_exports_and_matches_torch(
    tmp_path: Path, nested_head: bool
) -> None:
    model, ckpt, cfg = save_lp(tmp_path, nested_head)
    res = export_model("lightning-pose", ckpt, tmp_path / "out", config=cfg)
    man = load_manifest(res.manifest)
    assert (man.input.width, man.input.height, man.input.resize) == (96, 64, "stretch")
    assert man.output.stride == 4 and man.output.cell_offset == 0.0  # LP: cell i = pixel 4i
    assert man.output.tensor_names() == ["heatmaps"] and man.output.activation == "none"
    assert man.keypoints == KP
    x = np.random.default_rng(6).standard_normal((3, 3, 64, 96)).astype(np.float32)
    (hm,) = run_onnx(res.onnx, ["heatmaps"], x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert hm.shape == (3, J, 16, 24)
    np.testing.assert_allclose(hm, ref, atol=1e-6, rtol=1e-4)
    np.testing.assert_allclose(hm.sum(axis=(2, 3)), 1.0, rtol=1e-4)  # spatial softmax kept


def test_lightning_pose_downsample_mismatch_is_named(tmp_path: Path) -> None:
    _, ckpt, cfg = save_lp(tmp_path)
    data = lp_config()
    data["data"]["downsample_factor"] = 3
    cfg.write_text(yaml.safe_dump(data))
    with pytest.raises(ModelError, match="downsample_factor 3 does not match"):
        export_model("lightning-pose", ckpt, tmp_path / "out", config=cfg)


# --------------------------------------------------------------------------- TorchScript


def test_torchscript_dict_model_exports_by_manifest_names(tmp_path: Path) -> None:
    model, _, _ = save_dlc(tmp_path)

    class Flat(nn.Module):  # a user's model returning a dict keyed by the manifest names
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, x: Any) -> dict[str, Any]:
            out = self.m(x)["bodypart"]
            return {"aux": out["heatmap"] * 0, "locref": out["locref"], "hm": out["heatmap"]}

    ts = tmp_path / "model.pt"
    torch.jit.trace(Flat().eval(), torch.zeros(1, 3, 64, 96), strict=False).save(str(ts))
    man = {"format": "livepose-model/1", "name": "ts", "file": "model.pt",
           "input": {"name": "image", "width": 96, "height": 64, "channels": 3, "color": "rgb"},
           "output": {"name": "hm", "type": "heatmap", "stride": 8, "locref": "locref"},
           "keypoints": KP}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(man))
    res = export_model("torchscript", ts, tmp_path / "out", manifest=tmp_path / "m.yaml")
    assert load_manifest(res.manifest).file == "model.onnx"
    x = np.random.default_rng(7).standard_normal((2, 3, 64, 96)).astype(np.float32)
    hm, lr = run_onnx(res.onnx, ["hm", "locref"], x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x))["bodypart"]
    np.testing.assert_allclose(hm, ref["heatmap"].numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(lr, ref["locref"].numpy(), atol=1e-4, rtol=1e-4)


def test_export_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from livepose.cli.app import app

    _, ckpt, cfg = save_lp(tmp_path)
    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["model", "export", str(ckpt), "--from", "lightning-pose",
                                 "--config", str(cfg), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "model.onnx").is_file() and load_manifest(out / "manifest.yaml").keypoints == KP
    r = CliRunner().invoke(app, ["model", "export", str(ckpt), "--from", "sleap",
                                 "--out", str(out)])
    assert r.exit_code == 2 and "dlc, lightning-pose, torchscript" in r.output
