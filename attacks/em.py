"""EM: Error-Minimizing noise (Huang et al., ICLR 2021), official code HanxunH/Unlearnable-Examples (perturbation.py), plus the machinery that
the other additive-noise poisons (REM, SEM, random noise) share.

Sample-wise EM (``em``) alternates ``train_step`` SGD steps of a surrogate on the noisy data with
``num_steps`` of PGD *descent* on every sample's noise, until the surrogate's train error on the
noisy data drops below ``stop_error``. Class-wise EM (``em-classwise``) keeps one noise per class,
updated by averaging one-step descents over the samples of each class in a stratified subset.

Shared machinery (also used by :mod:`attacks.rem`, :mod:`attacks.sem`, :mod:`attacks.random_noise`):

* noise is quantised to integer grey levels and clamped to ``±floor(eps*255)`` before it is added to
  the uint8 image, so the stored poison meets its L-inf budget exactly (``budget_255``);
* all randomness comes from generators derived from the private key (and the step number), so a
  run is reproducible and a resumed run matches an uninterrupted one without saving RNG state;
* long generations checkpoint (surrogate, optimizer, noise, step, counters) under ``ctx.workdir``.

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

Partial poisoning of these surrogate poisons (``shares_full_noise``): the noise does not depend on the
ratio, so :mod:`benchmark.poisoning` generates the full-ratio noise once and derives each ratio's set
from it (:meth:`NoisePoison.derive`: the same seeded subset, identical bytes to a direct generation).

Generation cost: the checkpoint carries the elapsed seconds and the session count, so a resumed
generation reports the seconds of all sessions up to the state it resumed from plus its own
(work lost after the last checkpoint of an interrupted session is not counted).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks.base import Poison, PoisonContext, PoisonedSet, exact_subset
from benchmark.data import ImageSet, stratified_subset
from benchmark.errors import BenchError
from benchmark.io import atomic_write
from benchmark.models import build_model
from benchmark.params import param
from benchmark.registry import MODELS, register_poison

# =========================================================================== shared noise machinery


def budget_levels(eps: float) -> int:
    """The L-inf budget in grey levels: floor(eps * 255), tolerant of 8/255 written as a float."""
    return int(math.floor(eps * 255 + 1e-6))


def to_levels(noise: torch.Tensor, budget: int) -> torch.Tensor:
    """Float noise in [0,1] units -> int16 grey levels, rounded and clamped to ±budget."""
    return torch.round(noise * 255).clamp_(-budget, budget).to(torch.int16)


def add_levels(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """uint8 image + integer noise, clipped to [0, 255] (EM/REM's 'clip then cast')."""
    return (x.to(torch.int16) + levels.to(torch.int16)).clamp_(0, 255).to(torch.uint8)


def derived_seed(key: int, *tags: Any) -> int:
    """A 63-bit seed for one named random stream of a key (e.g. ('rem', 'step', 17))."""
    text = ":".join(str(t) for t in (key, *tags))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def derived_generator(key: int, *tags: Any, device: torch.device | None = None) -> torch.Generator:
    """A generator for one random stream. On a CUDA ``device`` it lives there (no host draws and copies
    in the hot loop; its stream differs from the CPU one); otherwise it is the CPU generator whose
    stream the committed CPU results were made with."""
    seed = derived_seed(key, *tags)
    if device is not None and torch.device(device).type == "cuda":
        return torch.Generator(device=device).manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def uniform(shape: torch.Size | tuple[int, ...], radius: float, gen: torch.Generator,
            device: torch.device) -> torch.Tensor:
    """U(-radius, radius) noise drawn from ``gen`` on the generator's device, then moved to ``device``
    (a no-op when they agree); on CPU the same numbers as ever."""
    return ((torch.rand(shape, generator=gen, device=gen.device) * 2 - 1) * radius).to(device)


class Centered(nn.Module):
    """Feeds ``x - 0.5`` to the wrapped model: REM/SEM's input scaling (x/255 - 0.5, std 1)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x - 0.5)


def build_surrogate(name: str, num_classes: int, in_channels: int, seed: int, device: torch.device,
                    centered: bool = False) -> nn.Module:
    """A freshly initialised surrogate, its init seeded without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(name, num_classes, in_channels)
    if centered:
        model = Centered(model)
    model = model.to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)  # ~2x faster convolutions on CPU
    return model


def sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode with parameters frozen (noise crafting); restores the previous state."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


@torch.no_grad()
def noisy_error_rate(model: nn.Module, x_u8: torch.Tensor, noise_of: Callable[[slice], torch.Tensor],
                     y: torch.Tensor, batch_size: int) -> float:
    """Eval-mode error of ``model`` on clamp(x/255 + noise, 0, 1), built batch by batch (a float copy
    of a whole training set would be ~600 MB for 50k CIFAR images). ``noise_of(slice)`` gives the
    float noise of those images."""
    was_training = model.training
    model.eval()
    wrong = 0
    for start in range(0, len(y), batch_size):
        sl = slice(start, start + batch_size)
        logits = model((x_u8[sl].float().div_(255) + noise_of(sl)).clamp_(0, 1))
        wrong += int((logits.argmax(1) != y[sl]).sum())
    model.train(was_training)
    return wrong / max(1, len(y))


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


def check_surrogate(owner: str, name: str) -> None:
    """Fail up front on an unknown surrogate architecture."""
    try:
        MODELS.canonical(name)
    except BenchError as exc:
        raise BenchError(f"{owner}: parameter 'surrogate': {exc}") from None


class Checkpoint:
    """Atomic, pickle-free generation checkpoints: ``workdir/state.pt`` (None workdir = disabled).

    Each checkpoint also carries the generation seconds spent up to it and the session count, so a
    resumed generation can report its whole cost (:meth:`session_info`)."""

    def __init__(self, workdir: Any, every: int) -> None:
        self.path = Path(workdir) / "state.pt" if workdir is not None else None
        self.every = every
        self.started = time.perf_counter()
        self.seconds_before = 0.0  # seconds of earlier sessions, up to the state resumed from
        self.sessions = 1

    def load(self, noise_shape: tuple[int, ...] | torch.Size) -> dict[str, Any] | None:
        """The saved state if there is a readable one whose noise has ``noise_shape``, else None."""
        if self.path is None or not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a checkpoint we cannot read is ignored: generation restarts
            return None
        if tuple(state["noise"].shape) != tuple(noise_shape):
            return None
        self.seconds_before = float(state.get("elapsed_seconds", 0.0))
        self.sessions = int(state.get("sessions", 1)) + 1
        return state

    def due(self, step: int) -> bool:
        return self.path is not None and self.every > 0 and step % self.every == 0

    def save(self, state: dict[str, Any]) -> None:
        if self.path is not None:
            state = dict(state, elapsed_seconds=self.seconds_before + time.perf_counter() - self.started,
                         sessions=self.sessions)
            atomic_write(self.path, lambda p: torch.save(state, p))

    def session_info(self) -> dict[str, Any]:
        """For the manifest (popped from ``info`` by :mod:`benchmark.poisoning`): sessions so far and
        the generation seconds of the earlier ones."""
        return {"sessions": self.sessions, "seconds_before": round(self.seconds_before, 4)}


def report(ctx: PoisonContext, step: int, total: int, err: float) -> None:
    if ctx.progress is not None:
        ctx.progress(step, total, {"acc": round(100.0 * (1.0 - err), 2), "err": round(err, 4)})


class NoisePoison(Poison):
    """Base of the additive L-inf noise poisons: exact budget, exact partial subset, uint8 output."""

    #: name of the params field holding the L-inf radius (in [0,1] units)
    radius_field: ClassVar[str] = "eps"
    #: the noise does not depend on the ratio (only :meth:`finish` uses it), so a partial poison can be
    #: derived from the full-ratio artifact (:meth:`derive`) instead of re-running a surrogate
    shares_full_noise: ClassVar[bool] = False

    def budget_255(self) -> int:
        """The L-inf budget in grey levels that every stored poisoned image meets exactly."""
        return budget_levels(getattr(self.params, self.radius_field))

    def finish(self, train: ImageSet, ctx: PoisonContext, levels: torch.Tensor,
               info: dict[str, Any]) -> PoisonedSet:
        """Add per-sample integer ``levels`` (N,C,H,W) to the exact seeded subset of ``ctx.ratio``."""
        indices = exact_subset(len(train), ctx.ratio, ctx.key)
        x = train.x.clone()
        if indices.numel():
            sel = indices.to(x.device)
            budget = self.budget_255()
            x[sel] = add_levels(x[sel], levels[sel].to(x.device).clamp(-budget, budget))
        return PoisonedSet(x, train.y.clone(), indices, info=info)

    @staticmethod
    def derive(full: PoisonedSet, train: ImageSet, ratio: float, key: int) -> PoisonedSet:
        """The ``ratio`` poison from the full-ratio one: its images on the same seeded subset that
        :meth:`finish` poisons, the clean images elsewhere (byte-identical to a direct generation)."""
        indices = exact_subset(len(train), ratio, key)
        x = train.x.clone()
        if indices.numel():
            sel = indices.to(x.device)
            x[sel] = full.x.to(x.device)[sel]
        return PoisonedSet(x, train.y.clone(), indices, info=dict(full.info))


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


class _EMBase(NoisePoison):
    """Shared surrogate loop of the two EM variants: θ-steps on a shuffled wrapping stream."""

    revision = 2  # 2: official_clamp_bug=true truncates positive noise, as the official dataset code
    shares_full_noise = True

    def _setup(self, train: ImageSet, ctx: PoisonContext) -> tuple[nn.Module, torch.optim.SGD]:
        p = self.params
        model = build_surrogate(p.surrogate, ctx.num_classes if ctx.num_classes else train.num_classes,
                                int(train.x.shape[1]), derived_seed(ctx.key, self.name, "init"), ctx.device)
        return model, sgd(model, p.lr, p.momentum, p.weight_decay)

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
                perms[epoch] = torch.randperm(n, generator=derived_generator(key, self.name, "epoch", epoch)).to(x_u8.device)
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
        image, or per class when ``y`` is given). ``official_clamp_bug``: the official dataset's float32
        arithmetic on each image (:func:`official_clamp_bug_levels`)."""
        if self.params.official_clamp_bug:
            return official_clamp_bug_levels(x_u8, noise_of)
        levels = to_levels(noise, self.budget_255())
        return levels if y is None else levels[y]

    @staticmethod
    def _resume(ckpt: Checkpoint, model: nn.Module, opt: torch.optim.SGD, noise: torch.Tensor,
                counts: dict[str, int]) -> tuple[torch.Tensor, int, float, dict[str, int]]:
        """Restore (model, optimizer) in place and return (noise, outer, err, counts) from a checkpoint,
        or the fresh state when there is none."""
        state = ckpt.load(noise.shape)
        if state is None:
            return noise, 0, math.inf, counts
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        return state["noise"].to(noise.device), int(state["step"]), float(state["err"]), dict(state["counts"])


@register_poison("em", aliases=("em-samplewise",))
class ErrorMinimizing(_EMBase):
    """Sample-wise error-minimizing noise: min-min bi-level optimisation (EM, ICLR'21)."""

    Params = EMParams
    preset_params = _EM_PRESETS

    def generate(self, train: ImageSet, ctx: PoisonContext) -> PoisonedSet:
        p: EMParams = self.params
        if ctx.ratio <= 0:
            return self.finish(train, ctx, torch.zeros(0), {})
        dev = ctx.device
        x_u8, y = train.x.to(dev), train.y.to(dev)
        n = len(y)
        model, opt = self._setup(train, ctx)
        if p.random_start:
            noise = uniform(x_u8.shape, p.eps, derived_generator(ctx.key, self.name, "start"), dev)
        else:
            noise = torch.zeros(x_u8.shape, device=dev)
        ckpt = Checkpoint(ctx.workdir, p.checkpoint_every)
        noise, outer, err, counts = self._resume(ckpt, model, opt, noise, {"fb": 0, "img_fb": 0, "theta": 0})
        while outer < p.max_iters and err >= p.stop_error:
            steps, images = self._theta_steps(model, opt, x_u8, y, lambda idx: noise[idx], outer, ctx.key)
            counts["theta"] += steps
            counts["fb"] += steps
            counts["img_fb"] += images
            with frozen(model):
                for start in range(0, n, p.batch_size):
                    sl = slice(start, start + p.batch_size)
                    xb = x_u8[sl].float().div_(255)
                    noise[sl] = self._descend(model, xb, noise[sl], y[sl])
                    counts["fb"] += p.num_steps
                    counts["img_fb"] += p.num_steps * xb.shape[0]
            err = noisy_error_rate(model, x_u8, lambda sl: noise[sl], y, p.batch_size)
            outer += 1
            if ckpt.due(outer):
                ckpt.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "noise": noise.cpu(),
                           "step": outer, "err": err, "counts": counts})
            report(ctx, outer, p.max_iters, err)
        info = {"mode": "samplewise", "outer_iterations": outer, "surrogate_steps": counts["theta"],
                "surrogate_forward_backward": counts["fb"], "surrogate_image_forward_backward": counts["img_fb"],
                "final_train_error": round(err, 6), "stopped_early": err < p.stop_error,
                "official_clamp_bug": p.official_clamp_bug, "session": ckpt.session_info()}
        return self.finish(train, ctx, self._image_levels(x_u8, lambda sl: noise[sl], noise), info)


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
class ErrorMinimizingClasswise(_EMBase):
    """Class-wise error-minimizing noise: one noise per class, averaged one-step descents (EM, ICLR'21)."""

    Params = EMClasswiseParams
    preset_params = _EMC_PRESETS

    def generate(self, train: ImageSet, ctx: PoisonContext) -> PoisonedSet:
        p: EMClasswiseParams = self.params
        if ctx.ratio <= 0:
            return self.finish(train, ctx, torch.zeros(0), {})
        dev = ctx.device
        x_u8, y = train.x.to(dev), train.y.to(dev)
        n = len(y)
        num_classes = max(ctx.num_classes, int(y.max()) + 1)
        model, opt = self._setup(train, ctx)
        subset = stratified_subset(train.y.cpu(), max(1, round(p.subset_portion * n)),
                                   derived_seed(ctx.key, self.name, "subset") % (2**31)).to(dev)
        xs_u8, ys = x_u8[subset], y[subset]
        noise = torch.zeros((num_classes, *x_u8.shape[1:]), device=dev)
        if p.random_start:
            noise = uniform(noise.shape, p.eps, derived_generator(ctx.key, self.name, "start"), dev)
        ckpt = Checkpoint(ctx.workdir, p.checkpoint_every)
        noise, outer, err, counts = self._resume(ckpt, model, opt, noise, {"fb": 0, "img_fb": 0, "theta": 0})
        m = len(ys)
        batches = max(1, m // p.batch_size)  # drop_last, but keep one batch for a small subset
        while outer < p.max_iters and err >= p.stop_error:
            steps, images = self._theta_steps(model, opt, x_u8, y, lambda idx: noise[y[idx]], outer, ctx.key)
            counts["theta"] += steps
            counts["fb"] += steps
            counts["img_fb"] += images
            perm = torch.randperm(m, generator=derived_generator(ctx.key, self.name, "perm", outer)).to(dev)
            with frozen(model):
                for b in range(batches):
                    idx = perm[b * p.batch_size:(b + 1) * p.batch_size]
                    xb, yb = xs_u8[idx].float().div_(255), ys[idx]
                    delta = self._descend(model, xb, noise[yb], yb)
                    classwise_mean_update_(noise, delta, yb, p.eps)
                    counts["fb"] += p.num_steps
                    counts["img_fb"] += p.num_steps * len(idx)
            err = noisy_error_rate(model, xs_u8, lambda sl: noise[ys[sl]], ys, p.batch_size)
            outer += 1
            if ckpt.due(outer):
                ckpt.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "noise": noise.cpu(),
                           "step": outer, "err": err, "counts": counts})
            report(ctx, outer, p.max_iters, err)
        info = {"mode": "classwise", "outer_iterations": outer, "surrogate_steps": counts["theta"],
                "surrogate_forward_backward": counts["fb"], "surrogate_image_forward_backward": counts["img_fb"],
                "final_train_error": round(err, 6), "stopped_early": err < p.stop_error,
                "subset_size": m, "official_clamp_bug": p.official_clamp_bug, "session": ckpt.session_info()}
        return self.finish(train, ctx, self._image_levels(x_u8, lambda sl: noise[y[sl]], noise, y), info)
