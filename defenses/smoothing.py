"""Randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019; official code locuslab/smoothing,
``code/core.py``): the CUDA paper's "smoothed ResNet-18 (noise level 0.5)".

Training is Gaussian data augmentation: x + N(0, sigma^2 I) in [0,1] pixel space, fresh noise every
batch, no clipping (as ``code/train.py``). The headline ``test_acc`` is the *smoothed classifier* g:
for every test image, the majority vote of the base model over ``n_samples`` noisy copies, batched on
the device, with ties broken as ``Smooth.predict`` does (``counts.argsort()[::-1]``: the highest class
index among tied classes) but without abstaining, so the number is an accuracy of g, comparable with
the CUDA paper's 43.85 %. The per-epoch curve uses a cheaper vote (``epoch_samples`` copies; the
record's ``metrics.per_epoch_eval`` says so), and the final accuracy is measured again with the full vote.

Extras (``metrics.defense``): the base model's accuracy on clean and on noisy test images; Cohen's
PREDICT on the headline vote's counts (n = ``n_samples`` = 100, two-sided binomial test of the top two
counts against p = 1/2 at level ``alpha`` = 0.001, abstain when its p-value exceeds alpha, as
``Smooth.predict``): its accuracy with abstentions counted wrong and its abstention rate, the other
reading of the CUDA paper's 43.85 %; and Cohen's CERTIFY on a fixed stratified test subset (``certify_subset`` images; n0 = ``certify_n0`` selection
samples, n = ``certify_n`` estimation samples, Clopper-Pearson lower bound at level ``alpha``, radius
sigma * Phi^-1(pA_lower), abstain when pA_lower < 1/2): certified accuracy at each radius of ``RADII``
and the abstention rate. Deviation: Cohen certifies with n = 100 000 samples; n = 1 000 keeps a cpu
run in minutes and only makes the certified radii smaller (pA_lower is looser), never larger. The
``smoke`` preset, a seconds-long check, votes over 32 copies and certifies 100 images with n0 = 32,
n = 200 (``SMOKE``); explicit parameters override it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from scipy.stats import beta, binom, norm

from benchmark.data import ImageSet, stratified_subset
from benchmark.params import param
from benchmark.registry import register_defense
from defenses.base import Defense, TrainContext

#: L2 radii (in [0,1] pixel units) at which certified accuracy is reported, as in Cohen et al.'s CIFAR-10 table
RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
#: the smoke preset's evaluation budget: ~17x fewer forward passes than the defaults on its 500 test images
SMOKE = {"n_samples": 32, "certify_n0": 32, "certify_n": 200, "certify_subset": 100}


@dataclass(frozen=True)
class SmoothingParams:
    sigma: float = param(0.5, "std of the Gaussian noise in [0,1] pixel space (training and voting)", gt=0.0)
    n_samples: int = param(100, "noisy copies per test image for the headline majority vote", ge=1)
    epoch_samples: int = param(4, "noisy copies per test image for the cheaper per-epoch vote", ge=1)
    certify_n0: int = param(100, "CERTIFY: selection samples per image", ge=1)
    certify_n: int = param(1000, "CERTIFY: estimation samples per image (Cohen: 100000)", ge=1)
    alpha: float = param(0.001, "CERTIFY: failure probability of the Clopper-Pearson bound; PREDICT: level of "
                         "the binomial test", gt=0.0, lt=1.0)
    certify_subset: int = param(500, "CERTIFY: test images (fixed stratified subset; 0 = all)", ge=0)


def device_normal(shape: tuple[int, ...], ctx: TrainContext, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise drawn on the training device from a generator seeded by the run's
    generator (so it is repeatable and resumable without moving big tensors from the CPU)."""
    if generator is None:
        seed = int(torch.randint(0, 2**62, (1,), generator=ctx.generator))
        generator = torch.Generator(device=ctx.device).manual_seed(seed)
    return torch.randn(shape, generator=generator, device=ctx.device)


@torch.no_grad()
def vote_counts(model: nn.Module, x: torch.Tensor, num_classes: int, n_samples: int, sigma: float,
                ctx: TrainContext, generator: torch.Generator, batch_size: int = 1000) -> torch.Tensor:
    """(N, num_classes) class counts of the base model over ``n_samples`` noisy copies per image,
    forwarded ``batch_size`` noisy images at a time."""
    counts = torch.zeros(x.shape[0], num_classes, dtype=torch.long, device=x.device)
    per_chunk = max(1, batch_size // n_samples)
    for start in range(0, x.shape[0], per_chunk):
        imgs = x[start:start + per_chunk]
        b = imgs.shape[0]
        left = n_samples
        while left > 0:
            k = min(left, max(1, batch_size // b))
            batch = imgs[:, None].expand(b, k, *imgs.shape[1:]).reshape(b * k, *imgs.shape[1:])
            noisy = batch + sigma * device_normal(tuple(batch.shape), ctx, generator)
            pred = model(noisy).argmax(1).view(b, k)
            counts[start:start + b].scatter_add_(1, pred, torch.ones_like(pred))
            left -= k
    return counts


def vote_scores(counts: torch.Tensor) -> torch.Tensor:
    """Scores whose argmax is Cohen's PREDICT choice: the most votes, ties to the highest class index
    (``counts.argsort()[::-1][0]`` of a stable ascending sort)."""
    c = counts.shape[1]
    return counts.float() + torch.arange(c, device=counts.device, dtype=torch.float32) / c


def predict(counts: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cohen's PREDICT from vote counts: (class, abstained). The class is the vote's (most votes, ties to
    the highest index); it abstains when the two-sided binomial test of the top two counts n_A, n_B
    against p = 1/2 has p-value above ``alpha`` (``binom_test(n_A, n_A + n_B, 0.5)``: for p = 1/2 it is
    min(1, 2 P[X >= n_A]), X ~ Bin(n_A + n_B, 1/2), and 1 on a tie)."""
    top2 = counts.topk(2, dim=1).values.cpu().double().numpy() if counts.shape[1] > 1 else None
    pred = vote_scores(counts).argmax(1).cpu()
    if top2 is None:
        return pred, torch.zeros(len(pred), dtype=torch.bool)
    n_a, n_b = top2[:, 0], top2[:, 1]
    p_value = torch.from_numpy(2 * binom.sf(n_a - 1, n_a + n_b, 0.5)).clamp(max=1.0)
    return pred, p_value > alpha


def certify(counts0: torch.Tensor, counts: torch.Tensor, sigma: float, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cohen's CERTIFY from selection and estimation counts: (predicted class, L2 radius); the radius is
    -1 where it abstains. The class is ``counts0.argmax()`` (numpy's argmax: the first of tied classes)."""
    top = counts0.argmax(1)
    n_a = counts.gather(1, top[:, None]).squeeze(1).cpu().numpy()
    n = int(counts[0].sum()) if len(counts) else 0
    p_lower = torch.from_numpy(beta.ppf(alpha, n_a, n - n_a + 1)).nan_to_num(0.0)  # Clopper-Pearson, one-sided
    radius = torch.where(p_lower >= 0.5, sigma * torch.from_numpy(norm.ppf(p_lower.clamp(max=1 - 1e-12).numpy())),
                         torch.full_like(p_lower, -1.0))
    return top.cpu(), radius.float()


class Vote:
    """The prediction function of one evaluation pass: a majority vote with its own seeded stream."""

    def __init__(self, sigma: float, n_samples: int, ctx: TrainContext, seed: int) -> None:
        self.sigma, self.n_samples, self.ctx = sigma, n_samples, ctx
        self.generator = torch.Generator(device=ctx.device).manual_seed(seed)
        self.counts: list[torch.Tensor] = []

    def __call__(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        batch_size = getattr(self.ctx.protocol, "eval_batch_size", 1000)
        counts = vote_counts(model, x, self.ctx.num_classes, self.n_samples, self.sigma, self.ctx, self.generator,
                             batch_size)
        self.counts.append(counts)
        return vote_scores(counts)


@register_defense("smoothing", aliases=("randomized-smoothing",))
class RandomizedSmoothing(Defense[SmoothingParams], family="certified", preset_params={"smoke": SMOKE}):
    """Randomized smoothing (sigma 0.5): Gaussian-noise training; headline = the smoothed classifier's vote."""

    headline = "smoothed classifier: majority vote over `n_samples` Gaussian-noised copies (no abstention)"
    cheap_epoch_predictor = True
    metrics_help = {
        "base_clean_acc": "base model's accuracy (%) on clean test images (not the smoothed classifier)",
        "base_noisy_acc": "base model's accuracy (%) on the noisy copies of the headline vote",
        "predict_acc": "Cohen's PREDICT on the headline vote (binomial test at alpha): accuracy (%) with "
                       "abstentions counted wrong",
        "predict_abstain_rate": "% of test images where PREDICT abstains (top two counts not significantly apart)",
        "certify_abstain_rate": "% of the CERTIFY subset where the lower bound on pA is below 1/2",
        **{f"certified_acc@{r:g}": f"CERTIFY: accuracy (%) with a certified L2 radius of at least {r:g}" for r in RADII},
        "certify_images": "test images certified",
    }

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self._final: Vote | None = None

    def batch(self, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> tuple[torch.Tensor, torch.Tensor]:
        return x + self.params.sigma * device_normal(tuple(x.shape), ctx), y

    def predictor(self, ctx: TrainContext, final: bool = True) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
        """A vote with a stream of its own (never the training stream, so evaluation cannot change training):
        fixed for the final pass, one per epoch for the curve."""
        p = self.params
        if final:
            self._final = Vote(p.sigma, p.n_samples, ctx, ctx.seed * 1_000_003 + 0x5A00)
            return self._final
        return Vote(p.sigma, p.epoch_samples, ctx, ctx.seed * 1_000_003 + 0x5B00 + ctx.epoch)

    def epoch_eval_info(self) -> dict[str, Any]:
        return {"test_acc": f"majority vote over {self.params.epoch_samples} noisy copies per image "
                            f"(the final test_acc uses {self.params.n_samples})",
                "n_samples": self.params.epoch_samples}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, test: ImageSet, ctx: TrainContext) -> dict[str, Any]:
        p = self.params
        batch_size = getattr(ctx.protocol, "eval_batch_size", 1000)
        labels = test.y.to(ctx.device)
        was_training = model.training
        model.eval()
        clean_pred = torch.cat([model(test.x[s:s + batch_size].to(ctx.device).float().div_(255)).argmax(1)
                                for s in range(0, len(test), batch_size)])
        out: dict[str, Any] = {"base_clean_acc": round(100.0 * float((clean_pred == labels).float().mean()), 3)}
        if self._final is not None and self._final.counts:
            counts = torch.cat(self._final.counts)
            if len(counts) == len(labels):
                right = counts.gather(1, labels[:, None]).sum()
                out["base_noisy_acc"] = round(100.0 * float(right) / (len(labels) * p.n_samples), 3)
                chosen, abstained = predict(counts, p.alpha)
                correct = (chosen == labels.cpu()) & ~abstained
                out["predict_acc"] = round(100.0 * float(correct.float().mean()), 3)
                out["predict_abstain_rate"] = round(100.0 * float(abstained.float().mean()), 3)
        sub = test
        if 0 < p.certify_subset < len(test):
            sub = test.subset(stratified_subset(test.y.cpu(), p.certify_subset, seed=0).to(test.x.device))
        gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed * 1_000_003 + 0x5C00)
        c0, c1 = [], []
        for s in range(0, len(sub), batch_size):
            x = sub.x[s:s + batch_size].to(ctx.device).float().div_(255)
            c0.append(vote_counts(model, x, ctx.num_classes, p.certify_n0, p.sigma, ctx, gen, batch_size))
            c1.append(vote_counts(model, x, ctx.num_classes, p.certify_n, p.sigma, ctx, gen, batch_size))
        model.train(was_training)
        pred, radius = certify(torch.cat(c0), torch.cat(c1), p.sigma, p.alpha)
        right = pred == sub.y.cpu()
        n = max(1, len(sub))
        out.update({
            "certify_abstain_rate": round(100.0 * float((radius < 0).sum()) / n, 3),
            "certify_images": len(sub),
        })
        out.update({f"certified_acc@{r:g}": round(100.0 * float((right & (radius >= r)).sum()) / n, 3) for r in RADII})
        return out
