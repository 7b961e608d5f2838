"""Torch networks rebuilt from checkpoints, for ``livepose model export`` (:mod:`.export`).

The architectures of DeepLabCut 3.x (``ResNet`` backbone + ``HeatmapHead``) and Lightning Pose
(torchvision ResNet + ``upsampling_layers``) are rebuilt here with the same module names, so a
checkpoint's ``state_dict`` loads with ``strict=True``: every weight must find its place and
every place its weight; layer widths and block counts are read from the weights themselves.
Neither library is needed. ``torch`` is imported when :func:`nets` is first called.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from livepose.inference.manifest import ModelError

#: Lightning Pose keeps torchvision's ResNet children in an ``nn.Sequential``.
LP_BACKBONE_INDEX = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3",
                     "7": "layer4"}


@functools.cache
def nets() -> SimpleNamespace:
    """The torch module classes (defined on first use so that importing this module does not
    import torch)."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        """torchvision/timm ResNet bottleneck (stride and dilation on the 3×3 conv)."""

        def __init__(self, inplanes: int, planes: int, out: int, stride: int,
                     first_dilation: int, dilation: int, downsample: bool) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=first_dilation,
                                   dilation=first_dilation, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(out)
            self.relu = nn.ReLU()
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False),
                                            nn.BatchNorm2d(out)) if downsample else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return self.relu(y + (x if self.downsample is None else self.downsample(x)))

    class BasicBlock(nn.Module):
        """torchvision/timm ResNet basic block (ResNet-18/34)."""

        def __init__(self, inplanes: int, planes: int, out: int, stride: int,
                     first_dilation: int, dilation: int, downsample: bool) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=first_dilation,
                                   dilation=first_dilation, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, out, 3, padding=dilation, dilation=dilation,
                                   bias=False)
            self.bn2 = nn.BatchNorm2d(out)
            self.relu = nn.ReLU()
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False),
                                            nn.BatchNorm2d(out)) if downsample else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return self.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNet(nn.Module):
        """ResNet feature extractor (no pooling/fc): stem, then ``layer1..4``."""

        def __init__(self, conv1: nn.Module, bn1: nn.Module, layers: Sequence[nn.Module]) -> None:
            super().__init__()
            self.conv1, self.bn1 = conv1, bn1
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1, self.layer2, self.layer3, self.layer4 = layers

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    class Deconv(nn.Module):
        """DeepLabCut's ``DeconvModule``: ConvTranspose2d layers (ReLU between), optional
        final conv."""

        def __init__(self, channels: Sequence[int], kernels: Sequence[int],
                     strides: Sequence[int], final_conv: Mapping[str, int] | None) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            for cin, cout, k, s in zip(channels[:-1], channels[1:], kernels, strides,
                                       strict=True):
                layers += [nn.ConvTranspose2d(cin, cout, kernel_size=k, stride=s), nn.ReLU()]
            self.deconv_layers = nn.Sequential(*layers[:-1]) if layers else nn.Identity()
            self.final_conv: nn.Module = nn.Identity()
            if final_conv:
                self.final_conv = nn.Conv2d(channels[-1], int(final_conv["out_channels"]),
                                            int(final_conv["kernel_size"]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.final_conv(self.deconv_layers(x))

    class DlcNet(nn.Module):
        """Backbone + heatmap head (+ locref head) → ``(heatmaps, [locref])`` raw."""

        def __init__(self, backbone: nn.Module, heatmap: nn.Module,
                     locref: nn.Module | None) -> None:
            super().__init__()
            self.backbone, self.heatmap_head, self.locref_head = backbone, heatmap, locref

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
            f = self.backbone(image)
            if self.locref_head is None:
                return (self.heatmap_head(f),)
            return self.heatmap_head(f), self.locref_head(f)

    class LpNet(nn.Module):
        """Backbone + upsampling layers + spatial softmax (Lightning Pose's ``forward``)."""

        def __init__(self, backbone: nn.Module, upsampling: nn.Module) -> None:
            super().__init__()
            self.backbone, self.upsampling_layers = backbone, upsampling

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor]:
            h = self.upsampling_layers(self.backbone(image))
            n, j, hh, ww = h.shape
            return (torch.softmax(h.reshape(n, j, hh * ww), dim=-1).reshape(n, j, hh, ww),)

    class Select(nn.Module):
        """Wrap a module whose output is a dict/tuple/tensor → a tuple in ``names`` order."""

        def __init__(self, module: nn.Module, names: Sequence[str], source: str) -> None:
            super().__init__()
            self.module, self.names, self.source = module, list(names), source

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
            from livepose.inference.engine_torch import select_outputs

            return tuple(select_outputs(self.module(image), self.names, self.source))

    return SimpleNamespace(Bottleneck=Bottleneck, BasicBlock=BasicBlock, ResNet=ResNet,
                           Deconv=Deconv, DlcNet=DlcNet, LpNet=LpNet, Select=Select, nn=nn)


def strip_prefix(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of ``sd`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def load_strict(module: Any, sd: Mapping[str, Any], what: str) -> None:
    """``load_state_dict(strict=True)`` with a :class:`ModelError` naming the mismatch."""
    try:
        result = module.load_state_dict(dict(sd), strict=False)
    except RuntimeError as exc:  # shape mismatches raise even with strict=False
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        detail = "; ".join(lines[:2]) or str(exc).splitlines()[0]
        msg = f"{what}: the checkpoint does not match the architecture ({detail})"
        raise ModelError(msg) from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing {', '.join(result.missing_keys[:4])}")
    if result.unexpected_keys:
        problems.append(f"unexpected {', '.join(result.unexpected_keys[:4])}")
    if problems:
        raise ModelError(f"{what}: the checkpoint does not match the architecture "
                         f"({'; '.join(problems)})")


def resnet_from_state_dict(sd: Mapping[str, Any], output_stride: int, what: str) -> Any:
    """A ResNet whose block counts and widths are read from ``sd`` (keys ``conv1.weight``,
    ``layer{1..4}.{b}.conv{1..3}.weight`` …), dilated for ``output_stride`` 32, 16 or 8 as
    timm does, with the weights loaded strictly.

    Raises
    ------
    ModelError
        Not a ResNet state dict, or weights that do not fit.
    """
    if output_stride not in (8, 16, 32):
        raise ModelError(f"{what}: output_stride {output_stride} is not supported (8, 16, 32)")
    if "conv1.weight" not in sd or "layer4.0.conv1.weight" not in sd:
        raise ModelError(f"{what}: not a ResNet backbone (no conv1/layer4 weights)")
    ns = nets()
    nn = ns.nn
    bottleneck = "layer1.0.conv3.weight" in sd
    block_cls = ns.Bottleneck if bottleneck else ns.BasicBlock
    width, channels = sd["conv1.weight"].shape[:2]
    conv1 = nn.Conv2d(channels, width, 7, 2, 3, bias=False)
    bn1 = nn.BatchNorm2d(width)
    layers, net_stride, dilation = [], 4, 1
    for li in range(1, 5):
        count = 1 + max(int(m.group(1)) for k in sd
                        if (m := re.match(rf"layer{li}\.(\d+)\.", k)))
        stride = 1 if li == 1 else 2
        prev_dilation = dilation
        if net_stride >= output_stride:
            dilation, stride = dilation * stride, 1
        else:
            net_stride *= stride
        blocks = []
        for b in range(count):
            key = f"layer{li}.{b}."
            planes, inplanes = sd[key + "conv1.weight"].shape[:2]
            out = sd[key + ("conv3.weight" if bottleneck else "conv2.weight")].shape[0]
            blocks.append(block_cls(inplanes, planes, out, stride if b == 0 else 1,
                                    prev_dilation if b == 0 else dilation, dilation,
                                    key + "downsample.0.weight" in sd))
        layers.append(nn.Sequential(*blocks))
    model = ns.ResNet(conv1, bn1, layers)
    load_strict(model, {k: v for k, v in sd.items() if not k.startswith("fc.")}, what)
    return model


def lp_upsampling(sd: Mapping[str, Any], what: str) -> Any:
    """Lightning Pose's ``upsampling_layers``: ``PixelShuffle(2)`` then ConvTranspose2d
    (3×3, stride 2) layers ``1..n``, widths from the weights."""
    nn = nets().nn
    idx = sorted({int(m.group(1)) for k in sd if (m := re.match(r"(\d+)\.weight$", k))})
    if not idx or idx != list(range(1, len(idx) + 1)):
        raise ModelError(f"{what}: expected upsampling layers 1..n after the PixelShuffle, "
                         f"found weights at {idx}")
    layers: list[Any] = [nn.PixelShuffle(2)]
    for i in idx:
        cin, cout = sd[f"{i}.weight"].shape[:2]  # ConvTranspose2d: (in, out, kh, kw)
        layers.append(nn.ConvTranspose2d(cin, cout, kernel_size=(3, 3), stride=(2, 2),
                                         padding=(1, 1), output_padding=(1, 1)))
    seq = nn.Sequential(*layers)
    load_strict(seq, sd, what)
    return seq
