"""CutMix (Yun et al. 2019), official code clovaai/CutMix-PyTorch: paste a box from another image of the batch.

As in the reference code (CutMix-PyTorch ``train.py``/``rand_bbox``): with probability p per batch,
lam ~ Beta(beta, beta), one permutation and one box for the whole batch; the box has sides
int(H*sqrt(1-lam)) x int(W*sqrt(1-lam)) around a uniform centre, clipped at the borders; lam is then
recomputed as 1 - box area / image area, and the soft labels are mixed with that lam.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from benchmark.mixing import sample_beta
from benchmark.params import param
from benchmark.registry import register_defense
from defenses.base import Defense, TrainContext


@dataclass(frozen=True)
class CutMixParams:
    beta: float = param(1.0, "lam ~ Beta(beta, beta)", gt=0.0)
    p: float = param(0.5, "probability that a batch is cut-mixed (0.5 for CIFAR, 1.0 for ImageNet)", ge=0.0, le=1.0)


def cutmix_box(lam: float, h: int, w: int, cy: int, cx: int) -> tuple[int, int, int, int]:
    """(y1, y2, x1, x2) of the reference ``rand_bbox`` for centre (cy, cx)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * ratio), int(w * ratio)
    y1, y2 = min(max(cy - cut_h // 2, 0), h), min(max(cy + cut_h // 2, 0), h)
    x1, x2 = min(max(cx - cut_w // 2, 0), w), min(max(cx + cut_w // 2, 0), w)
    return y1, y2, x1, x2


@register_defense("cutmix", aliases=("cut-mix",))
class CutMix(Defense[CutMixParams], family="augmentation"):
    """CutMix: with prob. p, paste one random box from a shuffled batch; labels mixed by box area."""

    def batch(self, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        if float(torch.rand(1, generator=ctx.generator)) >= p.p:
            return x, y
        lam = sample_beta(ctx.generator, p.beta, p.beta)
        perm = ctx.randperm(x.shape[0])
        h, w = x.shape[-2:]
        cy = int(torch.randint(h, (1,), generator=ctx.generator))
        cx = int(torch.randint(w, (1,), generator=ctx.generator))
        y1, y2, x1, x2 = cutmix_box(lam, h, w, cy, cx)
        x = x.clone()
        x[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
        lam = 1.0 - (y2 - y1) * (x2 - x1) / (h * w)
        return x, lam * y + (1.0 - lam) * y[perm]
