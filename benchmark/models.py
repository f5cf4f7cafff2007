"""Victim and surrogate architectures. Inputs are images in [0, 1] (no mean/std normalization, as in
the CUDA and EM code), so L-inf budgets are directly in pixel units.

Each builder takes ``(num_classes, in_channels)``; grey datasets use ``in_channels=1``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmark.errors import BenchError
from benchmark.registry import MODELS, register_model

ModelBuilder = Callable[[int, int], nn.Module]


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU())


class SmallCNN(nn.Module):
    """Four conv-BN-GELU blocks with max-pooling (~8.6 M multiply-adds per 32x32 image).

    The CPU-preset default: fast on two cores, yet ~80 % on CIFAR-10 from a 20k subset.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths: tuple[int, ...] = (24, 48, 96, 192)):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.features = nn.Sequential(
            _conv_bn(in_channels, w0), nn.MaxPool2d(2),
            _conv_bn(w0, w1), nn.MaxPool2d(2),
            _conv_bn(w1, w2), nn.MaxPool2d(2),
            _conv_bn(w2, w3), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )
        self.linear = nn.Linear(w3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


@register_model("small-cnn")
def small_cnn(num_classes: int, in_channels: int = 3) -> nn.Module:
    """Fast 4-block CNN (~8.6 M MACs / 32x32 image): the CPU default."""
    return SmallCNN(num_classes, in_channels)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet (3x3 stem, stride 1, no max-pool), as used by the REM and CUDA code."""

    def __init__(self, blocks: tuple[int, ...], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for i, (n, cout) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(cin, cout, stride))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register_model("resnet18")
def resnet18(num_classes: int, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-18 (3x3 stem, no max-pool): the paper-preset model."""
    return ResNet((2, 2, 2, 2), num_classes, in_channels)


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, cfg: tuple, num_classes: int, in_channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


@register_model("vgg16-bn", aliases=("vgg16",))
def vgg16_bn(num_classes: int, in_channels: int = 3) -> nn.Module:
    """CIFAR VGG-16 with batch norm and a single linear head."""
    return VGG(_VGG16, num_classes, in_channels)


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """Pre-activation Wide ResNet (Zagoruyko & Komodakis), depth 6n+4."""

    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int):
        super().__init__()
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks, cin = [], widths[0]
        for i, cout in enumerate(widths[1:]):
            for j in range(n):
                blocks.append(WideBlock(cin, cout, (1 if i == 0 else 2) if j == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model("wrn-34-10")
def wrn_34_10(num_classes: int, in_channels: int = 3) -> nn.Module:
    """Wide ResNet-34-10 (the AT literature's standard large model)."""
    return WideResNet(34, 10, num_classes, in_channels)


@register_model("densenet121")
def densenet121(num_classes: int, in_channels: int = 3) -> nn.Module:
    """DenseNet-121 (torchvision's) with a CIFAR stem: 3x3 stride-1 conv, no max-pool."""
    from torchvision.models import densenet121 as tv_densenet121

    model = tv_densenet121(weights=None, num_classes=num_classes)
    model.features.conv0 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    model.features.pool0 = nn.Identity()
    return model


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int, in_channels: int = 3) -> nn.Module:
    """MobileNetV2 (torchvision's) with a stride-1 stem for 32x32 inputs."""
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2(weights=None, num_classes=num_classes)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, 1, 1, bias=False)
    return model


def _timm() -> Any:
    """Import timm quietly (it warns about deprecated torch APIs on import), or explain how to get it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import timm
    except ImportError:
        raise BenchError("timm:<name> models need the timm package: pip install timm") from None
    return timm


@register_model("timm:")
def timm_model(num_classes: int, in_channels: int = 3, *, name: str = "") -> nn.Module:
    """Any timm architecture by its timm name, randomly initialised (no hub download)."""
    check_model(f"timm:{name}")
    return _timm().create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)


def check_model(name: str) -> str:
    """The canonical name of a model, or a one-line BenchError; ``timm:<name>`` is checked against
    timm's list here, so a typo fails before any data is loaded or poisoned."""
    key = MODELS.canonical(name)
    if key == "timm:":
        arch = name.split(":", 1)[1]
        if not arch or not _timm().is_model(arch):
            raise BenchError(f"unknown timm model '{arch}'; see timm.list_models() for valid names")
    return key


def build_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build a registered model by name (``timm:<name>`` passes through to timm)."""
    key = check_model(name)
    builder = MODELS.get(name)
    if key == "timm:":
        return builder(num_classes, in_channels, name=name.split(":", 1)[1])
    return builder(num_classes, in_channels)


def model_names() -> list[str]:
    return MODELS.names()
