"""AR: autoregressive perturbations (Sandoval-Segura et al., "Autoregressive Perturbations for Data
Poisoning", NeurIPS 2022; official code github.com/psandovalsegura/autoregressive-poisoning, files
``autoregressive.py``, ``autoregressive_param_finder.py``, ``create_ar_poisons_3channel.py``).

Each class owns an AR process: per channel a 3x3 window of coefficients b (bottom-right entry 0). An
image's perturbation starts as N(0, 1) noise of size (H + crop) x (W + crop) per channel; a raster
sweep then sets every position (i+2, j+2) to the window's weighted sum sum_ab b[a, b] x[i+a, j+b]
(no innovation noise); the first ``crop`` rows and columns are dropped and the result is scaled to
L2 norm ``eps`` over all C·H·W values (1.0 on CIFAR-10's 3x32x32, as published). So the class is in
the process, each image gets its own realisation.

Coefficients: the official finder's rejection sampler, seeded by the key. A candidate b ~ N(0, 1)
per channel, bottom-right entry zeroed, each channel normalised to sum 1, is rejected when any of 3
trial realisations (36x36, crop 4) is not finite or has L2 norm above 50 before scaling, or when the
matched filter of an already accepted process (b with -1 in the bottom-right entry) responds less
than ``min_response`` (sum of ReLU of the valid cross-correlation, summed over channels) on the last
trial scaled to L2 1. The official runs used 10 for CIFAR-10 (``params-classes-10-mr-10.pt``) and 3
for CIFAR-100 (``params-classes-100-mr-3.pt``), which is the ``min_response=-1`` default here.

Batching: the raster recurrence only reads positions up and to the left, so all positions on one
anti-diagonal are independent; the sweep runs over the 2(H+crop)-5 anti-diagonals as strided slices,
vectorised over every (image, channel) of a chunk of images.
The sampler screens candidates on the top-left block of their first trial before drawing and sweeping
the rest (an exact necessary condition, see :func:`find_coefficients`) and checks the filter
responses of all survivors at once.

Deviations from the official code: the published poisons use the fixed coefficient lists shipped in
the repository; here the same sampler draws them from the key (so ``--key`` picks a different, equally
valid set of processes); random numbers come from key-derived generators (the official script is
unseeded); the stored image is quantised within the budget exactly (:mod:`benchmark.quantize`: each
perturbation is scaled down, by ~0.2 %, where rounding would leave the ε-ball; official: round half
up through PNG, ~0.2 % over); partial poisoning uses an exact key-seeded subset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attacks.base import Poison, PoisonContext, PoisonedSet, exact_subset
from benchmark.data import ImageSet
from benchmark.noise import derived_generator
from benchmark.params import param
from benchmark.quantize import add_levels, l2_budget_levels, l2_distances
from benchmark.registry import register_poison

#: official finder settings (``autoregressive_param_finder.py`` defaults)
FINDER_TRIALS = 3
FINDER_NORM_BOUND = 50.0
FINDER_SIZE, FINDER_CROP = 36, 4
FINDER_MAX_CANDIDATES = 1_000_000
SCREEN = 12  # top-left block of the first trial screened before the full sweep
BLOCK = 1024  # images per start-noise generator (the draws of an image do not depend on the chunking)


@dataclass(frozen=True)
class ARParams:
    eps: float = param(1.0, "L2 budget over all C·H·W values in [0, 1] units (published: 1.0 on 32x32x3)",
                       gt=0.0, le=100.0)
    crop: int = param(4, "leading rows/columns of the (H+crop)x(W+crop) realisation dropped (official: 4; 2 for ImageNet)",
                      ge=2, le=64)
    min_response: float = param(-1.0, "coefficient sampler: least ReLU response of accepted processes' matched filters "
                                      "to a new process (-1 = official: 10 up to 10 classes, 3 above)", ge=-1.0)


def ar_fill_(signal: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Run the AR recurrence in place. ``signal`` (H, W, M) holds M independent start signals (one per
    image-channel, contiguous along M); ``coeffs`` (3, 3, M) their windows (entry [2, 2] unused).
    Position (r, c), r, c >= 2, becomes sum_ab coeffs[a, b] * signal[r-2+a, c-2+b], in raster order."""
    h, w, m = signal.shape
    flat = signal.view(h * w, m)
    taps = [((a - 2) * w + (b - 2), coeffs[a, b]) for a in range(3) for b in range(3) if (a, b) != (2, 2)]
    for d in range(4, h + w - 1):  # anti-diagonal r + c = d; its positions only read smaller diagonals
        r0, r1 = max(2, d - (w - 1)), min(h - 1, d - 2)
        if r0 > r1:
            continue
        start = r0 * (w - 1) + d
        stop = start + (r1 - r0) * (w - 1) + 1
        acc = torch.zeros(r1 - r0 + 1, m, dtype=signal.dtype, device=signal.device)
        for offset, coef in taps:
            acc.addcmul_(flat[start + offset:stop + offset:w - 1], coef)
        flat[start:stop:w - 1] = acc
    return signal


def matched_filters(coeffs: torch.Tensor) -> torch.Tensor:
    """(K, C, 3, 3) filters that answer 0 to their own process: the coefficients with -1 at [2, 2]."""
    filters = coeffs.clone()
    filters[:, :, 2, 2] = -1.0
    return filters


def realise(coeffs: torch.Tensor, start: torch.Tensor, crop: int) -> torch.Tensor:
    """Realisations (B, C, S-crop, S-crop) of the processes ``coeffs`` (B, C, 3, 3) from start noise
    ``start`` (B, C, S, S), before scaling."""
    b, c, s, _ = start.shape
    signal = start.permute(2, 3, 0, 1).reshape(s, s, b * c).contiguous()
    ar_fill_(signal, coeffs.permute(2, 3, 0, 1).reshape(3, 3, b * c).contiguous())
    return signal.view(s, s, b, c)[crop:, crop:].permute(2, 3, 0, 1).contiguous()


def _responses(signals: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """(S, A) sum of ReLU of the valid cross-correlation of each signal with each filter."""
    return F.relu(F.conv2d(signals, filters)).sum(dim=(2, 3))


def find_coefficients(num: int, channels: int, gen: torch.Generator, min_response: float,
                      batch: int = 4096) -> tuple[torch.Tensor, int]:
    """``num`` AR processes (num, channels, 3, 3) by the official rejection sampler; returns them and
    the number of candidates examined.

    Screening: the first trial's start noise is drawn top-left block first (``SCREEN`` x ``SCREEN`` per
    channel); the recurrence there reads nothing outside the block, so its values are those of the
    full realisation, and a candidate whose block norm (inside the crop) already exceeds the bound is
    rejected without drawing or sweeping the rest. Survivors get the rest of their start noise and the
    full check; the decision is the official one for the same start noise."""
    accepted: list[torch.Tensor] = []
    tried = 0
    size, crop, bound2 = FINDER_SIZE, FINDER_CROP, FINDER_NORM_BOUND ** 2
    while len(accepted) < num:
        if tried >= FINDER_MAX_CANDIDATES:
            raise RuntimeError(f"AR coefficient sampler found only {len(accepted)} of {num} processes in "
                               f"{FINDER_MAX_CANDIDATES} candidates; lower min_response")
        cand = torch.randn(batch, channels, 3, 3, generator=gen)
        cand[:, :, 2, 2] = 0.0
        cand = cand / cand.sum(dim=(2, 3), keepdim=True)
        alive = torch.arange(batch)
        partial = torch.zeros(batch, dtype=torch.float64)
        blocks: list[torch.Tensor] = []
        for c in range(channels):  # exact necessary condition, one channel at a time
            block = torch.randn(alive.numel(), 1, SCREEN, SCREEN, generator=gen)
            sig = realise(cand[alive, c:c + 1], block, crop)
            n2 = partial + sig.flatten(1).pow(2).sum(1, dtype=torch.float64)
            keep = torch.isfinite(n2) & (n2 <= bound2)
            alive, partial = alive[keep], n2[keep]
            blocks = [b[keep] for b in blocks] + [block[keep]]
        sig = torch.empty(0)
        norm2 = torch.empty(0)
        for trial in range(FINDER_TRIALS):
            start = torch.randn(alive.numel(), channels, size, size, generator=gen)
            if trial == 0:
                start[:, :, :SCREEN, :SCREEN] = torch.cat(blocks, dim=1)
            sig = realise(cand[alive], start, crop)
            norm2 = sig.flatten(1).pow(2).sum(1, dtype=torch.float64)
            keep = torch.isfinite(norm2) & (norm2 <= bound2)
            alive, sig, norm2 = alive[keep], sig[keep], norm2[keep]
        last = sig / norm2.sqrt().to(torch.float32).view(-1, 1, 1, 1)  # the last trial, scaled to L2 1
        pos = 0  # sequential acceptance in candidate order, responses of all survivors at once
        while pos < alive.numel() and len(accepted) < num:
            if accepted:
                resp = _responses(last[pos:], matched_filters(torch.stack(accepted)))
                passing = torch.nonzero(resp.min(dim=1).values >= min_response).flatten()
                if passing.numel() == 0:
                    break
                pos += int(passing[0])
            accepted.append(cand[alive[pos]])
            pos += 1
        tried += int(alive[pos - 1]) + 1 if len(accepted) == num else batch
    return torch.stack(accepted), tried


def ar_noise(coeffs: torch.Tensor, y: torch.Tensor, size: tuple[int, int], crop: int, key: int, block: int,
             eps: float) -> torch.Tensor:
    """The scaled perturbations (float, L2 = eps per image) of the images ``block*BLOCK ...`` with
    labels ``y``: each from its own key-derived start noise."""
    gen = derived_generator(key, "ar", "start", block)
    h, w = size
    start = torch.randn(len(y), coeffs.shape[1], h + crop, w + crop, generator=gen)
    sig = realise(coeffs[y], start, crop)
    norms = sig.flatten(1).norm(dim=1)
    if not bool(torch.isfinite(norms).all()) or bool((norms == 0).any()):
        raise RuntimeError("an AR realisation diverged; use another --key")
    return sig * (eps / norms).view(-1, 1, 1, 1)


@register_poison("ar", aliases=("autoregressive",))
class Autoregressive(Poison[ARParams], budget_type="l2"):
    """Class-wise autoregressive-process noise, L2 = 1 (AR, NeurIPS'22)."""

    notes = ("AR is L2-bounded (ε = 1.0 over 3x32x32, about 4.6/255 per pixel on average): its L-inf column is "
             "not comparable with the 8/255 L-inf poisons.",)

    def min_response(self, num_classes: int) -> float:
        p = self.params
        return p.min_response if p.min_response >= 0 else (10.0 if num_classes <= 10 else 3.0)

    def generate(self, train: ImageSet, ctx: PoisonContext) -> PoisonedSet:
        p = self.params
        n, c, h, w = train.x.shape
        num_classes = self.num_classes_of(train, ctx)
        mr = self.min_response(num_classes)
        coeffs, tried = find_coefficients(num_classes, c, derived_generator(ctx.key, "ar", "coefficients", mr), mr)
        indices = exact_subset(n, ctx.ratio, ctx.key)
        chosen = torch.zeros(n, dtype=torch.bool)
        chosen[indices] = True
        x = train.x.clone()
        y_cpu = train.y.cpu()
        l2_max = 0.0
        for b, start in enumerate(range(0, n, BLOCK)):
            sel = torch.arange(start, min(n, start + BLOCK))
            sel = sel[chosen[sel]]
            if sel.numel() == 0:
                continue
            noise = ar_noise(coeffs, y_cpu[start:start + BLOCK], (h, w), p.crop, ctx.key, b, p.eps)
            noise = noise[sel - start].to(x.device)
            dev_sel = sel.to(x.device)
            levels = l2_budget_levels(x[dev_sel], noise, p.eps)
            stored = add_levels(x[dev_sel], levels)
            l2_max = max(l2_max, float(l2_distances(x[dev_sel], stored).max()))
            x[dev_sel] = stored
        info = {"num_processes": num_classes, "min_response": mr, "candidates_examined": tried,
                "l2_max": round(l2_max, 6), "quantisation": "exact L2 (scaled within the budget after rounding)"}
        return PoisonedSet(x, train.y.clone(), indices, info=info)
