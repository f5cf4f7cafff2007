"""The grid of a sweep: which runs, with which routed params, each validated by ``prepare_run``."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from benchmark import paths
from benchmark.errors import BenchError
from benchmark.io import read_json
from benchmark.params import route_params
from benchmark.poisoning import artifact_paths, same_poisoned_set
from benchmark.records import finished_record
from benchmark.registry import DEFENSES, POISONS
from benchmark.runner import RunSpec, default_preset, resolve_device
from benchmark.sweep.cells import Cell, prepare

Warn = Callable[[str], None]


@dataclass
class SweepSpec:
    """The grid and the settings shared by all its cells (CLI flags / TOML keys map onto these)."""

    poisons: list[str]
    defenses: list[str] = field(default_factory=lambda: ["none"])
    seeds: list[int] = field(default_factory=lambda: [0])
    models: list[str] = field(default_factory=list)  # empty: the preset's model
    ratios: list[float] = field(default_factory=lambda: [1.0])
    dataset: str = "cifar10"
    preset: str | None = None
    poison_params: dict[str, Any] = field(default_factory=dict)  # "param" or "poison.param"
    defense_params: dict[str, Any] = field(default_factory=dict)  # "param" or "defense.param"
    overrides: dict[str, Any] = field(default_factory=dict)  # protocol fields
    key: int | None = None  # None: each seed draws its own key (:func:`benchmark.poisoning.seed_key`)
    clean_only_baseline: bool = True
    clean_row: bool = True  # False: only the poisons asked for (e.g. the clean rows are run later)
    # False: params that target no poison/defense of the grid are dropped instead of rejected (a
    # config file's params when the command line narrows its lists)
    strict_params: bool = True
    data_root: str | None = None
    cache_dir: str | None = None
    results: str | None = None
    device: str = "auto"
    download: bool = False
    force: bool = False
    # True: finished cells whose record trained on another poisoned set than the cached artifact run again
    rerun_stale: bool = False


@dataclass
class Plan:
    sweep: SweepSpec
    device: str
    preset: str
    cells: list[Cell]

    @property
    def todo(self) -> list[Cell]:
        return [c for c in self.cells if not c.finished]

    def poison_jobs(self) -> dict[str, list[Cell]]:
        """Artifact -> the cells still to run on it (clean row first, then the sweep's order)."""
        jobs: dict[str, list[Cell]] = defaultdict(list)
        for cell in sorted(self.todo, key=lambda c: c.spec.poison != "none"):
            jobs[cell.artifact].append(cell)
        return dict(jobs)


def _refuse_unrouted(reached: Mapping[str, list[str]], names: list[str], kind: str) -> None:
    """One-line error for the first param that reaches no poison (defense) of the sweep."""
    for key, targets in reached.items():
        if targets:
            continue
        grid = ", ".join(names)
        if "." in key:
            scope = (POISONS if kind == "poison" else DEFENSES).canonical(key.split(".", 1)[0])
            raise BenchError(f"--{kind}-param '{key}' names {kind} '{scope}', which is not in the sweep ({grid})")
        raise BenchError(f"--{kind}-param '{key}': no {kind} of the sweep ({grid}) declares it; "
                         f"see 'bench list {kind}s'")


def route_poison_params(poisons: list[str], raw: Mapping[str, Any], strict: bool = True) -> dict[str, dict[str, Any]]:
    """``param=v`` goes to every poison of the sweep that declares it, ``poison.param=v`` to that
    poison only (and wins over the plain form). Not strict: params that target nothing are dropped."""
    out, reached = route_params(raw, {p: {p: POISONS.get(p).Params} for p in poisons}, POISONS.canonical)
    if strict:
        _refuse_unrouted(reached, poisons, "poison")
    return out


def route_defense_params(defenses: list[str], raw: Mapping[str, Any], strict: bool = True) -> dict[str, dict[str, Any]]:
    """``param=v`` goes to every defense (composition) with a component that declares it,
    ``name.param=v`` (kept so, for ``build_defense``) to every defense that has component ``name``."""
    owners = {d: {DEFENSES.canonical(n): DEFENSES.get(n).Params for n in d.split("+") if n.strip()} for d in defenses}
    out, reached = route_params(raw, owners, DEFENSES.canonical, keep_scope=True)
    if strict:
        _refuse_unrouted(reached, defenses, "defense")
    return out


def expand_grid(sweep: SweepSpec, preset: str, device: str) -> list[RunSpec]:
    """Every run of the sweep: the clean row for each defense, each poison at each ratio (plus its
    clean-only baseline when the ratio is below 1), x defenses x models x seeds."""
    asked = [POISONS.canonical(p) for p in sweep.poisons]
    poisons = (["none"] if sweep.clean_row or "none" in asked else []) + [p for p in dict.fromkeys(asked) if p != "none"]
    defenses = list(dict.fromkeys(sweep.defenses))
    pparams = route_poison_params(poisons, sweep.poison_params, sweep.strict_params)
    dparams = route_defense_params(defenses, sweep.defense_params, sweep.strict_params)
    data_root = str(paths.data_root(sweep.data_root).resolve())
    cache = str(paths.cache_dir(sweep.cache_dir).resolve())
    results = str(paths.results_dir(sweep.results).resolve())
    specs = []
    for model in sweep.models or [None]:
        overrides = dict(sweep.overrides, **({"model": model} if model else {}))
        for poison in poisons:
            for ratio in [1.0] if poison == "none" else sweep.ratios:
                for clean_only in [False, True] if ratio < 1 and sweep.clean_only_baseline else [False]:
                    for defense in defenses:
                        for seed in sweep.seeds:
                            specs.append(RunSpec(
                                dataset=sweep.dataset, poison=poison, poison_params=dict(pparams[poison]),
                                key=sweep.key, ratio=ratio, clean_only=clean_only, defense=defense,
                                defense_params=dict(dparams[defense]), preset=preset, overrides=overrides,
                                seed=seed, data_root=data_root, cache_dir=cache, results=results,
                                download=sweep.download, device=device, force=sweep.force))
    return specs


def describe(spec: RunSpec) -> tuple[str, str, str]:
    """Poison (with params), ratio and defense (with params) of a cell, as the display shows them."""
    poison = spec.poison + "".join(f" {k}={v}" for k, v in spec.poison_params.items())
    defense = spec.defense + "".join(f" {k}={v}" for k, v in spec.defense_params.items())
    return poison, f"{spec.ratio:g}" + (" clean-only" if spec.clean_only else ""), defense


def _label(spec: RunSpec, config: dict[str, Any]) -> str:
    poison, ratio, defense = describe(spec)
    if spec.ratio < 1:
        poison += f" r={ratio}"
    return f"{poison} × {defense} · {config['model']} · seed {spec.seed}"


def plan_sweep(sweep: SweepSpec, device: str | None = None, warn: Warn | None = None) -> Plan:
    """Expand and validate the whole grid (bad names or params raise BenchError before any work).

    ``device``: the device the cells will run on (a Ray cluster's, which the driver may lack).
    ``warn``: told about each unreadable record (the cell is then planned to run again)."""
    if not sweep.poisons:
        raise BenchError("a sweep needs --poisons (the clean 'none' row is added by itself)")
    if not sweep.defenses or not sweep.seeds or not sweep.ratios:
        raise BenchError("--defenses, --seeds and --ratios must not be empty")
    target = device or str(resolve_device(sweep.device))
    preset = sweep.preset or default_preset(torch.device(target))
    # Run ids do not depend on the device, so a GPU-less driver validates a GPU sweep on the CPU.
    local = target if not target.startswith("cuda") or torch.cuda.is_available() else "cpu"
    specs = expand_grid(sweep, preset, target)
    cells: dict[str, Cell] = {}
    manifests: dict[Path, dict[str, Any] | None] = {}  # cached artifact manifests, read once per sweep
    for spec in specs:
        prep = prepare(replace(spec, device=local))
        if prep.run_id in cells:
            continue
        cfg = prep.config
        npz, manifest = artifact_paths(prep.cache, prep.dataset_id, prep.poison)
        rec = None if sweep.force else finished_record(
            prep.record_path, warn, "ignoring unreadable record {path} ({problem}); its cell runs again and rewrites it")
        stale = rec is not None and _stale(rec, spec, manifest, manifests)
        if stale and sweep.rerun_stale:
            spec = replace(spec, force=True)  # the worker rewrites the record instead of skipping it
        cells[prep.run_id] = Cell(
            spec=spec, run_id=prep.run_id, record_path=prep.record_path, artifact=str(npz),
            finished=rec is not None and not (stale and sweep.rerun_stale), stale=stale,
            label=_label(spec, cfg),
            cost_key=(cfg["preset"], cfg["model"], cfg["defense"]["name"], cfg["train_size"]),
            poison_cost_key=(cfg["preset"], cfg["dataset"], cfg["poison"]["name"], cfg["train_size"]),
            checkpoint=prep.checkpoint_path, epochs=prep.defense.adjust_protocol(prep.protocol).epochs)
    stale = [c for c in cells.values() if c.stale]
    if stale and warn is not None:
        warn(f"{len(stale)} finished cell(s) trained on another poisoned set than the cached artifact of their poison "
             f"(same poison, parameters and key, other bytes; e.g. {stale[0].label}): "
             + ("they run again on the cached set" if sweep.rerun_stale else
                "`bench leaderboard` marks them ‡; add --rerun-stale to train them again on the cached set"))
    return Plan(sweep, target, preset, list(cells.values()))


def _stale(rec: dict[str, Any], spec: RunSpec, manifest: Path, manifests: dict[Path, dict[str, Any] | None]) -> bool:
    """Whether a finished full-ratio record trained on another poisoned set than the cached artifact (a
    poison regenerated elsewhere, or by changed code). No cached artifact: nothing to compare with.
    ``manifests``: the artifact manifests read so far (many cells share one poison)."""
    if spec.poison == "none" or spec.ratio < 1.0 or spec.clean_only:
        return False
    if manifest not in manifests:
        try:
            manifests[manifest] = read_json(manifest) if manifest.exists() else None
        except BenchError:
            manifests[manifest] = None
    cached = manifests[manifest]
    return cached is not None and not same_poisoned_set(rec.get("poison") or {}, cached)
