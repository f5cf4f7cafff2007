"""Where data, caches and results live; every location can be overridden (CLI flag or env var)."""

from __future__ import annotations

import os
from pathlib import Path

from benchmark.errors import BenchError


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """``--data-root``, else ``$BENCH_DATA_ROOT``, else ``./data``."""
    return Path(explicit or os.environ.get("BENCH_DATA_ROOT") or "data").expanduser()


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """``--cache-dir``, else ``$BENCH_CACHE_DIR``, else ``~/.cache/unlearnable-bench``."""
    default = Path.home() / ".cache" / "unlearnable-bench"
    path = Path(explicit or os.environ.get("BENCH_CACHE_DIR") or default).expanduser()
    return path


def results_dir(explicit: str | os.PathLike | None = None) -> Path:
    """``--results``, else ``$BENCH_RESULTS``, else ``results/runs``: a folder (made when a record is
    written), so a path that is a file is refused before any work instead of after training."""
    path = Path(explicit or os.environ.get("BENCH_RESULTS") or "results/runs").expanduser()
    blocker = next((p for p in (path, *path.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise BenchError(f"--results {path}: {blocker} is a file, not a folder; give a folder for the run records")
    return path
