"""uint8 storage of additive perturbations within their budget, exactly (shared by the noise poisons).

L-inf (EM, REM, SEM, TAP, random noise): float noise becomes integer grey levels clamped to
±floor(eps·255) before it is added to the uint8 image, so the stored poison meets its budget exactly
(:func:`budget_levels`, :func:`to_levels`, :func:`add_levels`).

L2 (AR, LSP): the official AR and LSP pipelines scale a float perturbation to L2 norm ε, add it, clip
to [0, 1] and store uint8 (AR rounds through PNG, LSP truncates): rounding adds about 1/12 grey level²
per value, so the stored image sits ~0.2 % outside the ε-ball (AR) or further (LSP's truncation). Here
the perturbation is instead scaled down by a per-image factor s ≤ 1 until the *stored* difference meets
the budget: ‖clip(x + round(255·s·δ)) − x‖₂ ≤ 255·ε in integer grey levels, an exact integer check
(:func:`l2_budget_levels`).
"""

from __future__ import annotations

import math

import torch


def budget_levels(eps: float) -> int:
    """The L-inf budget in grey levels: floor(eps * 255), tolerant of 8/255 written as a float."""
    return int(math.floor(eps * 255 + 1e-6))


def to_levels(noise: torch.Tensor, budget: int) -> torch.Tensor:
    """Float noise in [0,1] units -> int16 grey levels, rounded and clamped to ±budget."""
    return torch.round(noise * 255).clamp_(-budget, budget).to(torch.int16)


def add_levels(x_u8: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """uint8 image + integer levels, clipped to [0, 255] (EM/REM's 'clip then cast')."""
    return (x_u8.to(torch.int16) + levels.to(torch.int16)).clamp_(0, 255).to(torch.uint8)


def l2_budget_levels(x_u8: torch.Tensor, delta: torch.Tensor, eps: float, refine: int = 6,
                     max_iter: int = 64) -> torch.Tensor:
    """Integer grey-level differences (float tensor, shape of ``x_u8``) to add to ``x_u8`` so that the
    clipped uint8 result is within L2 distance ``eps`` (in [0, 1] units) of ``x_u8``.

    Per image, s starts at 1 (the official value: often already within the budget when clipping cuts
    the perturbation). An image over budget is retried with s multiplied by sqrt(bound / norm²) and a
    margin that grows each round until it fits (2–3 rounds), then ``refine`` bisection steps between
    that fitting scale and the smallest failing one bring s within ~0.05 % of the largest that fits.
    The budget check sums integer squares in float64, which is exact.
    """
    n = x_u8.shape[0]
    v = delta.reshape(n, -1).to(torch.float32) * 255.0
    x = x_u8.reshape(n, -1).to(torch.float32)
    lo_clip, hi_clip = -x, 255.0 - x
    bound = (255.0 * float(eps)) ** 2
    out = torch.zeros_like(x)

    def attempt(rows: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the levels of ``rows`` at ``scale`` where they fit; return which fit and their norm²."""
        if rows.numel() == n:
            levels = torch.clamp(torch.round(v * scale.unsqueeze(1)), lo_clip, hi_clip)
        else:
            levels = torch.clamp(torch.round(v[rows] * scale.unsqueeze(1)), lo_clip[rows], hi_clip[rows])
        norm2 = (levels * levels).sum(1, dtype=torch.float64)
        ok = norm2 <= bound
        out[rows[ok]] = levels[ok]
        return ok, norm2

    fits = torch.ones(n, dtype=torch.float32, device=x.device)  # a scale known to fit (once found)
    fails = torch.ones(n, dtype=torch.float32, device=x.device)  # the smallest scale seen to fail
    rows = torch.arange(n, device=x.device)
    scale = torch.ones(n, dtype=torch.float32, device=x.device)
    margin = 1.0
    for _ in range(max_iter):
        ok, norm2 = attempt(rows, scale)
        fits[rows[ok]] = scale[ok]
        bad = ~ok
        if not bool(bad.any()):
            break
        fails[rows[bad]] = scale[bad]
        scale = scale[bad] * (torch.sqrt(bound / norm2[bad]) * margin).to(torch.float32)
        rows = rows[bad]
        margin *= 0.999
    else:
        fits[rows] = 0.0  # never seen: these keep zero noise
    rows = torch.nonzero(fits < fails).flatten()  # shrunk images: bisect towards the largest fitting scale
    for _ in range(refine if rows.numel() else 0):
        mid = (fits[rows] + fails[rows]) / 2
        ok, _ = attempt(rows, mid)
        fits[rows[ok]] = mid[ok]
        fails[rows[~ok]] = mid[~ok]
    return out.view_as(delta)


def l2_distances(clean_u8: torch.Tensor, poisoned_u8: torch.Tensor) -> torch.Tensor:
    """Per-image L2 distance in [0, 1] units between two uint8 batches (float64)."""
    d = poisoned_u8.to(torch.float64) - clean_u8.to(torch.float64)
    return d.flatten(1).norm(dim=1) / 255.0
