"""Median filter of every training image: a data-level smoothing baseline (REM code fshp971/robust-unlearnable-examples, utils/generic.py get_filter).

As ISS-code / REM-code ``cv2.medianBlur(img, 3)``: per-channel median over a k x k window with
replicated borders, applied once to the uint8 training images before crop/flip (test set untouched).
Batched over the whole set (in chunks) with elementwise min/max on shifted views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.data import ImageSet
from benchmark.params import param
from benchmark.registry import register_defense
from defenses.base import Defense, TrainContext

CHUNK = 4096

# Devillard's median-of-9 exchange network (opt_med9): 19 min/max pairs, elementwise on uint8.
MED9_NETWORK = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3), (5, 8), (4, 7),
                (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))


@dataclass(frozen=True)
class MedianFilterParams:
    kernel: int = param(3, "window size (odd)", ge=1, odd=True)


def pad_index(size: int, pad: int, mode: str, device: torch.device) -> torch.Tensor:
    """Source index of every padded position: 'replicate' (cv2 BORDER_REPLICATE) or 'reflect'
    (cv2 BORDER_REFLECT_101, torch 'reflect'), so uint8 images can be padded by indexing."""
    idx = torch.arange(-pad, size + pad, device=device)
    if mode == "replicate":
        return idx.clamp(0, size - 1)
    period = max(1, 2 * (size - 1))
    idx = idx.remainder(period)
    return torch.where(idx >= size, period - idx, idx)


def windows(x: torch.Tensor, kernel: int, mode: str) -> list[torch.Tensor]:
    """The k*k shifted views of the padded images, one per window offset."""
    _, _, h, w = x.shape
    pad = kernel // 2
    xp = x.index_select(2, pad_index(h, pad, mode, x.device)).index_select(3, pad_index(w, pad, mode, x.device))
    return [xp[:, :, i:i + h, j:j + w] for i in range(kernel) for j in range(kernel)]


def median_uint8(x: torch.Tensor, kernel: int, device: torch.device | None = None) -> torch.Tensor:
    """Median-filter uint8 (N, C, H, W) images with replicated borders; returns uint8 on x's device.
    3x3 uses the exchange network (fast); other sizes sort the stacked windows."""
    device = device or x.device
    out = torch.empty_like(x)
    for start in range(0, x.shape[0], CHUNK):
        chunk = x[start:start + CHUNK].to(device)
        views = windows(chunk, kernel, "replicate")
        if kernel == 3:
            for a, b in MED9_NETWORK:
                views[a], views[b] = torch.minimum(views[a], views[b]), torch.maximum(views[a], views[b])
            med = views[4]
        else:
            med = torch.stack(views).sort(dim=0).values[len(views) // 2]
        out[start:start + chunk.shape[0]] = med.to(x.device)
    return out


@register_defense("median-filter", aliases=("median",))
class MedianFilter(Defense):
    """Median filter (3x3, as cv2.medianBlur) of every training image, once before training."""

    family = "filtering"
    Params = MedianFilterParams

    def prepare(self, train: ImageSet, ctx: TrainContext) -> ImageSet:
        return ImageSet(median_uint8(train.x, self.params.kernel, ctx.device), train.y, list(train.classes))
