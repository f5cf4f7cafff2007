"""Cutout (DeVries & Taylor 2017), official code uoguelph-mlrg/Cutout: zero one square patch per image.

As ISS-code / APB-code ``Cutout(16)``: a uniformly random centre per image, the patch
[c - L//2, c + L//2) clipped at the borders, zero fill, applied after crop/flip on [0,1] images.
Batched with masks on the training device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.params import param
from benchmark.registry import register_defense
from defenses.base import Defense, TrainContext


@dataclass(frozen=True)
class CutoutParams:
    length: int = param(16, "side of the square patch in pixels (16 on 32x32 images)", ge=1)
    holes: int = param(1, "patches per image (DeVries & Taylor's n_holes)", ge=1)


def cutout_mask(cy: torch.Tensor, cx: torch.Tensor, h: int, w: int, length: int) -> torch.Tensor:
    """Boolean (N, H, W) mask, True inside any patch; cy/cx are (N, holes) centres."""
    rows = torch.arange(h, device=cy.device)
    cols = torch.arange(w, device=cx.device)
    y1, y2 = (cy - length // 2).clamp(0, h), (cy + length // 2).clamp(0, h)
    x1, x2 = (cx - length // 2).clamp(0, w), (cx + length // 2).clamp(0, w)
    in_rows = (rows >= y1[..., None]) & (rows < y2[..., None])  # (N, holes, H)
    in_cols = (cols >= x1[..., None]) & (cols < x2[..., None])  # (N, holes, W)
    return (in_rows[..., :, None] & in_cols[..., None, :]).any(dim=1)


@register_defense("cutout")
class Cutout(Defense[CutoutParams], family="augmentation"):
    """Cutout: zero a 16x16 patch at a random centre of every training image (clipped at borders)."""

    def batch(self, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        n, _, h, w = x.shape
        cy = ctx.randint(h, (n, p.holes))
        cx = ctx.randint(w, (n, p.holes))
        mask = cutout_mask(cy, cx, h, w, p.length)
        return x.masked_fill(mask[:, None], 0.0), y
