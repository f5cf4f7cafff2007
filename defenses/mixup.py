"""mixup (Zhang et al. 2018), official code facebookresearch/mixup-cifar10: train on convex combinations of image pairs.

One weight per batch (the reference code and forest), after the preset's crop/flip. The trainer
hands this hook soft one-hot labels and uses soft cross-entropy, so mixing the labels with the same
weights is exactly the mixed loss lam*CE(f(x~), y) + (1-lam)*CE(f(x~), y[perm]).
``ways=k`` is forest's k-way mixup: w ~ Dirichlet(alpha*1_k) and k permutations of the batch.
Deviation: the first of the k "permutations" is the identity (forest draws k random ones); the
batch order is already random, so the mixed batches have the same distribution, and k=2 is then
exactly the reference 2-way mixup.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.mixing import mix, sample_dirichlet
from benchmark.params import param
from benchmark.registry import register_defense
from defenses.base import Defense, TrainContext


@dataclass(frozen=True)
class MixupParams:
    alpha: float = param(1.0, "mixing strength: lam ~ Beta(alpha, alpha) (Dirichlet(alpha*1_k) for k ways)", gt=0.0)
    ways: int = param(2, "number of images mixed into each one (forest's 4way/8way-mixup)", ge=2, le=64)


@register_defense("mixup", aliases=("mix-up",))
class Mixup(Defense[MixupParams], family="augmentation"):
    """mixup: one Beta(alpha, alpha) weight per batch, mixed images and mixed (soft) labels."""

    def batch(self, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        weights = sample_dirichlet(ctx.generator, p.alpha, p.ways)
        perms: list[torch.Tensor | None] = [None] + [ctx.randperm(x.shape[0]) for _ in range(p.ways - 1)]
        return mix(x, y, weights, perms)
