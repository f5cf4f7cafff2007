"""What a sweep will cost, from the timings of finished records with the same preset/model/defense."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmark import paths
from benchmark.io import read_json
from benchmark.records import load_records, machine
from benchmark.sweep.plan import Plan
from benchmark.train import checkpoint_epochs


@dataclass
class Estimate:
    """Seconds per cell still to run (None: no past record to go by) and the whole sweep's total; a cell
    an interrupted run left a checkpoint for counts only its remaining epochs."""

    cell_seconds: dict[str, float | None]  # run id -> seconds (cells still to run)
    #: run id -> epochs already trained, for cells that resume from a checkpoint
    started: dict[str, int]
    known_seconds: float  # cells and poisons with a past record
    unknown: int  # cells and poisons without one
    todo: int
    jobs: int


def past_costs(results: Path, on_machine: str | None = None,
               more: Sequence[Path] = ()) -> tuple[dict[tuple, float], dict[tuple, float]]:
    """Mean seconds per epoch of a cell (its training plus evaluation time, which add up across the
    sessions of a resumed run, over the epochs it trained; wall minus fresh poison generation for records
    without them) by preset/model/defense/train size, so a 40-epoch cell is estimated from 15-epoch
    records too; and
    mean poison generation seconds by preset/dataset/poison/train size, from the finished records in
    ``results`` (and the folders ``more``; a run id found twice counts once). ``on_machine``: only records
    made on that machine (:func:`benchmark.records.machine`), since machines of one kind differ in speed."""
    cells: dict[tuple, list[float]] = defaultdict(list)
    poisons: dict[tuple, list[float]] = defaultdict(list)
    seen: set[str] = set()
    for folder in (results, *more):
        for _path, rec in load_records(folder) if Path(folder).is_dir() else []:
            if rec["status"] != "finished" or rec["run_id"] in seen:
                continue
            if on_machine is not None and machine(rec.get("environment") or {}) != on_machine:
                continue
            seen.add(rec["run_id"])
            _add_costs(rec, cells, poisons)
    return ({k: sum(v) / len(v) for k, v in cells.items()}, {k: sum(v) / len(v) for k, v in poisons.items()})


def _add_costs(rec: dict, cells: dict[tuple, list[float]], poisons: dict[tuple, list[float]]) -> None:
    """One record's seconds per epoch and poison generation seconds, under their cost keys."""
    cfg, t = rec["config"], rec["timings"]
    wall = t.get("wall")
    epochs = (rec.get("training") or {}).get("epochs") or (cfg.get("protocol") or {}).get("epochs")
    spent = t.get("training"), t.get("evaluation")
    if all(isinstance(v, (int, float)) for v in spent):
        seconds: float | None = float(sum(spent))
    elif isinstance(wall, (int, float)):
        seconds = max(0.0, wall - ((t.get("poison_generation") or 0.0) if not t.get("poison_cached") else 0.0))
    else:
        seconds = None
    if seconds is not None and isinstance(epochs, int) and epochs > 0:
        cells[(cfg["preset"], cfg["model"], cfg["defense"]["name"], cfg.get("train_size"))].append(seconds / epochs)
    gen_s = (rec.get("poison") or {}).get("generation_seconds")
    if isinstance(gen_s, (int, float)):
        poisons[(cfg["preset"], cfg["dataset"], cfg["poison"]["name"], cfg.get("train_size"))].append(gen_s)


def instance_costs(plan: Plan) -> dict[tuple, float]:
    """Mean generation seconds of the poisons the plan already has in the cache, by preset/dataset/poison/
    train size: another seed's instance (another key) of a poison costs about as much to generate."""
    seconds: dict[tuple, list[float]] = defaultdict(list)
    for artifact, cell in {c.artifact: c for c in plan.cells if c.spec.poison != "none"}.items():
        manifest = Path(artifact).with_suffix(".json")
        if Path(artifact).exists() and manifest.exists():
            gen = read_json(manifest).get("generation_seconds")
            if isinstance(gen, (int, float)):
                seconds[cell.poison_cost_key].append(float(gen))
    return {k: sum(v) / len(v) for k, v in seconds.items()}


def estimate(plan: Plan, jobs: int = 1, on_machine: str | None = None, more: Sequence[Path] = ()) -> Estimate:
    """The cost of the cells still to run and of the poisons not yet in the cache (``on_machine``, ``more``:
    as :func:`past_costs`)."""
    cell_cost, poison_cost = past_costs(paths.results_dir(plan.sweep.results), on_machine, more)
    started = {c.run_id: done for c in plan.todo if c.checkpoint is not None
               and (done := checkpoint_epochs(c.checkpoint))}
    per_cell: dict[str, float | None] = {}
    for c in plan.todo:
        per_epoch = cell_cost.get(c.cost_key)
        left = c.epochs - started.get(c.run_id, 0)  # a started cell resumes from its checkpoint
        per_cell[c.run_id] = per_epoch * max(0, left) if per_epoch is not None and c.epochs else None
    known = sum(s for s in per_cell.values() if s is not None)
    unknown = sum(s is None for s in per_cell.values())
    instances = instance_costs(plan)
    for cells in plan.poison_jobs().values():
        cell = cells[0]
        npz = Path(cell.artifact)
        if cell.spec.poison == "none" or (npz.exists() and npz.with_suffix(".json").exists()):
            continue
        gen = poison_cost.get(cell.poison_cost_key, instances.get(cell.poison_cost_key))
        if gen is None:
            unknown += 1
        else:
            known += gen
    return Estimate(per_cell, started, known, unknown, len(plan.todo), jobs)
