"""Sweeps: a grid of runs (poisons x ratios x defenses x models x seeds), each poison generated once.

``plan_sweep`` (plan) expands the grid (plus the clean ``none`` row for every defense, and the
clean-only baseline of every partial-poisoning cell, as CUDA's Table 5) and validates every cell with
``prepare_run`` before anything runs. ``run_sweep`` (run) then generates each distinct poison artifact
once and trains the cells that have no finished record (cells: the worker functions), so re-running
a sweep after a crash does only what is missing. Executors: local worker processes (local, ``--jobs``)
or a Ray cluster (ray_executor), where every training task takes its poison task's ObjectRef as an
argument (the artifact travels with it, so nodes need no shared cache; results and data paths must
exist on every node). ``estimate``: the cost of a dry run; config: CLI options and TOML files.
"""

from benchmark.sweep.cells import Cell, generate_poison, run_cell
from benchmark.sweep.config import (
    CONFIG_KEYS,
    EXECUTORS,
    ExecutorOptions,
    load_config,
    sweep_from_options,
)
from benchmark.sweep.estimate import Estimate, estimate, past_costs
from benchmark.sweep.plan import (
    Plan,
    SweepSpec,
    expand_grid,
    plan_sweep,
    route_defense_params,
    route_poison_params,
)
from benchmark.sweep.ray_executor import store_returned_record
from benchmark.sweep.run import SweepSummary, run_sweep

__all__ = [
    "CONFIG_KEYS", "EXECUTORS", "Cell", "Estimate", "ExecutorOptions", "Plan", "SweepSpec", "SweepSummary",
    "estimate", "expand_grid", "generate_poison", "load_config", "past_costs", "plan_sweep",
    "route_defense_params", "route_poison_params", "run_cell", "run_sweep", "store_returned_record",
    "sweep_from_options",
]
