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
across trials), forest's 250 signAdam steps with its step decay but 1 restart instead of 8, the 1 % budget
and 16/255 of the paper; ``smoke``: seconds, for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from benchmark.gradmatch import MATCHING_LOSSES, Grads
from benchmark.gradmatch_poison import MatchingRun
from benchmark.params import param
from benchmark.registry import register_poison
from benchmark.targeted_poison import TARGETED_PRESETS, TargetedParams, TargetedPoison


@dataclass(frozen=True)
class WitchesBrewParams(TargetedParams):
    loss: str = param("similarity", "matching loss: similarity = 1 - cos over all parameters (forest default), "
                                     "scalar-product = -<g, target>/|target|", choices=MATCHING_LOSSES)


_PRESETS: dict[str, dict[str, Any]] = {
    "paper": TARGETED_PRESETS["paper"],
    "cpu": dict(TARGETED_PRESETS["cpu"], restarts=1),
    "smoke": dict(TARGETED_PRESETS["smoke"], steps=4),
}


@register_poison("witches-brew", aliases=("gradient-matching",))
class WitchesBrew(TargetedPoison[WitchesBrewParams]):
    """Targeted: 1 % of the training set aligned by gradient matching with one target's adversarial gradient (Geiping et al. 2021)."""

    preset_params = _PRESETS

    def batch_target(self, run: MatchingRun, rows: torch.Tensor,
                     params: Sequence[torch.Tensor]) -> tuple[Grads, torch.Tensor]:
        return self.adversarial_gradient(run, params)
