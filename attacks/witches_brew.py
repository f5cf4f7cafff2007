"""Witches' Brew: Geiping, Fowl, Huang, Czaja, Taylor, Moeller, Goldstein, "Witches' Brew: Industrial Scale
Data Poisoning via Gradient Matching", ICLR 2021, arXiv 2009.02276. A *targeted* poison (threat model
``targeted``: its own metric, the attack success rate, and its own leaderboard section): a budgeted set
of training images of the adversarial class (1 % of the training set, clean labels) is perturbed within an
L-inf ball (16/255) so that their training gradient on a surrogate aligns (1 - cosine) with the gradient
that would move one chosen test image (the target) into the adversarial class; a victim trained from
scratch on the poisoned set then misclassifies the target.

Sources (facts and hyper-parameters, no code): JonasGeiping/data-poisoning ("forest") @88d929c,
``forest/options.py`` (defaults: ``--recipe gradient-matching --threatmodel single-class --eps 16
--budget 0.01 --attackoptim signAdam --attackiter 250 --tau 0.1 --restarts 8 --pbatch 512 --paugment
--scheduling --loss similarity --target_criterion cross-entropy``, ``--optimization conservative`` for the
clean model), ``forest/witchcoven/witch_matching.py`` (the passenger loss), ``forest/witchcoven/witch_base.py``
(target gradient on the target image toward the intended class, restarts, signAdam, step decay,
projection), ``forest/data/kettle_random_experiment.py`` (the seeded setup: :mod:`benchmark.targets`).
The engine is :mod:`benchmark.gradmatch`, the crafting loop :mod:`benchmark.gradmatch_poison`, the
targeted part :mod:`benchmark.targeted_poison`.

Decisions (documented deviations and readings):

* The surrogate is the clean model forest brews on (``conservative``: ResNet-18, 40 epochs at ``paper``).
  ``surrogate_key`` -1 seeds it from the trial's key (a fresh surrogate per trial, as forest trains one per
  run); ``cpu`` sets it to 0: one surrogate for every trial (forest's ``--modelkey`` fixed while
  ``--poisonkey`` varies), because training a surrogate per trial costs more than the victim there. The
  trials then share the attacker's model: their confidence interval does not cover the surrogate's
  randomness.
* signAdam's ``tau`` is in units of each channel's std (forest normalises its inputs; ours are [0, 1]).
* Stored images round x + delta to grey levels half up; the L-inf budget holds exactly.

Presets: ``paper`` as above (the victim is the ``paper`` preset's ResNet-18 trained from scratch);
``cpu`` (reduced, documented): the small-cnn surrogate of the cpu recipes (10 one-cycle epochs, shared
across trials), 40 signAdam steps with forest's step decay, 2 restarts, the 1 % budget and 16/255 of the
paper; ``smoke``: seconds, for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from benchmark.clean_surrogate import check_surrogate_params
from benchmark.gradmatch import MATCHING_LOSSES, OPTIMIZERS, Grads
from benchmark.gradmatch_poison import MatchingRun
from benchmark.params import param
from benchmark.registry import register_poison
from benchmark.targeted_poison import TargetedPoison


@dataclass(frozen=True)
class WitchesBrewParams:
    budget: float = param(0.01, "fraction of the training set perturbed (forest --budget; images of the "
                                "adversarial class)", gt=0.0, le=1.0)
    eps: float = param(16 / 255, "L-inf budget (0.0627 = 16/255, forest --eps 16)", ge=0.0, le=1.0)
    loss: str = param("similarity", "matching loss: similarity = 1 - cos over all parameters (forest default), "
                                     "scalar-product = -<g, target>/|target|", choices=MATCHING_LOSSES)
    optimizer: str = param("signadam", "signadam (forest --attackoptim signAdam) or pgd (signed steps of tau*eps)",
                           choices=tuple(OPTIMIZERS))
    steps: int = param(250, "crafting steps (forest --attackiter)", ge=1)
    tau: float = param(0.1, "signadam: step in channel-std units at poison batch 512 (forest --tau); "
                            "pgd: step as a fraction of eps", gt=0.0, le=1.0)
    schedule: bool = param(True, "step x0.1 at steps/2.667, /1.6, /1.142 (forest --scheduling)")
    restarts: int = param(8, "crafting restarts; the one with the lowest final loss is kept (forest --restarts)",
                          ge=1, le=64)
    batch_size: int = param(512, "poison batch size (forest --pbatch)", ge=1)
    augment: bool = param(True, "differentiable random shift + flip of the poison batch (forest --paugment)")
    surrogate: str = param("resnet18", "surrogate architecture (bench list models)")
    surrogate_epochs: int = param(40, "surrogate training epochs on the clean set", ge=1)
    surrogate_batch_size: int = param(128, "surrogate training batch size", ge=2)
    surrogate_lr: float = param(0.1, "surrogate peak learning rate (SGD, Nesterov momentum 0.9, wd 5e-4)", gt=0.0)
    surrogate_schedule: str = param("multistep", "multistep: x0.1 at epochs // 2.667, // 1.6, // 1.142 (forest); "
                                    "step; onecycle: the cpu victim schedule", choices=("multistep", "step", "onecycle"))
    surrogate_key: int = param(-1, "seed of the surrogate: -1 = the trial's poison key (a surrogate per trial); "
                                   "K >= 0 = one surrogate for every trial (forest --modelkey K)", ge=-1)
    backbone: str = param("", "PATH.safetensors from `bench pretrain` (--split train) used as the surrogate")
    checkpoint_every: int = param(4, "checkpoint the crafting every this many poison batches (0 = never)", ge=0)

    def validate(self, owner: str) -> None:
        check_surrogate_params(owner, self)


_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(surrogate="resnet18", surrogate_epochs=40, surrogate_batch_size=128, surrogate_lr=0.1,
                  surrogate_schedule="multistep", steps=250, tau=0.1, restarts=8, batch_size=512),
    "cpu": dict(surrogate="small-cnn", surrogate_epochs=10, surrogate_batch_size=256, surrogate_lr=0.2,
                surrogate_schedule="onecycle", surrogate_key=0, steps=40, restarts=2),
    "smoke": dict(surrogate="small-cnn", surrogate_epochs=2, surrogate_batch_size=64, surrogate_lr=0.05,
                  surrogate_schedule="onecycle", steps=4, restarts=1, budget=0.05),
}


@register_poison("witches-brew", aliases=("gradient-matching",))
class WitchesBrew(TargetedPoison[WitchesBrewParams]):
    """Targeted: 1 % of the training set aligned by gradient matching with one target's adversarial gradient (Geiping et al. 2021)."""

    preset_params = _PRESETS

    def batch_target(self, run: MatchingRun, rows: torch.Tensor,
                     params: Sequence[torch.Tensor]) -> tuple[Grads, torch.Tensor]:
        return self.adversarial_gradient(run, params)
