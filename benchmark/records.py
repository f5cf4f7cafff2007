"""Run records: one JSON per run, the single source of truth for tables and plots.

Fields other tools read (stable names): ``schema_version``, ``run_id``, ``status``, ``created``, ``threat_model``,
``config.{dataset, dataset_source, model, preset, seed, protocol, poison{name, params, ratio,
key_fingerprint, clean_only}, defense{name, params, components}}``, ``environment``, ``poison`` (budget
metrics, generation cost), ``metrics.{test_acc, peak_test_acc, peak_epoch, train_acc,
per_class_test_acc, per_epoch, defense, target}`` (``target``: a targeted trial's outcome), ``timings``
(seconds), ``error``.
Accuracies are percentages (0-100) as numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmark.errors import BenchError
from benchmark.io import write_json

SCHEMA_VERSION = 1
STATUSES = ("finished", "failed")


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def run_id(config: dict[str, Any]) -> str:
    """Hash of the full resolved config: same config (and seed) -> same id -> same record file."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:12]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]+", "_", text).strip("_")[:60]


def record_filename(config: dict[str, Any], rid: str) -> str:
    parts = [config["dataset"], config["preset"], config["model"], config["poison"]["name"],
             config["defense"]["name"], f"s{config['seed']}"]
    if config["poison"].get("ratio", 1.0) != 1.0:
        parts.insert(4, f"r{config['poison']['ratio']:g}")
    if config["poison"].get("clean_only"):
        parts.insert(4, "cleanonly")
    return "-".join(_slug(str(p)) for p in parts) + f"-{rid}.json"


def find_record(results: Path, rid: str) -> Path | None:
    matches = sorted(Path(results).glob(f"*-{rid}.json"))
    return matches[0] if matches else None


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str) -> dict[str, Any]:
    """Package versions, device and code version behind a run."""
    import numpy  # here: the report reads records without importing torch
    import torch
    import torchvision

    import benchmark
    from benchmark.device import deterministic_kernels

    dev_name = device
    if device.startswith("cuda") and torch.cuda.is_available():
        dev_name = torch.cuda.get_device_name(torch.device(device))
    return {
        "bench_version": benchmark.__version__,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "device": device,
        "device_name": dev_name,
        "cpu": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "deterministic_kernels": deterministic_kernels(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def _cpu_model() -> str:
    """The CPU's model name: BLAS kernels (and so the last digits of a CPU run) differ between CPUs."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


REQUIRED = {
    "schema_version": int, "run_id": str, "status": str, "config": dict, "metrics": dict, "timings": dict,
}


def validate_record(rec: Any) -> str | None:
    """None if ``rec`` is a usable record of this schema, else what is wrong (one line)."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    if rec.get("schema_version") != SCHEMA_VERSION:
        return f"unknown schema_version {rec.get('schema_version')!r} (this version reads {SCHEMA_VERSION})"
    for key, typ in REQUIRED.items():
        if not isinstance(rec.get(key), typ):
            return f"field '{key}' missing or not a {typ.__name__}"
    if rec["status"] not in STATUSES:
        return f"unknown status {rec['status']!r}"
    cfg = rec["config"]
    for key in ("dataset", "model", "preset", "seed", "poison", "defense"):
        if key not in cfg:
            return f"field 'config.{key}' missing"
    if rec["status"] == "finished" and not isinstance(rec["metrics"].get("test_acc"), (int, float)):
        return "finished run without metrics.test_acc"
    return None


def json_safe(data: Any) -> Any:
    """``data`` with every non-finite float (NaN, inf) replaced by None (JSON null): a diverged run or a
    class missing from the test set must still give a valid record, and JSON has no NaN."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return data


REPEATS = "repeats"
"""Folder, inside a results folder, of finished records that a re-run of the same config and seed on
another machine replaced: kept (not shown as cells) to measure the machine-to-machine spread."""


def machine(env: dict[str, Any]) -> str:
    """The machine a run's float kernels ran on: the accelerator's name, else the CPU model and its kernel
    set; "" where the record does not say. Two machines give other last digits, which SGD amplifies."""
    device = str(env.get("device") or "")
    if device and device != "cpu":
        return str(env.get("device_name") or device)
    return f"{env['cpu']} {env.get('cpu_capability') or ''}".strip() if env.get("cpu") else ""


def write_record(path: Path, rec: dict[str, Any]) -> None:
    """Write ``rec`` atomically. A finished record replacing a finished one made on another machine
    moves that one into ``REPEATS`` beside it first, so a re-run elsewhere never loses a measurement."""
    rec = json_safe(rec)
    problem = validate_record(rec)
    if problem:
        raise BenchError(f"refusing to write invalid record {path}: {problem}")
    path = Path(path)
    old = finished_record(path) if rec["status"] == "finished" else None
    if old is not None:
        before, now = machine(old.get("environment") or {}), machine(rec.get("environment") or {})
        if before and now and before != now:
            stamp = re.sub(r"[^0-9]", "", str(old.get("created") or ""))[:14] or "undated"
            keep = path.parent / REPEATS / f"{path.stem}-{stamp}.json"
            keep.parent.mkdir(parents=True, exist_ok=True)
            path.replace(keep)
    write_json(path, rec)


RERUN_NOTE = "ignoring unreadable record {path} ({problem}); its run is done again and rewrites it"


def read_record(path: Path, warn=None, template: str = RERUN_NOTE) -> dict[str, Any] | None:
    """The valid record at ``path``, or None when there is none. A file that cannot be read or is not a
    valid record (a crash while copying results, a bad merge, another schema) counts as missing, with
    one warning naming it (``template`` with ``path``, ``kind`` and ``problem``), so one bad file never
    stops a run, a sweep or the leaderboard."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        rec, kind, problem = None, "unreadable JSON", str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    else:
        kind, problem = "invalid record", validate_record(rec)
        if problem is None:
            return rec
    if warn is not None:
        warn(template.format(path=path, kind=kind, problem=problem))
    return None


def finished_record(path: Path, warn=None, template: str = RERUN_NOTE) -> dict[str, Any] | None:
    """The finished record at ``path`` (see :func:`read_record`), else None."""
    rec = read_record(path, warn, template)
    return rec if rec is not None and rec.get("status") == "finished" else None


def load_records(results: Path, warn=None, repeats: bool = False) -> list[tuple[Path, dict[str, Any]]]:
    """All valid records under ``results`` (recursively, without its ``REPEATS`` folder), or with
    ``repeats`` only those in that folder; each bad file is skipped with one warning."""
    root = Path(results)
    paths = (root / REPEATS).rglob("*.json") if repeats else \
        (p for p in root.rglob("*.json") if p.relative_to(root).parts[0] != REPEATS)
    out = []
    for path in sorted(paths):
        rec = read_record(path, warn, "skipping {path}: {kind} ({problem})")
        if rec is not None:
            out.append((path, rec))
    return out

