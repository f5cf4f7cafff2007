"""TAP: targeted adversarial poisoning (Fowl, Goldblum, Chiang, Geiping, Czaja, Goldstein, "Adversarial
Examples Make Strong Poisons", NeurIPS 2021; official code github.com/lhfowl/adversarial_poisons,
``village/shop/forgemaster_base.py``, ``forgemaster_targeted.py`` / ``forgemaster_untargeted.py``,
``village/materials/diff_data_augmentation.py``, ``village/options.py``, ``anneal.py``).

A surrogate is trained on the clean training set (the attacker owns it), then fixed in eval mode.
Every image's δ (‖δ‖∞ ≤ ε = 8/255, x + δ in [0, 1]) starts from ε·N(0, 1) clipped to the ε-box and takes
``steps`` signed-gradient steps of size ``tau``·ε (official ``--attackiter 250 --tau 0.05``) that lower
the cross-entropy toward the target class (y + 1) mod K through a differentiable random augmentation
of the poison batch (official ``RandomTransform``: a bilinear shift of up to size/8 pixels, 4 on
CIFAR, zero padding, and a horizontal flip, drawn per image and step); ``targeted=false`` raises the
cross-entropy of the true class instead (the untargeted recipe). ``restarts`` repeats the whole
crafting from fresh starts and keeps the restart whose final-step loss, averaged over the poison
batches, is lowest (official ``--restarts 8``). The stored image rounds x + δ to grey levels half up,
as the official PNG export, which keeps the L-inf budget exactly.

Surrogate (:class:`benchmark.clean_surrogate.CleanSurrogate`, shared with the gradient-matching
poisons): the benchmark's own trainer (:func:`benchmark.train.train_model`, the one ``bench pretrain``
uses) on the clean images handed in, cached as safetensors in ``bench pretrain``'s format
under ``<cache>/surrogates`` (keyed by the images, the recipe and the key), so targeted and
untargeted TAP share it; ``backbone=PATH`` uses a ``bench pretrain`` file instead (``--split train``:
the attacker's clean data). Official recipe (``conservative``): ResNet-18, 40 epochs, batch 128, SGD
0.1 Nesterov momentum 0.9, weight decay 5e-4, learning rate ×0.1 at epochs 14, 24 and 35 (``get_optimizers``'
``linear`` MultiStepLR at epochs // 2.667, // 1.6, // 1.142 in floating point: 40 // 1.6 is 24.0, not
25), so it ends at 1e-4, with augmentation.

Presets: ``paper`` is the official recipe above; ``cpu`` is a reduced recipe documented as such
(small-cnn surrogate, 10 one-cycle epochs, 10 PGD steps of 2/255, 1 restart: minutes on 2 cores);
``smoke`` is seconds, for tests. Generation is costed and resumable like EM: the surrogate's training
checkpoints every epoch and the crafting every ``checkpoint_every`` poison batches (the random
numbers of a batch derive from the key, the restart and the batch index, so a resumed generation is
exact), and the manifest's ``generation_seconds`` adds up the sessions (it includes the surrogate's
training unless the surrogate came from the cache; ``info.surrogate`` says which and how long).

Deviations from the official code: the surrogate trains with the benchmark's crop
(pad 4) + flip augmentation (official: the same bilinear shift as the poison's); inputs are [0, 1]
images without mean/std normalisation (the benchmark's convention), so the augmentation pads with
black rather than the mean colour; each poison batch runs all its steps before the next batch starts
(official: one step per batch per pass over the data; the same computation, since the surrogate is
fixed and in eval mode); random numbers come from key-derived generators; partial poisoning uses an
exact key-seeded subset (official ``--budget``: a random subset), derived from the full-ratio noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks.base import PoisonContext
from benchmark.clean_surrogate import CleanSurrogate, SurrogateParams
from benchmark.data import ImageSet
from benchmark.gradmatch import random_shift_flip
from benchmark.noise import Generation, SteppedNoisePoison, derived_generator, score_restart
from benchmark.params import param
from benchmark.registry import register_poison
from benchmark.surrogate import frozen


@dataclass(frozen=True)
class TAPParams(SurrogateParams):
    eps: float = param(8 / 255, "L-inf budget (0.0314 = 8/255)", ge=0.0, le=1.0)
    targeted: bool = param(True, "push toward class (y+1) mod K; false = untargeted error-maximising")
    steps: int = param(250, "PGD steps per image (official --attackiter)", ge=1)
    tau: float = param(0.05, "PGD step size as a fraction of eps (official --tau)", gt=0.0, le=1.0)


_TAP_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(surrogate="resnet18", surrogate_epochs=40, surrogate_batch_size=128, surrogate_lr=0.1,
                  surrogate_schedule="multistep", steps=250, tau=0.05, restarts=8, batch_size=512),
    "cpu": dict(surrogate="small-cnn", surrogate_epochs=10, surrogate_batch_size=256, surrogate_lr=0.2,
                surrogate_schedule="onecycle", steps=10, tau=0.25, restarts=1, batch_size=256),
    "smoke": dict(surrogate="small-cnn", surrogate_epochs=2, surrogate_batch_size=64, surrogate_lr=0.05,
                  surrogate_schedule="onecycle", steps=3, tau=0.4, restarts=1, batch_size=128),
}


@dataclass(kw_only=True)
class TAPRun(Generation):
    """A TAP generation: step ``s`` crafts poison batch ``s % batches`` of restart ``s // batches``;
    ``noise`` holds this restart's int8 levels (on the CPU), ``scalars`` the best restart so far."""

    surrogate: nn.Module
    surrogate_info: dict[str, Any]
    x_u8: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor
    batches: int
    key: int
    restart: int = 0
    last_loss: float = 0.0


@register_poison("tap", aliases=("adversarial-poisoning",))
class TAP(CleanSurrogate, SteppedNoisePoison[TAPParams]):
    """PGD toward class (y+1) mod K on a clean surrogate; targeted=false: error-maximising (TAP, NeurIPS'21)."""

    preset_params = _TAP_PRESETS

    # ----------------------------------------------------------------------------------- crafting

    def craft_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor,
                    gen: torch.Generator) -> tuple[torch.Tensor, float]:
        """``steps`` of signed-gradient PGD on one poison batch; returns δ and the loss of the last
        step (evaluated before its update, as the official score)."""
        p = self.params
        eps, step = p.eps, p.tau * p.eps
        delta = (torch.randn(x.shape, generator=gen, device=gen.device).to(x.device) * eps).clamp_(-eps, eps)
        loss_value = 0.0
        for _ in range(p.steps):
            delta.requires_grad_(True)
            inputs = x + delta
            if p.augment:
                inputs = random_shift_flip(inputs, gen)
            logits = model(inputs)
            loss = F.cross_entropy(logits, target) if p.targeted else -F.cross_entropy(logits, y)
            (grad,) = torch.autograd.grad(loss, delta)
            loss_value = float(loss.detach())
            with torch.no_grad():
                delta = (delta - step * grad.sign()).clamp_(-eps, eps)
                delta = torch.maximum(torch.minimum(delta, 1.0 - x), -x)
        return delta.detach(), loss_value

    @torch.no_grad()
    def success(self, model: nn.Module, x_u8: torch.Tensor, levels: torch.Tensor, y: torch.Tensor,
                target: torch.Tensor, batch: int) -> dict[str, float]:
        """The surrogate's accuracy and target-class rate on the clean images, its error and
        target-class rate on the stored poisons (target: (y+1) mod K, also for untargeted TAP)."""
        clean_ok = clean_target = poison_err = poison_target = 0
        for s in range(0, len(y), batch):
            sl = slice(s, s + batch)
            xc = x_u8[sl].float().div_(255)
            xp = (x_u8[sl].to(torch.int16) + levels[sl].to(x_u8.device, torch.int16)).clamp_(0, 255).float().div_(255)
            pred = model(xc).argmax(1)
            clean_ok += int((pred == y[sl]).sum())
            clean_target += int((pred == target[sl]).sum())
            pred = model(xp).argmax(1)
            poison_err += int((pred != y[sl]).sum())
            poison_target += int((pred == target[sl]).sum())
        n = max(1, len(y))
        return {"surrogate_clean_acc": round(clean_ok / n, 4), "surrogate_clean_target_rate": round(clean_target / n, 4),
                "surrogate_poison_error": round(poison_err / n, 4),
                "surrogate_poison_target_rate": round(poison_target / n, 4)}

    def begin(self, train: ImageSet, ctx: PoisonContext) -> TAPRun:
        p = self.params
        train_dev, model, surrogate_info = self.timed_surrogate(train, ctx)
        batches = math.ceil(len(train) / p.batch_size)
        scalars = {"best": torch.zeros(0, dtype=torch.int8), "loss_sum": 0.0, "best_score": math.inf, "scores": []}
        return TAPRun(torch.zeros(train.x.shape, dtype=torch.int8), p.restarts * batches, scalars=scalars,
                      surrogate=model, surrogate_info=surrogate_info, x_u8=train_dev.x, y=train_dev.y,
                      target=(train_dev.y + 1) % self.num_classes_of(train, ctx), batches=batches, key=ctx.key)

    def craft(self, run: TAPRun) -> None:
        """One poison batch of one restart; after a restart's last batch, its score (official: the mean
        over poison batches of the final-step loss) decides whether it becomes the best."""
        p = self.params
        restart, done = divmod(run.step, run.batches)
        sl = slice(done * p.batch_size, (done + 1) * p.batch_size)
        gen = derived_generator(run.key, self.name, "batch", restart, done, device=run.x_u8.device)
        with frozen(run.surrogate):
            delta, run.last_loss = self.craft_batch(run.surrogate, run.x_u8[sl].float().div(255), run.y[sl],
                                                    run.target[sl], gen)
        budget = self.budget_255()
        run.noise[sl] = torch.floor(delta * 255 + 0.5).clamp_(-budget, budget).to(torch.int8).cpu()
        run.restart = restart
        score_restart(run.scalars, run.last_loss, done, run.batches, restart, p.restarts, run.noise)

    def progress_info(self, run: TAPRun) -> dict[str, Any]:
        return {"restart": run.restart + 1, "loss": round(run.last_loss, 4)}

    def conclude(self, run: TAPRun) -> tuple[torch.Tensor, dict[str, Any]]:
        p = self.params
        best, scores = run.scalars["best"], run.scalars["scores"]
        with frozen(run.surrogate):
            stats = self.success(run.surrogate, run.x_u8, best, run.y, run.target, p.batch_size)
        info = {"targeted": p.targeted, "restart_losses": scores, "chosen_restart": scores.index(min(scores)),
                "surrogate": run.surrogate_info,
                "surrogate_forward_backward": p.restarts * run.batches * p.steps,
                "surrogate_image_forward_backward": p.restarts * len(run.y) * p.steps, **stats}
        return best.to(torch.int16), info
