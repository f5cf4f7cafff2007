"""The clean baseline as a poison, so the clean row is an ordinary run."""

from __future__ import annotations

import torch

from attacks.base import Poison, PoisonContext, PoisonedSet
from benchmark.data import ImageSet
from benchmark.registry import register_poison


@register_poison("none", aliases=("clean",))
class NoPoison(Poison, budget_type="none"):
    """Clean data (no poison): the baseline every poisoned run is compared with."""

    uses_key = False

    def generate(self, train: ImageSet, ctx: PoisonContext) -> PoisonedSet:
        return PoisonedSet(train.x, train.y, torch.zeros(0, dtype=torch.long))
