"""Batched uint8 image operations shared by plugins: a chunked map over a whole image set and
index-based border padding (uint8 tensors cannot go through ``F.pad``'s reflect/replicate modes)."""

from __future__ import annotations

from collections.abc import Callable

import torch

#: images per call of a chunked map: bounds the float temporaries of a 50k-image set
CHUNK = 4096


def map_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, device: torch.device | None = None,
               chunk: int = CHUNK) -> torch.Tensor:
    """``fn`` over ``x`` (N, ...) in chunks of ``chunk`` images moved to ``device`` (default: x's);
    ``fn`` maps a chunk to a tensor of the same shape and dtype. Returns the results on x's device."""
    device = device or x.device
    out = torch.empty_like(x)
    for start in range(0, x.shape[0], chunk):
        part = x[start:start + chunk]
        mapped = fn(part.to(device))
        if mapped.shape != part.shape or mapped.dtype != part.dtype:
            raise ValueError(f"an image map must keep shape and dtype: {tuple(part.shape)} {part.dtype} -> "
                             f"{tuple(mapped.shape)} {mapped.dtype}")
        out[start:start + part.shape[0]] = mapped.to(x.device)
    return out


def pad_index(size: int, pad: int, mode: str, device: torch.device | None = None) -> torch.Tensor:
    """Source index of every padded position: 'replicate' (cv2 BORDER_REPLICATE) or 'reflect'
    (cv2 BORDER_REFLECT_101, torch 'reflect'), so uint8 images can be padded by indexing."""
    idx = torch.arange(-pad, size + pad, device=device)
    if mode == "replicate":
        return idx.clamp(0, size - 1)
    period = max(1, 2 * (size - 1))
    idx = idx.remainder(period)
    return torch.where(idx >= size, period - idx, idx)


def pad_images(x: torch.Tensor, pad: int, mode: str) -> torch.Tensor:
    """(N, C, H, W) images of any dtype padded by ``pad`` on each side ('replicate' or 'reflect')."""
    h, w = x.shape[-2:]
    return x.index_select(2, pad_index(h, pad, mode, x.device)).index_select(3, pad_index(w, pad, mode, x.device))
