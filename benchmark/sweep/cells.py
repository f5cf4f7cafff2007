"""What a sweep worker does: generate one poison artifact, train one cell, write a failed record.

Every function here takes a picklable ``RunSpec`` (local workers are spawned processes, Ray tasks run
on other nodes) and never raises for a failed cell: the failure becomes the cell's record.
"""

from __future__ import annotations

import functools
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from benchmark import paths
from benchmark.data import Dataset, load_dataset
from benchmark.errors import BenchError
from benchmark.io import read_json
from benchmark.records import finished_record, write_record
from benchmark.runner import Event, PreparedRun, RunSpec, build_record, execute, prepare_run


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
    #: where an interrupted run of this cell left its checkpoint, and the epochs it trains in all
    checkpoint: Path | None = None
    epochs: int = 0
    #: finished on another poisoned set than the cached artifact of its poison (same poison, params, key)
    stale: bool = False


#: a finished poison job or cell, for the display and the summary counts: (kind, data)
SweepEvent = Callable[[str, dict[str, Any]], None]


@functools.lru_cache(maxsize=2)
def _dataset(name: str, root: str, cache: str, download: bool) -> Dataset:
    """The decoded dataset, loaded once per process: planning validates every cell and a worker runs
    many cells, and each load of CIFAR-10 costs about a second."""
    return load_dataset(name, Path(root), Path(cache), download)


def prepare(spec: RunSpec) -> PreparedRun:
    """``prepare_run`` with the dataset loaded once per process."""
    data = _dataset(spec.dataset, str(paths.data_root(spec.data_root)), str(paths.cache_dir(spec.cache_dir)),
                    spec.download)
    return prepare_run(spec, data=data)


def generate_poison(spec: RunSpec) -> dict[str, Any]:
    """Generate (or find cached) the poison artifact of ``spec``; runs in a worker."""
    prep = prepare(spec)
    _poisoned, manifest = prep.poisoned_set()
    return {"artifact": manifest["artifact"], "cached": bool(manifest.get("cached")),
            "generation_seconds": manifest.get("generation_seconds")}


def failed_record(prep: PreparedRun, exc: BaseException) -> dict[str, Any]:
    """The failed record of this cell: the one ``execute`` just wrote, else a new one."""
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


def run_cell(spec: RunSpec, on_event: Event | None = None) -> dict[str, Any]:
    """Train one cell unless its finished record exists; errors become a failed record, not a raise.
    ``on_event``: the run's events (``train_start``, ``epoch``, ...) as ``execute`` tells them (in-process
    cells only: a worker process cannot call back)."""
    t0 = time.perf_counter()
    prep = prepare(spec)
    # planning already warned about an unreadable record; here it just counts as missing
    if not spec.force and (rec := finished_record(prep.record_path)) is not None:
        return {"run_id": prep.run_id, "status": "skipped", "test_acc": rec["metrics"].get("test_acc"),
                "seconds": 0.0, "error": None}
    try:
        rec = execute(prep, on_event)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        rec = failed_record(prep, exc)
        return {"run_id": prep.run_id, "status": "failed", "test_acc": None, "error": rec["error"],
                "seconds": round(time.perf_counter() - t0, 3), "record": rec}
    return {"run_id": prep.run_id, "status": "finished", "test_acc": rec["metrics"]["test_acc"], "error": None,
            "seconds": round(time.perf_counter() - t0, 3), "record": rec}


def cell_failed(cell: Cell, exc: BaseException) -> dict[str, Any]:
    """Result and failed record of a cell that could not write its own: its poison failed, or the
    worker running it died (killed, out of memory, a broken process pool). Without the record a
    cell counted as failed would leave no trace in the results folder."""
    spec = cell.spec
    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        spec = replace(spec, device="cpu")  # written by a driver that may have no GPU (a Ray head node)
    try:
        error = failed_record(prepare(spec), exc)["error"]
    except Exception:  # noqa: BLE001 - the summary still reports the cell
        error = f"{type(exc).__name__}: {exc}"
    return {"run_id": cell.run_id, "status": "failed", "test_acc": None, "error": error, "seconds": 0.0}


def error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"


def poison_done(cells: list[Cell], emit: SweepEvent, info: dict[str, Any] | None = None,
                exc: BaseException | None = None) -> bool:
    """Tell about a finished poison job; when it failed, its cells fail too (each with a failed
    record). Returns whether its cells can run."""
    if exc is None:
        emit("poison", {"cells": cells, "info": info, "error": None})
        return True
    error = error_text(exc)
    emit("poison", {"cells": cells, "info": None, "error": error})
    for cell in cells:
        emit("cell", {"cell": cell, "result": cell_failed(cell, RuntimeError(f"poison generation failed: {error}"))})
    return False
