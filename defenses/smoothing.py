"""Randomized smoothing (Cohen et al. 2019), spec defenses.md §6: the CUDA paper's "smoothing".

Training is Gaussian data augmentation: x + N(0, sigma^2 I) in [0,1] pixel space, fresh noise every
batch, no clipping (as locuslab/smoothing). The record's ``test_acc`` is the noise-trained base model
on clean test images; ``evaluate`` adds the smoothed classifier g: a Monte-Carlo majority vote over
``n_samples`` noisy copies with Cohen's ``predict`` binomial test (abstain unless the top class beats
the runner-up at level ``alpha``; abstentions count as wrong), on a fixed stratified test subset.
The spec leaves open which of the two the CUDA paper's 43.85% is, so both are reported (§19.8).
Deviation: N defaults to 32 (Cohen: 100 000) to keep it cheap; raise ``n_samples`` for the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from scipy.stats import binom

from benchmark.data import ImageSet, stratified_subset
from benchmark.params import param
from benchmark.registry import register_defense
from defenses.base import Defense, TrainContext


@dataclass(frozen=True)
class SmoothingParams:
    sigma: float = param(0.5, "std of the Gaussian noise in [0,1] pixel space (training and voting)", gt=0.0)
    n_samples: int = param(32, "noisy copies per test image for the smoothed vote (Cohen: 100000)", ge=1)
    alpha: float = param(0.001, "binomial-test level for abstaining (1 = plain majority, never abstain)",
                         gt=0.0, le=1.0)
    eval_subset: int = param(1000, "test images for the smoothed accuracy (fixed stratified subset; 0 = all)", ge=0)


def device_normal(shape: tuple[int, ...], ctx: TrainContext, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise drawn on the training device from a generator seeded by the run's
    generator (so it is repeatable and resumable without moving big tensors from the CPU)."""
    if generator is None:
        seed = int(torch.randint(0, 2**62, (1,), generator=ctx.generator))
        generator = torch.Generator(device=ctx.device).manual_seed(seed)
    return torch.randn(shape, generator=generator, device=ctx.device)


def abstain_pvalues(top: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Two-sided binomial test of ``top`` successes in ``top + second`` trials at p = 1/2
    (scipy's ``binom_test`` as in Cohen's ``predict``); by symmetry p = min(1, 2 P[X >= top])."""
    n = (top + second).cpu().numpy()
    k = top.cpu().numpy()
    p = 2.0 * binom.sf(k - 1, n, 0.5)
    return torch.from_numpy(p).clamp(max=1.0)


@torch.no_grad()
def vote_counts(model: nn.Module, x: torch.Tensor, num_classes: int, n_samples: int, sigma: float,
                ctx: TrainContext, generator: torch.Generator, batch_size: int = 1000) -> torch.Tensor:
    """(N, num_classes) class counts of the base model over ``n_samples`` noisy copies per image."""
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


def smoothed_predict(counts: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cohen's ``predict`` from vote counts: (top class, abstained mask)."""
    top2 = counts.topk(min(2, counts.shape[1]), dim=1)
    top = top2.values[:, 0]
    second = top2.values[:, 1] if counts.shape[1] > 1 else torch.zeros_like(top)
    abstain = abstain_pvalues(top, second).to(counts.device) > alpha
    return top2.indices[:, 0], abstain


@register_defense("smoothing", aliases=("randomized-smoothing",))
class RandomizedSmoothing(Defense):
    """Randomized smoothing: Gaussian-noise training (sigma 0.5); reports base and smoothed accuracy."""

    family = "certified"
    Params = SmoothingParams
    metrics_help = {
        "smoothed_test_acc": "smoothed classifier's accuracy (%) on `smoothed_n` test images, abstentions counted wrong",
        "smoothed_abstain_rate": "% of the `smoothed_n` test images where the binomial test abstained",
        "smoothed_vote_acc": "% where the majority vote is right (no abstention)",
        "smoothed_noisy_base_acc": "base model's accuracy (%) on the noisy copies",
        "smoothed_n": "test images evaluated",
        "smoothed_n_samples": "noisy copies per image",
    }

    def batch(self, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> tuple[torch.Tensor, torch.Tensor]:
        return x + self.params.sigma * device_normal(tuple(x.shape), ctx), y

    def evaluate(self, model: nn.Module, test: ImageSet, ctx: TrainContext) -> dict[str, Any]:
        p: SmoothingParams = self.params
        if 0 < p.eval_subset < len(test):
            test = test.subset(stratified_subset(test.y.cpu(), p.eval_subset, seed=0).to(test.x.device))
        # a fixed stream, independent of how many steps training took
        gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed * 1_000_003 + 0x5A00)
        batch_size = getattr(ctx.protocol, "eval_batch_size", 1000)
        was_training = model.training
        model.eval()
        counts = torch.zeros(0, ctx.num_classes, dtype=torch.long, device=ctx.device)
        parts = []
        for start in range(0, len(test), batch_size):
            x = test.x[start:start + batch_size].to(ctx.device).float().div_(255)
            parts.append(vote_counts(model, x, ctx.num_classes, p.n_samples, p.sigma, ctx, gen, batch_size))
        model.train(was_training)
        if parts:
            counts = torch.cat(parts)
        labels = test.y.to(ctx.device)
        pred, abstain = smoothed_predict(counts, p.alpha)
        n = max(1, len(test))
        correct = (pred == labels) & ~abstain
        return {
            "smoothed_test_acc": round(100.0 * float(correct.sum()) / n, 3),
            "smoothed_abstain_rate": round(100.0 * float(abstain.sum()) / n, 3),
            "smoothed_vote_acc": round(100.0 * float((pred == labels).sum()) / n, 3),
            "smoothed_noisy_base_acc": round(100.0 * float(counts.gather(1, labels[:, None]).sum()) / (n * p.n_samples), 3),
            "smoothed_n": len(test),
            "smoothed_n_samples": p.n_samples,
        }
