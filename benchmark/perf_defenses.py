"""What each defense costs relative to plain training (``bench perf defenses``), measured side by side in
one process: the same model, batch, protocol optimizer, images and device for every defense.

Per defense: CPU milliseconds of one training step as the trainer takes it (crop/flip, the ``batch`` and
``loss`` hooks, backward, SGD), at the first and at the last epoch of the protocol (UEraser's max-loss
views and other schedules change the cost over a run); the one-off ``prepare`` cost (data-level
defenses: JPEG, projection, ...) per 1,000 training images; and, for a defense that owns prediction
(randomized smoothing's vote), the cost of predicting one test image relative to one plain forward.
Defenses take turns, in an order that rotates every round, each timed block after one untimed step,
and each reports its best round, so neither a burst of load from other processes nor the defense timed
before it lands on one defense alone. CPU time is this process's: on a busy
machine with one intra-op thread it is what the step costs. Record wall times (the leaderboard's cost
table) include waiting for a core and are only indicative.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from rich.table import Table

from benchmark.data import ImageSet
from benchmark.errors import BenchError
from benchmark.evaluate import forward_in_slices
from benchmark.protocol import Protocol, resolve_protocol
from benchmark.registry import DEFENSES
from benchmark.train import augmented_batch, prepare_model
from defenses.base import Defense, DefenseStack, TrainContext, build_defense

#: defenses left out of the default list, and why (they can still be named with --defenses)
SKIPPED = {"finetune": "needs a pretrained backbone (its default is pretrained first, minutes of training)"}


@dataclass
class DefenseCost:
    defense: str
    step_ms: tuple[float, float]  # CPU ms per training step at the first and at the last epoch
    prepare_s_per_1k: float | None  # one-off data-level cost per 1,000 training images
    predict_ratio: float | None  # predicting one test image vs one plain forward (owners of prediction)


def _images(n: int, num_classes: int, shape: tuple[int, int, int], seed: int) -> ImageSet:
    gen = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8),
                    torch.arange(n) % num_classes, [str(i) for i in range(num_classes)])


class _Setup:
    """One defense's model, optimizer and context, stepping like :func:`benchmark.train.train_model`."""

    def __init__(self, stack: DefenseStack, arch: str, proto: Protocol, train: ImageSet, device: torch.device) -> None:
        c, h, w = train.x.shape[1:]
        k = train.num_classes
        self.stack, self.proto, self.train = stack, proto, train.to(device)
        self.ctx = TrainContext(device=device, num_classes=k, in_channels=c, image_size=(h, w), protocol=proto,
                                generator=torch.Generator().manual_seed(0))
        torch.manual_seed(0)
        self.model = prepare_model(stack.build_model(arch, k, c, self.ctx), proto, device)  # as benchmark.runner
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(trainable, lr=proto.lr, momentum=proto.momentum, weight_decay=proto.weight_decay)
        self.onehot = F.one_hot(self.train.y, k).float()
        self.cursor = 0

    def steps(self, count: int, epoch: int) -> None:
        self.ctx.epoch = epoch
        self.model.train()
        self.stack.train_mode(self.model, self.ctx)
        bs, n = self.proto.batch_size, len(self.train)
        for _ in range(count):
            idx = (torch.arange(bs, device=self.train.x.device) + self.cursor) % n
            self.cursor = (self.cursor + bs) % n
            x = augmented_batch(self.train.x[idx], self.stack, self.ctx, True)
            x, y = self.stack.batch(x, self.onehot[idx], self.ctx)
            loss, _ = self.stack.loss(self.model, x, y, self.ctx)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()


def _cpu_seconds(device: torch.device, fn: Callable[..., object], *args: object) -> float:
    """CPU seconds of ``fn(*args)`` on the CPU; synchronised wall seconds on a GPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.process_time() if device.type == "cpu" else time.perf_counter()
    fn(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.process_time() if device.type == "cpu" else time.perf_counter()) - t


def _prepares(stack: DefenseStack) -> bool:
    return any(type(c).prepare is not Defense.prepare for c in stack.components)


def default_defenses() -> list[str]:
    return [n for n in DEFENSES.names() if n not in SKIPPED]


def measure_defenses(names: list[str], arch: str = "small-cnn", device: torch.device | str = "cpu",
                     preset: str = "cpu", batch_size: int | None = None, steps: int = 2, rounds: int = 3,
                     threads: int | None = 1, num_classes: int = 10,
                     shape: tuple[int, int, int] = (3, 32, 32)) -> list[DefenseCost]:
    """The cost of each defense in ``names`` (``none`` is always measured first: the reference)."""
    dev = torch.device(device)
    stacks = {n: build_defense(n) for n in dict.fromkeys(["none", *names])}  # BenchError on a bad name, before work
    proto = resolve_protocol(preset, {"model": arch, **({"batch_size": batch_size} if batch_size else {})})
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        train = _images(max(4 * proto.batch_size, 1024), num_classes, shape, seed=0)
        setups = {n: _Setup(s, arch, proto, train, dev) for n, s in stacks.items()}
        last = proto.epochs - 1
        best = {n: [math.inf, math.inf] for n in setups}
        order = list(setups)
        for r in range(rounds):  # the order rotates each round, so no defense always follows the same one
            for name in order[r % len(order):] + order[:r % len(order)]:
                s = setups[name]
                for slot, epoch in enumerate((0, last)):
                    s.steps(1, epoch)  # untimed: the allocator and caches settle on this defense's shapes
                    best[name][slot] = min(best[name][slot], _cpu_seconds(dev, s.steps, steps, epoch) / steps)
        test = _images(256, num_classes, shape, seed=1).to(dev)
        x_test = test.x.float().div(255)
        plain = setups["none"]
        plain.model.eval()
        forward = min(_cpu_seconds(dev, forward_in_slices, plain.model, x_test) for _ in range(rounds))
        out = []
        for name, s in setups.items():
            prep = None
            if _prepares(s.stack):
                prep = _cpu_seconds(dev, s.stack.prepare, train.to(dev), s.ctx) * 1000 / len(train)
            ratio = None
            if any(c.owns("predict") for c in s.stack.components):
                s.model.eval()
                predict = s.stack.predictor(s.ctx, final=True)
                ratio = _cpu_seconds(dev, predict, s.model, x_test) / forward
            out.append(DefenseCost(name, (1000 * best[name][0], 1000 * best[name][1]), prep, ratio))
        return out
    finally:
        torch.set_num_threads(before)


def check_names(names: list[str]) -> None:
    for n in names:
        if n in SKIPPED:
            raise BenchError(f"bench perf defenses: {n} {SKIPPED[n]}; time it with a real run instead")


def defense_cost_table(costs: list[DefenseCost], title: str, caption: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("defense", "CPU ms / step (first epoch)", "x plain", "CPU ms / step (last epoch)", "x plain ",
                "prepare (s / 1k images)", "predict (x plain forward)"):
        table.add_column(col, justify="left" if col == "defense" else "right", no_wrap=col == "defense")
    base = costs[0].step_ms
    for c in costs:
        table.add_row(c.defense, f"{c.step_ms[0]:.0f}", f"{c.step_ms[0] / base[0]:.2f}x", f"{c.step_ms[1]:.0f}",
                      f"{c.step_ms[1] / base[1]:.2f}x", "-" if c.prepare_s_per_1k is None else f"{c.prepare_s_per_1k:.2f}",
                      "-" if c.predict_ratio is None else f"{c.predict_ratio:.0f}x")
    table.caption = caption
    table.caption_justify = "left"
    return table
