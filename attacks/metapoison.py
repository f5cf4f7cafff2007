"""MetaPoison: Huang, Geiping, Fowl, Taylor, Goldstein, "MetaPoison: Practical General-purpose Clean-label
Data Poisoning", NeurIPS 2020, arXiv 2004.00225. A *targeted* poison (threat model ``targeted``): the
budgeted poison images (1 % of the training set, of the adversarial class, clean labels) are perturbed so
that a surrogate which takes ``nadapt`` SGD steps on them afterwards classifies the target as the
adversarial class: the adversarial loss is differentiated through the unrolled training steps (a bi-level
problem solved by first-order meta-learning).

Sources (facts and hyper-parameters, no code): the group's toolbox JonasGeiping/data-poisoning ("forest")
@88d929c, ``forest/witchcoven/witch_metapoison.py`` (``--recipe metapoison``: ``--nadapt`` 2 unrolled SGD
steps on the poison batch with the surrogate optimizer's learning rate, then the cross-entropy of the target
toward the intended class, differentiated to the poison), crafted by the same loop as Witches' Brew
(``witch_base.py``: signAdam, ``--attackiter`` 250, ``--tau`` 0.1, ``--restarts`` 8, ``--pbatch`` 512,
``--paugment``, step decay; ``forest/options.py``: ``--eps`` 16, ``--budget`` 0.01, ``--ensemble`` 1). The
shared engine is :mod:`benchmark.gradmatch` (:func:`benchmark.gradmatch.craft` with this objective), the
targeted part :mod:`benchmark.targeted_poison`.

Decisions (documented deviations and readings):

* forest's recipe, not the paper's full one: one clean surrogate (forest ``--ensemble 1``) instead of the
  paper's ensemble of 24 surrogates at staggered training stages that keep training while the poison is
  crafted, and an L-inf perturbation only (the paper adds ReColorAdv colour perturbations). Expect it to be
  weaker than the paper's MetaPoison.
* The unrolled steps' learning rate is the parameter ``unroll_lr``, 1e-4: forest takes the surrogate
  optimizer's current rate, which is 0.1 x 0.1^3 = 1e-4 at the end of the ``conservative`` schedule. At
  that rate two steps barely move the weights, so the objective is close to its first-order term (the
  alignment of the poisons' gradient with the target's adversarial gradient, as a scalar product), and
  signAdam only uses the sign of its gradient. A large rate on the poison batch alone (the paper unrolls on
  training batches that mix poisons with clean images) makes every image look like the adversarial class
  after two steps and the objective saturates: measured on the smoke preset, 0.1 gave a target loss of
  0.0003 within three crafting steps.
* The surrogate is in eval mode while unrolled (running batch-norm statistics), as the engine's other
  objectives; ``surrogate_key`` as Witches' Brew (``cpu``: one surrogate for every trial).

Presets: ``paper`` as above; ``cpu`` (reduced, documented): the small-cnn surrogate of the cpu recipes,
100 signAdam steps with step decay (each costs about three
of Witches' Brew's: two unrolled steps and the target), 1 restart; ``smoke``: seconds, for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from benchmark.gradmatch import Objective
from benchmark.gradmatch_poison import MatchingRun
from benchmark.params import param
from benchmark.registry import register_poison
from benchmark.targeted_poison import TARGETED_PRESETS, TargetedParams, TargetedPoison


@dataclass(frozen=True)
class MetaPoisonParams(TargetedParams):
    nadapt: int = param(2, "unrolled SGD steps of the surrogate on the poison batch (forest --nadapt)", ge=1, le=16)
    unroll_lr: float = param(1e-4, "learning rate of the unrolled steps (forest: the surrogate optimizer's "
                                   "current one, 1e-4 after its schedule)", gt=0.0)


_PRESETS: dict[str, dict[str, Any]] = {
    "paper": TARGETED_PRESETS["paper"],
    "cpu": dict(TARGETED_PRESETS["cpu"], steps=100, restarts=1),
    "smoke": dict(TARGETED_PRESETS["smoke"], steps=3),
}


@register_poison("metapoison")
class MetaPoison(TargetedPoison[MetaPoisonParams]):
    """Targeted: 1 % of the training set crafted through unrolled SGD steps so the target flips class (Huang et al. 2020)."""

    preset_params = _PRESETS

    def objective_facts(self) -> dict[str, Any]:
        return {"objective": f"target cross-entropy after {self.params.nadapt} unrolled SGD steps"}

    def batch_objective(self, run: MatchingRun, rows: torch.Tensor, params: Sequence[torch.Tensor]) -> Objective:
        """The target's cross-entropy toward the adversarial class after ``nadapt`` SGD steps on the poisons."""
        model, y, p = run.surrogate, run.y[rows], self.params
        names = [name for name, _ in model.named_parameters()]

        def objective(inputs: torch.Tensor) -> torch.Tensor:
            weights = dict(zip(names, params, strict=True))
            for _ in range(p.nadapt):
                loss = F.cross_entropy(functional_call(model, weights, (inputs,)), y)
                grads = torch.autograd.grad(loss, list(weights.values()), create_graph=True)
                weights = {n: w - p.unroll_lr * g for (n, w), g in zip(weights.items(), grads, strict=True)}
            return F.cross_entropy(functional_call(model, weights, (run.target.x,)), run.target.adversarial)

        return objective
