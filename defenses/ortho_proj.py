"""Orthogonal projection (Sandoval-Segura, Singla, Geiping, Goldblum, Goldstein, "What can we learn from
unlearnable datasets?", NeurIPS 2023, Algorithm 1). Official code:
github.com/psandovalsegura/learn-from-unlearnable @605dea2 — ``orthogonal_projection_step_1.py`` (the
linear model), ``utils_projection.py`` (``project_data`` with ``use_q_matrix=True``) and
``orthogonal_projection_step_2.py`` (projection, then training).

Class-wise perturbations are linearly separable, so a linear model fitted on the poisoned images
learns them. Step 1 fits a bias-free linear classifier W (K x d, d = C*H*W) on the flattened poisoned
training images in [0, 1] (no normalisation, no augmentation): plain SGD, lr 0.1, no momentum, no
weight decay, batch 1024, 20 epochs, lr x0.1 at 50 % and 75 % of the epochs, PyTorch's default
``nn.Linear`` init. Step 2 normalises the K rows of W, orthonormalises them (QR) and removes from
every training image its component in their span: x <- x - Q Q^T x. Test images are not projected
(the official test loader only normalises; its ``--project-test`` flag is parsed but never used).
Batched on the training device (fit and projection are matrix products over chunks).

Deviations (documented):

* Storage: the trainer keeps images as uint8 and crops them with zero padding; the official code
  keeps the projected floats (unclamped, zero-padded by the crop, then normalised). Here every image
  is stored as x - Q Q^T (x - m), m the mean training image (the removed component replaced by the
  mean image's: a constant image added to every training image, which keeps pixels near [0, 1], so
  rounding clips few of them; ``clipped_fraction``), and by default (``center=false``) each batch, in
  the ``before_crop`` hook, gets that constant Q Q^T m subtracted as floats: the crop/flip then sees
  the official x - Q Q^T x, unclamped, up to the uint8 rounding. ``center=true`` trains on the stored
  images as they are (the benchmark's earlier default): it moves the training images toward the
  unprojected test images along Q, which may help the defense, so it is a named variant.
* The fit reads shuffled batches (seeded); the official loader does not shuffle, which on a
  class-sorted set (our offline CIFAR-10 copy is sorted) would fit one class per batch.
* The official step 2 trains its own recipe (ResNet-18, 50 epochs, strong augmentation, CutMix);
  here the benchmark's protocol trains the projected set; compose ``ortho-proj+cutmix`` for CutMix.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmark.data import ImageSet
from benchmark.errors import BenchError
from benchmark.params import param
from benchmark.registry import register_defense
from defenses.base import ImageDefense, TrainContext

CHUNK = 4096


@dataclass(frozen=True)
class OrthoProjParams:
    epochs: int = param(20, "epochs of the linear-model fit (official 20)", ge=1)
    lr: float = param(0.1, "SGD learning rate of the fit (official 0.1, no momentum, x0.1 at 50 % and 75 %)", gt=0.0)
    batch_size: int = param(1024, "batch size of the fit (official 1024)", ge=1)
    center: bool = param(False, "false: train on the official x - QQ^T x (unclamped floats); true: on "
                         "x - QQ^T (x - mean), the removed component replaced by the mean image's (moves training "
                         "images toward the unprojected test images along Q)")


def flat01(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float (N, C*H*W) in [0, 1] on ``device``."""
    return x.to(device).flatten(1).float().div_(255)


def fit_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, p: OrthoProjParams, ctx: TrainContext) -> tuple[torch.Tensor, float]:
    """The official step 1: bias-free linear model on flattened [0,1] images, plain SGD with the
    MultiStep schedule. Returns (W (K, d), training accuracy of its last epoch, as the official
    script reports it)."""
    device = ctx.device
    n, d = x.shape[0], x[0].numel()
    bound = 1.0 / math.sqrt(d)  # nn.Linear's default init: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(d), 1/sqrt(d))
    weight = ((torch.rand((num_classes, d), generator=ctx.generator) * 2 - 1) * bound).to(device).requires_grad_(True)
    opt = torch.optim.SGD([weight], lr=p.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(p.epochs * 0.5), int(p.epochs * 0.75)])
    labels = y.to(device)
    accuracy = 0.0
    for _ in range(p.epochs):
        order = torch.randperm(n, generator=ctx.generator).to(device)
        correct = torch.zeros((), device=device)
        for start in range(0, n, p.batch_size):
            idx = order[start:start + p.batch_size]
            logits = flat01(x[idx.to(x.device)], device) @ weight.T
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            correct += (logits.detach().argmax(1) == labels[idx]).sum()
        sched.step()
        accuracy = 100.0 * float(correct) / n
    return weight.detach(), accuracy


def orthonormal_basis(weight: torch.Tensor) -> torch.Tensor:
    """Q (d, K): QR of the row-normalised weights (``utils_projection.get_q_matrix``)."""
    rows = weight / weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
    q, _ = torch.linalg.qr(rows.T.double())
    return q.float()


def project(x: torch.Tensor, q: torch.Tensor, mean: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """x - Q Q^T (x - mean) for uint8 images, on q's device; rounded and clamped back to uint8.
    Returns (projected uint8 images on q's device, number of clipped pixel values)."""
    flat = flat01(x, q.device)
    centred = flat - mean if mean is not None else flat
    proj = (flat - (centred @ q) @ q.T) * 255
    clipped = int(((proj < -0.5) | (proj > 255.5)).sum())
    return proj.round().clamp(0, 255).to(torch.uint8).view_as(x), clipped


def linear_accuracy(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, device: torch.device,
                    offset: torch.Tensor | None = None) -> float:
    """Accuracy (%) of the bias-free linear model ``weight`` on uint8 images (minus the flat ``offset``)."""
    correct = 0
    shift = offset.flatten() @ weight.T if offset is not None else 0.0
    for start in range(0, x.shape[0], CHUNK):
        logits = flat01(x[start:start + CHUNK], device) @ weight.T - shift
        correct += int((logits.argmax(1) == y[start:start + CHUNK].to(device)).sum())
    return 100.0 * correct / max(1, x.shape[0])


@register_defense("ortho-proj", aliases=("orthogonal-projection",))
class OrthogonalProjection(ImageDefense[OrthoProjParams], family="filtering"):
    """Orthogonal projection (Sandoval-Segura et al., NeurIPS 2023): remove a linear model's class directions."""

    chunk = CHUNK  # images per projection (matrix product) call
    notes = ("`ortho-proj` trains on the official x - QQ^T x as floats (stored as uint8 with the mean image's "
             "component along Q, subtracted again before the crop); `center=true` keeps that component; test "
             "images are not projected, as in the official code.",)
    metrics_help = {
        "linear_train_acc": "training accuracy (%) of the fitted linear model on the poisoned set (its last "
                            "epoch): how linearly separable the poison is",
        "linear_acc_projected": "accuracy (%) of that linear model on the projected training set the model "
                                "trains on; chance when the projection removed its directions",
        "clipped_fraction": "share of stored pixel values x - QQ^T (x - mean) outside [0, 255] before clamping "
                            "to uint8",
        "fit_seconds": "seconds for the linear fit plus the projection",
    }

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.stats: dict[str, Any] = {}
        self.basis: torch.Tensor | None = None  # Q (d, K), set by the fit in ``prepare``
        self.mean: torch.Tensor | None = None
        self.offset: torch.Tensor | None = None  # Q Q^T m (C, H, W), subtracted before the crop (center=false)
        self.clipped = 0

    def prepare(self, train: ImageSet, ctx: TrainContext) -> ImageSet:
        p = self.params
        t0 = time.perf_counter()
        weight, train_acc = fit_linear(train.x, train.y, ctx.num_classes, p, ctx)
        self.basis = orthonormal_basis(weight).to(ctx.device)
        total = torch.zeros(train.x[0].numel(), device=ctx.device)
        for start in range(0, len(train), CHUNK):
            total += flat01(train.x[start:start + CHUNK], ctx.device).sum(0)
        self.mean = total / max(1, len(train))
        offset = (self.mean @ self.basis) @ self.basis.T
        self.offset = None if p.center else offset.view(train.x.shape[1:])
        self.clipped = 0
        projected = super().prepare(train, ctx)
        self.stats = {
            "linear_train_acc": round(train_acc, 2),
            "linear_acc_projected": round(linear_accuracy(projected.x, train.y, weight, ctx.device, self.offset), 2),
            "clipped_fraction": round(self.clipped / projected.x.numel(), 6),
            "fit_seconds": round(time.perf_counter() - t0, 3),
        }
        return projected

    def before_crop(self, x: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        """center=false: the stored x - QQ^T (x - m) minus QQ^T m, i.e. the official x - QQ^T x, as floats."""
        if self.offset is None:
            return x
        if x.dtype != torch.uint8 or x.shape[1:] != self.offset.shape:
            raise BenchError("ortho-proj subtracts its offset from the stored images: list it before defenses "
                             "that filter images before the crop (e.g. 'ortho-proj+rsk-ff')")
        return x.float().div_(255).sub_(self.offset.to(x.device))

    def transform_images(self, x: torch.Tensor) -> torch.Tensor:
        """The projection of ``prepare``'s fit; counts the clipped pixel values."""
        if self.basis is None:
            raise RuntimeError("ortho-proj projects only inside prepare(), after the linear fit")
        out, clipped = project(x, self.basis, self.mean)
        self.clipped += clipped
        return out

    def evaluate(self, model: nn.Module, test: ImageSet, ctx: TrainContext) -> dict[str, Any]:
        return dict(self.stats)
