"""Seeded mixing weights and convex combinations of a batch, shared by the mixing defenses
(mixup, CutMix, DP-InstaHide)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def numpy_rng(gen: torch.Generator | None) -> np.random.Generator:
    """A NumPy generator seeded by one draw from ``gen`` (a run's torch generator).

    torch's Beta/Gamma samplers take no generator, so Beta/Dirichlet weights come from NumPy,
    seeded here: repeatable for a seed, and checkpointed with the torch generator's state.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    return np.random.default_rng(seed)


def sample_dirichlet(gen: torch.Generator | None, alpha: float, k: int) -> list[float]:
    """k mixing weights ~ Dirichlet(alpha*1_k) (k=2: (lam, 1-lam) with lam ~ Beta(alpha, alpha))."""
    return [float(v) for v in numpy_rng(gen).dirichlet([alpha] * k)]


def sample_beta(gen: torch.Generator | None, a: float, b: float) -> float:
    """One draw from Beta(a, b)."""
    return float(numpy_rng(gen).beta(a, b))


def mix(x: torch.Tensor, y: torch.Tensor, weights: Sequence[float],
        perms: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_i w_i * x[perm_i] and the same for the soft labels (``None`` = identity)."""
    x_out = torch.zeros_like(x)
    y_out = torch.zeros_like(y)
    for w, p in zip(weights, perms, strict=True):
        x_out.add_(x if p is None else x[p], alpha=w)
        y_out.add_(y if p is None else y[p], alpha=w)
    return x_out, y_out
