"""Sweeps: a grid of runs (poisons x ratios x defenses x models x seeds), each poison generated once.

``plan_sweep`` expands the grid (plus the clean ``none`` row for every defense, and the clean-only
baseline of every partial-poisoning cell, as CUDA's Table 5) and validates every cell with
``prepare_run`` before anything runs. ``run_sweep`` then generates each distinct poison artifact once
and trains the cells that have no finished record, so re-running a sweep after a crash does only what
is missing. Executors: local worker processes (``--jobs``) or a Ray cluster, where every training
task takes its poison task's ObjectRef as an argument (the artifact travels with it, so nodes need
no shared cache; results and data paths must exist on every node).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from benchmark import paths
from benchmark.data import Dataset, load_dataset
from benchmark.errors import BenchError
from benchmark.params import parse_kv
from benchmark.registry import DEFENSES, POISONS
from benchmark.runner import (
    PreparedRun,
    RunSpec,
    default_preset,
    execute,
    prepare_run,
    resolve_device,
)

EXECUTORS = ("local", "ray")

Warn = Callable[[str], None]


def _warn_stderr(msg: str) -> None:
    print(f"bench sweep: warning: {msg}", file=sys.stderr)


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
    key: int = 0
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


@dataclass
class Cell:
    """One run of the grid, validated; ``artifact`` names the poison artifact it trains on."""

    spec: RunSpec
    run_id: str
    record_path: Path
    artifact: str
    finished: bool
    label: str
    cost_key: tuple
    poison_cost_key: tuple


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


# ------------------------------------------------------------------------------------ grid

def _split(value: Any, kind: Callable[[str], Any], what: str) -> list[Any]:
    """A comma-separated string or a list -> a de-duplicated list of ``kind`` values."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[Any] = []
    for item in items:
        text = item.strip() if isinstance(item, str) else item
        if text == "":
            continue
        try:
            converted = kind(text)
        except (TypeError, ValueError):
            raise BenchError(f"{what}: '{item}' is not a valid {kind.__name__}") from None
        if converted not in out:
            out.append(converted)
    if not out:
        raise BenchError(f"{what} is empty")
    return out


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls.Params)}


def route_poison_params(poisons: list[str], raw: Mapping[str, Any], strict: bool = True) -> dict[str, dict[str, Any]]:
    """``param=v`` goes to every poison of the sweep that declares it, ``poison.param=v`` to that
    poison only (and wins over the plain form). Not strict: params that target nothing are dropped."""
    out: dict[str, dict[str, Any]] = {p: {} for p in poisons}
    for key, value in sorted(raw.items(), key=lambda kv: "." in kv[0]):
        if "." in key:
            scope, pname = key.split(".", 1)
            scope = POISONS.canonical(scope)
            if scope not in out and not strict:
                continue
            if scope not in out:
                raise BenchError(f"--poison-param '{key}' names poison '{scope}', which is not in the sweep "
                                 f"({', '.join(poisons)})")
            out[scope][pname] = value
            continue
        holders = [p for p in poisons if key in _fields(POISONS.get(p))]
        if not holders and strict:
            raise BenchError(f"--poison-param '{key}': no poison of the sweep ({', '.join(poisons)}) declares it; "
                             "see 'bench list poisons'")
        for p in holders:
            out[p][key] = value
    return out


def route_defense_params(defenses: list[str], raw: Mapping[str, Any], strict: bool = True) -> dict[str, dict[str, Any]]:
    """``param=v`` goes to every defense (composition) with a component that declares it,
    ``name.param=v`` to every defense that has component ``name``."""
    comps = {d: [DEFENSES.canonical(n) for n in d.split("+") if n.strip()] for d in defenses}
    out: dict[str, dict[str, Any]] = {d: {} for d in defenses}
    for key, value in raw.items():
        if "." in key:
            scope = DEFENSES.canonical(key.split(".", 1)[0])
            targets = [d for d in defenses if scope in comps[d]]
            if not targets and strict:
                raise BenchError(f"--defense-param '{key}' names defense '{scope}', which is not in the sweep "
                                 f"({', '.join(defenses)})")
        else:
            targets = [d for d in defenses if any(key in _fields(DEFENSES.get(c)) for c in comps[d])]
            if not targets and strict:
                raise BenchError(f"--defense-param '{key}': no defense of the sweep ({', '.join(defenses)}) "
                                 "declares it; see 'bench list defenses'")
        for d in targets:
            out[d][key] = value
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


@functools.lru_cache(maxsize=2)
def _dataset(name: str, root: str, cache: str, download: bool) -> Dataset:
    """The decoded dataset, loaded once per process: planning validates every cell and a worker runs
    many cells, and each load of CIFAR-10 costs about a second."""
    return load_dataset(name, Path(root), Path(cache), download)


def _prepare(spec: RunSpec) -> PreparedRun:
    data = _dataset(spec.dataset, str(paths.data_root(spec.data_root)), str(paths.cache_dir(spec.cache_dir)),
                    spec.download)
    return prepare_run(spec, data=data)


def _label(spec: RunSpec, config: dict[str, Any]) -> str:
    poison = spec.poison + "".join(f" {k}={v}" for k, v in spec.poison_params.items())
    if spec.ratio < 1:
        poison += f" r={spec.ratio:g}" + (" clean-only" if spec.clean_only else "")
    defense = spec.defense + "".join(f" {k}={v}" for k, v in spec.defense_params.items())
    return f"{poison} × {defense} · {config['model']} · seed {spec.seed}"


def plan_sweep(sweep: SweepSpec, device: str | None = None, warn: Warn | None = _warn_stderr) -> Plan:
    """Expand and validate the whole grid (bad names or params raise BenchError before any work).

    ``device``: the device the cells will run on (a Ray cluster's, which the driver may lack).
    ``warn``: told about each unreadable record (the cell is then planned to run again)."""
    from benchmark.poisoning import artifact_paths
    from benchmark.records import finished_record

    if not sweep.poisons:
        raise BenchError("a sweep needs --poisons (the clean 'none' row is added by itself)")
    if not sweep.defenses or not sweep.seeds or not sweep.ratios:
        raise BenchError("--defenses, --seeds and --ratios must not be empty")
    target = device or str(resolve_device(sweep.device))
    import torch

    preset = sweep.preset or default_preset(torch.device(target))
    # Run ids do not depend on the device, so a GPU-less driver validates a GPU sweep on the CPU.
    local = target if not target.startswith("cuda") or torch.cuda.is_available() else "cpu"
    specs = expand_grid(sweep, preset, target)
    cells: dict[str, Cell] = {}
    for spec in specs:
        prep = _prepare(replace(spec, device=local))
        if prep.run_id in cells:
            continue
        cfg = prep.config
        npz, _ = artifact_paths(prep.cache, prep.dataset_id, prep.poison)
        cells[prep.run_id] = Cell(
            spec=spec, run_id=prep.run_id, record_path=prep.record_path, artifact=str(npz),
            finished=not sweep.force and finished_record(
                prep.record_path, warn, "ignoring unreadable record {path} ({problem}); its cell runs again and "
                "rewrites it") is not None,
            label=_label(spec, cfg),
            cost_key=(cfg["preset"], cfg["model"], cfg["defense"]["name"], cfg["train_size"],
                      cfg["protocol"]["epochs"]),
            poison_cost_key=(cfg["preset"], cfg["dataset"], cfg["poison"]["name"], cfg["train_size"]))
    return Plan(sweep, target, preset, list(cells.values()))


# ---------------------------------------------------------------------------------- workers

def generate_poison(spec: RunSpec) -> dict[str, Any]:
    """Generate (or find cached) the poison artifact of ``spec``; runs in a worker."""
    from benchmark.poisoning import get_poisoned

    prep = _prepare(spec)
    _poisoned, manifest = get_poisoned(prep.train, prep.dataset_id, prep.poison, prep.cache, prep.device,
                                       prep.protocol.preset)
    return {"artifact": manifest["artifact"], "cached": bool(manifest.get("cached")),
            "generation_seconds": manifest.get("generation_seconds")}


def _failed_record(prep: PreparedRun, exc: BaseException) -> dict[str, Any]:
    """The failed record of this cell: the one ``execute`` just wrote, else a new one."""
    from benchmark.io import read_json
    from benchmark.records import write_record
    from benchmark.runner import build_record

    error = f"{type(exc).__name__}: {exc}"
    if prep.record_path.exists():
        try:
            rec = read_json(prep.record_path)
            if rec.get("status") == "failed" and rec.get("error") == error:
                return rec
        except BenchError:
            pass
    rec = build_record(prep, {}, status="failed", error=error,
                       traceback_text="".join(traceback.format_exception(exc, limit=8)))
    write_record(prep.record_path, rec)
    return rec


def run_cell(spec: RunSpec) -> dict[str, Any]:
    """Train one cell unless its finished record exists; errors become a failed record, not a raise."""
    t0 = time.perf_counter()
    prep = _prepare(spec)
    from benchmark.records import finished_record

    # planning already warned about an unreadable record; here it just counts as missing
    if not spec.force and (rec := finished_record(prep.record_path)) is not None:
        return {"run_id": prep.run_id, "status": "skipped", "test_acc": rec["metrics"].get("test_acc"),
                "seconds": 0.0, "error": None}
    try:
        rec = execute(prep)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        rec = _failed_record(prep, exc)
        return {"run_id": prep.run_id, "status": "failed", "test_acc": None, "error": rec["error"],
                "seconds": round(time.perf_counter() - t0, 3), "record": rec}
    return {"run_id": prep.run_id, "status": "finished", "test_acc": rec["metrics"]["test_acc"], "error": None,
            "seconds": round(time.perf_counter() - t0, 3), "record": rec}


def _init_worker(threads: int) -> None:
    """Local worker: share the cores between workers instead of oversubscribing them."""
    import torch

    torch.set_num_threads(threads)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------- display

class _Display:
    """One overall progress bar plus a line per finished poison and cell."""

    def __init__(self, console: Console, plan: Plan, summary: SweepSummary) -> None:
        self.console, self.summary = console, summary
        self.progress = Progress(TextColumn("[cyan]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                                 disable=not console.is_terminal, transient=False)
        self.task = self.progress.add_task("sweep", total=len(plan.todo))

    def __enter__(self) -> _Display:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def poison(self, cells: list[Cell], info: dict[str, Any] | None, error: str | None) -> None:
        name = cells[0].spec.poison + (f" r={cells[0].spec.ratio:g}" if cells[0].spec.ratio < 1 else "")
        if error:
            self.console.print(f"[red]poison {name} failed[/]: {error}")
        elif info and info["cached"]:
            self.summary.poisons_cached += 1
        else:
            self.summary.poisons_generated += 1
            self.console.print(f"poison {name}: generated in {info['generation_seconds']:.2f} s")

    def cell(self, cell: Cell, result: dict[str, Any]) -> None:
        status = result["status"]
        if status == "finished":
            self.summary.done += 1
            self.console.print(f"[green]done[/] {cell.label}: {result['test_acc']:.2f} % ({result['seconds']:.1f} s)")
        elif status == "skipped":
            self.summary.skipped += 1
        else:
            self.summary.failed += 1
            self.summary.failures.append((cell.label, result["error"]))
            self.console.print(f"[red]failed[/] {cell.label}: {result['error']}")
        self.progress.update(self.task, advance=1, description=f"sweep ({self.summary.failed} failed)"
                             if self.summary.failed else "sweep")


def _cell_failed(cell: Cell, exc: BaseException) -> dict[str, Any]:
    """Result and failed record of a cell that could not write its own: its poison failed, or the
    worker running it died (killed, out of memory, a broken process pool). Without the record a
    cell counted as failed would leave no trace in the results folder."""
    spec = cell.spec
    if spec.device.startswith("cuda"):  # written by a driver that may have no GPU (a Ray head node)
        import torch

        if not torch.cuda.is_available():
            spec = replace(spec, device="cpu")
    try:
        error = _failed_record(_prepare(spec), exc)["error"]
    except Exception:  # noqa: BLE001 - the summary still reports the cell
        error = f"{type(exc).__name__}: {exc}"
    return {"run_id": cell.run_id, "status": "failed", "test_acc": None, "error": error, "seconds": 0.0}


def _poison_failed(cell: Cell, error: str) -> dict[str, Any]:
    """Result (and failed record) of a cell whose poison could not be generated."""
    return _cell_failed(cell, RuntimeError(f"poison generation failed: {error}"))


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"


# -------------------------------------------------------------------------------- executors

def _run_inprocess(plan: Plan, display: _Display) -> None:
    """jobs=1: each poison, then its cells, in this process (no spawn cost, Ctrl-C stops at once)."""
    for cells in plan.poison_jobs().values():
        try:
            info = generate_poison(cells[0].spec)
        except Exception as exc:
            display.poison(cells, None, _error_text(exc))
            for cell in cells:
                display.cell(cell, _poison_failed(cell, _error_text(exc)))
            continue
        display.poison(cells, info, None)
        for cell in cells:
            display.cell(cell, run_cell(cell.spec))


def _run_local(plan: Plan, jobs: int, display: _Display) -> None:
    """``jobs`` spawned worker processes; a poison's cells are submitted once it exists."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    if jobs == 1:
        _run_inprocess(plan, display)
        return
    threads = max(1, _cores() // jobs)
    waiting = plan.poison_jobs()
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads,))
    pending: dict[Future, tuple[str, Any]] = {}

    def submit(fn: Callable, arg: RunSpec, tag: tuple[str, Any]) -> None:
        try:
            pending[pool.submit(fn, arg)] = tag
        except Exception as exc:  # a broken pool (a worker was killed): fail instead of hanging
            if tag[0] == "cell":
                display.cell(tag[1], _cell_failed(tag[1], exc))
            else:
                for cell in waiting.pop(tag[1]):
                    display.cell(cell, _poison_failed(cell, _error_text(exc)))

    try:
        for artifact, cells in waiting.items():
            submit(generate_poison, cells[0].spec, ("poison", artifact))
        while pending:
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in finished:
                kind, item = pending.pop(fut)
                if kind == "poison":
                    cells = waiting.pop(item)
                    try:
                        info = fut.result()
                    except Exception as exc:
                        display.poison(cells, None, _error_text(exc))
                        for cell in cells:
                            display.cell(cell, _poison_failed(cell, _error_text(exc)))
                        continue
                    display.poison(cells, info, None)
                    for cell in cells:
                        submit(run_cell, cell.spec, ("cell", cell))
                else:
                    try:
                        result = fut.result()
                    except Exception as exc:  # the worker died (killed, out of memory)
                        result = _cell_failed(item, exc)
                    display.cell(item, result)
    except BaseException:  # Ctrl-C, SIGTERM (bench main), a display error: stop the workers too
        # ProcessPoolExecutor has no public way to stop a task that is running; a worker left alive
        # would finish its cell (possibly with code edited since) after this sweep has gone
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()  # a cell stopped mid-way resumes from its last epoch checkpoint
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BenchError("--executor ray needs Ray: pip install 'unlearnable-bench[ray]' "
                         "(or pip install 'ray[default]')") from None
    return ray


def _ray_threads() -> None:
    """A Ray task uses as many torch threads as CPUs it was given."""
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))


def _ray_generate_poison(spec: RunSpec) -> dict[str, Any]:
    """Poison task: its return value (the artifact bytes and manifest) is the ObjectRef training
    tasks depend on, so a node without the artifact in its cache installs it from there."""
    import numpy as np

    _ray_threads()
    info = generate_poison(spec)
    npz = Path(info["artifact"])
    info["npz_bytes"] = np.frombuffer(npz.read_bytes(), dtype=np.uint8)
    info["manifest_text"] = npz.with_suffix(".json").read_text()
    return info


def _ray_run_cell(spec: RunSpec, poison: dict[str, Any]) -> dict[str, Any]:
    from benchmark.io import atomic_write

    _ray_threads()
    base = paths.cache_dir(spec.cache_dir) / "poisons"
    npz = base / Path(poison["artifact"]).name
    manifest = npz.with_suffix(".json")
    if not (npz.exists() and manifest.exists()):
        atomic_write(npz, lambda p: p.write_bytes(poison["npz_bytes"].tobytes()))
        atomic_write(manifest, lambda p: p.write_text(poison["manifest_text"]))  # last: marks it complete
    return run_cell(spec)


def ray_device(ray: Any, requested: str) -> str:
    """``auto`` on a Ray cluster: cuda when the cluster has GPUs (the driver may have none)."""
    if requested != "auto":
        return requested
    return "cuda" if ray.cluster_resources().get("GPU", 0) >= 1 else "cpu"


def store_returned_record(path: Path, rec: dict[str, Any]) -> bool:
    """Driver side of a Ray cell: write the record a task returned, for nodes that do not share the
    results folder. Written unless the file there already holds it, or holds a finished record and the
    returned one is not (a result is never replaced by a failure); a failed record of an earlier
    sweep at the same path is replaced. Returns whether it wrote."""
    from benchmark.records import read_record, write_record

    existing = read_record(path)
    if existing is not None and json.dumps(existing, sort_keys=True) == json.dumps(rec, sort_keys=True):
        return False
    if existing is not None and existing.get("status") == "finished" and rec.get("status") != "finished":
        return False
    write_record(path, rec)
    return True


def _run_ray(plan: Plan, display: _Display) -> None:
    """One Ray task per poison and per cell; a cell's task takes its poison's ObjectRef."""
    import ray

    opts: dict[str, Any] = {"max_retries": 0}
    if plan.device.startswith("cuda"):
        opts["num_gpus"] = 1
    poison_task = ray.remote(**opts)(_ray_generate_poison)
    cell_task = ray.remote(**opts)(_ray_run_cell)
    waiting = plan.poison_jobs()
    refs: dict[Any, tuple[str, Any]] = {}
    for artifact, cells in waiting.items():
        poison_ref = poison_task.remote(cells[0].spec)
        refs[poison_ref] = ("poison", artifact)
        for cell in cells:
            refs[cell_task.remote(cell.spec, poison_ref)] = ("cell", cell)
    poison_errors: dict[str, str] = {}
    try:
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                kind, item = refs.pop(ref)
                try:
                    value = ray.get(ref)
                except Exception as exc:
                    if kind == "poison":
                        poison_errors[item] = _error_text(getattr(exc, "cause", None) or exc)
                        display.poison(waiting[item], None, poison_errors[item])
                    elif item.artifact in poison_errors:
                        display.cell(item, _poison_failed(item, poison_errors[item.artifact]))
                    else:  # the task's worker died (or raised): no record was written for it
                        display.cell(item, _cell_failed(item, getattr(exc, "cause", None) or exc))
                    continue
                if kind == "poison":
                    display.poison(waiting[item], value, None)
                    continue
                rec = value.pop("record", None)
                if rec is not None:
                    store_returned_record(item.record_path, rec)
                display.cell(item, value)
    except BaseException:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise


# ------------------------------------------------------------------------------------- run

def run_sweep(sweep: SweepSpec, executor: str = "local", jobs: int = 1, address: str | None = None,
              console: Console | None = None, plan: Plan | None = None) -> SweepSummary:
    """Plan (validating every cell), then run what is missing; returns the counts and failures."""
    console = console or Console(highlight=False)
    if executor not in EXECUTORS:
        raise BenchError(f"unknown executor '{executor}'; valid: {', '.join(EXECUTORS)}")
    if jobs < 1:
        raise BenchError(f"--jobs must be >= 1, got {jobs}")
    if address and executor != "ray":
        raise BenchError("--address only applies to --executor ray")
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
            plan = plan_sweep(sweep, ray_device(ray, sweep.device) if ray else None)
        summary = SweepSummary(cells=len(plan.cells), skipped=len(plan.cells) - len(plan.todo))
        jobs_text = f" × {jobs} jobs" if executor == "local" else f" ({address or 'local instance'})"
        console.print(f"sweep: {len(plan.cells)} cells ({len(plan.todo)} to run, {summary.skipped} finished already), "
                      f"{len(plan.poison_jobs())} poisons needed · preset {plan.preset} · {plan.device} · "
                      f"executor {executor}{jobs_text}")
        with _Display(console, plan, summary) as display:
            if executor == "ray":
                _run_ray(plan, display)
            else:
                _run_local(plan, jobs, display)
    finally:
        if started_ray:
            ray.shutdown()
    summary.wall_seconds = round(time.perf_counter() - t0, 2)
    return summary


def summary_table(summary: SweepSummary) -> Table:
    table = Table(title="sweep summary", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("cells", str(summary.cells))
    table.add_row("done", str(summary.done))
    table.add_row("skipped (finished before)", str(summary.skipped))
    table.add_row("failed", f"[red]{summary.failed}[/]" if summary.failed else "0")
    table.add_row("poisons", f"{summary.poisons_generated} generated, {summary.poisons_cached} from cache")
    table.add_row("wall time", _duration(summary.wall_seconds))
    for label, error in summary.failures[:10]:
        table.add_row("[red]failed[/]", f"{label}: {error}")
    return table


# ---------------------------------------------------------------------------------- dry run

def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def past_costs(results: Path) -> tuple[dict[tuple, float], dict[tuple, float]]:
    """Mean seconds per cell (wall minus fresh poison generation) by preset/model/defense/train
    size/epochs, and mean poison generation seconds by preset/dataset/poison/train size, from the
    finished records in ``results``."""
    from benchmark.records import load_records

    cells: dict[tuple, list[float]] = defaultdict(list)
    poisons: dict[tuple, list[float]] = defaultdict(list)
    for _path, rec in load_records(results):
        if rec["status"] != "finished":
            continue
        cfg, t = rec["config"], rec["timings"]
        wall = t.get("wall")
        if isinstance(wall, (int, float)):
            gen = t.get("poison_generation") if not t.get("poison_cached") else 0.0
            cells[(cfg["preset"], cfg["model"], cfg["defense"]["name"], cfg.get("train_size"),
                   (cfg.get("protocol") or {}).get("epochs"))].append(max(0.0, wall - (gen or 0.0)))
        gen_s = (rec.get("poison") or {}).get("generation_seconds")
        if isinstance(gen_s, (int, float)):
            poisons[(cfg["preset"], cfg["dataset"], cfg["poison"]["name"], cfg.get("train_size"))].append(gen_s)
    mean = lambda d: {k: sum(v) / len(v) for k, v in d.items()}  # noqa: E731
    return mean(cells), mean(poisons)


def dry_run_table(plan: Plan, jobs: int = 1) -> tuple[Table, str]:
    """The grid (one row per cell) and a cost estimate from past records' timings."""
    cell_cost, poison_cost = past_costs(paths.results_dir(plan.sweep.results))
    table = Table(title=f"sweep grid: {len(plan.cells)} cells, preset {plan.preset}, {plan.device}",
                  title_justify="left")
    for col in ("poison", "ratio", "defense", "model", "seed", "state", "est.", "run id"):
        table.add_column(col, no_wrap=col == "run id", min_width=12 if col == "run id" else None)
    known, unknown = 0.0, 0
    for cell in plan.cells:
        s = cell.spec
        est = None if cell.finished else cell_cost.get(cell.cost_key)
        if not cell.finished:
            if est is None:
                unknown += 1
            else:
                known += est
        poison = s.poison + "".join(f" {k}={v}" for k, v in s.poison_params.items())
        defense = s.defense + "".join(f" {k}={v}" for k, v in s.defense_params.items())
        ratio = f"{s.ratio:g}" + (" clean-only" if s.clean_only else "")
        state = "[green]done[/]" if cell.finished else "todo"
        table.add_row(poison, ratio, defense, cell.cost_key[1], str(s.seed), state,
                      "-" if cell.finished else (_duration(est) if est is not None else "unknown"), cell.run_id)
    for cells in plan.poison_jobs().values():
        cell = cells[0]
        if cell.spec.poison == "none" or (Path(cell.artifact).exists() and Path(cell.artifact).with_suffix(".json").exists()):
            continue
        gen = poison_cost.get(cell.poison_cost_key)
        if gen is None:
            unknown += 1
        else:
            known += gen
    todo = len(plan.todo)
    if todo == 0:
        text = "nothing to run: every cell has a finished record"
    elif unknown and not known:
        text = "estimated cost: unknown (no finished records with the same preset/model/defense yet)"
    else:
        text = f"estimated cost: {_duration(known)} of compute"
        if jobs > 1:
            text += f" (about {_duration(known / jobs)} with {jobs} jobs)"
        if unknown:
            text = "estimated cost: unknown for " + f"{unknown} cells/poisons; at least {_duration(known)} for the rest"
    return table, f"{todo} of {len(plan.cells)} cells to run; {text}"


# ----------------------------------------------------------------------------- config / CLI

CONFIG_KEYS = {
    "poisons", "defenses", "seeds", "models", "ratios", "dataset", "preset", "key", "poison_params",
    "defense_params", "protocol", "clean_row", "clean_only_baseline", "executor", "jobs", "address", "data_root",
    "cache_dir", "results", "device",
}
#: keys that must be TOML booleans (``bool("no")`` would silently be True)
BOOL_KEYS = ("clean_row", "clean_only_baseline")


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a sweep TOML file; nested tables ``[poison_params.cuda]`` become ``cuda.param`` keys."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise BenchError("reading a TOML sweep file on Python 3.10 needs tomli: pip install tomli") from None
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise BenchError(f"cannot read sweep file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"sweep file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - CONFIG_KEYS)
    if unknown:
        raise BenchError(f"sweep file {path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(CONFIG_KEYS))}")
    for key in BOOL_KEYS:
        if key in data and not isinstance(data[key], bool):
            raise BenchError(f"sweep file {path}: '{key}' must be true or false, got {data[key]!r}")
    for table in ("poison_params", "defense_params", "protocol"):
        value = data.get(table, {})
        if not isinstance(value, dict):
            raise BenchError(f"sweep file {path}: '{table}' must be a table")
        flat: dict[str, Any] = {}
        for k, v in value.items():
            if isinstance(v, dict) and table != "protocol":
                flat.update({f"{k}.{k2}": v2 for k2, v2 in v.items()})
            else:
                flat[k] = v
        data[table] = flat
    return data


def _protocol_overrides(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Typed protocol overrides (CLI values arrive as strings)."""
    from benchmark.params import build_params
    from benchmark.protocol import Protocol

    typed = build_params(Protocol, raw, owner="--protocol-param")
    return {k: getattr(typed, k) for k in raw}


def sweep_from_options(values: Mapping[str, Any], explicit: Iterable[str]) -> tuple[SweepSpec, dict[str, Any]]:
    """Merge CLI options with an optional TOML file: flags given on the command line win over the
    file, which wins over environment variables and defaults. Returns the sweep and executor options."""
    explicit = set(explicit)
    config = load_config(values["config"]) if values.get("config") else {}
    cli_to_config = {"poison_params": "poison_params", "defense_params": "defense_params",
                     "protocol_params": "protocol", "clean_only_baseline": "clean_only_baseline",
                     "clean_row": "clean_row"}

    def get(name: str) -> Any:
        key = cli_to_config.get(name, name)
        if name not in explicit and key in config:
            return config[key]
        return values.get(name)

    def kv(name: str, flag: str) -> dict[str, Any]:
        value = get(name)
        return dict(value) if isinstance(value, Mapping) else parse_kv(value or (), flag)

    if get("poisons") is None:
        raise BenchError("a sweep needs --poisons (or 'poisons' in the --config file)")
    sweep = SweepSpec(
        poisons=_split(get("poisons"), str, "--poisons"),
        defenses=_split(get("defenses") or "none", str, "--defenses"),
        seeds=_split(get("seeds") if get("seeds") is not None else "0", int, "--seeds"),
        models=_split(get("models"), str, "--models") if get("models") else [],
        ratios=_split(get("ratios") if get("ratios") is not None else "1.0", float, "--ratios"),
        dataset=get("dataset") or "cifar10",
        preset=get("preset"),
        poison_params=kv("poison_params", "--poison-param"),
        defense_params=kv("defense_params", "--defense-param"),
        overrides=_protocol_overrides(kv("protocol_params", "--protocol-param")),
        key=int(get("key") or 0),
        clean_only_baseline=bool(get("clean_only_baseline") if get("clean_only_baseline") is not None else True),
        clean_row=bool(get("clean_row") if get("clean_row") is not None else True),
        strict_params=not any(key in config and flag not in explicit and list_ in explicit
                              for key, flag, list_ in (("poison_params", "poison_params", "poisons"),
                                                       ("defense_params", "defense_params", "defenses"))),
        data_root=get("data_root"), cache_dir=get("cache_dir"), results=get("results"),
        device=get("device") or "auto", download=bool(values.get("download")), force=bool(values.get("force")),
    )
    executor = {"executor": get("executor") or "local", "jobs": int(get("jobs") if get("jobs") is not None else 1),
                # a pool size asked for: on the command line, or other than 1 in the file
                "jobs_given": "jobs" in explicit or (get("jobs") is not None and int(get("jobs")) != 1),
                "address": get("address")}
    return sweep, executor


def sweep_command(values: Mapping[str, Any], explicit: Iterable[str], console: Console) -> SweepSummary | None:
    """``bench sweep``: dry run (grid + cost estimate) or the sweep itself with its summary."""
    sweep, ex = sweep_from_options(values, explicit)
    if ex["executor"] == "ray" and ex["jobs_given"]:
        # Ray places one cell per GPU (or per CPU without GPUs) on its own; --jobs only sizes the local pool
        print(f"bench sweep: note: --jobs {ex['jobs']} is ignored with --executor ray (Ray runs as many cells "
              "at once as the cluster has GPUs, or CPUs without GPUs)", file=sys.stderr)
    if values.get("dry_run"):
        if ex["executor"] not in EXECUTORS:
            raise BenchError(f"unknown executor '{ex['executor']}'; valid: {', '.join(EXECUTORS)}")
        plan = plan_sweep(sweep)
        table, text = dry_run_table(plan, ex["jobs"] if ex["executor"] == "local" else 1)
        console.print(table)
        console.print(text)
        return None
    summary = run_sweep(sweep, ex["executor"], ex["jobs"], ex["address"], console)
    console.print(summary_table(summary))
    console.print(f"sweep: {summary.done} done, {summary.skipped} skipped, {summary.failed} failed "
                  f"in {_duration(summary.wall_seconds)}")
    return summary
