"""CUDA: Convolution-based Unlearnable DAtaset (Sadasivan et al., CVPR 2023), spec poisons.md §1.

Every class gets a random k x k filter drawn from the private key; each image of the class is
convolved with it (the same filter on every channel), divided by its own global max and stored as
uint8 by truncation. The filters are key-compatible with the official code: NumPy's legacy RNG,
seeded with the key, draws for each class a (3,1,k,k) block of Uniform[0, pb) values, then a row and a
column index for the entry set to 1.0; partial poisoning draws one uniform per image from the same
stream, in dataset order. That order is the order of the training set handed in: the offline
CIFAR-10 JPEG copy is stored sorted by class (and the cpu preset trains on a subset), so there the
partially poisoned subset is not the one the official script picks on the original files, although
the filters are; full poisoning (ratio 1) does not depend on the order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from attacks.base import Poison, PoisonContext, PoisonedSet
from benchmark.data import ImageSet
from benchmark.params import param
from benchmark.registry import register_poison


@dataclass(frozen=True)
class CUDAParams:
    pb: float = param(0.3, "blur parameter: filter entries ~ Uniform[0, pb) (0.06 with k=9 for ImageNet; the paper uses 0.06-0.5)",
                      ge=0.0, le=10.0)
    k: int = param(3, "kernel size (odd); 3 for CIFAR, 9 for ImageNet-size images", ge=1, le=31,
                   odd=True)
    universal: bool = param(False, "use class 0's filter for every class (the paper's 'universal blurring' control)")


def cuda_filters(key: int, num_classes: int, k: int, pb: float) -> tuple[np.ndarray, np.random.RandomState]:
    """The class-wise (num_classes, k, k) filters for ``key``, and the RNG positioned after them.

    Draw order (official): per class, 3*k*k uniforms scaled by pb, then randint(k) for the row and
    randint(k) for the column of the 1.0 entry; only channel 0's block is used (copied to all channels).
    """
    rng = np.random.RandomState(key)  # same stream as np.random.seed(key) + global calls
    filters = np.empty((num_classes, k, k), dtype=np.float64)
    for c in range(num_classes):
        block = rng.uniform(0.0, pb, size=(3, 1, k, k))
        row = rng.randint(k)
        col = rng.randint(k)
        block[0, 0, row, col] = 1.0
        filters[c] = block[0, 0]
    return filters, rng


def apply_filters(x: torch.Tensor, labels: torch.Tensor, filters: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Convolve each uint8 image with its class filter (zero 'same' padding, the same filter on every
    channel; cross-correlation like ``F.conv2d``), divide by the image's global max, and return uint8
    by truncation.

    Batched over all images at once: the k*k shifted copies of the padded batch are weighted by each
    image's own filter entries and summed (a per-image depthwise convolution, ~10x faster on CPU than
    one grouped ``conv2d`` per class).
    """
    n, c, h, w = x.shape
    k = filters.shape[-1]
    pad = k // 2
    weights = filters.to(device=x.device, dtype=torch.float32)
    out = torch.empty_like(x)
    for start in range(0, n, chunk):
        imgs = x[start:start + chunk].to(torch.float32).div_(255.0)
        padded = F.pad(imgs, (pad, pad, pad, pad))
        per_image = weights[labels[start:start + chunk].to(x.device)]  # (b, k, k)
        y = torch.zeros_like(imgs)
        for i in range(k):
            for j in range(k):
                y.addcmul_(padded[:, :, i:i + h, j:j + w], per_image[:, i, j].view(-1, 1, 1, 1))
        peak = y.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
        y = torch.where(peak > 0, y / peak.clamp_min(1e-12), y)
        out[start:start + chunk] = (y * 255.0).clamp_(0, 255).to(torch.uint8)  # cast truncates
    return out


@register_poison("cuda")
class CUDA(Poison):
    """Class-wise random convolutions keyed by a private seed (CUDA, CVPR'23)."""

    budget_type = "unbounded"
    notes = ("CUDA is not Lp-bounded: its class-wise convolutions move pixels by up to ~231/255 in L-inf "
             "(EM/REM/SEM: 8/255), so budgets are not comparable across these poisons.",)
    Params = CUDAParams

    def generate(self, train: ImageSet, ctx: PoisonContext) -> PoisonedSet:
        p: CUDAParams = self.params
        num_classes = max(ctx.num_classes, int(train.y.max()) + 1 if len(train) else 0)
        filters, rng = cuda_filters(ctx.key, num_classes, p.k, p.pb)
        if p.universal:
            filters[:] = filters[0]
        # Official partial poisoning: one uniform per image, in dataset order, from the same stream.
        draws = rng.random_sample(len(train))
        mask = torch.from_numpy(draws < ctx.ratio)
        poisoned_indices = torch.nonzero(mask).flatten()
        filt = torch.from_numpy(filters)
        if poisoned_indices.numel() == len(train):
            x = apply_filters(train.x, train.y, filt)
        else:
            x = train.x.clone()
            if poisoned_indices.numel():
                sel = poisoned_indices.to(train.x.device)
                x[sel] = apply_filters(train.x[sel], train.y[sel], filt)
        # no filter statistics in ``info``: anything computed from the filters is a function of the key
        return PoisonedSet(x, train.y.clone(), poisoned_indices)
