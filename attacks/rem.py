"""REM: Robust Error-Minimizing noise (Fu et al., ICLR 2022), official code fshp971/robust-unlearnable-examples.

min-min-max with EOT over flip + crop: every generation step crafts the batch's noise δu (fresh
U(-ρu, ρu) start, ``u_steps`` signed-gradient *descent* steps) against the expected loss, over
``eot_samples`` random augmentations, of an inner perturbation δa that *maximises* the loss
(:meth:`RobustErrorMinimizing.inner_perturbation`: PGD ascent of radius ρa); the noise is stored as
integer grey levels; then the surrogate takes one PGD adversarial-training step (radius ρa) on the
augmented noisy batch. After ``surrogate_steps`` steps a final pass regenerates every sample's noise
with the trained surrogate. Model inputs are x - 0.5 (REM's scaling), so radii are in [0,1] units.

The class is the reusable machinery: SEM (:mod:`attacks.sem`) only overrides ``inner_perturbation``.
The gradient through the inner maximiser is Danskin-style: δa is treated as a constant and the
loss gradient at x_adv is backpropagated through the (differentiable) augmentation to δu.

The surrogate's AT attack runs with the model in eval mode (BatchNorm running statistics untouched),
then one train-mode SGD step on the adversarial batch, as the official code does. (Revision 1 ran the
attack in train mode, which let the 10 attack forwards of every step drive the BatchNorm statistics
that the eval-mode noise crafting uses.)

Random streams: every step draws from a generator seeded by derived_seed(key, name, "step", step),
so a resumed generation is exact. On a CUDA device that generator lives on the GPU (no host draws
and copies in the hot loop), so GPU and CPU generations use different random streams and give
different (equally valid) noise; the CPU stream is the one the committed CPU results were made with.

Deviations (documented): the EOT samples are processed as one batch (same maths, faster); the final
pass covers every sample (the official loader drops the last partial batch, whose samples keep their
in-training noise); partial poisoning poisons an exact subset of round(ratio·N) images seeded by the
key (official REM: fixed index files ``data/indices/cifar10/idx-{20,40,60,80}.pkl``). The noise does
not depend on the ratio, so a partial poison is derived from the full-ratio artifact (see
:class:`attacks.em.NoisePoison`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks.base import PoisonContext, PoisonedSet
from attacks.em import (
    Checkpoint,
    NoisePoison,
    build_surrogate,
    check_surrogate,
    derived_generator,
    derived_seed,
    frozen,
    noisy_error_rate,
    report,
    sgd,
    uniform,
)
from benchmark.data import ImageSet
from benchmark.errors import BenchError
from benchmark.params import param
from benchmark.registry import register_poison


def random_flip_crop(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Per-sample random horizontal flip + random crop (zero padding ``pad``), batched and
    differentiable with respect to the pixel values (a gather). Draws on ``gen``'s device."""
    n, c, h, w = x.shape
    where = gen.device
    if pad <= 0:
        flip = (torch.rand(n, generator=gen, device=where) < 0.5).to(x.device)
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(2 * pad + 1, (n,), generator=gen, device=where).to(x.device)
    ox = torch.randint(2 * pad + 1, (n,), generator=gen, device=where).to(x.device)
    flip = (torch.rand(n, generator=gen, device=where) < 0.5).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = ox[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(-1), cols)[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def pgd_ascent(model: nn.Module, x: torch.Tensor, y: torch.Tensor, radius: float, steps: int,
               step_size: float, gen: torch.Generator) -> torch.Tensor:
    """L-inf PGD that maximises CE: random start in the ball, signed steps, projection to the
    ``radius``-ball around ``x`` and to [0, 1]. Returns the detached adversarial images."""
    if radius <= 0 or steps <= 0:
        return x.detach()
    x = x.detach()
    x_adv = (x + uniform(x.shape, radius, gen, x.device)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.minimum(torch.maximum(x_adv.detach() + step_size * grad.sign(), x - radius), x + radius)
        x_adv = x_adv.clamp(0, 1)
    return x_adv.detach()


@dataclass(frozen=True)
class REMParams:
    rho_u: float = param(8 / 255, "L-inf budget of the stored noise (rho_u)", ge=0.0, le=1.0)
    u_steps: int = param(10, "signed-gradient descent steps on the noise per batch", ge=1)
    u_step_size: float = param(1.6 / 255, "noise step size alpha_u", gt=0.0)
    rho_a: float = param(4 / 255, "radius of the inner (defender) perturbation and of the surrogate's AT", ge=0.0, le=1.0)
    pgd_steps: int = param(10, "PGD steps of the inner maximisation and of the surrogate's AT", ge=0)
    pgd_step_size: float = param(0.8 / 255, "PGD step size alpha_a", gt=0.0)
    eot_samples: int = param(5, "augmentations averaged per noise step (EOT)", ge=1)
    crop_pad: int = param(4, "random-crop padding of the augmentation T (flip always on)", ge=0)
    surrogate: str = param("resnet18", "surrogate architecture (bench list models)")
    surrogate_steps: int = param(5000, "surrogate training steps (each also refreshes its batch's noise)", ge=0)
    batch_size: int = param(128, "generation batch size", ge=2)
    lr: float = param(0.1, "surrogate SGD learning rate", gt=0.0)
    lr_decay: float = param(0.1, "learning-rate decay factor", gt=0.0, le=1.0)
    lr_decay_every: int = param(2000, "decay the learning rate every this many steps", ge=1)
    momentum: float = param(0.9, "surrogate SGD momentum", ge=0.0, lt=1.0)
    weight_decay: float = param(5e-4, "surrogate weight decay", ge=0.0)
    checkpoint_every: int = param(100, "checkpoint every this many steps (0 = never)", ge=0)

    def validate(self, owner: str) -> None:
        check_surrogate(owner, self.surrogate)
        if self.rho_a >= self.rho_u > 0:
            raise BenchError(f"{owner}: rho_a={self.rho_a:.5f} must be below rho_u={self.rho_u:.5f} "
                             "(the noise must be stronger than the perturbation it resists)")


_REM_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(surrogate="resnet18", surrogate_steps=5000, batch_size=128, u_steps=10, u_step_size=1.6 / 255,
                  pgd_steps=10, pgd_step_size=0.8 / 255, eot_samples=5, lr_decay_every=2000),
    # cpu: ~4 epochs of single-step (random start + 1 step) AT of a small CNN on the 20k subset, no
    # EOT repeats; a reduced recipe, not the paper's (the paper preset is the official one)
    "cpu": dict(surrogate="small-cnn", surrogate_steps=600, batch_size=128, u_steps=5, u_step_size=2 / 255,
                pgd_steps=1, pgd_step_size=4 / 255, eot_samples=1, lr_decay_every=300, checkpoint_every=100),
    "smoke": dict(surrogate="small-cnn", surrogate_steps=4, batch_size=64, u_steps=2, u_step_size=4 / 255,
                  pgd_steps=1, pgd_step_size=2 / 255, eot_samples=2, lr_decay_every=1000, checkpoint_every=2),
}


@register_poison("rem", aliases=("robust-em",))
class RobustErrorMinimizing(NoisePoison):
    """Robust error-minimizing noise: min-min-max over a PGD defender with EOT (REM, ICLR'22)."""

    Params = REMParams
    preset_params = _REM_PRESETS
    radius_field = "rho_u"
    revision = 2  # 2: the surrogate's AT attack runs in eval mode, as the official code (see module doc)
    shares_full_noise = True

    # ------------------------------------------------------------------ the overridable pieces

    def inner_perturbation(self, model: nn.Module, x_def: torch.Tensor, y: torch.Tensor,
                           gen: torch.Generator) -> torch.Tensor:
        """The defender's perturbation of the augmented noisy images: PGD ascent of radius ρa."""
        p = self.params
        return pgd_ascent(model, x_def, y, p.rho_a, p.pgd_steps, p.pgd_step_size, gen)

    def inner_passes(self) -> int:
        """Forward+backward passes one inner perturbation costs (for the cost report)."""
        p = self.params
        return p.pgd_steps if p.rho_a > 0 else 0

    # ------------------------------------------------------------------------ the algorithm

    def eot_gradient(self, model: nn.Module, x_rep: torch.Tensor, y_rep: torch.Tensor, delta: torch.Tensor,
                     gen: torch.Generator) -> torch.Tensor:
        """∇δ of CE(f(T(clamp(x + δ)) + δa)) over the EOT copies ``x_rep`` (``eot_samples`` copies of
        the batch), with δa = inner_perturbation(T(x + δ)) - T(x + δ) held constant (Danskin): the
        gradient flows through the augmentation T only."""
        k = len(x_rep) // len(delta)
        delta = delta.detach().requires_grad_(True)
        x_def = random_flip_crop((x_rep + delta.repeat(k, 1, 1, 1)).clamp(0, 1), gen, self.params.crop_pad)
        x_adv = self.inner_perturbation(model, x_def.detach(), y_rep, gen)
        loss = F.cross_entropy(model(x_def + (x_adv - x_def).detach()), y_rep)
        (grad,) = torch.autograd.grad(loss, delta)
        return grad

    def craft_noise(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """δu for one batch (float, [0,1] units): signed-gradient *descent* on the EOT expectation of the
        inner max, from a fresh U(-ρu, ρu) start. Call with the model frozen (eval mode)."""
        p = self.params
        k = p.eot_samples
        delta = uniform(x.shape, p.rho_u, gen, x.device)
        x_rep, y_rep = x.repeat(k, 1, 1, 1), y.repeat(k)
        for _ in range(p.u_steps):
            grad = self.eot_gradient(model, x_rep, y_rep, delta, gen)
            delta = (delta - p.u_step_size * grad.sign()).clamp(-p.rho_u, p.rho_u)
        return delta

    def surrogate_update(self, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                         levels: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[float, float]:
        """One PGD-AT SGD step on T(x + stored noise): the attack in eval mode, the step in train mode
        (official). Returns (loss, accuracy) on the batch."""
        p = self.params
        x_def = random_flip_crop((x + levels.float() / 255).clamp(0, 1), gen, p.crop_pad)
        model.eval()
        x_adv = pgd_ascent(model, x_def, y, p.rho_a, p.pgd_steps, p.pgd_step_size, gen)
        model.train()
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach()), float((logits.argmax(1) == y).float().mean())

    def quantize(self, delta: torch.Tensor) -> torch.Tensor:
        """Stored noise: round(255 δ) as int8 grey levels, within ±budget."""
        b = self.budget_255()
        return torch.round(delta * 255).clamp_(-b, b).to(torch.int8)

    def generation_step(self, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                        gen: torch.Generator) -> tuple[torch.Tensor, float, float]:
        """One training step of the generation: refresh the batch's noise, then one AT step.
        ``x`` is float in [0,1]. Returns (int8 noise levels, AT loss, AT accuracy)."""
        with frozen(model):
            levels = self.quantize(self.craft_noise(model, x, y, gen))
        loss, acc = self.surrogate_update(model, opt, x, levels, y, gen)
        return levels, loss, acc

    def passes_per_step(self) -> tuple[int, int]:
        """(noise-crafting, surrogate-update) forward+backward passes of batch size per step."""
        p = self.params
        return p.u_steps * p.eot_samples * (self.inner_passes() + 1), p.pgd_steps * (p.rho_a > 0) + 1

    def build(self, num_classes: int, in_channels: int, key: int, device: torch.device) -> tuple[nn.Module, torch.optim.SGD]:
        p = self.params
        model = build_surrogate(p.surrogate, num_classes, in_channels, derived_seed(key, self.name, "init"),
                                device, centered=True)
        return model, sgd(model, p.lr, p.momentum, p.weight_decay)

    def _batch(self, step: int, n: int, key: int, device: torch.device) -> torch.Tensor:
        """Indices of training step ``step``: shuffled epochs (drop_last), each epoch's order derived
        from the key, so the stream is a function of the step (resumable without RNG state). The
        epoch's permutation is drawn once (on CPU) and kept on the device."""
        bs = min(self.params.batch_size, n)
        per_epoch = n // bs
        epoch, pos = divmod(step, per_epoch)
        cache_key = (key, n, epoch, str(device))
        cached = getattr(self, "_perm", None)
        if cached is None or cached[0] != cache_key:
            perm = torch.randperm(n, generator=derived_generator(key, self.name, "epoch", epoch)).to(device)
            self._perm = cached = (cache_key, perm)
        return cached[1][pos * bs:(pos + 1) * bs]

    def generate(self, train: ImageSet, ctx: PoisonContext) -> PoisonedSet:
        p: REMParams = self.params
        if ctx.ratio <= 0:
            return self.finish(train, ctx, torch.zeros(0), {})
        dev = ctx.device
        x_u8, y = train.x.to(dev), train.y.to(dev)
        n = len(y)
        num_classes = max(ctx.num_classes, int(y.max()) + 1)
        model, opt = self.build(num_classes, int(x_u8.shape[1]), ctx.key, dev)
        levels = torch.zeros(x_u8.shape, dtype=torch.int8, device=dev)
        final_batches = math.ceil(n / p.batch_size)
        total = p.surrogate_steps + final_batches
        ckpt = Checkpoint(ctx.workdir, p.checkpoint_every)
        step, last_acc = 0, 0.0
        state = ckpt.load(levels.shape)
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            levels = state["noise"].to(dev)
            step, last_acc = int(state["step"]), float(state["acc"])
        craft, update = self.passes_per_step()
        while step < total:
            gen = derived_generator(ctx.key, self.name, "step", step, device=dev)
            if step < p.surrogate_steps:
                for group in opt.param_groups:
                    group["lr"] = p.lr * p.lr_decay ** (step // p.lr_decay_every)
                idx = self._batch(step, n, ctx.key, dev)
                levels[idx], _loss, last_acc = self.generation_step(model, opt, x_u8[idx].float().div_(255), y[idx], gen)
            else:  # final regeneration pass with the trained surrogate
                j = step - p.surrogate_steps
                idx = torch.arange(j * p.batch_size, min(n, (j + 1) * p.batch_size), device=dev)
                with frozen(model):
                    levels[idx] = self.quantize(self.craft_noise(model, x_u8[idx].float().div_(255), y[idx], gen))
            step += 1
            if ckpt.due(step) and step < total:
                ckpt.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "noise": levels.cpu(),
                           "step": step, "acc": last_acc})
            report(ctx, step, total, 1.0 - last_acc)
        err = noisy_error_rate(model, x_u8, lambda sl: levels[sl].float() / 255, y, 2 * p.batch_size)
        batch_passes = p.surrogate_steps * (craft + update) + final_batches * craft
        info = {"surrogate_steps": p.surrogate_steps,
                "surrogate_forward_backward": batch_passes,
                "surrogate_image_forward_backward": p.surrogate_steps * (craft + update) * min(n, p.batch_size)
                + n * craft,
                "forward_backward_per_step": craft + update,
                "final_train_error": round(err, 6),
                "final_adv_train_acc": round(last_acc, 4),
                "session": ckpt.session_info()}
        return self.finish(train, ctx, levels, info)
