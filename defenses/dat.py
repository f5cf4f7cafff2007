"""DAT: deconvolution-based adversarial training, the adaptive attack CUDA's authors built to break
CUDA (CUDA paper §5.2; official code vinusankars/Convolution-based-Unlearnability, final_muladv.py). ``bench run --defense adaptive``.

Per training batch: fresh class-wise ``size``×``size`` transposed-convolution filters (1 in / 1 out
channel, with bias, PyTorch's default init, shared across the colour channels) are optimised by
``steps`` of plain gradient *ascent* (raw gradient, step ``lr``) on the classifier's CE, with weights
and biases clamped to ±``bound`` before each step; each image is then filtered with its class's
final filter, min-max rescaled per image to [0, 1], and the classifier takes its step on that batch
only (no clean term, as the official ``final_muladv.py``).

Batched: every image-channel gets its class's filter through one grouped convolution (a stride-1
transposed convolution with padding s//2 is a convolution with the flipped kernel; grouped
``conv_transpose2d`` is ~25x slower on CPU). The ascent maximises the sum over classes of each
class's mean CE, which gives every filter exactly the official per-class gradient.

BatchNorm during the ascent (``bn_mode``): ``class`` (default, official) runs the classifier in its
training mode with one forward per class present, so BN normalises with per-class batch statistics,
as in the official per-class loop; ``batch`` is one forward on the whole batch (faster on GPUs,
mixed-class BN statistics); ``eval`` freezes BN (the AT convention; per-class and batched forwards
are then identical). The ascent never changes a module's mode otherwise, so a linear probe's frozen
backbone (``finetune(mode=linear)+dat``) stays frozen.

Deviation (documented, ``official_bn_update``): the attack forwards do not touch BN's running
statistics; they are saved before the ascent and restored after it, as PGD-AT implementations avoid
the same leak by attacking in eval mode. The official code leaves the model in train mode, so its
~10 x classes attack forwards per batch overwrite the running mean/variance with statistics of
filtered, not yet rescaled images (outputs span about [-7, 11]) that test images never resemble; only
one forward in ~100 is the real training batch. On the cpu preset that alone keeps a DAT-trained
small CNN near chance on clean test data. ``official_bn_update=true`` reproduces the official
behaviour. As in the official code, the filters are clamped to the box before each ascent step only,
so the last update may leave the box by one step. The official gradient-norm clip 5.0 comes from the
protocol (``grad_clip``: on in the paper preset, off in the cpu preset).
With soft labels (``dat+mixup``) each image uses the filter of its arg-max class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmark.modelstate import frozen_params, kept_bn_stats, kept_modes
from benchmark.params import param
from benchmark.registry import register_defense
from defenses.base import Defense, TrainContext, soft_cross_entropy


@dataclass(frozen=True)
class DATParams:
    size: int = param(7, "filter size s (the paper ran 3, 5 and 7; the code uses 7)", ge=1, odd=True)
    steps: int = param(10, "gradient-ascent steps on the filters per batch", ge=0)
    lr: float = param(0.1, "ascent step size eta (raw gradient, no sign)", gt=0.0)
    bound: float = param(5.0, "box constraint M: weights and biases clamped to [-M, M]", gt=0.0)
    bn_mode: str = param("class", "BatchNorm during the ascent: class = train mode, one forward per class "
                         "(official); batch = train mode, one forward; eval = frozen",
                         choices=("class", "batch", "eval"))
    official_bn_update: bool = param(False, "let the attack forwards update BatchNorm running statistics, "
                                     "as the official code does (default: saved and restored)")


def init_filters(num_classes: int, size: int, gen: torch.Generator | None,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's default ConvTranspose2d(1, 1, size) init, one filter per class: kaiming-uniform
    with a=sqrt(5) gives U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias; for a transposed
    conv torch computes fan_in from weight dim 1 (= out channels = 1) times size*size."""
    bound = 1.0 / math.sqrt(size * size)
    w = (torch.rand((num_classes, size, size), generator=gen) * 2 - 1) * bound
    b = (torch.rand((num_classes,), generator=gen) * 2 - 1) * bound
    return w.to(device), b.to(device)


def deconvolve(x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Each image (every channel) through its class's ConvTranspose2d(1, 1, s, padding=s//2): computed
    as one grouped convolution with the flipped kernels (equal at stride 1, 'same' size)."""
    n, c, h, w = x.shape
    size = weight.shape[-1]
    k = weight[labels].flip(-2, -1).repeat_interleave(c, dim=0).unsqueeze(1)  # (N*C, 1, s, s)
    out = F.conv2d(x.reshape(1, n * c, h, w), k, padding=size // 2, groups=n * c)
    return out.reshape(n, c, h, w) + bias[labels].view(n, 1, 1, 1)


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Per-image min-max rescale to [0, 1] (the official normalisation after deconvolution)."""
    flat = x.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    return (x - lo) / (hi - lo).clamp_min(1e-12)


ClassGroups = tuple[torch.Tensor, list[int]]


def class_groups(labels: torch.Tensor) -> ClassGroups:
    """The batch order that sorts images by class, keeping batch order within a class, and the size of
    each class present (ascending class). Computed once per batch: one host sync, not one per step."""
    order = torch.sort(labels, stable=True).indices
    counts = torch.unique(labels, return_counts=True)[1]
    return order, counts.tolist()


def class_ce(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, per_class_forward: bool,
             groups: ClassGroups | None = None) -> torch.Tensor:
    """Sum over the classes present of the class's mean CE (the official per-class objective);
    ``per_class_forward`` runs the model once per class (ascending class, each class's images in batch
    order), as the official loop does. The classes are slices of one class-sorted gather, so the
    backward pass writes each image's gradient once instead of adding one zero-padded full-batch
    gradient per class (the same numbers)."""
    if per_class_forward:
        order, counts = groups if groups is not None else class_groups(labels)
        pieces = zip(x[order].split(counts), labels[order].split(counts), strict=True)
        return sum(F.cross_entropy(model(xc), yc) for xc, yc in pieces)
    per = F.cross_entropy(model(x), labels, reduction="none")
    classes, inverse = labels.unique(return_inverse=True)
    sums = torch.zeros(len(classes), device=per.device, dtype=per.dtype).index_add_(0, inverse, per)
    counts = torch.bincount(inverse, minlength=len(classes)).to(per.dtype)
    return (sums / counts).sum()


@register_defense("dat", aliases=("adaptive", "deconvolution"))
class DeconvolutionAT(Defense[DATParams], family="adaptive"):
    """Deconvolution-based adversarial training: class-wise error-maximising filters (CUDA's adaptive attack)."""

    notes = ("`dat` saves and restores BatchNorm's running statistics around its ~10 x classes attack "
             "forwards per batch; `dat (official)` lets them overwrite the statistics, as the official "
             "`final_muladv.py` and the CUDA paper's runs do. On a small CNN the official variant stays near "
             "chance even on clean data, so only `dat` is read as DAT's verdict.",)

    def variant(self) -> str | None:
        return "official" if self.params.official_bn_update else None

    def adversarial_filters(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                            ctx: TrainContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh class-wise filters ascended for ``steps`` steps on the model's loss; returns
        (weight (K, s, s), bias (K,)); clamped before each step, so the last update may leave the box."""
        p = self.params
        weight, bias = init_filters(ctx.num_classes, p.size, ctx.generator, x.device)
        per_class = p.bn_mode == "class"
        groups = class_groups(labels) if per_class and p.steps else None
        with kept_modes(model), frozen_params(model), kept_bn_stats(model, keep=not p.official_bn_update):
            if p.bn_mode == "eval":
                model.eval()
            for _ in range(p.steps):
                weight = weight.clamp(-p.bound, p.bound).requires_grad_(True)
                bias = bias.clamp(-p.bound, p.bound).requires_grad_(True)
                loss = class_ce(model, deconvolve(x, labels, weight, bias), labels, per_class, groups)
                gw, gb = torch.autograd.grad(loss, (weight, bias))
                weight = (weight + p.lr * gw).detach()
                bias = (bias + p.lr * gb).detach()
        return weight, bias

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> tuple[torch.Tensor, torch.Tensor]:
        labels = y.argmax(1)
        weight, bias = self.adversarial_filters(model, x.detach(), labels, ctx)
        with torch.no_grad():
            x_def = minmax(deconvolve(x, labels, weight, bias))
        logits = model(x_def)
        return soft_cross_entropy(logits, y), logits
