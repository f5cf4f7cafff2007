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
30 signAdam steps with step decay, 1 restart; ``smoke``: seconds, for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from benchmark.clean_surrogate import check_surrogate_params
from benchmark.gradmatch import OPTIMIZERS, Objective
from benchmark.gradmatch_poison import MatchingRun
from benchmark.params import param
from benchmark.registry import register_poison
from benchmark.targeted_poison import TargetedPoison


@dataclass(frozen=True)
class MetaPoisonParams:
    budget: float = param(0.01, "fraction of the training set perturbed (forest --budget; images of the "
                                "adversarial class)", gt=0.0, le=1.0)
    eps: float = param(16 / 255, "L-inf budget (0.0627 = 16/255, forest --eps 16)", ge=0.0, le=1.0)
    nadapt: int = param(2, "unrolled SGD steps of the surrogate on the poison batch (forest --nadapt)", ge=1, le=16)
    unroll_lr: float = param(1e-4, "learning rate of the unrolled steps (forest: the surrogate optimizer's "
                                   "current one, 1e-4 after its schedule)", gt=0.0)
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

    @property
    def loss(self) -> str:
        """The crafting loop's restart score is the objective itself (no matching loss)."""
        return "unrolled-adversarial"

    def validate(self, owner: str) -> None:
        check_surrogate_params(owner, self)


_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(surrogate="resnet18", surrogate_epochs=40, surrogate_batch_size=128, surrogate_lr=0.1,
                  surrogate_schedule="multistep", steps=250, tau=0.1, restarts=8, batch_size=512),
    "cpu": dict(surrogate="small-cnn", surrogate_epochs=10, surrogate_batch_size=256, surrogate_lr=0.2,
                surrogate_schedule="onecycle", surrogate_key=0, steps=30, restarts=1),
    "smoke": dict(surrogate="small-cnn", surrogate_epochs=2, surrogate_batch_size=64, surrogate_lr=0.05,
                  surrogate_schedule="onecycle", steps=3, restarts=1, budget=0.05),
}


@register_poison("metapoison")
class MetaPoison(TargetedPoison[MetaPoisonParams]):
    """Targeted: 1 % of the training set crafted through unrolled SGD steps so the target flips class (Huang et al. 2020)."""

    preset_params = _PRESETS

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
