"""RSK+FF: random sharpening kernel followed by a DCT low-pass ("frequency filter"), an adaptive
defense built against CUDA (Kim & Sandoval-Segura, "Learning from convolution-based unlearnable
datasets", AdvML-Frontiers @ NeurIPS 2024, arXiv 2411.01742). Official code:
github.com/aseriesof-tubes/RSK @911680e — ``augments.py`` (``sharpen_image``, ``get_dct_image``,
``get_transform``) and ``main.py``.

Every time a training image is used it gets a fresh 3x3 cross kernel: centre c ~ N(``center``, 0.1),
the four neighbours -n_i with n_i ~ N((c - 1) / 4, 0.1) drawn independently, the same kernel on
every channel, applied without padding (32 -> 30 px) and clamped to [0, 1]; then the image's 2-D
orthonormal DCT keeps the lowest ``ff_percentage`` % of rows and columns (int(30 * 30 / 100) = 9 of
30), the inverse DCT maps back, and the result is clamped to [0, 1]. Test images are not
transformed (the official ``test_transform`` is ToTensor + normalisation only), so there is no
prediction hook. ``kernel=fixed`` is the official SSK (the mean kernel), ``kernel=none`` with
``ff_percentage < 100`` the official ``ff`` transform, ``ff_percentage=100`` RSK alone.

Batched on the training device: the 5-point kernel is five shifted slices weighted per image, and
the DCT low-pass is P X P^T with the (n x n) projector P = D_r^T D_r of the first r rows of the
orthonormal DCT-II matrix D.

Order (``order``): as the official pipeline, each training image is sharpened and low-passed at full size
(32 -> 30 x 30) and then random-cropped to 32 x 32 with padding 4 (offsets 0..6 of the padded 38 x 38)
and flipped: the filters run in the ``before_crop`` hook, and the protocol's crop returns the input
size. Without the protocol's crop/flip the 30 x 30 result is zero-padded by one pixel on each side.
``order=crop-filter`` is the benchmark's earlier order (records made before the parameter): crop/flip
first, then the filters in the batch hook (the black crop border gets sharpened and low-passed), the
30 x 30 result zero-padded back. The CIFAR-100 recipe's extra RandomRotation(15) is not added.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.params import param
from benchmark.registry import register_defense
from defenses.base import Defense, TrainContext

KERNEL_STD = 0.1  # official stddev of the random kernel entries


@dataclass(frozen=True)
class RSKFFParams:
    center: float = param(2.5, "mean centre value c of the sharpening kernel (official --sharp_center 2.5)")
    kernel: str = param("random", "random = RSK (fresh kernel per image and use), fixed = SSK (the mean kernel), "
                        "none = no sharpening", choices=("random", "fixed", "none"))
    ff_percentage: int = param(30, "percentage of the lowest DCT rows and columns kept (official 30; 100 = no "
                               "low-pass)", ge=1, le=100)
    order: str = param("filter-crop", "filter-crop: filters on the full image, then the crop/flip (official); "
                       "crop-filter: crop/flip first, then filters, zero-padded back", choices=("filter-crop", "crop-filter"),
                       legacy="crop-filter")


def sharpening_kernels(n: int, center: float, random: bool, gen: torch.Generator | None) -> torch.Tensor:
    """(n, 5) per-image kernel values (centre, up, left, right, down neighbour weights n_i >= 0 typically);
    the applied kernel is [[0, -up, 0], [-left, c, -right], [0, -down, 0]] (``sharpen_image``)."""
    if not random:
        return torch.tensor([center] + [(center - 1) / 4] * 4).expand(n, 5).clone()
    c = center + KERNEL_STD * torch.randn(n, generator=gen)
    nbr = (c - 1).unsqueeze(1) / 4 + KERNEL_STD * torch.randn((n, 4), generator=gen)
    return torch.cat([c.unsqueeze(1), nbr], dim=1)


def sharpen(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Each image through its own cross kernel, depthwise, no padding ((H, W) -> (H-2, W-2)), clamped."""
    c, up, left, right, down = (k[:, i].to(x.device, x.dtype).view(-1, 1, 1, 1) for i in range(5))
    mid = x[:, :, 1:-1, 1:-1]
    out = c * mid - up * x[:, :, :-2, 1:-1] - left * x[:, :, 1:-1, :-2] - right * x[:, :, 1:-1, 2:] - down * x[:, :, 2:, 1:-1]
    return out.clamp(0, 1)


def dct_matrix(n: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (n x n): D[k, i] = s_k cos(pi (2i + 1) k / 2n), s_0 = sqrt(1/n), else sqrt(2/n)."""
    i = torch.arange(n, dtype=torch.float64)
    d = torch.cos(math.pi * (2 * i.unsqueeze(0) + 1) * i.unsqueeze(1) / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(device=device, dtype=dtype)


def lowpass(x: torch.Tensor, percentage: int) -> torch.Tensor:
    """Keep the lowest int(side * percentage / 100) DCT rows and columns of every channel (``get_dct_image``),
    as P_h X P_w^T with P = D_r^T D_r; clamped to [0, 1]."""
    h, w = x.shape[-2:]
    rows, cols = int(h * percentage / 100), int(w * percentage / 100)
    dh = dct_matrix(h, x.device, x.dtype)[:rows]
    dw = dct_matrix(w, x.device, x.dtype)[:cols]
    return (dh.T @ dh @ x @ dw.T @ dw).clamp(0, 1)


@register_defense("rsk-ff", aliases=("rsk",))
class RSKFF(Defense[RSKFFParams], family="adaptive"):
    """RSK+FF (Kim & Sandoval-Segura 2024, aseriesof-tubes/RSK): random sharpening, then a DCT low-pass."""

    notes = ("`rsk-ff` sharpens and low-passes each training image before the crop/flip (as the official code; "
             "`order=crop-filter`: after it) and leaves test images untouched, as the official code does.",)

    def variant(self) -> str | None:
        p = self.params
        name = {"random": "rsk", "fixed": "ssk", "none": ""}[p.kernel]
        ff = p.ff_percentage < 100
        if p.kernel == "random" and ff:
            return None
        return "+".join(filter(None, [name, "ff" if ff else ""])) or "identity"

    def filtered(self, x: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        """The sharpening kernel (a fresh one per image and use) and the DCT low-pass, on float images."""
        p = self.params
        out = x
        if p.kernel != "none":
            out = sharpen(x, sharpening_kernels(x.shape[0], p.center, p.kernel == "random", ctx.generator))
        if p.ff_percentage < 100:
            out = lowpass(out, p.ff_percentage)
        return out

    def before_crop(self, x: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        if self.params.order != "filter-crop":
            return x
        out = self.filtered(x.float().div(255) if x.dtype == torch.uint8 else x, ctx)
        augment = ctx.protocol is not None and bool(getattr(ctx.protocol, "augment", False))
        return out if augment else pad_to(out, x.shape[-2:])

    def batch(self, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> tuple[torch.Tensor, torch.Tensor]:
        if self.params.order != "crop-filter":
            return x, y
        return pad_to(self.filtered(x, ctx), x.shape[-2:]), y


def pad_to(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Zero-pad images centred to ``size`` (H, W)."""
    dh, dw = size[0] - x.shape[-2], size[1] - x.shape[-1]
    return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2)) if dh or dw else x
