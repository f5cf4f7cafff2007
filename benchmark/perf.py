"""Generation-cost measurements: one REM step vs one SEM step, side by side in one run.

Both poisons use the same surrogate, batch, budget and hyperparameters (a generation preset's, the
official ones by default), so the ratio isolates what SEM changes: the inner PGD maximisation of the
noise crafting becomes one random draw. Inputs are random images: the cost does not depend on them.
The surrogate is whatever ``model`` names (``bench perf`` defaults to small-cnn, cheap on a CPU), not
the preset's: the paper preset's surrogate is resnet18, and the table says which one was timed.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from rich.table import Table

from attacks.em import derived_generator
from attacks.rem import RobustErrorMinimizing
from attacks.sem import StableErrorMinimizing
from benchmark.params import build_params


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
