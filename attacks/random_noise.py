"""Random noise: uniform U(-eps, eps) noise, sample-wise or class-wise (the control of Huang et al., ICLR 2021; HanxunH/Unlearnable-Examples).

The sanity control of the error-minimizing family: same budget, no optimisation, so it should
leave clean accuracy essentially unchanged. The noise is drawn from a generator seeded by the key,
rounded to integer grey levels (official code truncates the float sum; documented deviation), added
and clipped to [0, 255].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.base import PoisonContext, PoisonedSet
from benchmark.data import ImageSet
from benchmark.noise import NoisePoison, derived_generator
from benchmark.params import param
from benchmark.quantize import to_levels
from benchmark.registry import register_poison


@dataclass(frozen=True)
class RandomNoiseParams:
    eps: float = param(8 / 255, "L-inf budget (0.0314 = 8/255)", ge=0.0, le=1.0)
    mode: str = param("samplewise", "one noise per image, or one per class", choices=("samplewise", "classwise"))


@register_poison("random-noise", aliases=("random",))
class RandomNoise(NoisePoison[RandomNoiseParams]):
    """Uniform random noise in the L-inf ball: the control that should not work."""

    def generate(self, train: ImageSet, ctx: PoisonContext) -> PoisonedSet:
        p = self.params
        gen = derived_generator(ctx.key, self.name, p.mode)
        shape = tuple(train.x.shape[1:])
        if p.mode == "classwise":
            noise = (torch.rand((self.num_classes_of(train, ctx), *shape), generator=gen) * 2 - 1) * p.eps
            levels = to_levels(noise, self.budget_255()).to(train.x.device)[train.y]
        else:
            noise = (torch.rand((len(train), *shape), generator=gen) * 2 - 1) * p.eps
            levels = to_levels(noise, self.budget_255()).to(train.x.device)
        return self.finish(train, ctx, levels, {"mode": p.mode})
