"""The generation of REM (Fu et al., "Robust Unlearnable Examples: Protecting Data Privacy Against Adversarial
Learning", ICLR 2022; official code fshp971/robust-unlearnable-examples, ``generate_robust_em.py``,
``attacks/robust_workers.py``), shared with SEM (Liu et al., "Stable Unlearnable Example", AAAI 2024; official code
liuyixin-louis/Stable-Unlearnable-Example), which differs only in the defender used while crafting.

min-min-max with EOT over flip + crop: every generation step crafts the batch's noise δu (fresh
U(-ρu, ρu) start, ``u_steps`` signed-gradient *descent* steps) against the expected loss, over
``eot_samples`` random augmentations, of an inner perturbation δa (:meth:`RobustNoisePoison.inner_perturbation`,
written by each poison: REM's PGD ascent of radius ρa, SEM's random draw); the noise is stored as
integer grey levels; then the surrogate takes one PGD adversarial-training step (radius ρa) on the
augmented noisy batch. After ``surrogate_steps`` steps a final pass regenerates every sample's noise
with the trained surrogate. Model inputs are x - 0.5 (REM's scaling), so radii are in [0,1] units.
The gradient through the inner maximiser is Danskin-style: δa is treated as a constant and the loss
gradient at x_adv is backpropagated through the (differentiable) augmentation to δu.

The surrogate's AT attack runs with the model in eval mode (BatchNorm running statistics untouched),
then one train-mode SGD step on the adversarial batch, as the official code does (revision 2; revision
1 ran the attack in train mode).

Random streams: every step draws from a generator seeded by derived_seed(key, name, "step", step), so
a resumed generation is exact. On a CUDA device that generator lives on the GPU, so GPU and CPU
generations use different random streams and give different (equally valid) noise; the CPU stream is
the one the committed CPU results were made with.

Deviations (documented): the EOT samples are processed as one batch (same maths, faster); the final
pass covers every sample (the official loader drops the last partial batch, whose samples keep their
in-training noise); partial poisoning poisons an exact subset of round(ratio·N) images seeded by the
key (official: fixed index files ``data/indices/cifar10/idx-{20,40,60,80}.pkl``), derived from the
full-ratio noise, which does not depend on the ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks.base import PoisonContext
from benchmark.data import ImageSet
from benchmark.errors import BenchError
from benchmark.noise import (
    Generation,
    SteppedNoisePoison,
    derived_generator,
    derived_seed,
    error_progress,
    uniform,
)
from benchmark.params import param
from benchmark.plugin import P
from benchmark.surrogate import build_surrogate, check_surrogate, frozen, noisy_error_rate, sgd


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


REM_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(surrogate="resnet18", surrogate_steps=5000, batch_size=128, u_steps=10, u_step_size=1.6 / 255,
                  pgd_steps=10, pgd_step_size=0.8 / 255, eot_samples=5, lr_decay_every=2000),
    # cpu: ~4 epochs of single-step (random start + 1 step) AT of a small CNN on the 20k subset, no
    # EOT repeats; a reduced recipe, not the paper's (the paper preset is the official one)
    "cpu": dict(surrogate="small-cnn", surrogate_steps=600, batch_size=128, u_steps=5, u_step_size=2 / 255,
                pgd_steps=1, pgd_step_size=4 / 255, eot_samples=1, lr_decay_every=300, checkpoint_every=100),
    "smoke": dict(surrogate="small-cnn", surrogate_steps=4, batch_size=64, u_steps=2, u_step_size=4 / 255,
                  pgd_steps=1, pgd_step_size=2 / 255, eot_samples=2, lr_decay_every=1000, checkpoint_every=2),
}


@dataclass(kw_only=True)
class RobustRun(Generation):
    """A REM/SEM generation: ``noise`` holds int8 levels; the data and key ride along."""

    x_u8: torch.Tensor
    y: torch.Tensor
    key: int


class RobustNoisePoison(SteppedNoisePoison[P]):
    """The REM/SEM generation; a poison writes ``inner_perturbation`` and ``inner_passes``."""

    Params = REMParams
    preset_params = REM_PRESETS
    radius_field = "rho_u"
    revision = 2  # 2: the surrogate's AT attack runs in eval mode, as the official code (see module doc)

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self._perm: tuple[tuple[Any, ...], torch.Tensor] | None = None

    def inner_perturbation(self, model: nn.Module, x_def: torch.Tensor, y: torch.Tensor,
                           gen: torch.Generator) -> torch.Tensor:
        """The defender's perturbation of the augmented noisy images ``x_def`` (the images it returns)."""
        raise NotImplementedError

    def inner_passes(self) -> int:
        """Forward+backward passes one inner perturbation costs (for the cost report)."""
        raise NotImplementedError

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

    def batch_indices(self, step: int, n: int, key: int, device: torch.device) -> torch.Tensor:
        """Indices of training step ``step``: shuffled epochs (drop_last), each epoch's order derived
        from the key, so the stream is a function of the step (resumable without RNG state). The
        epoch's permutation is drawn once (on CPU) and kept on the device."""
        bs = min(self.params.batch_size, n)
        epoch, pos = divmod(step, n // bs)
        cache_key = (key, n, epoch, str(device))
        if self._perm is None or self._perm[0] != cache_key:
            perm = torch.randperm(n, generator=derived_generator(key, self.name, "epoch", epoch)).to(device)
            self._perm = (cache_key, perm)
        return self._perm[1][pos * bs:(pos + 1) * bs]

    # --------------------------------------------------------------- the stepped generation

    def begin(self, train: ImageSet, ctx: PoisonContext) -> RobustRun:
        p: REMParams = self.params
        x_u8, y = train.x.to(ctx.device), train.y.to(ctx.device)
        model, opt = self.build(self.num_classes_of(train, ctx), int(x_u8.shape[1]), ctx.key, ctx.device)
        levels = torch.zeros(x_u8.shape, dtype=torch.int8, device=ctx.device)
        total = p.surrogate_steps + math.ceil(len(y) / p.batch_size)  # training steps, then the final pass
        return RobustRun(levels, total, model, opt, scalars={"acc": 0.0}, x_u8=x_u8, y=y, key=ctx.key)

    def craft(self, run: RobustRun) -> None:
        p: REMParams = self.params
        dev, step = run.noise.device, run.step
        gen = derived_generator(run.key, self.name, "step", step, device=dev)
        if step < p.surrogate_steps:
            for group in run.opt.param_groups:
                group["lr"] = p.lr * p.lr_decay ** (step // p.lr_decay_every)
            idx = self.batch_indices(step, len(run.y), run.key, dev)
            run.noise[idx], _loss, run.scalars["acc"] = self.generation_step(
                run.model, run.opt, run.x_u8[idx].float().div_(255), run.y[idx], gen)
        else:  # final regeneration pass with the trained surrogate
            j = step - p.surrogate_steps
            idx = torch.arange(j * p.batch_size, min(len(run.y), (j + 1) * p.batch_size), device=dev)
            with frozen(run.model):
                run.noise[idx] = self.quantize(self.craft_noise(run.model, run.x_u8[idx].float().div_(255), run.y[idx], gen))

    def progress_info(self, run: RobustRun) -> dict[str, Any]:
        return error_progress(1.0 - run.scalars["acc"])

    def conclude(self, run: RobustRun) -> tuple[torch.Tensor, dict[str, Any]]:
        p: REMParams = self.params
        n, levels = len(run.y), run.noise
        err = noisy_error_rate(run.model, run.x_u8, lambda sl: levels[sl].float() / 255, run.y, 2 * p.batch_size)
        craft, update = self.passes_per_step()
        info = {"surrogate_steps": p.surrogate_steps,
                "surrogate_forward_backward": p.surrogate_steps * (craft + update) + (run.total - p.surrogate_steps) * craft,
                "surrogate_image_forward_backward": p.surrogate_steps * (craft + update) * min(n, p.batch_size)
                + n * craft,
                "forward_backward_per_step": craft + update,
                "final_train_error": round(err, 6),
                "final_adv_train_acc": round(run.scalars["acc"], 4)}
        return levels, info
