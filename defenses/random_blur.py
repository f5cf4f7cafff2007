"""Random-blur augmentation: the CUDA paper's second adaptive defense (§5.2; vinusankars/Convolution-based-Unlearnability,
defenses.md §6 table): every training batch is convolved with fresh random CUDA-style filters of blur
parameter p'b (the paper reports p'b = 0.1 and 0.3 against CUDA pb = 0.3).

Filters are drawn like CUDA's (entries ~ U[0, p'b), one random entry set to 1, the same filter on
every channel, each image divided by its own max afterwards), from the run's seeded generator.
The paper text does not say how filters are assigned ; ``per=image``
(default) draws one filter per image, ``per=batch`` one for the whole batch, ``per=class`` one per
class for the batch (CUDA's class-wise structure, re-drawn every batch). The draw mirrors
``attacks.cuda.cuda_filters`` but from the run's torch generator, vectorised (that function replays
the official NumPy key stream class by class). Batched: one grouped convolution on the batch's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.params import param
from benchmark.registry import register_defense
from defenses.base import Defense, TrainContext


@dataclass(frozen=True)
class RandomBlurParams:
    pb: float = param(0.3, "blur parameter p'b: filter entries ~ U[0, p'b) (paper: 0.1 and 0.3)", ge=0.0)
    k: int = param(3, "filter size (odd)", ge=1, odd=True)
    per: str = param("image", "fresh filters per image, one per batch, or one per class each batch",
                     choices=("image", "batch", "class"))


def random_cuda_filters(n: int, k: int, pb: float, gen: torch.Generator | None) -> torch.Tensor:
    """``n`` CUDA-style (k, k) filters: U[0, pb) entries with one random entry set to 1.0."""
    filters = torch.rand((n, k * k), generator=gen) * pb
    one = torch.randint(k * k, (n,), generator=gen)
    filters[torch.arange(n), one] = 1.0
    return filters.view(n, k, k)


def blur(x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Convolve image i (all channels) with filters[i] ('same' zero padding), divide by its max."""
    n, c, h, w = x.shape
    k = filters.shape[-1]
    weight = filters.to(x.device, x.dtype).repeat_interleave(c, dim=0).unsqueeze(1)  # (N*C, 1, k, k)
    y = F.conv2d(x.reshape(1, n * c, h, w), weight, padding=k // 2, groups=n * c).reshape(n, c, h, w)
    peak = y.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    return torch.where(peak > 0, y / peak.clamp_min(1e-12), y)


@register_defense("random-blur")
class RandomBlur(Defense[RandomBlurParams], family="adaptive"):
    """Random CUDA-like blurring of every training batch (CUDA paper's adaptive augmentation)."""

    def batch(self, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        n = x.shape[0]
        count = {"image": n, "batch": 1, "class": ctx.num_classes}[p.per]
        filters = random_cuda_filters(count, p.k, p.pb, ctx.generator).to(x.device)
        if p.per == "batch":
            filters = filters.expand(n, -1, -1)
        elif p.per == "class":
            filters = filters[y.argmax(1)]
        return blur(x, filters), y
