"""Grayscale squeezing (ISS, Liu et al. 2023), official code liuzrcc/ImageShortcutSqueezing.

PIL's ``convert("L")`` luma (ITU-R 601: 0.299R + 0.587G + 0.114B, PIL's fixed-point rounding),
replicated to 3 channels as torchvision ``Grayscale(3)``; training images only, once before
crop/flip. Single-channel data sets are left as they are.
"""

from __future__ import annotations

import torch

from benchmark.data import ImageSet
from benchmark.registry import register_defense
from defenses.base import ImageDefense, TrainContext


def luma_uint8(x: torch.Tensor) -> torch.Tensor:
    """PIL's L = (19595 R + 38470 G + 7471 B + 2**15) >> 16 on uint8 (N, 3, H, W); returns (N, 1, H, W)."""
    rgb = x.to(torch.int32)
    luma = (rgb[:, 0] * 19595 + rgb[:, 1] * 38470 + rgb[:, 2] * 7471 + 0x8000) >> 16
    return luma.to(torch.uint8)[:, None]


@register_defense("grayscale", aliases=("greyscale",))
class Grayscale(ImageDefense, family="filtering"):
    """Grayscale training images (ISS): ITU-R 601 luma replicated to 3 channels."""

    def prepare(self, train: ImageSet, ctx: TrainContext) -> ImageSet:
        return super().prepare(train, ctx) if train.x.shape[1] == 3 else train  # 1 channel: nothing to do

    def transform_images(self, x: torch.Tensor) -> torch.Tensor:
        return luma_uint8(x).expand(-1, 3, -1, -1)
