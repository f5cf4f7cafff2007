"""JPEG compression squeezing (ISS, Liu et al. 2023), official code liuzrcc/ImageShortcutSqueezing: JPEG-10 training images.

ISS-code re-encodes each training image through PIL JPEG (quality 10) every time it is loaded; the
codec is deterministic, so encoding once before training is equivalent (§19.11). We use
torchvision's libjpeg ``encode_jpeg``/``decode_jpeg`` on the uint8 tensors (checked identical to PIL
at quality 10 on CIFAR-10 images), and PIL itself where a torchvision release no longer has them
(they are deprecated since 0.29). The result is cached on disk under
``<cache>/squeezed/jpeg-<hash of images + quality + codec>.npz``, so repeated runs on the same
(poisoned) set reuse it. Test set untouched.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from benchmark.data import ImageSet
from benchmark.errors import BenchError
from benchmark.io import read_npz, write_npz
from benchmark.locks import load_or_make
from benchmark.params import param
from benchmark.registry import register_defense
from defenses.base import ImageDefense, TrainContext


@dataclass(frozen=True)
class JPEGParams:
    quality: int = param(10, "JPEG quality (ISS: 10)", ge=1, le=100)


def _pil_jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """PIL round trip, one image at a time (the fallback; ISS-code's own codec)."""
    out = []
    for img in images.permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        out.append(np.array(Image.open(buf)).reshape(img.shape))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def _torchvision_jpeg(images: torch.Tensor, quality: int) -> torch.Tensor | None:
    """torchvision's batched libjpeg round trip, or None where this release has no JPEG codec."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import decode_jpeg, encode_jpeg

            return torch.stack(decode_jpeg(encode_jpeg(list(images), quality=quality)))
    except (ImportError, AttributeError):
        return None


def jpeg_uint8(x: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG encode + decode uint8 (N, C, H, W) images (C = 1 or 3) on the CPU (libjpeg codes one image
    at a time); same shape, dtype and device."""
    if x.shape[1] not in (1, 3):
        raise BenchError(f"jpeg needs 1- or 3-channel images, got {x.shape[1]} channels")
    cpu = x.cpu().contiguous()
    squeezed = _torchvision_jpeg(cpu, quality)
    return (squeezed if squeezed is not None else _pil_jpeg(cpu, quality)).to(x.device)


def cache_path(cache_dir: Path, x: torch.Tensor, tag: str) -> Path:
    """``squeezed/<tag>-<sha256 of shape, bytes and tag>.npz`` under the run's cache folder."""
    h = hashlib.sha256()
    h.update(f"{tag}|{tuple(x.shape)}|torchvision-{torchvision.__version__}".encode())
    h.update(x.cpu().contiguous().numpy().tobytes())
    return Path(cache_dir) / "squeezed" / f"{tag}-{h.hexdigest()[:20]}.npz"


@register_defense("jpeg", aliases=("jpeg-compression",))
class JPEG(ImageDefense[JPEGParams], family="filtering"):
    """JPEG-compress the training images (ISS JPEG-10), once per data set and cached on disk."""

    def prepare(self, train: ImageSet, ctx: TrainContext) -> ImageSet:
        q = self.params.quality
        if ctx.cache_dir is None:
            return super().prepare(train, ctx)
        path = cache_path(ctx.cache_dir, train.x, f"jpeg-q{q}")

        def load() -> ImageSet | None:
            if not path.exists():
                return None
            try:
                cached = torch.from_numpy(read_npz(path, required=("x",))["x"])
            except BenchError:
                return None  # a corrupt cache file is recomputed and overwritten
            if cached.shape != train.x.shape or cached.dtype != torch.uint8:
                return None
            return ImageSet(cached.to(train.x.device), train.y, list(train.classes))

        def make() -> ImageSet:
            squeezed = super(JPEG, self).prepare(train, ctx)
            write_npz(path, {"x": np.ascontiguousarray(squeezed.x.cpu().numpy())})
            return squeezed

        return load_or_make(path, f"the JPEG-{q} copy {path.name}", load, make, notify=ctx.emit)

    def transform_images(self, x: torch.Tensor) -> torch.Tensor:
        return jpeg_uint8(x, self.params.quality)
