"""DP-InstaHide (Borgnia, Geiping, Cherepanova, Fowl, Gupta, Ghiasi, Huang, Goldblum, Goldstein,
"DP-InstaHide: provably defusing poisoning and backdoor attacks with differentially private data
augmentations", arXiv 2103.02079, 2021): k-way mixup followed by additive Laplacian noise.

Official code: the authors' framework github.com/JonasGeiping/data-poisoning @88d929c —
``forest/data/mixing_data_augmentations.py`` (``Mixup(nway=k, alpha)``: one weight vector
w ~ Dirichlet(alpha * 1_k) per batch, k random permutations of the batch, the loss mixed with the same
weights) and ``forest/victims/batched_attacks.py`` (``RandomAttack`` with ``init='laplacian'``: noise
~ Laplace(0, eps/255) added after mixing). The trainer hands this hook soft labels, so mixing them
with the same weights is exactly forest's corrected mixed loss. Noise scale: ``scale`` = 16/255, the
framework's default strength (``--eps 16``); the paper's own sweep of noise scales could not be
checked here.

Decisions and deviations (documented):

* The noise is Laplace(0, ``scale``) per pixel and channel, each value clamped to ±scale, as forest's
  ``_init_perturbation`` clamps every initialisation to the eps bound (so its spread is about half that
  of unclamped Laplace noise: E|n| = 0.63 b instead of b). ``noise_clamp=false`` draws unbounded
  Laplace noise, as a DP analysis needs (and as ART's ``DPInstaHideTrainer`` does). Images are then
  clipped to [0, 1] (``clip``, ART's post-processing; forest does not clip).
* ``weights=uniform`` mixes with equal weights 1/k (the setting of the paper's k-fold privacy
  argument); the default is forest's Dirichlet weights.
* Privacy: ``evaluate`` records ``dp_epsilon_own_bound``, OUR OWN first-principles bound, not the
  paper's theorem (whose text could not be checked here): the pure-DP epsilon of the Laplace mechanism
  releasing one mixed image, for datasets that differ in one image with pixels in [0, 1]: L1
  sensitivity w_max * d (d = C*H*W values, w_max = 1/k for uniform weights, up to 1 for Dirichlet
  weights), epsilon = w_max * d / scale, without amplification by sampling or composition over
  training steps; null for clamped noise (the default), for which no DP statement holds. At these
  noise scales it is in the thousands (CIFAR-10, 16/255: 48,960), i.e. no meaningful formal guarantee:
  the defense acts as a strong augmentation. Records made before the rename call it
  ``dp_epsilon_per_image``.
* Randomness comes from the run's generator (Dirichlet weights via a NumPy generator seeded from
  it, like ``mixup``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from benchmark.data import ImageSet
from benchmark.mixing import mix, sample_dirichlet
from benchmark.params import param
from benchmark.registry import register_defense
from defenses.base import Defense, TrainContext


@dataclass(frozen=True)
class DPInstaHideParams:
    ways: int = param(4, "k: images mixed into each training image (k-way mixup)", ge=1, le=64)
    alpha: float = param(1.0, "Dirichlet(alpha*1_k) mixing weights (forest's mixing strength)", gt=0.0)
    weights: str = param("dirichlet", "mixing weights: one Dirichlet draw per batch (forest) or equal 1/k "
                         "(the paper's privacy argument)", choices=("dirichlet", "uniform"))
    scale: float = param(16 / 255, "Laplace noise scale b per pixel, also the clamp bound (forest default strength "
                         "16/255)", gt=0.0)
    noise_clamp: bool = param(True, "clamp each noise value to +-scale, as forest does (false: unbounded Laplace "
                              "noise, the setting of a DP analysis)")
    clip: bool = param(True, "clip noisy images to [0, 1]")


def laplace(shape: torch.Size, scale: float, ctx: TrainContext) -> torch.Tensor:
    """Laplace(0, scale) samples by inverse CDF from the run's generator, on the training device."""
    u = ctx.rand(*shape) - 0.5
    return -scale * torch.sign(u) * torch.log((1 - 2 * u.abs()).clamp_min(torch.finfo(u.dtype).tiny))


@register_defense("dp-instahide", aliases=("instahide",))
class DPInstaHide(Defense[DPInstaHideParams], family="augmentation"):
    """DP-InstaHide (Borgnia et al. 2021, forest code): k-way mixup plus Laplacian input noise."""

    notes = ("`dp-instahide` = 4-way mixup plus Laplace(0, 16/255) input noise clamped to +-16/255 (the authors' "
             "forest framework defaults). `dp_epsilon_own_bound` (older records: `dp_epsilon_per_image`) is our own "
             "per-image bound for unclamped noise, not the paper's theorem; in the thousands (CIFAR-10: 48,960), so "
             "the defense acts as an augmentation, not as a formal guarantee.",)
    metrics_help = {
        "dp_epsilon_own_bound": "our own bound, not the paper's theorem: pure-DP epsilon of the Laplace mechanism "
                                "for one released mixed image (L1 sensitivity max-weight x C*H*W over scale; no "
                                "sampling amplification or composition); null for clamped noise",
        "dp_epsilon_per_image": "older records' name of dp_epsilon_own_bound (our own bound, not the paper's theorem)",
    }

    def batch(self, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        w = [1.0 / p.ways] * p.ways if p.weights == "uniform" else sample_dirichlet(ctx.generator, p.alpha, p.ways)
        x_mix, y_mix = mix(x, y, w, [ctx.randperm(x.shape[0]) for _ in w])
        noise = laplace(x.shape, p.scale, ctx)
        if p.noise_clamp:
            noise = noise.clamp(-p.scale, p.scale)
        x_out = x_mix + noise
        return (x_out.clamp(0, 1) if p.clip else x_out), y_mix

    def evaluate(self, model: nn.Module, test: ImageSet, ctx: TrainContext) -> dict[str, Any]:
        p = self.params
        d = ctx.in_channels * ctx.image_size[0] * ctx.image_size[1]
        w_max = 1.0 / p.ways if p.weights == "uniform" else 1.0
        eps = None if p.noise_clamp else round(w_max * d / p.scale, 1)
        return {"dp_epsilon_own_bound": eps}
