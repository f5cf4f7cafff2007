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

import numpy as np
import torch

from benchmark.params import param
from benchmark.registry import register_defense
from defenses.base import Defense, TrainContext


@dataclass(frozen=True)
class MixupParams:
    alpha: float = param(1.0, "mixing strength: lam ~ Beta(alpha, alpha) (Dirichlet(alpha*1_k) for k ways)", gt=0.0)
    ways: int = param(2, "number of images mixed into each one (forest's 4way/8way-mixup)", ge=2, le=64)


def numpy_rng(ctx: TrainContext) -> np.random.Generator:
    """A NumPy generator seeded by one draw from the run's torch generator.

    torch's Beta/Gamma samplers take no generator, so Beta/Dirichlet weights come from NumPy,
    seeded here: repeatable for a seed, and checkpointed with the torch generator's state.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=ctx.generator))
    return np.random.default_rng(seed)


def sample_dirichlet(ctx: TrainContext, alpha: float, k: int) -> list[float]:
    """k mixing weights ~ Dirichlet(alpha*1_k) (k=2: (lam, 1-lam) with lam ~ Beta(alpha, alpha))."""
    w = numpy_rng(ctx).dirichlet([alpha] * k)
    return [float(v) for v in w]


def sample_beta(ctx: TrainContext, a: float, b: float) -> float:
    return float(numpy_rng(ctx).beta(a, b))


def mix(x: torch.Tensor, y: torch.Tensor, weights: list[float],
        perms: list[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_i w_i * x[perm_i] and the same for the soft labels (``None`` = identity)."""
    x_out = torch.zeros_like(x)
    y_out = torch.zeros_like(y)
    for w, p in zip(weights, perms, strict=True):
        x_out.add_(x if p is None else x[p], alpha=w)
        y_out.add_(y if p is None else y[p], alpha=w)
    return x_out, y_out


@register_defense("mixup", aliases=("mix-up",))
class Mixup(Defense):
    """mixup: one Beta(alpha, alpha) weight per batch, mixed images and mixed (soft) labels."""

    family = "augmentation"
    Params = MixupParams

    def batch(self, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> tuple[torch.Tensor, torch.Tensor]:
        p: MixupParams = self.params
        weights = sample_dirichlet(ctx, p.alpha, p.ways)
        perms: list[torch.Tensor | None] = [None] + [ctx.randperm(x.shape[0]) for _ in range(p.ways - 1)]
        return mix(x, y, weights, perms)
