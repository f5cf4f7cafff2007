"""EM: Error-Minimizing noise (Huang et al., "Unlearnable Examples: Making Personal Data Unexploitable",
ICLR 2021), official code HanxunH/Unlearnable-Examples (``perturbation.py``).

Sample-wise EM (``em``) alternates ``train_step`` SGD steps of a surrogate on the noisy data with
``num_steps`` of PGD *descent* on every sample's noise, until the surrogate's train error on the
noisy data drops below ``stop_error``. Class-wise EM (``em-classwise``) keeps one noise per class,
updated by averaging one-step descents over the samples of each class in a stratified subset.

The generation loop (checkpoints, resume, progress, cost across sessions), the key-derived random
streams, the exact integer budget and the partial subset are the noise poisons' shared ones
(:mod:`benchmark.noise`); this module writes EM's setup, step and result.

Deviations from the official code (documented): noise is *rounded* to integer levels (the official
dataset truncates the float sum when casting to uint8); sample-wise EM's surrogate reads shuffled
epochs (official: fixed order; see ``_theta_steps``); the stop check evaluates the surrogate on
clamp(x + δ, 0, 1); the number of outer iterations is capped by ``max_iters`` (official: no cap); the
class-wise subset loop keeps one batch when the subset is smaller than ``batch_size``; class-wise EM's
surrogate θ-steps read every batch of an epoch including the last partial one (official loader:
``drop_last=True``; changing it would change the committed cpu-preset noise); partial poisoning uses an
exact subset of round(ratio·N) images seeded by the key (official: ``np.random.choice`` of
int(ratio·N) images with the fixed seed 0).

``official_clamp_bug=true`` reproduces the official dataset arithmetic exactly: the float32
noise is ``mul(255).clamp(0, 255)`` (negative noise zeroed), added to the float32 image, clipped to
[0, 255] and cast to uint8 (truncation). Since 2026-11-25 this path is computed in that float32
arithmetic (:func:`official_clamp_bug_levels`); before, it used floor(255·δ), which differs when
255·δ lies just below an integer (the float32 sum rounds up to it). No committed record used the flag,
so the revision was not bumped.

Partial poisoning (``shares_full_noise``): the noise does not depend on the ratio, so
:mod:`benchmark.poisoning` generates the full-ratio noise once and derives each ratio's set from it
(the same seeded subset, identical bytes to a direct generation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks.base import PoisonContext
from benchmark import noise as noise_lib
from benchmark.data import ImageSet, stratified_subset
from benchmark.params import param
from benchmark.plugin import P
from benchmark.quantize import to_levels
from benchmark.registry import register_poison
from benchmark.surrogate import build_surrogate, check_surrogate, frozen, noisy_error_rate, sgd

# ================================================================================ EM: sample-wise


@dataclass(frozen=True)
class EMParams:
    eps: float = param(8 / 255, "L-inf budget (0.0314 = 8/255)", ge=0.0, le=1.0)
    num_steps: int = param(20, "PGD descent steps on the noise per outer iteration", ge=1)
    step_size: float = param(0.8 / 255, "PGD step size alpha", gt=0.0)
    stop_error: float = param(0.01, "stop when the surrogate's train error on the noisy data is below this", ge=0.0, le=1.0)
    train_step: int = param(10, "surrogate SGD steps per outer iteration", ge=1)
    max_iters: int = param(100, "cap on outer iterations (the official code has none)", ge=1)
    batch_size: int = param(512, "generation batch size", ge=2)
    surrogate: str = param("resnet18", "surrogate architecture (bench list models)")
    lr: float = param(0.1, "surrogate SGD learning rate (constant, as in the official code)", gt=0.0)
    momentum: float = param(0.9, "surrogate SGD momentum", ge=0.0, lt=1.0)
    weight_decay: float = param(5e-4, "surrogate weight decay", ge=0.0)
    grad_clip: float = param(5.0, "surrogate gradient-norm clip (0 = off)", ge=0.0)
    random_start: bool = param(False, "start the noise from U(-eps, eps) instead of zeros")
    official_clamp_bug: bool = param(False, "reproduce the official dataset bug (issue #13): negative noise is zeroed")
    checkpoint_every: int = param(1, "checkpoint every this many outer iterations (0 = never)", ge=0)

    def validate(self, owner: str) -> None:
        check_surrogate(owner, self.surrogate)


_EM_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(surrogate="resnet18", batch_size=512, num_steps=20, step_size=0.8 / 255, train_step=10,
                  stop_error=0.01, max_iters=100),
    "cpu": dict(surrogate="small-cnn", batch_size=256, num_steps=4, step_size=2 / 255, train_step=50,
                stop_error=0.01, max_iters=10),
    "smoke": dict(surrogate="small-cnn", batch_size=128, num_steps=2, step_size=4 / 255, train_step=2,
                  max_iters=2),
}



def official_clamp_bug_levels(x_u8: torch.Tensor, noise_of: Callable[[slice], torch.Tensor],
                              chunk: int = 4096) -> torch.Tensor:
    """What the official EM dataset code stores, as int16 levels relative to ``x_u8``:
    float32 ``noise.mul(255).clamp(0, 255)`` added to the float32 image, clipped to [0, 255], cast to
    uint8 (truncation). The float32 sum can round 255·δ just below an integer up to it, so this is not
    floor(255·δ). ``noise_of(slice)`` gives those images' float noise (chunked to bound memory)."""
    out = torch.empty(x_u8.shape, dtype=torch.int16, device=x_u8.device)
    for start in range(0, len(x_u8), chunk):
        sl = slice(start, start + chunk)
        n255 = noise_of(sl).to(torch.float32).mul(255).clamp_(0, 255)
        stored = (x_u8[sl].to(torch.float32) + n255).clamp_(0, 255).to(torch.uint8)
        out[sl] = stored.to(torch.int16) - x_u8[sl].to(torch.int16)
    return out



@dataclass(kw_only=True)
class EMRun(noise_lib.Generation):
    """An EM generation: ``noise`` is float (per image, or per class); ``scalars`` hold the train
    error and the pass counters. The θ-steps read all of ``x_u8``; the noise steps and the stop check
    read ``xs_u8`` (class-wise: a stratified subset; sample-wise: all images)."""

    x_u8: torch.Tensor
    y: torch.Tensor
    xs_u8: torch.Tensor
    ys: torch.Tensor
    key: int


class _EMBase(noise_lib.SteppedNoisePoison[P]):
    """Shared surrogate loop of the two EM variants: θ-steps on a shuffled wrapping stream, then
    ``craft_noise``, until the train error on the noisy data is below ``stop_error``."""

    revision = 2  # 2: official_clamp_bug=true truncates positive noise, as the official dataset code
    #: one noise per class (indexed by the label) instead of one per image
    classwise: ClassVar[bool] = False

    def new_run(self, train: ImageSet, ctx: PoisonContext, noise: torch.Tensor,
                subset: torch.Tensor | None = None) -> EMRun:
        """The fresh state: a seeded surrogate (its classes: the context's, else the data set's), its
        SGD, ``noise``, and the images the noise steps read (``subset``, default all)."""
        p = self.params
        model = build_surrogate(p.surrogate, ctx.num_classes if ctx.num_classes else train.num_classes,
                                int(train.x.shape[1]), noise_lib.derived_seed(ctx.key, self.name, "init"), ctx.device)
        x_u8, y = train.x.to(ctx.device), train.y.to(ctx.device)
        xs_u8, ys = (x_u8, y) if subset is None else (x_u8[subset], y[subset])
        return EMRun(noise, p.max_iters, model, sgd(model, p.lr, p.momentum, p.weight_decay),
                     scalars={"err": math.inf, "counts": {"fb": 0, "img_fb": 0, "theta": 0}},
                     x_u8=x_u8, y=y, xs_u8=xs_u8, ys=ys, key=ctx.key)

    def start_noise(self, shape: tuple[int, ...], ctx: PoisonContext) -> torch.Tensor:
        if self.params.random_start:
            return noise_lib.uniform(shape, self.params.eps, noise_lib.derived_generator(ctx.key, self.name, "start"), ctx.device)
        return torch.zeros(shape, device=ctx.device)

    def noise_of(self, run: EMRun, y: torch.Tensor) -> Callable[[Any], torch.Tensor]:
        """The float noise of images ``idx`` whose labels are ``y`` (their own, or their class's)."""
        noise = run.noise
        return (lambda idx: noise[y[idx]]) if self.classwise else (lambda idx: noise[idx])

    def craft_noise(self, run: EMRun) -> None:
        """The δ-step of one outer iteration, with the surrogate frozen."""
        raise NotImplementedError

    def craft(self, run: EMRun) -> None:
        p = self.params
        counts = run.scalars["counts"]
        steps, images = self._theta_steps(run.model, run.opt, run.x_u8, run.y, self.noise_of(run, run.y), run.step,
                                          run.key)
        counts["theta"] += steps
        counts["fb"] += steps
        counts["img_fb"] += images
        with frozen(run.model):
            self.craft_noise(run)
        run.scalars["err"] = noisy_error_rate(run.model, run.xs_u8, self.noise_of(run, run.ys), run.ys,
                                              p.batch_size)

    def running(self, run: EMRun) -> bool:
        return run.step < run.total and run.scalars["err"] >= self.params.stop_error

    def progress_info(self, run: EMRun) -> dict[str, Any]:
        return noise_lib.error_progress(run.scalars["err"])

    def conclude(self, run: EMRun) -> tuple[torch.Tensor, dict[str, Any]]:
        p = self.params
        counts, err = run.scalars["counts"], run.scalars["err"]
        info = {"mode": "classwise" if self.classwise else "samplewise", "outer_iterations": run.step, "surrogate_steps": counts["theta"],
                "surrogate_forward_backward": counts["fb"], "surrogate_image_forward_backward": counts["img_fb"],
                "final_train_error": round(err, 6), "stopped_early": err < p.stop_error, **self.extra_info(run),
                "official_clamp_bug": p.official_clamp_bug}
        return self._image_levels(run.x_u8, self.noise_of(run, run.y), run.noise, run.y), info

    def extra_info(self, run: EMRun) -> dict[str, Any]:
        return {}

    def _theta_steps(self, model: nn.Module, opt: torch.optim.SGD, x_u8: torch.Tensor, y: torch.Tensor,
                     noise_of: Any, outer: int, key: int) -> tuple[int, int]:
        """``train_step`` SGD steps on x + δ (no clamp, as officially), continuing where the previous
        outer iteration stopped in a stream of shuffled epochs. Deviation for sample-wise EM: the
        official loader reads the training set in its fixed file order, which for the original
        CIFAR-10 files is class-mixed; data sets stored sorted by class (the offline JPEG copy, any
        image folder) would give one-class batches and a surrogate that never learns. (Class-wise EM's
        official loader shuffles.) Each epoch's order derives from the key, so a resumed run sees the
        same batches. Returns (fwd+bwd passes, images in them): an epoch's last batch may be partial."""
        p = self.params
        n = len(y)
        batches = math.ceil(n / p.batch_size)
        model.train()
        passes = images = 0
        perms: dict[int, torch.Tensor] = {}
        for j in range(p.train_step):
            epoch, b = divmod(outer * p.train_step + j, batches)
            if epoch not in perms:
                perms[epoch] = torch.randperm(n, generator=noise_lib.derived_generator(key, self.name, "epoch", epoch)).to(x_u8.device)
            idx = perms[epoch][b * p.batch_size:(b + 1) * p.batch_size]
            if idx.numel() < 2:  # BatchNorm cannot train on one image
                continue
            xb = x_u8[idx].float().div_(255) + noise_of(idx)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if p.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
            opt.step()
            passes += 1
            images += idx.numel()
        return passes, images

    def _descend(self, model: nn.Module, x: torch.Tensor, delta: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``num_steps`` of PGD descent from ``delta``: δ <- clip(x' - α sign ∇CE - x, ±ε)."""
        p = self.params
        x_adv = (x + delta).clamp(0, 1)
        for _ in range(p.num_steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            delta = (x_adv.detach() - p.step_size * grad.sign() - x).clamp(-p.eps, p.eps)
            x_adv = (x + delta).clamp(0, 1)
        return delta

    def _image_levels(self, x_u8: torch.Tensor, noise_of: Callable[[slice], torch.Tensor],
                      noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Per-image integer levels to add. Default: round(255 δ) within the budget (``noise`` is per
        image, or per class, indexed by the labels ``y``). ``official_clamp_bug``: the official dataset's float32
        arithmetic on each image (:func:`official_clamp_bug_levels`)."""
        if self.params.official_clamp_bug:
            return official_clamp_bug_levels(x_u8, noise_of)
        levels = to_levels(noise, self.budget_255())
        return levels[y] if self.classwise else levels


@register_poison("em", aliases=("em-samplewise",))
class ErrorMinimizing(_EMBase[EMParams]):
    """Sample-wise error-minimizing noise: min-min bi-level optimisation (EM, ICLR'21)."""

    preset_params = _EM_PRESETS

    def begin(self, train: ImageSet, ctx: PoisonContext) -> EMRun:
        return self.new_run(train, ctx, self.start_noise(tuple(train.x.shape), ctx))

    def craft_noise(self, run: EMRun) -> None:
        p = self.params
        counts = run.scalars["counts"]
        for start in range(0, len(run.y), p.batch_size):
            sl = slice(start, start + p.batch_size)
            xb = run.x_u8[sl].float().div_(255)
            run.noise[sl] = self._descend(run.model, xb, run.noise[sl], run.y[sl])
            counts["fb"] += p.num_steps
            counts["img_fb"] += p.num_steps * xb.shape[0]


# ================================================================================= EM: class-wise


@dataclass(frozen=True)
class EMClasswiseParams(EMParams):
    num_steps: int = param(1, "PGD descent steps per sample before the class average", ge=1)
    subset_portion: float = param(0.2, "stratified fraction of the training set used to update the noise", gt=0.0, le=1.0)


_EMC_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(surrogate="resnet18", batch_size=512, num_steps=1, step_size=0.8 / 255, train_step=10,
                  stop_error=0.01, max_iters=100, subset_portion=0.2),
    "cpu": dict(surrogate="small-cnn", batch_size=256, num_steps=1, step_size=0.8 / 255, train_step=10,
                stop_error=0.01, max_iters=30, subset_portion=0.2),
    "smoke": dict(surrogate="small-cnn", batch_size=128, num_steps=1, step_size=2 / 255, train_step=2,
                  max_iters=3),
}


def classwise_mean_update_(noise: torch.Tensor, delta: torch.Tensor, y: torch.Tensor, eps: float) -> None:
    """Official class-wise update, in place on the (K, C, H, W) ``noise``: each class present in the
    batch gets the mean of its samples' updated δ, clipped to ±eps; absent classes keep theirs."""
    sums = torch.zeros_like(noise).index_add_(0, y, delta)
    counts = torch.bincount(y, minlength=noise.shape[0])
    present = counts > 0
    noise[present] = (sums[present] / counts[present].view(-1, 1, 1, 1)).clamp(-eps, eps)


@register_poison("em-classwise", aliases=("em-universal",))
class ErrorMinimizingClasswise(_EMBase[EMClasswiseParams]):
    """Class-wise error-minimizing noise: one noise per class, averaged one-step descents (EM, ICLR'21)."""

    preset_params = _EMC_PRESETS
    classwise = True

    def begin(self, train: ImageSet, ctx: PoisonContext) -> EMRun:
        p = self.params
        n = len(train)
        subset = stratified_subset(train.y.cpu(), max(1, round(p.subset_portion * n)),
                                   noise_lib.derived_seed(ctx.key, self.name, "subset") % (2**31)).to(ctx.device)
        noise = self.start_noise((self.num_classes_of(train, ctx), *train.x.shape[1:]), ctx)
        return self.new_run(train, ctx, noise, subset)

    def craft_noise(self, run: EMRun) -> None:
        p = self.params
        counts, m = run.scalars["counts"], len(run.ys)
        perm = torch.randperm(m, generator=noise_lib.derived_generator(run.key, self.name, "perm", run.step)).to(run.noise.device)
        for b in range(max(1, m // p.batch_size)):  # drop_last, but keep one batch for a small subset
            idx = perm[b * p.batch_size:(b + 1) * p.batch_size]
            xb, yb = run.xs_u8[idx].float().div_(255), run.ys[idx]
            delta = self._descend(run.model, xb, run.noise[yb], yb)
            classwise_mean_update_(run.noise, delta, yb, p.eps)
            counts["fb"] += p.num_steps
            counts["img_fb"] += p.num_steps * len(idx)

    def extra_info(self, run: EMRun) -> dict[str, Any]:
        return {"subset_size": len(run.ys)}
