"""CUDA: Convolution-based Unlearnable DAtaset (Sadasivan et al., CVPR 2023), official code vinusankars/Convolution-based-Unlearnability (cifar10_train.py).

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


def apply_filters(x: torch.Tensor, labels: torch.Tensor, filters: torch.Tensor,
                  index: torch.Tensor | None = None, out: torch.Tensor | None = None,
                  chunk: int | None = None) -> torch.Tensor:
    """Convolve each uint8 image with its class filter (zero 'same' padding, the same filter on every
    channel; cross-correlation like ``F.conv2d``), divide by the image's global max, and return uint8
    by truncation. ``index``: filter only these images of ``x``, writing them into ``out`` (default: a
    copy of ``x``); without it every image is filtered.

    The arithmetic is the plain float32 formula, one rounding per step in a fixed order:
    ``p = u8 / 255``; ``y = p[0]*w[0]``, then ``y = y + p[t]*w[t]`` for the other taps in row-major
    order; ``y / max(y) * 255`` truncated. A per-image depthwise convolution (``conv2d`` with
    ``groups``) sums in another order with fused multiply-adds, so its bytes differ; this keeps the
    bytes of the committed CUDA artifacts. It is fast because every step is one contiguous
    elementwise pass over a chunk that stays in cache: the chunk is laid out as flat zero-padded
    planes, so a tap is a shifted view of one buffer (the padding frame's outputs are computed and
    discarded), and each image's row length is a multiple of 64 floats: PyTorch's CPU loops step two
    vectors (16 or 32 floats) at a time and finish a row's remainder with scalar code, so every output
    then takes the same vectorised kernel path. The buffers are allocated once per call. ``chunk``:
    images per pass (on a CPU 32 per intra-op thread, up to 4 threads, so each core's share stays in
    its L2 cache; 4096 on a GPU, where launches cost more).
    """
    n, c, h, w = x.shape
    chunk = chunk or (32 * min(4, torch.get_num_threads()) if x.device.type == "cpu" else 4096)
    k = filters.shape[-1]
    weights = filters.to(device=x.device, dtype=torch.float32).flatten(1)  # (classes, k*k)
    labels = labels.to(x.device)
    if index is None:
        out = torch.empty_like(x) if out is None else out
        total = n
    else:
        out = x.clone() if out is None else out
        index = index.to(x.device)
        total = index.numel()
    full = _Chunk(max(1, min(chunk, total)), (c, h, w), k, x.device)
    for start in range(0, total, chunk):
        b = min(chunk, total - start)
        rows = slice(start, start + b) if index is None else index[start:start + b]
        buf = full if b == full.b else _Chunk(b, (c, h, w), k, x.device)
        torch.div(x[rows], 255.0, out=buf.image)
        per_image = weights[labels[rows]].t().unsqueeze(-1)  # (k*k, b, 1)
        torch.mul(buf.taps[0], per_image[0], out=buf.acc)
        for t in range(1, k * k):
            buf.acc.addcmul_(buf.taps[t], per_image[t])
        # acc >= 0, so an all-zero image divides 0 by 1e-12 and stays 0; acc / max <= 1, so no clamp
        peak = buf.acc_image.amax(dim=(1, 2, 3)).clamp_min_(1e-12)
        buf.acc.div_(peak.view(b, 1)).mul_(255.0)
        buf.ints.copy_(buf.acc)  # truncates like a uint8 cast on [0, 255]; float -> int32 is the vectorised cast
        if index is None:
            out[rows].copy_(buf.ints_image)
        else:
            out[rows] = buf.ints_image.to(torch.uint8)
    return out


class _Chunk:
    """Buffers and views for ``b`` images: flat zero-padded planes, one row of a multiple of 64 floats
    per image, so every elementwise pass takes the same vectorised path; a tap is a shifted view."""

    def __init__(self, b: int, shape: tuple[int, int, int], k: int, device: torch.device) -> None:
        c, h, w = shape
        pad = k // 2
        hp, wp = h + 2 * pad, w + 2 * pad
        plane = c * hp * wp
        row = -(-plane // 64) * 64
        margin = pad * wp + pad  # the largest shift of a tap, so shifted views stay inside the buffer
        inner = (slice(None), slice(None), slice(pad, pad + h), slice(pad, pad + w))
        self.b = b
        src = torch.zeros(2 * margin + b * row, device=device)  # the padding stays zero: only images are written
        self.image = src[margin:margin + b * row].view(b, row)[:, :plane].unflatten(1, (c, hp, wp))[inner]
        self.taps = [src.as_strided((b, row), (row, 1), margin + (i - pad) * wp + (j - pad))
                     for i in range(k) for j in range(k)]
        self.acc = torch.empty(b, row, device=device)
        self.acc_image = self.acc[:, :plane].unflatten(1, (c, hp, wp))[inner]
        self.ints = torch.empty(b, row, dtype=torch.int32, device=device)
        self.ints_image = self.ints[:, :plane].unflatten(1, (c, hp, wp))[inner]


@register_poison("cuda")
class CUDA(Poison[CUDAParams], budget_type="unbounded"):
    """Class-wise random convolutions keyed by a private seed (CUDA, CVPR'23)."""

    notes = ("CUDA is not Lp-bounded: its class-wise convolutions move pixels by up to ~231/255 in L-inf "
             "(EM/REM/SEM: 8/255), so budgets are not comparable across these poisons.",)

    def generate(self, train: ImageSet, ctx: PoisonContext) -> PoisonedSet:
        p = self.params
        num_classes = self.num_classes_of(train, ctx)
        filters, rng = cuda_filters(ctx.key, num_classes, p.k, p.pb)
        if p.universal:
            filters[:] = filters[0]
        # Official partial poisoning: one np.random.random() per image, in dataset order, from the same
        # stream; one vectorised random_sample(n) call yields the same n doubles in the same order.
        draws = rng.random_sample(len(train))
        mask = torch.from_numpy(draws < ctx.ratio)
        poisoned_indices = torch.nonzero(mask).flatten()
        filt = torch.from_numpy(filters)
        out = ctx.images_like(train.x)  # written as it is made: a big set never exists twice in memory
        if poisoned_indices.numel() == len(train):
            x = apply_filters(train.x, train.y, filt, out=out)
        else:
            x = apply_filters(train.x, train.y, filt, index=poisoned_indices, out=out.copy_(train.x))
        # no filter statistics in ``info``: anything computed from the filters is a function of the key
        return PoisonedSet(x, train.y.clone(), poisoned_indices)
