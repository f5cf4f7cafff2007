"""Targeted poisons crafted on a clean surrogate (Witches' Brew, MetaPoison): the shared part.

A :class:`TargetedPoison` draws its trial's setup from the key (:func:`benchmark.targets.choose_setup`),
crafts only the budgeted poison rows (the gradient-matching loop of :mod:`benchmark.gradmatch_poison`,
whatever the objective), poisons exactly those rows (clean labels), and writes the setup into the
manifest's ``info["target"]``, from which the runner checks the target after training. Its budget is a
fraction of the training set (``budget``), so the run's ``--ratio`` must stay 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from attacks.base import GenerationSession, PoisonContext, PoisonedSet
from benchmark.data import ImageSet
from benchmark.errors import BenchError
from benchmark.gradmatch import Grads, target_gradient
from benchmark.gradmatch_poison import (
    SURROGATE_PRESETS,
    CraftingParams,
    GradientMatchingPoison,
    MatchingRun,
)
from benchmark.params import param
from benchmark.plugin import P
from benchmark.quantize import add_levels
from benchmark.targets import TargetSetup, choose_setup


@dataclass(frozen=True)
class TargetedParams(CraftingParams):
    """forest's targeted defaults (``--budget 0.01 --eps 16``) and the surrogate's seed."""

    budget: float = param(0.01, "fraction of the training set perturbed (forest --budget; images of the "
                                "adversarial class)", gt=0.0, le=1.0)
    eps: float = param(16 / 255, "L-inf budget (0.0627 = 16/255, forest --eps 16)", ge=0.0, le=1.0)
    surrogate_key: int = param(-1, "seed of the surrogate: -1 = the trial's poison key (a surrogate per trial); "
                                   "K >= 0 = one surrogate for every trial (forest --modelkey K)", ge=-1)
    checkpoint_every: int = param(1, "checkpoint the crafting every this many poison batches (0 = never; a "
                                     "targeted poison has one batch per restart)", ge=0)


#: the targeted presets: ``cpu`` shares one surrogate across trials (module docstrings of the poisons)
TARGETED_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(SURROGATE_PRESETS["paper"]),
    "cpu": dict(SURROGATE_PRESETS["cpu"], surrogate_key=0),
    "smoke": dict(SURROGATE_PRESETS["smoke"], budget=0.05, restarts=1),
}


@dataclass(frozen=True)
class Target:
    """The setup and the target image on the crafting device (``MatchingRun.target``)."""

    setup: TargetSetup
    x: torch.Tensor  # (1, C, H, W) in [0, 1]
    adversarial: torch.Tensor  # (1,) the adversarial class


class TargetedPoison(GradientMatchingPoison[P]):
    """A targeted poison: params ``budget`` (fraction of the training set) and ``surrogate_key`` besides the
    crafting ones."""

    threat_model: ClassVar[str] = "targeted"
    shares_full_noise: ClassVar[bool] = False

    @classmethod
    def check_ratio(cls, ratio: float) -> None:
        if ratio != 1.0:
            raise BenchError(f"a targeted poison sets how many images it perturbs with its 'budget' parameter; "
                             f"--ratio must stay 1, got {ratio:g}")

    def surrogate_tag(self) -> str:
        """Every targeted poison attacks the same clean surrogate of a key: paired trials, one training."""
        return "targeted"

    def surrogate_key(self, ctx: PoisonContext) -> int:
        """``surrogate_key`` -1: the trial's key (a surrogate per trial); K: one surrogate for every trial."""
        return ctx.key if self.params.surrogate_key < 0 else self.params.surrogate_key

    def setup(self, train: ImageSet, ctx: PoisonContext) -> TargetSetup:
        if ctx.test is None:
            raise BenchError(f"poison {self.name} chooses its target in the dataset's test split, which this "
                             f"generation was not given (generate it through `bench run` / `bench sweep`)")
        return choose_setup(ctx.key, train.y, ctx.test.y, self.num_classes_of(train, ctx), self.params.budget)

    def poison_rows(self, train: ImageSet, ctx: PoisonContext) -> tuple[torch.Tensor, Any]:
        setup = self.setup(train, ctx)
        x = ctx.test.x[setup.test_index:setup.test_index + 1].to(ctx.device).float().div(255)
        return setup.poison_rows, Target(setup, x, torch.tensor([setup.adversarial_class], device=ctx.device))

    def adversarial_gradient(self, run: MatchingRun, params: Sequence[torch.Tensor]) -> tuple[Grads, torch.Tensor]:
        """forest's target gradient: the cross-entropy of the target image toward the adversarial class."""
        return target_gradient(run.surrogate, params, run.target.x, run.target.adversarial, F.cross_entropy)

    def conclude(self, run: MatchingRun) -> tuple[torch.Tensor, dict[str, Any]]:
        levels, info = super().conclude(run)
        with torch.no_grad():  # the attacker's view: what the clean surrogate says of the target
            probs = run.surrogate(run.target.x).softmax(dim=1)[0]
        facts = {"target": run.target.setup.facts(), "budget_fraction": self.params.budget,
                 "surrogate_target_prediction": int(probs.argmax()),
                 "surrogate_adversarial_prob": round(float(probs[run.target.setup.adversarial_class]), 6)}
        return levels, {**facts, **info}

    def finish(self, train: ImageSet, ctx: PoisonContext, levels: torch.Tensor, info: dict[str, Any],
               session: GenerationSession | None = None) -> PoisonedSet:
        """The levels added to the poison rows only: those are the poisoned indices (clean labels)."""
        rows = self.setup(train, ctx).poison_rows
        x = train.x.clone()
        sel = rows.to(x.device)
        budget = self.budget_255()
        x[sel] = add_levels(x[sel], levels[rows].to(x.device).clamp(-budget, budget))
        return PoisonedSet(x, train.y.clone(), rows, info=info, session=session)
