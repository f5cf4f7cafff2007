"""Where data, caches and results live; every location can be overridden (CLI flag or env var)."""

from __future__ import annotations

import os
from pathlib import Path


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """``--data-root``, else ``$BENCH_DATA_ROOT``, else ``./data``."""
    return Path(explicit or os.environ.get("BENCH_DATA_ROOT") or "data").expanduser()


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """``--cache-dir``, else ``$BENCH_CACHE_DIR``, else ``~/.cache/unlearnable-bench``."""
    default = Path.home() / ".cache" / "unlearnable-bench"
    path = Path(explicit or os.environ.get("BENCH_CACHE_DIR") or default).expanduser()
    return path


def results_dir(explicit: str | os.PathLike | None = None) -> Path:
    """``--results``, else ``$BENCH_RESULTS``, else ``results/runs``."""
    return Path(explicit or os.environ.get("BENCH_RESULTS") or "results/runs").expanduser()
