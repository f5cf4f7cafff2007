"""Clean test accuracy (overall and per class), with a defense's prediction hook if it has one."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from benchmark.data import ImageSet

Predict = Callable[[nn.Module, torch.Tensor], torch.Tensor]


@torch.no_grad()
def predictions(model: nn.Module, images: ImageSet, predict: Predict | None = None, batch_size: int = 1000,
                device: torch.device | None = None) -> torch.Tensor:
    """Predicted labels for every image (model in eval mode, inputs in [0,1])."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = images.x[start:start + batch_size].to(device, non_blocking=True).float().div_(255)
        logits = predict(model, x) if predict else model(x)
        out.append(logits.argmax(dim=1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[float, list[float]]:
    """Overall accuracy and per-class accuracy, in percent."""
    labels = labels.cpu()
    correct = (pred == labels).float()
    overall = 100.0 * float(correct.mean()) if len(labels) else 0.0
    per_class = []
    for c in range(num_classes):
        mask = labels == c
        per_class.append(round(100.0 * float(correct[mask].mean()), 2) if mask.any() else float("nan"))
    return overall, per_class


def evaluate(model: nn.Module, images: ImageSet, num_classes: int, predict: Predict | None = None,
             batch_size: int = 1000) -> tuple[float, list[float]]:
    pred = predictions(model, images, predict, batch_size)
    return accuracy(pred, images.y, num_classes)
