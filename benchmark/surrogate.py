"""Surrogate models of the poisons that train or attack one (EM, REM, SEM, TAP): seeded construction,
the SGD recipe, a frozen eval-mode context for crafting noise against it, and its error on noisy data."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

from benchmark.errors import BenchError
from benchmark.models import build_model
from benchmark.registry import MODELS


class Centered(nn.Module):
    """Feeds ``x - 0.5`` to the wrapped model: REM/SEM's input scaling (x/255 - 0.5, std 1)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x - 0.5)


def build_surrogate(name: str, num_classes: int, in_channels: int, seed: int, device: torch.device,
                    centered: bool = False) -> nn.Module:
    """A freshly initialised surrogate, its init seeded without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(name, num_classes, in_channels)
    if centered:
        model = Centered(model)
    model = model.to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)  # ~2x faster convolutions on CPU
    return model


def check_surrogate(owner: str, name: str) -> None:
    """Fail up front on an unknown surrogate architecture."""
    try:
        MODELS.canonical(name)
    except BenchError as exc:
        raise BenchError(f"{owner}: parameter 'surrogate': {exc}") from None


def sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode with parameters frozen (crafting noise against the model); restores the previous state."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


@torch.no_grad()
def noisy_error_rate(model: nn.Module, x_u8: torch.Tensor, noise_of: Callable[[slice], torch.Tensor],
                     y: torch.Tensor, batch_size: int) -> float:
    """Eval-mode error of ``model`` on clamp(x/255 + noise, 0, 1), built batch by batch (a float copy
    of a whole training set would be ~600 MB for 50k CIFAR images). ``noise_of(slice)`` gives the
    float noise of those images."""
    was_training = model.training
    model.eval()
    wrong = 0
    for start in range(0, len(y), batch_size):
        sl = slice(start, start + batch_size)
        logits = model((x_u8[sl].float().div_(255) + noise_of(sl)).clamp_(0, 1))
        wrong += int((logits.argmax(1) != y[sl]).sum())
    model.train(was_training)
    return wrong / max(1, len(y))
