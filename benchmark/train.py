"""The victim trainer: SGD under a protocol preset, with defense hooks and per-epoch checkpoints.

The training set is one uint8 tensor on the training device; crop (pad 4) and flip are batched tensor
ops there. All randomness after model init comes from the run's seeded CPU ``torch.Generator`` (epoch
order) and, on a GPU, a generator of that device seeded from it (per-batch draws, no host copies); both
states are checkpointed, so an interrupted run resumes to the same numbers. The step loop reads nothing
back to the host (loss and accuracy are summed on the device; the host reads them once per epoch).
The numerics are protocol fields (so records of other numerics never share a table): ``amp=bf16`` runs
forward passes under bf16 autocast, ``tf32`` lets fp32 kernels use TF32 (:func:`numerics`), and
``memory_format`` sets the layout of the model and its batches (:func:`prepare_model`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmark.data import ImageSet
from benchmark.evaluate import evaluate
from benchmark.io import atomic_write
from benchmark.protocol import Protocol, milestones
from defenses.base import DefenseStack, TrainContext


def random_crop_flip(x: torch.Tensor, ctx: TrainContext, pad: int = 4, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Random crop of ``size`` (default: the input's) with zero padding ``pad`` plus horizontal flip, for the
    whole batch at once (uint8 or float images). A flipped crop is a crop of the mirrored padded batch, so
    one gather from a window view of both does crop and flip."""
    n, c, h, w = x.shape
    out_h, out_w = size or (h, w)
    padded = F.pad(x, (pad, pad, pad, pad))
    span_y, span_x = h + 2 * pad - out_h + 1, w + 2 * pad - out_w + 1  # offsets; 2 * pad + 1 at the input size
    oy = ctx.randint(span_y, (n,))
    ox = ctx.randint(span_x, (n,))
    flip = ctx.rand(n) < 0.5
    windows = torch.stack((padded, padded.flip(-1))).unfold(3, out_h, 1).unfold(4, out_w, 1)  # (2, n, c, sy, sx, h, w)
    return windows[flip.long(), torch.arange(n, device=x.device), :, oy, torch.where(flip, span_x - 1 - ox, ox)]


def augmented_batch(x: torch.Tensor, defense: DefenseStack, ctx: TrainContext, augment: bool) -> torch.Tensor:
    """A batch's uint8 images as the float [0, 1] input of the batch hooks: the defenses' ``before_crop``
    filters, then (``augment``) crop/flip back to the input size (on uint8 images: a quarter of the bytes)."""
    x = defense.before_crop(x, ctx)
    if augment:
        x = random_crop_flip(x, ctx, size=ctx.image_size)
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def autocast(proto: Protocol, device: torch.device) -> torch.autocast:
    """The protocol's mixed precision for a training forward pass (a disabled context under ``amp=off``)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=proto.amp == "bf16")


def channels_last(proto: Protocol, device: torch.device) -> bool:
    """Whether the model trains in channels-last layout (``auto``: on a CPU only, as runs always have)."""
    return proto.memory_format == "channels_last" or (proto.memory_format == "auto" and device.type == "cpu")


def prepare_model(model: nn.Module, proto: Protocol, device: torch.device) -> nn.Module:
    """``model`` on ``device`` in the protocol's memory format."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last(proto, device) else model


@contextmanager
def numerics(proto: Protocol) -> Iterator[None]:
    """The protocol's TF32 choice for fp32 convolutions and matmuls while training and evaluating (the
    flags are process-wide: the previous values come back afterwards)."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = proto.tf32
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


class StopTraining(Exception):
    """Raised by an ``on_epoch`` callback to stop a run after its epoch checkpoint is written (a time
    budget ran out): the run writes no record, and the same run later resumes from the checkpoint."""


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, end) of each batch of an epoch. A last batch smaller than ``batch_size // 16`` (at least
    2 images) is merged into the one before it: BatchNorm statistics of a handful of images make a
    noisy last step (a 6-image batch moved a clean-only baseline by points). The CIFAR-10 presets'
    last batches (32 of 256, 336 of 512) are kept as they are."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) >= 2 and bounds[-1][1] - bounds[-1][0] < max(2, batch_size // 16):
        last = bounds.pop()
        bounds[-1] = (bounds[-1][0], last[1])
    return [(a, b) for a, b in bounds if b - a >= 2 or n < 2]


def lr_at(proto: Protocol, step: int, steps_per_epoch: int, total_steps: int | None = None) -> float:
    """Learning rate for a global step under the protocol's schedule (``total_steps`` defaults to
    ``epochs * steps_per_epoch``; a step-matched run sets it)."""
    total = total_steps or proto.epochs * steps_per_epoch
    if proto.schedule == "constant":
        return proto.lr
    if proto.schedule == "step":
        return proto.lr * proto.lr_gamma ** ((step // steps_per_epoch) // proto.lr_step)
    if proto.schedule == "multistep":  # MultiStepLR stepped once per epoch
        return proto.lr * proto.lr_gamma ** sum(step // steps_per_epoch >= m for m in milestones(proto))
    if proto.schedule == "cosine":
        return 0.5 * proto.lr * (1 + math.cos(math.pi * step / total))
    warm = max(1, int(proto.warmup * total))  # onecycle: linear up, then linear down to 0
    if step < warm:
        return proto.lr * (0.1 + 0.9 * step / warm)
    return proto.lr * max(0.0, (total - step) / max(1, total - warm))


@dataclass
class TrainResult:
    model: nn.Module
    per_epoch: list[dict[str, Any]] = field(default_factory=list)
    test_acc: float = 0.0
    per_class_test_acc: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    #: CPU seconds of this process while training (all its threads): what the training cost, unlike the
    #: wall time robust to other processes on a shared machine
    train_cpu_seconds: float | None = 0.0  # None: resumed from a checkpoint that did not count it
    resumed_from_epoch: int = 0
    steps: int = 0
    epochs_run: int = 0
    #: with a validation split: the epoch whose model was kept (best validation accuracy) and that accuracy
    selected_epoch: int | None = None
    selected_val_acc: float | None = None
    stopped_early: bool = False


EpochCallback = Callable[[dict[str, Any]], None]


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda p: torch.save(state, p))


def _load_checkpoint(path: Path) -> dict[str, Any] | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign checkpoint is discarded: the run restarts from epoch 0
        return None


def checkpoint_epochs(path: Path) -> int | None:
    """Epochs an interrupted run has finished (its checkpoint's), or None without a usable checkpoint."""
    state = _load_checkpoint(path) if path.is_file() else None
    return int(state["epoch"]) if state is not None and "epoch" in state else None


def train_model(model: nn.Module, train: ImageSet, test: ImageSet, proto: Protocol, defense: DefenseStack,
                ctx: TrainContext, checkpoint: Path | None = None, on_epoch: EpochCallback | None = None,
                total_steps: int | None = None, val: ImageSet | None = None, patience: int = 0) -> TrainResult:
    """Train ``model`` on ``train`` (uint8, on ctx.device) and evaluate on ``test`` every epoch, under the
    protocol's numerics (:func:`numerics`).

    ``total_steps``: train for exactly this many optimizer steps (the learning-rate schedule spans
    them) instead of ``proto.epochs`` epochs; the last epoch may stop part-way.
    ``val``: a clean validation split, evaluated every epoch; the model of the epoch with the best
    validation accuracy (the earliest on ties) is restored at the end, and its test accuracy is the
    result. The test set never takes part in the choice. ``patience`` > 0 stops training after that
    many epochs without a better validation accuracy."""
    with numerics(proto):
        return _train(model, train, test, proto, defense, ctx, checkpoint, on_epoch, total_steps, val, patience)


def _train(
    model: nn.Module,
    train: ImageSet,
    test: ImageSet,
    proto: Protocol,
    defense: DefenseStack,
    ctx: TrainContext,
    checkpoint: Path | None = None,
    on_epoch: EpochCallback | None = None,
    total_steps: int | None = None,
    val: ImageSet | None = None,
    patience: int = 0,
) -> TrainResult:
    device = ctx.device
    gen = ctx.generator
    assert gen is not None
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=proto.lr, momentum=proto.momentum, nesterov=proto.nesterov and proto.momentum > 0,
                          weight_decay=proto.weight_decay)
    n = len(train)
    bounds = batch_bounds(n, proto.batch_size)
    steps_per_epoch = max(1, len(bounds))
    epochs = math.ceil(total_steps / steps_per_epoch) if total_steps else proto.epochs
    result = TrainResult(model=model)
    start_epoch = 0
    step = 0  # optimizer steps taken: an epoch whose last batch is a single image takes one step fewer
    best: dict[str, Any] | None = None  # with ``val``: the best epoch so far and its model state
    if checkpoint is not None and checkpoint.exists():
        state = _load_checkpoint(checkpoint)
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            gen.set_state(state["generator"])
            if "device_generator" in state and ctx.device_generator is not gen:
                ctx.device_generator.set_state(state["device_generator"])
            torch.set_rng_state(state["torch_rng"])
            if device.type == "cuda" and "cuda_rng" in state:
                torch.cuda.set_rng_state(state["cuda_rng"], device)
            start_epoch = int(state["epoch"])
            step = int(state.get("step", start_epoch * steps_per_epoch))
            result.per_epoch = list(state["per_epoch"])
            result.train_seconds = float(state["train_seconds"])
            result.eval_seconds = float(state["eval_seconds"])
            cpu = state.get("train_cpu_seconds")
            result.train_cpu_seconds = float(cpu) if cpu is not None else None
            result.resumed_from_epoch = start_epoch
            best = state.get("best")
            if state.get("stopped_early"):
                start_epoch, result.stopped_early = epochs, True

    labels_onehot = F.one_hot(train.y.to(device), ctx.num_classes).float()
    if proto.label_smoothing:
        labels_onehot = labels_onehot * (1 - proto.label_smoothing) + proto.label_smoothing / ctx.num_classes
    # auto keeps NCHW batches (a channels-last CPU model converts them in its first layer, as ever)
    batch_layout = torch.channels_last if proto.memory_format == "channels_last" else None
    for epoch in range(start_epoch, epochs):
        ctx.epoch = epoch
        t0, c0 = time.perf_counter(), time.process_time()
        model.train()
        defense.train_mode(model, ctx)
        perm = torch.randperm(n, generator=gen).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        for lo, hi in bounds:
            if total_steps and step >= total_steps:
                break
            idx = perm[lo:hi]
            ctx.step = step
            lr = lr_at(proto, step, steps_per_epoch, total_steps)
            for group in opt.param_groups:
                group["lr"] = lr
            x = augmented_batch(train.x[idx], defense, ctx, proto.augment)
            if batch_layout is not None:
                x = x.contiguous(memory_format=batch_layout)
            y = labels_onehot[idx]
            with autocast(proto, device):
                x, y = defense.batch(x, y, ctx)
                loss, logits = defense.loss(model, x, y, ctx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if proto.grad_clip > 0:
                nn.utils.clip_grad_norm_(trainable, proto.grad_clip)
            opt.step()
            step += 1
            with torch.no_grad():
                loss_sum += loss.detach() * idx.numel()
                correct += (logits.argmax(1) == y.argmax(1)).sum()
                seen += idx.numel()
        train_time = time.perf_counter() - t0
        if result.train_cpu_seconds is not None:
            result.train_cpu_seconds += time.process_time() - c0
        t1 = time.perf_counter()
        test_acc, per_class = evaluate(model, test, ctx.num_classes, defense.predictor(ctx, final=False),
                                       proto.eval_batch_size)
        eval_time = time.perf_counter() - t1
        result.train_seconds += train_time
        result.eval_seconds += eval_time
        entry = {
            "epoch": epoch + 1,
            "train_loss": round(float(loss_sum) / max(1, seen), 5),
            "train_acc": round(100.0 * float(correct) / max(1, seen), 3),
            "test_acc": round(test_acc, 3),
            "lr": round(lr, 6),
            "seconds": round(train_time + eval_time, 3),
        }
        if val is not None:
            val_acc, _ = evaluate(model, val, ctx.num_classes, defense.predictor(ctx, final=False),
                                  proto.eval_batch_size)
            entry["val_acc"] = round(val_acc, 3)
            if best is None or val_acc > best["val_acc"]:
                best = {"val_acc": val_acc, "epoch": epoch + 1, "test_acc": test_acc, "per_class": per_class,
                        "model": {k: v.detach().clone() for k, v in model.state_dict().items()}}
            result.stopped_early = patience > 0 and epoch + 1 - best["epoch"] >= patience and epoch + 1 < epochs
        result.per_epoch.append(entry)
        result.test_acc, result.per_class_test_acc = test_acc, per_class
        if checkpoint is not None:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                     "torch_rng": torch.get_rng_state(), "epoch": epoch + 1, "step": step, "per_epoch": result.per_epoch,
                     "train_seconds": result.train_seconds, "eval_seconds": result.eval_seconds,
                     "train_cpu_seconds": result.train_cpu_seconds,
                     "best": best, "stopped_early": result.stopped_early}
            if device.type == "cuda":
                state["cuda_rng"] = torch.cuda.get_rng_state(device)
            if ctx.device_generator is not None and ctx.device_generator is not gen:
                state["device_generator"] = ctx.device_generator.get_state()
            _save_checkpoint(checkpoint, state)
        if on_epoch is not None:
            on_epoch(entry)
        if result.stopped_early:
            break
    if best is not None:  # keep the model of the best validation epoch
        model.load_state_dict(best["model"])
        result.test_acc, result.per_class_test_acc = best["test_acc"], list(best["per_class"])
        result.selected_epoch, result.selected_val_acc = int(best["epoch"]), float(best["val_acc"])
    elif result.per_epoch and start_epoch >= epochs:  # resumed a run whose training had finished
        result.test_acc, result.per_class_test_acc = evaluate(model, test, ctx.num_classes,
                                                              defense.predictor(ctx, final=False),
                                                              proto.eval_batch_size)
    result.steps, result.epochs_run = step, len(result.per_epoch)
    return result
