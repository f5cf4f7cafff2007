"""Secure dataset release: Fowl, Chiang, Goldblum, Geiping, Bansal, Czaja, Goldstein, "Preventing
Unauthorized Use of Proprietary Data: Poisoning for Secure Dataset Release", arXiv 2103.02683. An
availability poison: every released image is perturbed (L-inf <= eps, 8/255 by default) so that the
training gradient it induces on a surrogate trained on the clean data aligns with the gradient of a
*reverse cross-entropy* on the clean data; a victim that trains on the released images then descends the
reverse cross-entropy, i.e. learns to put little probability on the true class. It is gradient alignment
solved by signed Adam / PGD, not TAP (adversarial examples toward a shifted class).

Sources (facts and hyper-parameters, no code): the group's toolbox JonasGeiping/data-poisoning
("forest") @88d929c, ``forest/witchcoven/witch_base.py`` (target gradient, restarts, signAdam, step
decay, projection), ``forest/witchcoven/witch_matching.py`` (the ``similarity`` passenger loss),
``forest/options.py`` (defaults: ``--attackoptim signAdam --attackiter 250 --tau 0.1 --restarts 8
--pbatch 512 --paugment --scheduling --loss similarity``); the first author's code
lhfowl/adversarial_poisons, ``village/utils.py`` ``reverse_xent_avg`` (the reverse cross-entropy) and
``village/shop/forgemaster_matching.py`` (the same passenger loss). The engine is
:mod:`benchmark.gradmatch`, the resumable crafting loop :mod:`benchmark.gradmatch_poison`.

Target gradient (``target_criterion``): ``reverse-xent`` (default, the paper's reverse cross-entropy as
the authors' code computes it) is the gradient of mean -log(1 - p_y(x)) over the poison batch's clean
images x with their true labels y; ``unxent`` is forest's alternative, the negated cross-entropy
gradient -grad CE(f(x), y). Both point where the true-class probability falls; they differ in weighting
(the reverse cross-entropy's gradient is largest on images the surrogate is confident about, the negated
cross-entropy's on images it gets wrong). The poison's own gradient is that of the plain cross-entropy
with the true labels (what a victim trains on), through the random shift-and-flip when ``augment``.

Decisions (documented deviations and readings):

* The target gradient of each poison batch is computed on the clean images of that batch, once, with the
  fixed surrogate in eval mode (no augmentation), and the batch is matched to it: each released image is
  aligned with the reverse cross-entropy of the data it replaces.
* signAdam's step ``tau`` is in units of each channel's std of the clean training set, as forest's
  normalised inputs (``tau`` x pbatch/512 there); our inputs are [0, 1] without normalisation.
* Surrogate: :class:`benchmark.clean_surrogate.CleanSurrogate` (forest's ``conservative`` recipe at
  ``paper``: ResNet-18, 40 epochs; cached under ``<cache>/surrogates``; ``backbone=PATH`` takes a
  ``bench pretrain --split train`` file). Its augmentation is the benchmark's crop + flip.
* Stored images round x + delta to grey levels half up; the L-inf budget holds exactly.
* The paper's own CIFAR-10 crafting schedule could not be read here (only its abstract was reachable), so
  ``paper`` uses forest's defaults listed above with eps = 8/255.

Presets: ``paper`` as above; ``cpu`` (reduced, documented): a small-cnn surrogate (10 one-cycle epochs,
TAP's cpu surrogate recipe), 10 signAdam steps of tau 0.2 without the step decay (forest's milestones
would leave 3 full-size steps out of 10; on a 2k-image subset the stored poisons' matching loss ended
lower without them, and the victim's accuracy lower), 1 restart, poison batch 256; ``smoke``: seconds,
for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from benchmark.gradmatch import MATCHING_LOSSES, TARGET_CRITERIA, Grads, target_gradient
from benchmark.gradmatch_poison import (
    SURROGATE_PRESETS,
    CraftingParams,
    GradientMatchingPoison,
    MatchingRun,
)
from benchmark.params import param
from benchmark.registry import register_poison


@dataclass(frozen=True)
class SecureReleaseParams(CraftingParams):
    eps: float = param(8 / 255, "L-inf budget (0.0314 = 8/255, the paper's)", ge=0.0, le=1.0)
    target_criterion: str = param("reverse-xent", "target gradient on the clean batch: reverse-xent (the paper's "
                                                  "-log(1-p_y)) or unxent (forest: the negated cross-entropy gradient)",
                                  choices=("reverse-xent", "unxent"))
    loss: str = param("similarity", "matching loss: similarity = 1 - cos over all parameters (forest default), "
                                     "scalar-product = -<g, target>/|target|", choices=MATCHING_LOSSES)


_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(SURROGATE_PRESETS["paper"], steps=250, tau=0.1, restarts=8, batch_size=512),
    "cpu": dict(SURROGATE_PRESETS["cpu"], steps=10, tau=0.2, schedule=False, restarts=1, batch_size=256),
    "smoke": dict(SURROGATE_PRESETS["smoke"], steps=3, tau=0.1, restarts=1, batch_size=128),
}


@register_poison("secure-release", aliases=("alignment-poison",))
class SecureRelease(GradientMatchingPoison[SecureReleaseParams]):
    """Gradient alignment with the reverse cross-entropy on a clean surrogate (Fowl et al. 2021, secure release)."""

    preset_params = _PRESETS

    def batch_target(self, run: MatchingRun, rows: torch.Tensor,
                     params: Sequence[torch.Tensor]) -> tuple[Grads, torch.Tensor]:
        x = run.x_u8[rows].float().div(255)
        return target_gradient(run.surrogate, params, x, run.y[rows], TARGET_CRITERIA[self.params.target_criterion])

    def conclude(self, run: MatchingRun) -> tuple[torch.Tensor, dict[str, Any]]:
        levels, info = super().conclude(run)
        return levels, {"target_criterion": self.params.target_criterion, **info}
