"""The gradient-matching engine of the group's poisons (Witches' Brew, secure dataset release) and of the
poison-aware adversarial-training defense: perturb images so that the training gradient they induce on a
model points along a chosen *target* gradient.

Facts carried over from the group's toolbox, JonasGeiping/data-poisoning ("forest") @88d929c:

* the matching ("passenger") loss, ``forest/witchcoven/witch_matching.py`` ``_passenger_loss``: the
  default ``similarity`` is 1 - cos(poison gradient, target gradient) over all parameter gradients at once
  (1 + (-<t, p> / |t|) / |p|); ``scalar_product`` is -<t, p> / |t|, normalised by the target norm only;
* the target gradient, ``forest/witchcoven/witch_base.py`` ``_initialize_brew`` with
  ``forest/victims/victim_single.py`` ``gradient``: the gradient of a criterion on the target images,
  computed once with the model in eval mode. ``--target_criterion``: ``cross-entropy`` (toward the
  intended class: Witches' Brew), ``unxent`` (the negated cross-entropy gradient of the true class);
  the secure-release authors' own code adds ``reverse_xent`` (lhfowl/adversarial_poisons
  ``village/utils.py`` ``reverse_xent_avg``): -log(1 - p_y), computed as logsumexp(all logits) -
  logsumexp(the other logits);
* crafting, ``_run_trial`` / ``_batched_step``: the poison gradient is taken with ``create_graph`` and the
  loss differentiated to the perturbation; ``--attackoptim signAdam`` (Adam on the sign of that gradient,
  betas 0.9/0.999, eps 1e-8) with lr ``tau`` x pbatch/512 in units of the data set's channel std, or
  ``PGD`` (signed steps); ``--scheduling``: the step size x0.1 at attackiter // 2.667, // 1.6 and
  // 1.142; after each step the perturbation is projected to the L-inf ball and the image box; the
  perturbation starts from eps x N(0, 1) clipped to the ball (``--init randn``); ``--paugment``: the
  differentiable shift-and-flip of the poison batch (``forest/data/kettle_base.py`` ``augment``,
  ``RandomTransform``); ``--restarts``: the trial with the lowest final loss is kept.

The engine: :func:`parameter_gradient`, :func:`target_gradient` with the :data:`TARGET_CRITERIA`,
:func:`matching_loss` and :func:`craft_delta` (one batch, all steps, batched on its device). The
resumable crafting of a whole poison set on a clean surrogate is :mod:`benchmark.gradmatch_poison`
(kept apart so that defenses can use the engine without the poison machinery). Inputs are [0, 1] images without
mean/std normalisation (the benchmark's convention), so step sizes given in std units are scaled by the
channel std.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Grads = list[torch.Tensor]

# ============================================================================ losses and gradients


def reverse_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of -log(1 - softmax(logits)_y), stably: logsumexp(all) - logsumexp(all but y). Descending it
    lowers the probability of the true class (the secure-release target)."""
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(others, dim=1)).mean()


def negated_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-CE: its gradient is forest's ``unxent`` target (the cross-entropy gradient, negated)."""
    return -F.cross_entropy(logits, y)


#: target criteria by forest's / the secure-release code's names
TARGET_CRITERIA: dict[str, Criterion] = {
    "xent": F.cross_entropy,
    "unxent": negated_cross_entropy,
    "reverse-xent": reverse_cross_entropy,
}

MATCHING_LOSSES = ("similarity", "scalar-product")


def parameter_gradient(model: nn.Module, loss: torch.Tensor, params: Sequence[torch.Tensor],
                       create_graph: bool = False) -> Grads:
    """d loss / d params (a graph for a second derivative when ``create_graph``)."""
    return list(torch.autograd.grad(loss, list(params), create_graph=create_graph))


def grad_norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum(g.pow(2).sum() for g in grads))


def target_gradient(model: nn.Module, params: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                    criterion: Criterion) -> tuple[Grads, torch.Tensor]:
    """The detached gradient of ``criterion(model(x), y)`` and its norm (the model's mode as it is)."""
    grads = [g.detach() for g in parameter_gradient(model, criterion(model(x), y), params)]
    return grads, grad_norm(grads)


def matching_loss(poison_grad: Sequence[torch.Tensor], target_grad: Sequence[torch.Tensor],
                  kind: str = "similarity", target_norm: torch.Tensor | None = None) -> torch.Tensor:
    """forest's passenger loss: ``similarity`` = 1 - cos(poison, target) over all parameters;
    ``scalar-product`` = -<poison, target> / |target|."""
    dot = sum((p * t).sum() for p, t in zip(poison_grad, target_grad, strict=True))
    t_norm = grad_norm(target_grad) if target_norm is None else target_norm
    loss = -dot / t_norm.clamp_min(1e-12)
    if kind == "similarity":
        loss = 1 + loss / grad_norm(poison_grad).clamp_min(1e-12)
    return loss


@contextmanager
def matching_mode(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Eval mode with every parameter differentiable (gradients w.r.t. the parameters are the objective;
    the parameters are never updated): yields the parameters; restores modes and flags after."""
    was_training = model.training
    params = list(model.parameters())
    flags = [q.requires_grad for q in params]
    model.eval()
    for q in params:
        q.requires_grad_(True)
    try:
        yield params
    finally:
        for q, flag in zip(params, flags, strict=True):
            q.requires_grad_(flag)
        model.train(was_training)


# ===================================================================================== crafting


def random_shift_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """forest's differentiable augmentation (``RandomTransform``): per image a bilinear shift of up to
    size/8 pixels (``shift`` = size/4 grid steps of 2/(size-1), align_corners, zero padding) and, with
    probability 1/2, a horizontal flip; four uniforms per image."""
    n, _, h, w = x.shape
    r = torch.rand(n, 4, generator=gen, device=gen.device).to(device=x.device, dtype=x.dtype)
    dx = (r[:, 0] - 0.5) * 2 * ((w // 4) / max(1, w - 1))
    dy = (r[:, 1] - 0.5) * 2 * ((h // 4) / max(1, h - 1))
    gx = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, w) + dx.view(n, 1, 1)
    gx = torch.where((r[:, 2] > 0.5).view(n, 1, 1), -gx, gx)
    gy = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, h, 1) + dy.view(n, 1, 1)
    grid = torch.stack([gx.expand(n, h, w), gy.expand(n, h, w)], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def step_decay(step: int, steps: int) -> float:
    """forest ``--scheduling``: the step size's factor at 0-based ``step`` (x0.1 at each milestone)."""
    milestones = (steps // 2.667, steps // 1.6, steps // 1.142)
    return 0.1 ** sum(step >= m for m in milestones)


def project_linf(delta: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Onto the L-inf ball of radius eps, then so that x + delta stays in [0, 1]."""
    delta = delta.clamp(-eps, eps)
    return (x + delta).clamp(0, 1) - x


@dataclass(frozen=True)
class CraftSettings:
    """One batch's crafting: ``lr`` is a float or a per-channel (1, C, 1, 1) tensor in pixel units."""

    eps: float
    steps: int
    lr: float | torch.Tensor
    optimizer: str = "signadam"  # or "pgd": signed steps of size lr
    schedule: bool = True
    loss: str = "similarity"


class SignAdam:
    """Adam on the sign of the gradient (forest ``signAdam``), per element, batched."""

    def __init__(self, like: torch.Tensor) -> None:
        self.m = torch.zeros_like(like)
        self.v = torch.zeros_like(like)
        self.t = 0

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        g = grad.sign()
        self.t += 1
        self.m.mul_(0.9).add_(g, alpha=0.1)
        self.v.mul_(0.999).addcmul_(g, g, value=0.001)
        return (self.m / (1 - 0.9**self.t)) / ((self.v / (1 - 0.999**self.t)).sqrt() + 1e-8)


class SignedSteps:
    """PGD: the sign of the gradient."""

    def __init__(self, like: torch.Tensor) -> None:
        pass

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sign()


OPTIMIZERS = {"signadam": SignAdam, "pgd": SignedSteps}


Objective = Callable[[torch.Tensor], torch.Tensor]


def matching_objective(model: nn.Module, params: Sequence[torch.Tensor], y: torch.Tensor,
                       target_grad: Sequence[torch.Tensor], kind: str = "similarity",
                       criterion: Criterion = F.cross_entropy) -> Objective:
    """Gradient matching as a crafting objective: the matching loss of ``criterion``'s parameter gradient
    on the (perturbed, augmented) inputs with labels ``y`` toward ``target_grad``."""
    t_norm = grad_norm(target_grad)

    def objective(inputs: torch.Tensor) -> torch.Tensor:
        poison_grad = parameter_gradient(model, criterion(model(inputs), y), params, create_graph=True)
        return matching_loss(poison_grad, target_grad, kind, t_norm)

    return objective


def craft(x: torch.Tensor, objective: Objective, settings: CraftSettings, gen: torch.Generator | None,
          augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
          final_objective: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Perturb ``x`` within the L-inf ball to lower ``objective(x + delta)`` (through ``augment`` when
    given): forest's crafting loop, whatever the objective (gradient matching, MetaPoison's unrolled
    adversarial loss). Returns (delta, the objective before each step, plus after the last one if
    ``final_objective``: one more evaluation)."""
    draw_on = gen.device if gen is not None else torch.device("cpu")
    # forest ``--init randn``: eps x N(0, 1) clipped to the ball only; the first step's projection keeps x + delta in [0, 1]
    delta = (torch.randn(x.shape, generator=gen, device=draw_on).to(x.device) * settings.eps).clamp(-settings.eps,
                                                                                                    settings.eps)
    opt = OPTIMIZERS[settings.optimizer](delta)
    trace: list[torch.Tensor] = []

    def evaluate(d: torch.Tensor) -> torch.Tensor:
        inputs = x + d
        return objective(augment(inputs, gen) if augment is not None else inputs)

    for step in range(settings.steps):
        delta.requires_grad_(True)
        loss = evaluate(delta)
        (grad,) = torch.autograd.grad(loss, delta)
        trace.append(loss.detach())
        lr = settings.lr * (step_decay(step, settings.steps) if settings.schedule else 1.0)
        with torch.no_grad():
            delta = project_linf(delta.detach() - lr * opt.direction(grad), x, settings.eps)
    if final_objective:
        delta.requires_grad_(True)  # the objective may need a graph through the input (a poison gradient)
        trace.append(evaluate(delta).detach())
    return delta.detach(), torch.stack(trace)  # one device sync per batch, not one per step


def craft_delta(model: nn.Module, params: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                target_grad: Sequence[torch.Tensor], settings: CraftSettings, gen: torch.Generator | None,
                criterion: Criterion = F.cross_entropy,
                augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                final_objective: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Perturb ``x`` so that ``criterion``'s gradient on (x + delta, y) matches ``target_grad`` (the model
    used as it is: the caller fixes its mode and parameters); see :func:`craft`."""
    objective = matching_objective(model, params, y, target_grad, settings.loss, criterion)
    return craft(x, objective, settings, gen, augment, final_objective)
