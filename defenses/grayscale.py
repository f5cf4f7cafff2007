"""Grayscale squeezing (ISS, Liu et al. 2023), official code liuzrcc/ImageShortcutSqueezing.

PIL's ``convert("L")`` luma (ITU-R 601: 0.299R + 0.587G + 0.114B, PIL's fixed-point rounding),
replicated to 3 channels as torchvision ``Grayscale(3)``; training images once before crop/flip.
Single-channel data sets are left as they are.

``test=true`` also converts the test images (the same luma, at prediction time): the setting of the
grayscale numbers the CUDA paper (20.12 %, §5.2) and REM report, which train and test on grayscale
images. The default (training images only, clean colour test set) is ISS's setting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from benchmark.data import ImageSet
from benchmark.evaluate import forward_in_slices
from benchmark.params import param
from benchmark.registry import register_defense
from defenses.base import ImageDefense, TrainContext


@dataclass(frozen=True)
class GrayscaleParams:
    test: bool = param(False, "also grayscale the test images (the CUDA paper's and REM's setting); default: "
                              "training images only (ISS)", legacy=False)


def luma_uint8(x: torch.Tensor) -> torch.Tensor:
    """PIL's L = (19595 R + 38470 G + 7471 B + 2**15) >> 16 on uint8 (N, 3, H, W); returns (N, 1, H, W)."""
    rgb = x.to(torch.int32)
    luma = (rgb[:, 0] * 19595 + rgb[:, 1] * 38470 + rgb[:, 2] * 7471 + 0x8000) >> 16
    return luma.to(torch.uint8)[:, None]


def luma_float(x: torch.Tensor) -> torch.Tensor:
    """:func:`luma_uint8` of [0, 1] float images that hold uint8 levels (a test batch), as [0, 1] floats
    replicated to 3 channels: the exact bytes a grayscale test image would have."""
    levels = x.mul(255).round_().to(torch.uint8)
    return luma_uint8(levels).expand(-1, 3, -1, -1).to(x.dtype).div_(255)


@register_defense("grayscale", aliases=("greyscale",))
class Grayscale(ImageDefense[GrayscaleParams], family="filtering"):
    """Grayscale training images (ISS): ITU-R 601 luma replicated to 3 channels; ``test=true``: test images too."""

    @property
    def headline(self) -> str:  # type: ignore[override]
        return "final-epoch accuracy on grayscale test images" if self.params.test else ""

    def test_set(self) -> str:
        return "grayscale" if self.params.test else "clean"

    def prepare(self, train: ImageSet, ctx: TrainContext) -> ImageSet:
        return super().prepare(train, ctx) if train.x.shape[1] == 3 else train  # 1 channel: nothing to do

    def transform_images(self, x: torch.Tensor) -> torch.Tensor:
        return luma_uint8(x).expand(-1, 3, -1, -1)

    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.params.test and x.shape[1] == 3:
            x = luma_float(x)
        return forward_in_slices(model, x)
