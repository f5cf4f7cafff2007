"""OPS: One-Pixel Shortcut (Wu, Chen, Xie, Huang, "One-Pixel Shortcut: on the Learning Preference of
Deep Neural Networks", ICLR 2023; official code github.com/cychomatica/One-Pixel-Shotcut, ``perturb.py``
``pixel_search``).

For each class k in order, every pixel position p and every "corner" colour v in {0, 1}^C (8 for RGB)
is scored by how far, and how consistently, v lies from the class's own pixels there:
d = |v - x_p| over all images of the class and all channels, score = mean(d) / std(d) (population
std, as NumPy's). The best (position, colour) pair not already taken by an earlier class wins, and that
pixel of every image of the class is set to v (0 or 255 per channel): the perturbation is v - x_p, so
L0 = 1 pixel and no L-inf bound. ``pixels`` > 1 takes the class's top-``pixels`` pairs (official
``--sparsity``).

Batched over positions and colours: the score needs only the per-class mean and variance of every
pixel value (two ``index_add`` passes over the images), since per channel |v - x| is x for v = 0 and
1 - x for v = 1; every (position, colour) score of every class follows in closed form (the ``score``
of each chosen pair is in the manifest, null when infinite).

Deviations: the official loop is written for 10 classes and 3 channels; here any number of classes
and 2^C colours (channel 0 the most significant bit, as officially). A pixel constant within a class
has std 0 (official: NaN, which NumPy's argsort ranks last, i.e. picks): here its score is +inf when v
differs from it and 0 when it equals it. Ties are broken by the lowest position, then colour index
(official: an unstable argsort). Partial poisoning sets the pixel on an exact key-seeded subset of the
images; the search still uses every image of the class (the attacker owns them all).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attacks.base import Poison, PoisonContext, PoisonedSet, exact_subset
from benchmark.data import ImageSet
from benchmark.params import param
from benchmark.registry import register_poison


@dataclass(frozen=True)
class OPSParams:
    pixels: int = param(1, "pixels per class (official --sparsity; the paper's OPS is 1)", ge=1, le=64)


def corner_colours(channels: int) -> torch.Tensor:
    """(2^C, C) colours in {0, 1}, channel 0 the most significant bit (official bit order)."""
    codes = torch.arange(2 ** channels)
    shifts = torch.arange(channels - 1, -1, -1)
    return ((codes.view(-1, 1) >> shifts) & 1).to(torch.float64)


def ops_scores(x_u8: torch.Tensor, y: torch.Tensor, num_classes: int, chunk: int = 4096) -> torch.Tensor:
    """(K, H*W, 2^C) official scores mean(d)/std(d), d = |v - x/255| over a class's images and channels.

    Per channel d is x (v = 0) or 1 - x (v = 1), so only each class's per-value mean μ_c and variance
    σ²_c are needed (two passes, centred, so a constant pixel gets exactly ~0): mean(d) is the mean of
    the μ_c(v) over channels and var(d) = mean_c σ²_c + mean_c (μ_c(v) - mean(d))²."""
    n, c, h, w = x_u8.shape
    counts = torch.bincount(y, minlength=num_classes).to(torch.float64).clamp_min(1).view(-1, 1, 1, 1)
    s1 = torch.zeros(num_classes, c, h, w, dtype=torch.float64, device=x_u8.device)
    for start in range(0, n, chunk):
        s1.index_add_(0, y[start:start + chunk], x_u8[start:start + chunk].to(torch.float64) / 255.0)
    m1 = s1 / counts
    s2 = torch.zeros_like(s1)
    for start in range(0, n, chunk):
        yb = y[start:start + chunk]
        dev = x_u8[start:start + chunk].to(torch.float64) / 255.0 - m1[yb]
        s2.index_add_(0, yb, dev * dev)
    mu = (m1).flatten(2).transpose(1, 2).unsqueeze(2)  # (K, HW, 1, C)
    var_x = (s2 / counts).flatten(2).transpose(1, 2).mean(-1)  # (K, HW): channel mean of σ²_c
    v = corner_colours(c).to(x_u8.device)  # (V, C)
    mu_v = torch.where(v.bool(), 1.0 - mu, mu)  # (K, HW, V, C)
    mean = mu_v.mean(-1)
    std = (var_x.unsqueeze(-1) + ((mu_v - mean.unsqueeze(-1)) ** 2).mean(-1)).sqrt()
    flat = std < 1e-9  # d constant over the class's images and channels (uint8 data: real spreads are >= ~1e-5)
    score = mean / torch.where(flat, torch.ones_like(std), std)
    return torch.where(flat, torch.where(mean > 0, torch.full_like(mean, torch.inf), torch.zeros_like(mean)), score)


def choose_pixels(scores: torch.Tensor, pixels: int) -> list[list[tuple[int, int, float]]]:
    """Per class in order, its top ``pixels`` (position, colour index, score) pairs among those not
    taken by an earlier class; ties go to the lowest position, then colour."""
    taken = torch.zeros(scores.shape[1:], dtype=torch.bool, device=scores.device)
    chosen = []
    for k in range(scores.shape[0]):
        table = scores[k].masked_fill(taken, -torch.inf).flatten()
        order = torch.sort(table, descending=True, stable=True).indices[:pixels]
        picks = []
        for flat in order.tolist():
            pos, colour = divmod(flat, scores.shape[2])
            taken[pos, colour] = True
            picks.append((pos, colour, float(table[flat])))
        chosen.append(picks)
    return chosen


@register_poison("ops", aliases=("one-pixel-shortcut",))
class OnePixelShortcut(Poison[OPSParams], budget_type="l0"):
    """One pixel per class set to the corner colour farthest from the class's pixels (OPS, ICLR'23)."""

    preview_cheap = False  # the pixel depends on all of a class's images: a preview must use the real artifact
    notes = ("OPS is L0-bounded (one pixel per image, set to 0 or 255 per channel): its L-inf and L2 columns "
             "are large by design and not comparable with the L-inf or L2 poisons.",)

    def generate(self, train: ImageSet, ctx: PoisonContext) -> PoisonedSet:
        n, c, h, w = train.x.shape
        y = train.y.to(train.x.device)
        chosen = choose_pixels(ops_scores(train.x, y, self.num_classes_of(train, ctx)), self.params.pixels)
        colours = (corner_colours(c) * 255).to(torch.uint8)
        indices = exact_subset(n, ctx.ratio, ctx.key)
        mark = torch.zeros(n, dtype=torch.bool, device=train.x.device)
        mark[indices.to(train.x.device)] = True
        x = train.x.clone()
        for k, picks in enumerate(chosen):
            rows = torch.nonzero(mark & (y == k)).flatten()
            for pos, colour, _score in picks:
                r, col = divmod(pos, w)
                x[rows, :, r, col] = colours[colour].to(x.device).view(1, c)
        info = {"pixels": [{"class": k, "row": pos // w, "col": pos % w,
                            "colour": [int(v) for v in colours[colour]],
                            "score": round(score, 6) if math.isfinite(score) else None}
                           for k, picks in enumerate(chosen) for pos, colour, score in picks]}
        return PoisonedSet(x, train.y.clone(), indices, info=info)
