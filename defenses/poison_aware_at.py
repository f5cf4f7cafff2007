"""Poison-aware adversarial training: adversarial poisoning as a defense (Geiping, Fowl, Somepalli,
Goldblum, Moeller, Goldstein, "What doesn't kill you makes you robust(er): how to adversarially train
against data poisoning", arXiv 2102.13624). Official code: github.com/JonasGeiping/data-poisoning
@88d929c — ``forest/victims/training.py`` (``run_step``, ``_split_data``),
``forest/victims/batched_attacks.py`` (``BaseAttack.attack``, ``AlignmentPoisoning``),
``forest/utils.py`` (``_gradient_matching``), ``forest/hyperparameters.py`` (the ``DEFENSE`` preset:
``adversarial-wb-recombine``, strength 16, ``sep-half``, 5 steps) and ``forest/options.py`` (tau 0.1).

Per training batch: the first ``fraction`` of the images become poisons, the rest temporary targets
with a fake label (the most frequent label among the poisons). In eval mode, a perturbation delta of
the poisons (L-inf <= ``eps``, images kept in [0, 1], init N(0, eps^2) clamped to the box) takes
``steps`` steps of signed Adam (lr ``tau``) on the Witches' Brew objective
1 - cos(grad_theta CE(f(x_p + delta), y_p), grad_theta CE(f(x_t), y_fake)) (the spine's gradient-matching
engine, :mod:`benchmark.gradmatch`): training on the poisons then
pushes the targets towards the fake label. The model then takes its SGD step, in train mode, on the
poisons (own labels) together with the targets (true labels). The network learns to resist poisons
crafted against its current state.

Decisions (documented):

* The paper and its code build this defense for targeted and backdoor poisoning; the code has no
  variant for availability poisons, so this is the paper's recommended defense (``DEFENSE`` preset,
  the README's example) applied unchanged to availability poisons.
* forest runs Adam on normalised inputs (mean/std per channel), so its step ``tau`` is in units of
  the channel std; our inputs are not normalised, so the step is ``tau`` times each channel's std,
  measured on the batch (the L-inf budget stays eps in pixel units, as forest's ``eps/ds/255``).
* The targets' gradient does not depend on delta, so it is computed once per batch (forest recomputes
  the same value at every step).
* With soft labels (``mixup+poison-aware-at``) the losses are soft cross-entropies and the poisons'
  majority label is taken over their arg-max labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from benchmark.gradmatch import CraftSettings, craft_delta, target_gradient
from benchmark.modelstate import kept_modes
from benchmark.params import param
from benchmark.registry import register_defense
from defenses.base import Defense, TrainContext, soft_cross_entropy


@dataclass(frozen=True)
class PoisonAwareATParams:
    eps: float = param(16 / 255, "L-inf budget of the crafted poisons (forest default strength 16/255)", gt=0.0, le=1.0)
    steps: int = param(5, "signed-Adam steps per batch (forest DEFENSE preset: 5)", ge=1)
    tau: float = param(0.1, "Adam step size in units of each channel's std (forest --tau 0.1 on normalised inputs)",
                       gt=0.0)
    fraction: float = param(0.5, "share of each batch crafted into poisons, the rest are temporary targets "
                            "(forest sep-half: 0.5)", gt=0.0, lt=1.0)


def split_sizes(n: int, fraction: float) -> int:
    """Number of poisons in a batch of ``n`` (at least one poison and one target)."""
    return min(n - 1, max(1, round(fraction * n)))


def fake_labels(y_poison: torch.Tensor, count: int, num_classes: int) -> torch.Tensor:
    """One-hot rows of the poisons' most frequent (arg-max) label, lowest class on ties (forest's
    ``labels.mode()`` repeated)."""
    mode = torch.bincount(y_poison.argmax(1), minlength=num_classes).argmax()
    return nn.functional.one_hot(mode.expand(count), num_classes).to(y_poison.dtype)


def craft_poisons(model: nn.Module, x_p: torch.Tensor, y_p: torch.Tensor, x_t: torch.Tensor, y_fake: torch.Tensor,
                  p: PoisonAwareATParams, gen: torch.Generator | None,
                  final_objective: bool = False) -> tuple[torch.Tensor, list[float]]:
    """Perturbations of ``x_p`` aligning its training gradient with the targets' fake-label gradient
    (the engine's :func:`benchmark.gradmatch.craft_delta`: signed Adam, 1 - cos, no step decay).

    Leaves the model's mode and parameters untouched (the caller sets eval mode). Returns (delta,
    the alignment objective before each step, plus after the last one if ``final_objective``: an extra
    forward and backward pass that training does not need)."""
    params = [q for q in model.parameters() if q.requires_grad]
    target_grad, _ = target_gradient(model, params, x_t, y_fake, soft_cross_entropy)
    lr = (p.tau * x_p.transpose(0, 1).flatten(1).std(dim=1)).view(1, -1, 1, 1)  # per-channel step
    settings = CraftSettings(eps=p.eps, steps=p.steps, lr=lr, optimizer="signadam", schedule=False)
    delta, trace = craft_delta(model, params, x_p, y_p, target_grad, settings, gen, criterion=soft_cross_entropy,
                               final_objective=final_objective)
    return delta, trace.tolist()


@register_defense("poison-aware-at", aliases=("adversarial-poisoning",))
class PoisonAwareAT(Defense[PoisonAwareATParams], family="adversarial-training"):
    """Adversarial poisoning defense (Geiping et al. 2021, forest): train on poisons crafted on the fly."""

    notes = ("`poison-aware-at` is the targeted-poisoning defense of Geiping et al. (2021) applied unchanged "
             "to availability poisons: half of each batch is crafted into gradient-matching poisons against "
             "the other half.",)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        n_p = split_sizes(x.shape[0], p.fraction)
        x_p, y_p, x_t = x[:n_p].detach(), y[:n_p], x[n_p:].detach()
        with kept_modes(model):  # restored one by one: keeps a frozen backbone frozen
            model.eval()
            delta, _ = craft_poisons(model, x_p, y_p, x_t, fake_labels(y_p, x_t.shape[0], y.shape[1]), p, ctx.generator)
        logits = model(torch.cat([x_p + delta, x_t]))
        return soft_cross_entropy(logits, y), logits
