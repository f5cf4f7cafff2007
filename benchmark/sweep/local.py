"""The local executor: the cells in this process (one job) or in spawned worker processes."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

import torch

from benchmark.runner import RunSpec
from benchmark.sweep import cells as work
from benchmark.sweep.cells import SweepEvent, cell_failed, poison_done
from benchmark.sweep.plan import Plan

# ``work.generate_poison`` / ``work.run_cell`` are looked up when called, so a test can stand in for them.


def _init_worker(threads: int) -> None:
    """Local worker: share the cores between workers instead of oversubscribing them."""
    torch.set_num_threads(threads)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_inprocess(plan: Plan, emit: SweepEvent) -> None:
    """jobs=1: each poison, then its cells, in this process (no spawn cost, Ctrl-C stops at once); each
    cell's training events are told as ``progress`` events."""
    for cells in plan.poison_jobs().values():
        try:
            info = work.generate_poison(cells[0].spec)
        except Exception as exc:
            poison_done(cells, emit, exc=exc)
            continue
        poison_done(cells, emit, info)
        for cell in cells:
            def progress(kind: str, data: dict[str, Any], cell: Any = cell) -> None:
                emit("progress", {"cell": cell, "kind": kind, "data": data})

            emit("cell", {"cell": cell, "result": work.run_cell(cell.spec, progress)})


def run_local(plan: Plan, jobs: int, emit: SweepEvent) -> None:
    """``jobs`` spawned worker processes; a poison's cells are submitted once it exists."""
    if jobs == 1:
        run_inprocess(plan, emit)
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
                emit("cell", {"cell": tag[1], "result": cell_failed(tag[1], exc)})
            else:
                poison_done(waiting.pop(tag[1]), emit, exc=exc)

    try:
        for artifact, cells in waiting.items():
            submit(work.generate_poison, cells[0].spec, ("poison", artifact))
        while pending:
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in finished:
                kind, item = pending.pop(fut)
                if kind == "poison":
                    cells = waiting.pop(item)
                    try:
                        info = fut.result()
                    except Exception as exc:
                        poison_done(cells, emit, exc=exc)
                        continue
                    poison_done(cells, emit, info)
                    for cell in cells:
                        submit(work.run_cell, cell.spec, ("cell", cell))
                else:
                    try:
                        result = fut.result()
                    except Exception as exc:  # the worker died (killed, out of memory)
                        result = cell_failed(item, exc)
                    emit("cell", {"cell": item, "result": result})
    except BaseException:  # Ctrl-C, SIGTERM (bench main), a display error: stop the workers too
        # ProcessPoolExecutor has no public way to stop a task that is running; a worker left alive
        # would finish its cell (possibly with code edited since) after this sweep has gone
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()  # a cell stopped mid-way resumes from its last epoch checkpoint
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
