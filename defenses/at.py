"""PGD adversarial training (Madry et al. 2018), settings of vinusankars/Convolution-based-Unlearnability.

Per batch: ``steps`` of projected gradient ascent on CE inside the ``eps``-ball (L-inf: signed
steps; L2: per-example normalised steps), random start, images kept in [0, 1], model in eval mode
during the attack (as torchattacks, which the CUDA code uses) and back in train mode for the SGD
step on the adversarial batch. Step size 1.5*eps/steps (CUDA protocol) unless given.
After training, robust accuracy under PGD-20 (same norm and eps, step 2.5*eps/20 as in Madry et
al.) on a fixed stratified test subset.

Decisions (documented): the attack maximises the soft-label CE the trainer trains on (identical to
hard-label CE without mixing; with ``at+mixup`` it attacks the mixed targets); the L2 attack starts
from a random point of the ball (torchattacks v3.2.6 computes one but never applies it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmark.data import ImageSet, stratified_subset
from benchmark.modelstate import kept_modes
from benchmark.params import param
from benchmark.registry import register_defense
from defenses.base import Defense, TrainContext, soft_cross_entropy


def _per_example_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.dim() - 1)))


def project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Project each example's perturbation onto the ``norm`` ball of radius ``eps``."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    return delta * (eps / _per_example_norm(delta)).clamp(max=1.0)


def random_start(x: torch.Tensor, norm: str, eps: float, gen: torch.Generator | None) -> torch.Tensor:
    """Uniform in the L-inf cube, or uniform in the L2 ball (direction ~ Gaussian, radius ~ eps*U^(1/d))."""
    if norm == "linf":
        return ((torch.rand(x.shape, generator=gen) * 2 - 1) * eps).to(x.device)
    d = x[0].numel()
    direction = torch.randn(x.shape, generator=gen)
    radius = eps * torch.rand(x.shape[0], generator=gen).pow(1.0 / d)
    return (direction / _per_example_norm(direction) * radius.view(-1, *([1] * (x.dim() - 1)))).to(x.device)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, steps: int, step_size: float,
        gen: torch.Generator | None = None, rand_init: bool = True) -> torch.Tensor:
    """Adversarial examples maximising CE (``y``: class indices or soft labels), batched.

    Leaves the model's mode and parameters untouched; the caller sets eval mode. Returns detached
    images with ``‖x_adv - x‖ <= eps`` and values in [0, 1]."""
    x = x.detach()
    loss_fn = soft_cross_entropy if y.dim() == 2 else F.cross_entropy
    delta = random_start(x, norm, eps, gen) if rand_init else torch.zeros_like(x)
    delta = (x + project(delta, norm, eps)).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = loss_fn(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        if norm == "linf":
            step = step_size * grad.sign()
        else:
            step = step_size * grad / _per_example_norm(grad)
        delta = project(delta.detach() + step, norm, eps)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


@dataclass(frozen=True)
class ATParams:
    norm: str = param("linf", "threat model of the inner attack", choices=("linf", "l2"))
    eps: float = param(8 / 255, "radius (L-inf in [0,1] units: 2/255, 4/255, 8/255, 16/255; L2: 0.25, 0.5, 0.75)", gt=0.0)
    steps: int = param(10, "PGD steps per training batch", ge=1)
    step_size: float = param(0.0, "PGD step size (0 = 1.5*eps/steps, the CUDA protocol)", ge=0.0)
    eval_steps: int = param(20, "PGD steps of the robust-accuracy evaluation, step 2.5*eps/steps (0 = skip it)", ge=0)
    eval_samples: int = param(500, "test images (fixed stratified subset) for robust accuracy", ge=1)


def attack_step_size(p: ATParams, steps: int) -> float:
    return p.step_size if p.step_size > 0 else 1.5 * p.eps / steps


@register_defense("at", aliases=("adversarial-training", "pgd-at"))
class AdversarialTraining(Defense[ATParams], family="adversarial-training"):
    """PGD adversarial training (L-inf or L2), robust accuracy under PGD-20 reported."""

    metrics_help = {"robust_acc": "accuracy (%) under PGD-20 in the training threat model (norm, eps) on "
                                  "`eval_samples` test images"}

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        with kept_modes(model):  # each module's own mode back (a frozen backbone's BN stays in eval mode)
            model.eval()
            x_adv = pgd(model, x, y, p.norm, p.eps, p.steps, attack_step_size(p, p.steps), ctx.generator)
        logits = model(x_adv)
        return soft_cross_entropy(logits, y), logits

    def evaluate(self, model: nn.Module, test: ImageSet, ctx: TrainContext) -> dict[str, Any]:
        p = self.params
        if p.eval_steps == 0:
            return {}
        idx = stratified_subset(test.y, min(p.eval_samples, len(test)), 0) if p.eval_samples < len(test) else None
        x_all = test.x if idx is None else test.x[idx]
        y_all = test.y if idx is None else test.y[idx]
        gen = torch.Generator().manual_seed(ctx.seed)
        correct = 0
        bs = 250
        with kept_modes(model):
            model.eval()
            for start in range(0, len(y_all), bs):
                x = x_all[start:start + bs].to(ctx.device).float().div_(255)
                y = y_all[start:start + bs].to(ctx.device)
                x_adv = pgd(model, x, y, p.norm, p.eps, p.eval_steps, 2.5 * p.eps / p.eval_steps, gen)
                with torch.no_grad():
                    correct += int((model(x_adv).argmax(1) == y).sum())
        return {"robust_acc": round(100.0 * correct / max(1, len(y_all)), 2),
                "robust_eval": f"PGD-{p.eval_steps} {p.norm} eps={p.eps:.5f} on {len(y_all)} test images"}
