"""Bit-depth reduction (ISS "BDR"), official code liuzrcc/ImageShortcutSqueezing: keep the top ``bits`` bits of every pixel.

torchvision ``RandomPosterize(bits, p=1)`` (APBench: bits = 2): x & ~(2**(8-bits) - 1) on uint8,
applied once to the training images before crop/flip; test set untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.params import param
from benchmark.registry import register_defense
from defenses.base import ImageDefense


@dataclass(frozen=True)
class BitDepthParams:
    bits: int = param(2, "bits kept per channel (APBench: 2)", ge=1, le=8)


def posterize_uint8(x: torch.Tensor, bits: int) -> torch.Tensor:
    mask = (0xFF << (8 - bits)) & 0xFF
    return x & mask


@register_defense("bit-depth", aliases=("bdr", "posterize"))
class BitDepth(ImageDefense[BitDepthParams], family="filtering"):
    """Bit-depth reduction of training images (ISS BDR, posterize to 2 bits)."""

    def transform_images(self, x: torch.Tensor) -> torch.Tensor:
        return posterize_uint8(x, self.params.bits)
