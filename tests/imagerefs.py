"""Reference image operations for the defense tests, computed with PIL (the official codes' library)."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def pil_jpeg(img: torch.Tensor, quality: int) -> torch.Tensor:
    """PIL JPEG round trip of one uint8 (3, H, W) image."""
    buf = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1)


def pil_luma(img: torch.Tensor) -> np.ndarray:
    """PIL's ``convert("L")`` of one uint8 (3, H, W) image: (H, W)."""
    return np.array(Image.fromarray(img.permute(1, 2, 0).numpy()).convert("L"))
