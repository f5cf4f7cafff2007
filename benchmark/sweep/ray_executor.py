"""The Ray executor: one task per poison and per cell; a cell's task takes its poison's ObjectRef.

The artifact travels with the ObjectRef, so nodes need no shared cache; records come back to the
driver, so nodes need no shared results folder either. Ray is optional: imported only here, when used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark import paths
from benchmark.errors import BenchError
from benchmark.io import atomic_write
from benchmark.locks import load_or_make
from benchmark.poisoning import images_path
from benchmark.records import read_record, write_record
from benchmark.runner import RunSpec
from benchmark.sweep import cells as work
from benchmark.sweep.cells import SweepEvent, cell_failed, error_text
from benchmark.sweep.plan import Plan


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BenchError("--executor ray needs Ray: pip install 'unlearnable-bench[ray]' "
                         "(or pip install 'ray[default]')") from None
    return ray


def _ray_threads() -> None:
    """A Ray task uses as many torch threads as CPUs it was given."""
    cpus = import_ray().get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))


def _ray_generate_poison(spec: RunSpec) -> dict[str, Any]:
    """Poison task: its return value (the artifact bytes and manifest) is the ObjectRef training
    tasks depend on, so a node without the artifact in its cache installs it from there."""
    _ray_threads()
    info = work.generate_poison(spec)
    npz = Path(info["artifact"])
    info["npz_bytes"] = np.frombuffer(npz.read_bytes(), dtype=np.uint8)
    images = images_path(npz)  # a memory-mapped artifact keeps its images beside the npz
    info["images_bytes"] = np.frombuffer(images.read_bytes(), dtype=np.uint8) if images.exists() else None
    info["manifest_text"] = npz.with_suffix(".json").read_text()
    return info


def _ray_run_cell(spec: RunSpec, poison: dict[str, Any]) -> dict[str, Any]:
    _ray_threads()
    base = paths.cache_dir(spec.cache_dir) / "poisons"
    npz = base / Path(poison["artifact"]).name
    manifest = npz.with_suffix(".json")

    def ship() -> bool:
        if poison.get("images_bytes") is not None:
            atomic_write(images_path(npz), lambda p: p.write_bytes(poison["images_bytes"].tobytes()))
        atomic_write(npz, lambda p: p.write_bytes(poison["npz_bytes"].tobytes()))
        atomic_write(manifest, lambda p: p.write_text(poison["manifest_text"]))  # last: marks it complete
        return True

    # under the artifact's lock: never mixed with the files of a generation on this node
    load_or_make(npz, f"poison artifact {npz.stem}", lambda: (npz.exists() and manifest.exists()) or None, ship)
    return work.run_cell(spec)


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
    existing = read_record(path)
    if existing is not None and json.dumps(existing, sort_keys=True) == json.dumps(rec, sort_keys=True):
        return False
    if existing is not None and existing.get("status") == "finished" and rec.get("status") != "finished":
        return False
    write_record(path, rec)
    return True


def run_ray(plan: Plan, emit: SweepEvent) -> None:
    """One Ray task per poison and per cell; a cell's task takes its poison's ObjectRef."""
    ray = import_ray()
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
                    cause = getattr(exc, "cause", None) or exc
                    if kind == "poison":
                        poison_errors[item] = error_text(cause)
                        emit("poison", {"cells": waiting[item], "info": None, "error": poison_errors[item]})
                    else:  # its poison failed, or its worker died (or raised): no record was written for it
                        failure = (RuntimeError(f"poison generation failed: {poison_errors[item.artifact]}")
                                   if item.artifact in poison_errors else cause)
                        emit("cell", {"cell": item, "result": cell_failed(item, failure)})
                    continue
                if kind == "poison":
                    emit("poison", {"cells": waiting[item], "info": value, "error": None})
                    continue
                rec = value.pop("record", None)
                if rec is not None:
                    store_returned_record(item.record_path, rec)
                emit("cell", {"cell": item, "result": value})
    except BaseException:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise
