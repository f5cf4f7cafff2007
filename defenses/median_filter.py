"""Median filter of every training image: a data-level smoothing baseline (REM code fshp971/robust-unlearnable-examples, utils/generic.py get_filter).

As ISS-code / REM-code ``cv2.medianBlur(img, 3)``: per-channel median over a k x k window with
replicated borders, applied once to the uint8 training images before crop/flip (test set untouched).
Batched over the whole set (in chunks) with elementwise min/max on shifted views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.imageops import pad_images
from benchmark.params import param
from benchmark.registry import register_defense
from defenses.base import ImageDefense

# Devillard's median-of-9 exchange network (opt_med9): 19 min/max pairs, elementwise on uint8.
MED9_NETWORK = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3), (5, 8), (4, 7),
                (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))


@dataclass(frozen=True)
class MedianFilterParams:
    kernel: int = param(3, "window size (odd)", ge=1, odd=True)


def windows(x: torch.Tensor, kernel: int, mode: str) -> list[torch.Tensor]:
    """The k*k shifted views of the padded images, one per window offset."""
    h, w = x.shape[-2:]
    xp = pad_images(x, kernel // 2, mode)
    return [xp[:, :, i:i + h, j:j + w] for i in range(kernel) for j in range(kernel)]


def median_images(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """Median-filter uint8 (N, C, H, W) images with replicated borders. 3x3 uses the exchange network
    (fast); other sizes sort the stacked windows."""
    views = windows(x, kernel, "replicate")
    if kernel != 3:
        return torch.stack(views).sort(dim=0).values[len(views) // 2]
    for a, b in MED9_NETWORK:
        views[a], views[b] = torch.minimum(views[a], views[b]), torch.maximum(views[a], views[b])
    return views[4]


@register_defense("median-filter", aliases=("median",))
class MedianFilter(ImageDefense[MedianFilterParams], family="filtering"):
    """Median filter (3x3, as cv2.medianBlur) of every training image, once before training."""

    def transform_images(self, x: torch.Tensor) -> torch.Tensor:
        return median_images(x, self.params.kernel)
