"""Save and restore a model's mutable state around attack forwards inside a training step (AT-style
defenses): each module's train/eval flag, the parameters' ``requires_grad`` flags and BatchNorm's
running statistics. Restoring module by module keeps a linear probe's frozen backbone frozen."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

BNState = list[tuple[nn.Module, dict[str, torch.Tensor]]]


def bn_state(model: nn.Module) -> BNState:
    """Copies of the running statistics (mean, var, batch counter) of every layer that tracks them
    (BatchNorm, and InstanceNorm with ``track_running_stats``)."""
    return [(m, {k: getattr(m, k).clone() for k in ("running_mean", "running_var", "num_batches_tracked")
                 if getattr(m, k, None) is not None})
            for m in model.modules() if getattr(m, "running_mean", None) is not None]


def restore_bn_state(saved: BNState) -> None:
    """Write back the statistics ``bn_state`` copied."""
    for m, buffers in saved:
        for k, v in buffers.items():
            getattr(m, k).copy_(v)


@contextmanager
def kept_bn_stats(model: nn.Module, keep: bool = True) -> Iterator[None]:
    """BatchNorm running statistics as they were before the block (``keep=False``: let it change them)."""
    saved = bn_state(model) if keep else None
    try:
        yield
    finally:
        if saved is not None:
            restore_bn_state(saved)


@contextmanager
def kept_modes(model: nn.Module) -> Iterator[None]:
    """Every module's train/eval flag restored, one by one, after the block."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextmanager
def frozen_params(model: nn.Module) -> Iterator[None]:
    """Parameters with ``requires_grad=False`` during the block (gradients w.r.t. inputs only), then
    their previous flags."""
    flags = [q.requires_grad for q in model.parameters()]
    for q in model.parameters():
        q.requires_grad_(False)
    try:
        yield
    finally:
        for q, flag in zip(model.parameters(), flags, strict=True):
            q.requires_grad_(flag)
