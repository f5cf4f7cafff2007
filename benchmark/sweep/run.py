"""Run a planned sweep on an executor; what happens is told as events (the CLI's display listens)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from benchmark.sweep.cells import SweepEvent
from benchmark.sweep.config import ExecutorOptions
from benchmark.sweep.local import run_local
from benchmark.sweep.plan import Plan, SweepSpec, Warn, plan_sweep
from benchmark.sweep.ray_executor import import_ray, ray_device, run_ray


@dataclass
class SweepSummary:
    cells: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    poisons_generated: int = 0
    poisons_cached: int = 0
    wall_seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def count(self, kind: str, data: dict[str, Any]) -> None:
        """Add one finished poison job or cell."""
        if kind == "poison" and not data["error"]:
            if data["info"]["cached"]:
                self.poisons_cached += 1
            else:
                self.poisons_generated += 1
        elif kind == "cell":
            status = data["result"]["status"]
            if status == "finished":
                self.done += 1
            elif status == "skipped":
                self.skipped += 1
            else:
                self.failed += 1
                self.failures.append((data["cell"].label, data["result"]["error"]))


def run_sweep(sweep: SweepSpec, executor: str = "local", jobs: int = 1, address: str | None = None,
              on_event: SweepEvent | None = None, plan: Plan | None = None, warn: Warn | None = None) -> SweepSummary:
    """Plan (validating every cell), then run what is missing; returns the counts and failures.

    ``on_event(kind, data)``: ``start`` (plan, executor, jobs, address, summary) once planned, then
    ``poison`` (cells, info, error) and ``cell`` (cell, result) as they finish."""
    ExecutorOptions(executor, jobs, address=address).check()
    tell = on_event or (lambda kind, data: None)
    t0 = time.perf_counter()
    ray = None
    started_ray = False
    if executor == "ray":
        ray = import_ray()
        if not ray.is_initialized():
            local = {} if address else {"include_dashboard": False}
            ray.init(address=address or None, log_to_driver=False, **local)
            started_ray = True
    try:
        if plan is None:
            plan = plan_sweep(sweep, ray_device(ray, sweep.device) if ray else None, warn)
        summary = SweepSummary(cells=len(plan.cells), skipped=len(plan.cells) - len(plan.todo))
        tell("start", {"plan": plan, "executor": executor, "jobs": jobs, "address": address, "summary": summary})

        def emit(kind: str, data: dict[str, Any]) -> None:
            summary.count(kind, data)
            tell(kind, data)

        if executor == "ray":
            run_ray(plan, emit)
        else:
            run_local(plan, jobs, emit)
    finally:
        if started_ray:
            ray.shutdown()
    summary.wall_seconds = round(time.perf_counter() - t0, 2)
    return summary
