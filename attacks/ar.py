"""AR: autoregressive perturbations (Sandoval-Segura et al., "Autoregressive Perturbations for Data
Poisoning", NeurIPS 2022; official code github.com/psandovalsegura/autoregressive-poisoning, files
``autoregressive.py``, ``autoregressive_param_finder.py``, ``create_ar_poisons_3channel.py``).

Each class owns an AR process: per channel a 3x3 window of coefficients b (bottom-right entry 0). An
image's perturbation starts as N(0, 1) noise of size (H + crop) x (W + crop) per channel; a raster
sweep then sets every position (i+2, j+2) to the window's weighted sum sum_ab b[a, b] x[i+a, j+b]
(no innovation noise); the first ``crop`` rows and columns are dropped and the result is scaled to
L2 norm ``eps`` over all C·H·W values (1.0 on CIFAR-10's 3x32x32, as published). So the class is in
the process, each image gets its own realisation.

Coefficients (``coefficients``): ``official`` (default) is the published set the official CIFAR-10
poisons were made with: the 10 three-channel processes ``RANDOM_3C_AR_PARAMS_RNMR_10`` of
``autoregressive_params.py`` (4 decimals, as published), class k -> process k, as
``create_ar_poisons_3channel.py`` uses them for CIFAR-10, STL-10 and SVHN; it fits data with 3
channels and at most 10 classes. ``key`` draws the processes from the key by the official finder's
rejection sampler, for other datasets (and the setting of records made before the parameter): a
candidate b ~ N(0, 1) per channel, bottom-right entry zeroed, each channel normalised to sum 1, is
rejected when any of 3 trial realisations (36x36, crop 4) is not finite or has L2 norm above 50 before
scaling, or when the matched filter of an already accepted process (b with -1 in the bottom-right
entry) responds less than ``min_response`` (sum of ReLU of the valid cross-correlation, summed over
channels) on the last trial scaled to L2 1. The official runs used 10 for CIFAR-10
(``params-classes-10-mr-10.pt``) and 3 for CIFAR-100 (``params-classes-100-mr-3.pt``), which is the
``min_response=-1`` default here. Either way the start noise of every image comes from the key, so
the key still gives each poison instance its own realisations.

Batching: the raster recurrence only reads positions up and to the left, so all positions on one
anti-diagonal are independent; the sweep runs over the 2(H+crop)-5 anti-diagonals as strided slices,
vectorised over every (image, channel) of a chunk of images.
The sampler screens candidates on the top-left block of their first trial before drawing and sweeping
the rest (an exact necessary condition, see :func:`find_coefficients`) and checks the filter
responses of all survivors at once.

Deviations from the official code: random numbers come from key-derived generators (the official
script is unseeded); the stored image is quantised within the budget exactly (:mod:`benchmark.quantize`:
each perturbation is scaled down, by ~0.2 %, where rounding would leave the ε-ball; official: round half
up through PNG, ~0.2 % over); partial poisoning uses an exact key-seeded subset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attacks.base import Poison, PoisonContext, PoisonedSet, exact_subset
from benchmark.data import ImageSet
from benchmark.errors import BenchError
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

#: ``coefficients=official``: the published processes (``autoregressive_params.RANDOM_3C_AR_PARAMS_RNMR_10``),
#: class k's 3x3 window per channel, row-major (bottom-right entry 0); numbers as published
OFFICIAL_CIFAR10 = (
    ((0.1561, -0.0710, 0.3743, -0.1896, 0.0461, 0.6075, 0.0539, 0.0226, 0.0000),
     (-0.1016, 0.2193, 0.0472, 0.1401, 0.1561, 0.1171, 0.1742, 0.2476, 0.0000),
     (-0.1100, 0.2703, -0.0026, 0.2662, -0.1185, 0.0846, 0.1812, 0.4287, 0.0000)),  # class 0
    ((0.2346, 0.2056, -0.0480, 0.4110, 0.7504, 0.1326, -0.1044, -0.5817, 0.0000),
     (-0.0308, -0.1085, 0.3997, 0.2187, 0.1830, 0.3389, -0.1017, 0.1008, 0.0000),
     (0.1246, 0.1667, -0.1518, 0.2985, 0.1346, 0.3185, 0.3805, -0.2716, 0.0000)),  # class 1
    ((0.0951, 0.5501, 0.0344, -0.3431, 0.0767, 0.2239, 0.4602, -0.0972, 0.0000),
     (0.1714, 0.1121, 0.1129, 0.3032, 0.2959, 0.0861, 0.2207, -0.3021, 0.0000),
     (0.2720, -0.3417, 0.2115, 0.2499, 0.3690, 0.3833, -0.0282, -0.1158, 0.0000)),  # class 2
    ((-0.4241, -0.2694, 0.4091, 0.3998, 0.1572, 0.2683, 0.2700, 0.1892, 0.0000),
     (0.1246, 0.3024, 0.2110, 0.0538, 0.1997, 0.3283, 0.0372, -0.2570, 0.0000),
     (0.2038, 0.3972, -0.1963, 0.3460, -0.6439, 0.7153, -0.2826, 0.4605, 0.0000)),  # class 3
    ((0.7873, -0.1756, -0.3509, 0.0763, 0.2261, -0.2704, 0.2491, 0.4581, 0.0000),
     (0.1287, -0.1655, 0.2488, 0.3811, -0.2307, 0.3019, -0.0076, 0.3433, 0.0000),
     (0.4227, 0.0690, 0.2492, 0.0896, 0.0653, -0.1653, -0.2349, 0.5043, 0.0000)),  # class 4
    ((0.1585, 0.2663, 0.1764, 0.0031, -0.0237, 0.3464, 0.0140, 0.0590, 0.0000),
     (0.1632, 0.5094, 0.0321, 0.3935, -0.1807, 0.2110, -0.3620, 0.2334, 0.0000),
     (-0.2474, 0.1092, 0.3928, 0.2808, 0.3912, 0.1211, -0.0635, 0.0159, 0.0000)),  # class 5
    ((0.8886, -0.2459, -0.4169, -0.4120, -0.1282, 0.6105, 0.2495, 0.4546, 0.0000),
     (0.0679, -0.2982, 0.1039, 0.1430, 0.1596, 0.6743, -0.2002, 0.3496, 0.0000),
     (-0.2195, 0.2183, -0.2665, 0.3373, 0.1907, 0.5847, 0.1977, -0.0427, 0.0000)),  # class 6
    ((-0.3829, 0.0158, 0.4019, -0.0688, 0.1206, 0.2481, 0.1416, 0.5238, 0.0000),
     (-0.2271, 0.1683, 0.3593, 0.2671, -0.1225, 0.0217, 0.0266, 0.5066, 0.0000),
     (0.8539, 0.3682, 0.2899, 0.6635, 0.0130, -0.7025, -0.1377, -0.3483, 0.0000)),  # class 7
    ((0.4482, 0.2220, 0.0598, 0.3965, -0.1148, 0.1683, -0.3444, 0.1644, 0.0000),
     (-0.1463, 0.6120, 0.2203, 0.4039, -0.2832, -0.1290, 0.3369, -0.0146, 0.0000),
     (0.3759, 0.2814, 0.1494, 0.1925, 0.0552, 0.1091, -0.0962, -0.0673, 0.0000)),  # class 8
    ((0.3556, 0.3477, -0.6625, 0.1812, 0.2997, -0.2139, 0.5538, 0.1385, 0.0000),
     (-0.0297, 0.0780, 0.2486, 0.2246, 0.1931, 0.1349, 0.0079, 0.1426, 0.0000),
     (0.2461, 0.1217, 0.1879, -0.0165, 0.1160, 0.1356, 0.1772, 0.0321, 0.0000)),  # class 9
)


@dataclass(frozen=True)
class ARParams:
    eps: float = param(1.0, "L2 budget over all C·H·W values in [0, 1] units (published: 1.0 on 32x32x3)",
                       gt=0.0, le=100.0)
    crop: int = param(4, "leading rows/columns of the (H+crop)x(W+crop) realisation dropped (official: 4; 2 for ImageNet)",
                      ge=2, le=64)
    min_response: float = param(-1.0, "coefficients=key sampler: least ReLU response of accepted processes' matched "
                                      "filters to a new process (-1 = official: 10 up to 10 classes, 3 above)", ge=-1.0)
    coefficients: str = param("official", "official: the 10 published CIFAR-10 processes (3 channels, up to 10 "
                              "classes); key: processes drawn from the key by the official finder's sampler",
                              choices=("official", "key"), legacy="key")


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

    def processes(self, num_classes: int, channels: int, key: int) -> tuple[torch.Tensor, dict[str, float | int | str]]:
        """(num_classes, channels, 3, 3) coefficients and what the manifest says about them."""
        if self.params.coefficients == "official":
            if channels != 3 or num_classes > len(OFFICIAL_CIFAR10):
                raise BenchError(f"poison ar: coefficients=official holds the {len(OFFICIAL_CIFAR10)} published "
                                 f"3-channel CIFAR-10 processes; this data has {channels} channels and {num_classes} "
                                 "classes: use --poison-param coefficients=key")
            return torch.tensor(OFFICIAL_CIFAR10[:num_classes]).view(num_classes, 3, 3, 3), {"coefficients": "official"}
        mr = self.min_response(num_classes)
        coeffs, tried = find_coefficients(num_classes, channels, derived_generator(key, "ar", "coefficients", mr), mr)
        return coeffs, {"coefficients": "key", "min_response": mr, "candidates_examined": tried}

    def generate(self, train: ImageSet, ctx: PoisonContext) -> PoisonedSet:
        p = self.params
        n, c, h, w = train.x.shape
        num_classes = self.num_classes_of(train, ctx)
        coeffs, facts = self.processes(num_classes, c, ctx.key)
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
        info = {"num_processes": num_classes, **facts,
                "l2_max": round(l2_max, 6), "quantisation": "exact L2 (scaled within the budget after rounding)"}
        return PoisonedSet(x, train.y.clone(), indices, info=info)
