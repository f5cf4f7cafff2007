"""LSP: linearly separable synthetic perturbations (Yu, Zhang, Chen, Yin, Liu, "Availability Attacks
Create Shortcuts", KDD 2022; official code github.com/dayu11/Availability-Attacks-Create-Shortcuts,
``synthetic_perturbations/cifar_train.py`` and ``util.py``).

Synthetic points are drawn with scikit-learn's ``make_classification`` (one Gaussian cluster per
class on the vertices of a hypercube, ``class_sep`` 10, every feature informative, no flips), with
ceil(H/patch)·ceil(W/patch)·C features: each point is a grid of patch colours, upsampled by repetition
to ``patch`` x ``patch`` patches (8x8 on CIFAR: a 4x4x3 grid, 48 features) and cropped to the image.
Every noise image is scaled to the L2 norm of an L-inf ball of radius ``eps`` filled to the brim,
eps·sqrt(C·H·W) (official ``--eps 6``: 6/255·sqrt(3072) ≈ 1.30; ISS calls it "L2 = 1"). The i-th
training image of class k (in dataset order) gets the i-th synthetic point of class k (in the order
make_classification returns them). The noise is sample-wise, its class structure linearly separable.

Key compatibility: the points come from ``make_classification(random_state=RandomState(key))``; the
official script seeds NumPy's global RNG with ``--seed 1`` right before that call, so on CIFAR-10's
50,000 images (5,000 per class) ``--key 1`` draws the official synthetic points.

Deviations: the stored image is quantised within the L2 budget exactly by default (rounded, scaled
down where needed, :mod:`benchmark.quantize`); ``official_truncation=true`` stores the official float
arithmetic instead (clip((x/255 + δ)·255, 0, 255) cast to uint8 by truncation, which lands up to one
grey level below on every value). For data sets whose classes differ in size the synthetic set has
K·(largest class) points, so every class has enough (official: N points, doubled for SVHN). Patch
grids that do not divide the image use ceil(H/patch)·ceil(W/patch)·C features (the official feature
count, int((32/patch)²·3), does not match its own reshape then). Partial poisoning uses an exact
key-seeded subset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from attacks.base import Poison, PoisonContext, PoisonedSet, exact_subset
from benchmark.data import ImageSet
from benchmark.errors import BenchError
from benchmark.params import param
from benchmark.quantize import add_levels, l2_budget_levels, l2_distances
from benchmark.registry import register_poison

CHUNK = 2048


@dataclass(frozen=True)
class LSPParams:
    patch: int = param(8, "patch size in pixels (official --patchsize 8 on 32x32; APBench uses 32 on 224x224)", ge=1, le=1024)
    eps: float = param(6 / 255, "L-inf-equivalent size: the L2 radius is eps·sqrt(C·H·W) (official --eps 6: 1.30 on 3x32x32)",
                       gt=0.0, le=1.0)
    class_sep: float = param(10.0, "make_classification class_sep: distance of the class clusters", gt=0.0)
    official_truncation: bool = param(False, "store as the official code does: float sum cast to uint8 by truncation "
                                             "(L2 budget not exact)")


def l2_radius(eps: float, shape: tuple[int, ...]) -> float:
    """The L2 radius that the official code derives from an L-inf size: eps·sqrt(C·H·W)."""
    return float(np.sqrt(eps ** 2 * int(np.prod(shape))))


def synthetic_points(labels: np.ndarray, num_classes: int, features: int, class_sep: float,
                     key: int) -> np.ndarray:
    """One synthetic point (row of ``features``) per training image: the i-th image of class k gets
    the i-th make_classification point of class k."""
    try:
        from sklearn.datasets import make_classification
    except ImportError:  # a declared dependency; only a broken install gets here
        raise BenchError("poison lsp needs scikit-learn: pip install scikit-learn") from None
    counts = np.bincount(labels, minlength=num_classes)
    points, point_labels = make_classification(
        n_samples=int(num_classes * counts.max()), n_features=features, n_informative=features, n_redundant=0,
        n_repeated=0, n_classes=num_classes, n_clusters_per_class=1, class_sep=class_sep, flip_y=0.0,
        random_state=np.random.RandomState(key))
    by_class = np.argsort(point_labels, kind="stable")  # points grouped by class, in their drawn order
    point_start = np.searchsorted(point_labels[by_class], np.arange(num_classes))
    image_order = np.argsort(labels, kind="stable")
    rank = np.empty(len(labels), dtype=np.int64)  # position of each image within its class
    rank[image_order] = np.arange(len(labels)) - np.searchsorted(labels[image_order], labels[image_order])
    return points[by_class[point_start[labels] + rank]].astype(np.float32)


def patch_images(points: np.ndarray, channels: int, size: tuple[int, int], patch: int) -> torch.Tensor:
    """(n, C, H, W) float32 noise: each point as a ceil(H/patch) x ceil(W/patch) x C grid of patch
    colours (the official HWC reshape), every cell repeated to patch x patch, cropped to H x W."""
    h, w = size
    gh, gw = math.ceil(h / patch), math.ceil(w / patch)
    grid = torch.from_numpy(points).view(-1, gh, gw, channels)
    up = grid.repeat_interleave(patch, dim=1).repeat_interleave(patch, dim=2)[:, :h, :w]
    return up.permute(0, 3, 1, 2).contiguous()


@register_poison("lsp", aliases=("synthetic-patches",))
class LinearSeparablePatches(Poison[LSPParams], budget_type="l2"):
    """Linearly separable synthetic patch noise, sample-wise (LSP, KDD'22)."""

    notes = ("LSP is L2-bounded (radius 6/255·sqrt(3072) ≈ 1.30 on CIFAR): its L-inf column is not comparable "
             "with the 8/255 L-inf poisons.",)

    def generate(self, train: ImageSet, ctx: PoisonContext) -> PoisonedSet:
        p = self.params
        n, c, h, w = train.x.shape
        num_classes = self.num_classes_of(train, ctx)
        features = math.ceil(h / p.patch) * math.ceil(w / p.patch) * c
        if num_classes > 2 ** features:
            raise BenchError(f"poison lsp: {num_classes} classes need more than {features} patch features; "
                             f"use a smaller --poison-param patch")
        radius = l2_radius(p.eps, (c, h, w))
        indices = exact_subset(n, ctx.ratio, ctx.key)
        x = train.x.clone()
        l2_max = 0.0
        if indices.numel():
            points = synthetic_points(train.y.cpu().numpy().astype(np.int64), num_classes, features, p.class_sep, ctx.key)
            for start in range(0, indices.numel(), CHUNK):
                sel = indices[start:start + CHUNK]
                noise = patch_images(points[sel.numpy()], c, (h, w), p.patch)
                noise = noise * (radius / noise.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
                dev_sel = sel.to(x.device)
                clean = x[dev_sel]
                if p.official_truncation:
                    total = (clean.to(torch.float64) / 255.0 + noise.to(clean.device, torch.float64)) * 255.0
                    stored = total.clamp_(0, 255).to(torch.uint8)  # the cast truncates, as numpy's astype
                else:
                    stored = add_levels(clean, l2_budget_levels(clean, noise.to(clean.device), radius))
                l2_max = max(l2_max, float(l2_distances(clean, stored).max()))
                x[dev_sel] = stored
        info = {"features": features, "l2_radius": round(radius, 6), "l2_max": round(l2_max, 6),
                "quantisation": "official truncation" if p.official_truncation else "exact L2 (rounded within the budget)"}
        return PoisonedSet(x, train.y.clone(), indices, info=info)
