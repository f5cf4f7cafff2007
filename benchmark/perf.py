"""Cost measurements, side by side in one process: one REM generation step vs one SEM step
(``bench perf``), and the trainer's throughput against bare forward/backward and a DataLoader + PIL
pipeline (``bench perf train``).

Both poisons use the same surrogate, batch, budget and hyperparameters (a generation preset's, the
official ones by default), so the ratio isolates what SEM changes: the inner PGD maximisation of the
noise crafting becomes one random draw. Inputs are random images: the cost does not depend on them.
The surrogate is whatever ``model`` names (``bench perf`` defaults to small-cnn, cheap on a CPU), not
the preset's: the paper preset's surrogate is resnet18, and the table says which one was timed.
"""

from __future__ import annotations

import copy
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from attacks.rem import RobustErrorMinimizing
from attacks.sem import StableErrorMinimizing
from benchmark.data import ImageSet
from benchmark.device import default_preset
from benchmark.models import build_model
from benchmark.noise import derived_generator
from benchmark.params import build_params
from benchmark.protocol import Protocol, resolve_protocol
from benchmark.train import autocast, channels_last, numerics, train_model
from defenses.base import TrainContext, build_defense, soft_cross_entropy


@dataclass
class StepCost:
    poison: str
    seconds_per_step: float  # median over the timed steps
    passes_per_step: int  # forward+backward passes of batch size (noise crafting + surrogate AT step)
    steps: int
    model: str = ""  # the surrogate architecture that was timed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_rem_sem(model: str = "small-cnn", batch_size: int = 32, steps: int = 2,
                    device: torch.device | str = "cpu", preset: str = "paper", num_classes: int = 10,
                    image_shape: tuple[int, int, int] = (3, 32, 32)) -> list[StepCost]:
    """Median seconds per generation step of REM and of SEM. Steps alternate REM, SEM, REM, ...
    after an untimed warm-up, so load from other processes hits both alike."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((batch_size, *image_shape), generator=gen).to(device)
    y = torch.randint(num_classes, (batch_size,), generator=gen).to(device)
    runs = []
    for cls in (RobustErrorMinimizing, StableErrorMinimizing):
        values = dict(cls.preset_params.get(preset, {}), surrogate=model, batch_size=batch_size)
        poison = cls(build_params(cls.Params, values, owner=f"poison {cls.name}"))
        net, opt = poison.build(num_classes, image_shape[0], key=0, device=device)
        # warm-up (kernel selection, allocator) with the cheap SEM step, for both; the step generators
        # live on the device, as in a real generation
        StableErrorMinimizing(poison.params).generation_step(net, opt, x, y, derived_generator(0, "perf", 1, device=device))
        runs.append((poison, net, opt, []))
    for s in range(steps):
        for poison, net, opt, times in runs:
            _sync(device)
            t0 = time.perf_counter()
            poison.generation_step(net, opt, x, y, derived_generator(0, "perf", 100 + s, device=device))
            _sync(device)
            times.append(time.perf_counter() - t0)
    costs = []
    for poison, _net, _opt, times in runs:
        craft, update = poison.passes_per_step()
        costs.append(StepCost(poison.name, statistics.median(times), craft + update, steps, model))
    return costs


def perf_table(costs: list[StepCost], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("poison", style="bold cyan")
    table.add_column("s / step", justify="right")
    table.add_column("fwd+bwd passes / step", justify="right")
    table.add_column("steps timed", justify="right")
    for c in costs:
        table.add_row(c.poison, f"{c.seconds_per_step:.3f}", str(c.passes_per_step), str(c.steps))
    by = {c.poison: c for c in costs}
    if "rem" in by and "sem" in by and by["sem"].seconds_per_step > 0:
        ratio = by["rem"].seconds_per_step / by["sem"].seconds_per_step
        passes = by["rem"].passes_per_step / by["sem"].passes_per_step
        table.add_row("REM / SEM", f"{ratio:.2f}x", f"{passes:.2f}x", "", style="bold")
    timed = sorted({c.model for c in costs if c.model})
    if timed:
        note = f"surrogate timed: {', '.join(timed)}"
        if timed != ["resnet18"]:
            note += " (the paper preset's surrogate is resnet18: use --model resnet18 to time that)"
        table.caption = note
        table.caption_justify = "left"
    return table


# ------------------------------------------------------------------------------ training throughput

@dataclass
class PipelineRate:
    name: str
    images_per_second: float
    seconds_per_step: float
    cpu_seconds_per_step: float  # this process's CPU time (DataLoader workers not included)
    trainer_format: bool = False  # the model/input memory format the trainer itself uses


@dataclass
class TrainPerf:
    model: str
    device: str
    preset: str
    batch_size: int
    steps: int
    warmup: int
    rounds: int
    threads: int
    workers: int
    forward_flops: float  # per image, torch.utils.flop_counter (convolutions and matmuls)
    train_flops: float  # per image, one training step: forward + backward
    rows: list[PipelineRate]


@dataclass
class Pipeline:
    name: str
    warm: Callable[[], object]  # untimed warm-up (kernel selection, allocator, worker start)
    run: Callable[[], object]  # one timed round of ``steps`` training steps
    trainer_format: bool = False


def best_rounds(pipelines: list[Pipeline], steps: int, rounds: int,
                 device: torch.device) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per step of each pipeline, each the best of ``rounds`` rounds, the pipelines
    taking turns within a round, so a burst of load from other processes does not land on one
    pipeline alone. CPU time is this process's (all its threads; not DataLoader workers): on a shared
    machine it is what a step costs, while wall time there includes waiting for a core."""
    for p in pipelines:
        p.warm()
    wall = [math.inf] * len(pipelines)
    cpu = [math.inf] * len(pipelines)
    for _ in range(rounds):
        for i, p in enumerate(pipelines):
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            p.run()
            _sync(device)
            wall[i] = min(wall[i], (time.perf_counter() - t0) / steps)
            cpu[i] = min(cpu[i], (time.process_time() - c0) / steps)
    return list(zip(wall, cpu, strict=True))


def _optimizer(model: nn.Module, proto: Protocol) -> torch.optim.Optimizer:
    """The trainer's optimizer (benchmark.train.train_model builds the same)."""
    return torch.optim.SGD(model.parameters(), lr=proto.lr, momentum=proto.momentum,
                           nesterov=proto.nesterov and proto.momentum > 0, weight_decay=proto.weight_decay)


def _sgd_step(model: nn.Module, opt: torch.optim.Optimizer, proto: Protocol, x: torch.Tensor,
              y: torch.Tensor) -> None:
    with autocast(proto, x.device):  # the protocol's numerics, as the trainer
        loss = soft_cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if proto.grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), proto.grad_clip)
    opt.step()


class _PILImages(torch.utils.data.Dataset):
    """What torchvision's CIFAR10 does per item: an HWC uint8 array -> PIL image -> transform."""

    def __init__(self, images: ImageSet, transform: Callable) -> None:
        self.arrays = images.x.cpu().permute(0, 2, 3, 1).numpy()
        self.labels = images.y.cpu().tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        arr = self.arrays[i]
        img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
        return self.transform(img), self.labels[i]


def measure_train(model: str = "small-cnn", device: torch.device | str = "cpu", batch_size: int | None = None,
                  steps: int = 5, warmup: int = 2, workers: int | None = None, preset: str | None = None,
                  threads: int | None = None, rounds: int = 3, num_classes: int = 10,
                  image_shape: tuple[int, int, int] = (3, 32, 32)) -> TrainPerf:
    """Images per second of (a) the benchmark's trainer (``train_model`` with defense ``none``, uint8
    store on the device, batched crop/flip), (b) bare forward/backward/SGD steps on one random batch,
    in three memory formats, and (c) a torchvision DataLoader + PIL pipeline (RandomCrop(pad 4),
    RandomHorizontalFlip, ToTensor; the official CUDA script's) feeding the same model. Same model,
    batch, protocol optimizer and device for all; random images (the cost does not depend on them).
    Each pipeline: ``warmup`` untimed steps, then the best of ``rounds`` rounds of ``steps`` steps.
    ``threads``: intra-op CPU threads while measuring (restored afterwards)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        device = torch.device(device)
        proto = _train_protocol(model, device, batch_size, preset)
        with numerics(proto):
            return _measure_train(model, device, proto, steps, warmup, workers, rounds, num_classes, image_shape)
    finally:
        torch.set_num_threads(before)


def _train_protocol(model: str, device: torch.device, batch_size: int | None, preset: str | None) -> Protocol:
    """The preset's protocol (optimizer, batch, numerics) for one timed epoch of ``model``."""
    return resolve_protocol(preset or default_preset(device),
                            {"model": model, "epochs": 1, **({"batch_size": batch_size} if batch_size else {})})


def _measure_train(model: str, device: torch.device, proto: Protocol, steps: int, warmup: int,
                   workers: int | None, rounds: int, num_classes: int,
                   image_shape: tuple[int, int, int]) -> TrainPerf:
    preset = proto.preset
    bs = proto.batch_size
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    c, h, w = image_shape
    n = bs * (warmup + steps * rounds)
    gen = torch.Generator().manual_seed(0)
    images = ImageSet(torch.randint(0, 256, (n, c, h, w), generator=gen, dtype=torch.uint8),
                      torch.randint(0, num_classes, (n,), generator=gen), [str(i) for i in range(num_classes)])
    torch.manual_seed(0)
    base = build_model(model, num_classes, c).to(device)
    trainer_cl = channels_last(proto, device)  # the layout benchmark.runner trains the model in
    input_cl = proto.memory_format == "channels_last"  # and its batches

    def fresh(cl: bool) -> nn.Module:
        m = copy.deepcopy(base)
        return m.to(memory_format=torch.channels_last) if cl else m

    def repeat(step: Callable[[], None], k: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(k):
                step()
        return run

    # (a) the trainer itself: a warm-up epoch, then an epoch of `steps` batches per round
    net = fresh(trainer_cl)
    defense = build_defense("none")
    ctx = TrainContext(device=device, num_classes=num_classes, in_channels=c, image_size=(h, w), protocol=proto,
                       seed=0, generator=torch.Generator().manual_seed(0))
    store = images.to(device)
    at = store.y.device
    no_test = store.subset(torch.arange(0, device=at))
    warm_set = store.subset(torch.arange(bs * warmup, device=at))
    timed_set = store.subset(torch.arange(bs * warmup, bs * (warmup + steps), device=at))
    pipelines = [Pipeline("trainer (defense none)",
                           lambda: train_model(net, warm_set, no_test, proto, defense, ctx) if warmup else None,
                           lambda: train_model(net, timed_set, no_test, proto, defense, ctx), True)]

    # (b) bare steps on one random batch, in each memory format
    x = torch.rand((bs, c, h, w), generator=gen).to(device)
    y = F.one_hot(torch.randint(0, num_classes, (bs,), generator=gen), num_classes).float().to(device)
    for label, model_cl, batch_cl in (("NCHW model + input", False, False),
                                      ("channels_last model", True, False),
                                      ("channels_last + input", True, True)):
        bare = fresh(model_cl)
        opt = _optimizer(bare, proto)
        xb = x.contiguous(memory_format=torch.channels_last) if batch_cl else x
        step = partial(_sgd_step, bare, opt, proto, xb, y)
        pipelines.append(Pipeline(f"bare, {label}", repeat(step, warmup), repeat(step, steps),
                                   model_cl == trainer_cl and batch_cl == input_cl))

    # (c) DataLoader + PIL transforms, batches moved to the device, the trainer's model format
    transform = T.Compose([T.RandomCrop((h, w), padding=4), T.RandomHorizontalFlip(), T.ToTensor()])
    loader = torch.utils.data.DataLoader(_PILImages(images, transform), batch_size=bs, shuffle=True, drop_last=True,
                                         num_workers=workers, pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(0))
    fed = fresh(trainer_cl)
    fed_opt = _optimizer(fed, proto)
    batches = {"it": iter(loader)}

    def loader_step() -> None:
        xb, yb = next(batches["it"])
        xb = xb.to(device, non_blocking=True)
        if input_cl:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yb = F.one_hot(yb.to(device, non_blocking=True), num_classes).float()
        _sgd_step(fed, fed_opt, proto, xb, yb)

    pipelines.append(Pipeline(f"DataLoader + PIL, {workers} workers", repeat(loader_step, warmup),
                               repeat(loader_step, steps)))
    seconds = best_rounds(pipelines, steps, rounds, device)
    batches.clear()  # the workers exit with their iterator
    rows = [PipelineRate(p.name, bs / t, t, c, p.trainer_format) for p, (t, c) in zip(pipelines, seconds, strict=True)]

    # FLOPs per image: one forward, and one training step (forward + backward)
    net = fresh(trainer_cl)
    with FlopCounterMode(display=False) as fwd, torch.no_grad():
        net(x)
    with FlopCounterMode(display=False) as full:
        soft_cross_entropy(net(x), y).backward()
    return TrainPerf(model, str(device), preset, bs, steps, warmup, rounds, torch.get_num_threads(), workers,
                     fwd.get_total_flops() / bs, full.get_total_flops() / bs, rows)


def train_perf_table(perf: TrainPerf) -> Table:
    title = (f"training throughput: {perf.model}, batch {perf.batch_size}, preset {perf.preset} optimizer, "
             f"{perf.device}, {perf.threads} threads")
    table = Table(title=title, title_justify="left")
    table.add_column("pipeline", style="bold cyan", no_wrap=True)
    table.add_column("img/s", justify="right")
    table.add_column("ms / step", justify="right")
    table.add_column("CPU ms / step", justify="right")
    table.add_column("GFLOP/s", justify="right")
    for r in perf.rows:
        name = r.name + (" *" if r.trainer_format and not r.name.startswith("trainer") else "")
        table.add_row(name, f"{r.images_per_second:.0f}", f"{1000 * r.seconds_per_step:.1f}",
                      f"{1000 * r.cpu_seconds_per_step:.1f}", f"{perf.train_flops * r.images_per_second / 1e9:.1f}")
    trainer = perf.rows[0]
    bare = next(r for r in perf.rows[1:] if r.trainer_format)
    loader = perf.rows[-1]
    by = {r.name: r for r in perf.rows}
    nchw = by["bare, NCHW model + input"]
    cl = by["bare, channels_last + input"]
    for label, a, b in (("trainer / bare *", trainer, bare), ("trainer / DataLoader + PIL", trainer, loader),
                        ("channels_last / NCHW (bare)", cl, nchw)):
        table.add_row(label, f"{a.images_per_second / b.images_per_second:.2f}x", "", "", "", style="bold")
    table.caption = (f"img/s, ratios and GFLOP/s from wall time; CPU ms: this process's CPU time, all its threads, "
                     f"without DataLoader workers (on a busy machine, compare those). "
                     f"bare: forward/backward/SGD on one random batch, the protocol's numerics; * the trainer's "
                     f"memory format (the protocol's memory_format, as benchmark.runner). FLOPs per image (torch.utils.flop_counter, convolutions and "
                     f"matmuls): forward {perf.forward_flops / 1e6:.1f} M, training step {perf.train_flops / 1e6:.1f} M. "
                     f"Best of {perf.rounds} rounds of {perf.steps} steps, after {perf.warmup} warm-up steps; random images.")
    table.caption_justify = "left"
    return table
