"""The resumable crafting of a gradient-matching poison set (the engine is :mod:`benchmark.gradmatch`):
a fixed surrogate trained on the clean data (:class:`benchmark.clean_surrogate.CleanSurrogate`), the
poison images crafted in batches of ``batch_size`` (forest ``--pbatch``), ``restarts`` times (the restart
with the lowest mean final-step loss is kept, forest ``_brew``), checkpointed and resumed by the loop of
:class:`benchmark.noise.SteppedNoisePoison`. A poison supplies the target gradient of each batch
(:meth:`GradientMatchingPoison.batch_target`): secure release, the reverse cross-entropy gradient of the
batch's clean images; Witches' Brew, one target image's gradient toward the adversarial class, the same
for every batch, with :meth:`GradientMatchingPoison.poison_rows` the budgeted poison subset.

Each poison batch runs all its steps before the next batch starts (forest: one step per batch per pass
over the poison set); with a fixed surrogate in eval mode and a per-batch objective this is the same
computation, and the random numbers of a batch derive from the key, the restart and the batch index, so
a resumed generation is exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from attacks.base import PoisonContext
from benchmark.clean_surrogate import CleanSurrogate, SurrogateParams
from benchmark.data import ImageSet
from benchmark.gradmatch import (
    OPTIMIZERS,
    CraftSettings,
    Grads,
    Objective,
    craft,
    matching_mode,
    matching_objective,
    random_shift_flip,
)
from benchmark.noise import Generation, SteppedNoisePoison, derived_generator, score_restart
from benchmark.params import param
from benchmark.plugin import P

# ===================================================================== the crafting parameters


@dataclass(frozen=True)
class CraftingParams(SurrogateParams):
    """The crafting parameters every poison of this loop declares besides the surrogate's, at forest's
    defaults (``forest/options.py``: signAdam, 250 steps, tau 0.1, step decay, 8 restarts, poison batch 512,
    the shift-and-flip); a poison adds its own."""

    eps: float = param(8 / 255, "L-inf budget (0.0314 = 8/255)", ge=0.0, le=1.0)
    optimizer: str = param("signadam", "signadam (forest --attackoptim signAdam) or pgd (signed steps of tau*eps)",
                           choices=tuple(OPTIMIZERS))
    steps: int = param(250, "crafting steps (forest --attackiter)", ge=1)
    tau: float = param(0.1, "signadam: step in channel-std units at poison batch 512 (forest --tau); "
                            "pgd: step as a fraction of eps", gt=0.0, le=1.0)
    schedule: bool = param(True, "step x0.1 at steps/2.667, /1.6, /1.142 (forest --scheduling)")


#: the surrogate recipes of the presets (``paper``: forest's conservative model; ``cpu``: TAP's cpu surrogate,
#: 10 one-cycle epochs of the small CNN; ``smoke``: seconds, for tests)
SURROGATE_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(surrogate="resnet18", surrogate_epochs=40, surrogate_batch_size=128, surrogate_lr=0.1,
                  surrogate_schedule="multistep"),
    "cpu": dict(surrogate="small-cnn", surrogate_epochs=10, surrogate_batch_size=256, surrogate_lr=0.2,
                surrogate_schedule="onecycle"),
    "smoke": dict(surrogate="small-cnn", surrogate_epochs=2, surrogate_batch_size=64, surrogate_lr=0.05,
                  surrogate_schedule="onecycle"),
}

# ================================================================== resumable crafting of a poison set


@dataclass(kw_only=True)
class MatchingRun(Generation):
    """A gradient-matching generation: step ``s`` crafts poison batch ``s % batches`` of restart
    ``s // batches``; ``noise`` holds this restart's int8 levels (on the CPU), ``scalars`` the best
    restart so far."""

    surrogate: nn.Module
    surrogate_info: dict[str, Any]
    x_u8: torch.Tensor
    y: torch.Tensor
    rows: torch.Tensor  # the images being poisoned, in crafting order
    std: torch.Tensor  # per-channel (1, C, 1, 1) std of the clean images: the unit of signAdam's step
    batches: int
    key: int
    restart: int = 0
    last_loss: float = 0.0
    #: what a poison derives once per generation for its objective (a targeted poison: its target setup)
    target: Any = None


def channel_std(x_u8: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Per-channel std of a uint8 image set in [0, 1] units, (1, C, 1, 1), in chunks (no float copy)."""
    c = x_u8.shape[1]
    s = torch.zeros(c, dtype=torch.float64, device=x_u8.device)
    s2 = torch.zeros_like(s)
    for lo in range(0, x_u8.shape[0], chunk):
        v = x_u8[lo:lo + chunk].transpose(0, 1).flatten(1).double().div_(255)
        s += v.sum(1)
        s2 += v.pow(2).sum(1)
    n = max(1, x_u8.numel() // c)
    return ((s2 / n - (s / n) ** 2).clamp_min(0).sqrt()).float().view(1, c, 1, 1)


class GradientMatchingPoison(CleanSurrogate, SteppedNoisePoison[P]):
    """Gradient matching on a fixed clean surrogate, over the poison set in batches of ``batch_size``,
    ``restarts`` times (the restart with the lowest mean final-step loss is kept), resumable. Params:
    ``eps``, ``steps``, ``tau`` (signAdam lr in channel-std units at pbatch 512, or the PGD step as a
    fraction of eps), ``optimizer``, ``schedule``, ``loss``, ``restarts``, ``batch_size``, ``augment``,
    ``checkpoint_every`` and the surrogate fields. A subclass gives :meth:`batch_target` (gradient
    matching) or its own :meth:`batch_objective` (MetaPoison's unrolled loss)."""

    def batch_target(self, run: MatchingRun, rows: torch.Tensor,
                     params: Sequence[torch.Tensor]) -> tuple[Grads, torch.Tensor]:
        """The target gradient (and its norm) that poison rows ``rows`` are crafted toward."""
        raise NotImplementedError

    def batch_objective(self, run: MatchingRun, rows: torch.Tensor, params: Sequence[torch.Tensor]) -> Objective:
        """What crafting poison rows ``rows`` lowers, as a function of their (perturbed, augmented) images:
        by default the matching loss of their training gradient toward :meth:`batch_target`."""
        target, _ = self.batch_target(run, rows, params)
        return matching_objective(run.surrogate, params, run.y[rows], target, self.params.loss)

    def objective_facts(self) -> dict[str, Any]:
        """What the manifest says the crafting lowered (its restart scores and stored losses are of it)."""
        return {"matching_loss": self.params.loss}

    def poison_rows(self, train: ImageSet, ctx: PoisonContext) -> tuple[torch.Tensor, Any]:
        """The images to craft, in crafting order, and what the objective needs once per generation
        (``MatchingRun.target``). Default: every image and nothing; a targeted poison: its budgeted
        subset and its target."""
        return torch.arange(len(train)), None

    def settings(self, run: MatchingRun) -> CraftSettings:
        p = self.params
        if p.optimizer == "signadam":
            lr: float | torch.Tensor = run.std * p.tau * (p.batch_size / 512)
        else:
            lr = p.tau * p.eps
        return CraftSettings(eps=p.eps, steps=p.steps, lr=lr, optimizer=p.optimizer, schedule=p.schedule)

    def begin(self, train: ImageSet, ctx: PoisonContext) -> MatchingRun:
        p = self.params
        train_dev, model, surrogate_info = self.timed_surrogate(train, ctx)
        rows, target = self.poison_rows(train_dev, ctx)
        rows = rows.to(ctx.device)
        batches = max(1, math.ceil(len(rows) / p.batch_size))
        scalars = {"best": torch.zeros(0, dtype=torch.int8), "loss_sum": 0.0, "best_score": math.inf, "scores": []}
        return MatchingRun(torch.zeros(train.x.shape, dtype=torch.int8), p.restarts * batches, scalars=scalars,
                           surrogate=model, surrogate_info=surrogate_info, x_u8=train_dev.x, y=train_dev.y, rows=rows,
                           std=channel_std(train_dev.x), batches=batches, key=ctx.key, target=target)

    def craft(self, run: MatchingRun) -> None:
        p = self.params
        restart, done = divmod(run.step, run.batches)
        rows = run.rows[done * p.batch_size:(done + 1) * p.batch_size]
        gen = derived_generator(run.key, self.name, "batch", restart, done, device=run.x_u8.device)
        with matching_mode(run.surrogate) as params:
            delta, trace = craft(run.x_u8[rows].float().div(255), self.batch_objective(run, rows, params),
                                 self.settings(run), gen, augment=random_shift_flip if p.augment else None)
        run.last_loss = float(trace[-1])
        budget = self.budget_255()
        run.noise[rows.cpu()] = torch.floor(delta * 255 + 0.5).clamp_(-budget, budget).to(torch.int8).cpu()
        run.restart = restart
        score_restart(run.scalars, run.last_loss, done, run.batches, restart, p.restarts, run.noise)

    def progress_info(self, run: MatchingRun) -> dict[str, Any]:
        return {"restart": run.restart + 1, "loss": round(run.last_loss, 4)}

    def stored_alignment(self, run: MatchingRun, levels: torch.Tensor) -> float:
        """Mean over poison batches of the crafting objective on the stored (quantised) poisons, without
        augmentation: what the surrogate sees when it trains on the released images."""
        p = self.params
        total = 0.0
        with matching_mode(run.surrogate) as params:
            for b in range(run.batches):
                rows = run.rows[b * p.batch_size:(b + 1) * p.batch_size]
                xp = (run.x_u8[rows].to(torch.int16) + levels[rows.cpu()].to(run.x_u8.device, torch.int16))
                xp = xp.clamp_(0, 255).float().div_(255)
                total += float(self.batch_objective(run, rows, params)(xp).detach())
        return total / run.batches

    def conclude(self, run: MatchingRun) -> tuple[torch.Tensor, dict[str, Any]]:
        p = self.params
        best, scores = run.scalars["best"], run.scalars["scores"]
        images = len(run.rows)
        info = {**self.objective_facts(), "restart_losses": scores, "chosen_restart": scores.index(min(scores)),
                "stored_matching_loss": round(self.stored_alignment(run, best), 6),
                "clean_matching_loss": round(self.stored_alignment(run, torch.zeros_like(best)), 6),
                "surrogate": run.surrogate_info,
                # each crafting step: a forward, the poison gradient with its graph, and its backward
                "surrogate_forward_double_backward": p.restarts * run.batches * p.steps,
                "surrogate_image_forward_double_backward": p.restarts * images * p.steps}
        return best.to(torch.int16), info
