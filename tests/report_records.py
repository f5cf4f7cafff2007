"""The one factory of hand-made run records for the report tests (leaderboard, results, claims).

Records are shaped like the runner's (benchmark/runner.py): the config comes from the real protocol
presets and the defense's real ``record()`` / ``info()`` (so tiers, families and variant labels are the
defense classes' own), the accuracies are chosen so every aggregate has a hand-computable answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from attacks.base import key_fingerprint
from benchmark.protocol import protocol_dict, resolve_protocol
from benchmark.records import SCHEMA_VERSION, record_filename, run_id, validate_record
from defenses.base import build_defense

CUDA_PARAMS = {"pb": 0.3, "k": 3, "universal": False}


def make_record(poison: str = "none", defense: str = "none", acc: float = 50.0, seed: int = 0,
                preset: str = "smoke", ratio: float = 1.0, clean_only: bool = False, peak: float | None = None,
                params: dict[str, Any] | None = None, defense_params: dict[str, Any] | None = None,
                status: str = "finished", train_acc: float = 90.0, curve: list[float] | None = None,
                commit: str = "0" * 40, created: str | None = None, defense_info: bool = True,
                defense_source: dict[str, Any] | None = None, protocol: dict[str, Any] | None = None,
                source: str = "cifar10-jpeg", model: str | None = None,
                defense_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """A record with final accuracy ``acc``; ``curve`` sets the per-epoch test accuracies (default: a
    steady climb to ``acc``), ``defense_info=False`` leaves the field out as records before it did."""
    proto = {**protocol_dict(resolve_protocol(preset)), **(protocol or {})}
    if model:
        proto["model"] = model
    if params is None:
        params = CUDA_PARAMS if poison == "cuda" else {}
    stack = build_defense(defense, defense_params) if defense != "finetune" else None
    defense_cfg = stack.record() if stack else {"name": defense, "params": defense_params or {},
                                                "components": [{"name": defense, "params": defense_params or {}}]}
    config = {
        "dataset": "cifar10", "dataset_source": source, "train_size": proto["train_subset"] or 50000,
        "test_size": proto["test_subset"] or 10000, "model": proto["model"], "preset": preset, "protocol": proto,
        "seed": seed,
        "poison": {"name": poison, "params": params, "ratio": ratio,
                   "key_fingerprint": None if poison == "none" else key_fingerprint(0), "clean_only": clean_only},
        "defense": defense_cfg,
    }
    epochs = proto["epochs"]
    tests = curve or [round(acc * e / epochs, 3) for e in range(1, epochs + 1)]
    per_epoch = [{"epoch": e, "train_loss": 1.0, "train_acc": train_acc, "test_acc": t, "lr": 0.01, "seconds": 0.1}
                 for e, t in enumerate(tests, 1)]
    finished = status == "finished"
    rec: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "run_id": run_id(config), "status": status,
        "created": created or f"2026-01-{10 + seed:02d}T12:00:00+00:00", "config": config,
        "environment": {"device": "cpu", "device_name": "cpu", "git_commit": commit, "torch_threads": 2},
        "poison": {"budget": None if poison == "none" else {"linf": 0.5, "linf_255": 128, "l2_mean": 5.0,
                                                            "psnr": 20.0, "ssim": 0.8, "num_poisoned": 512},
                   "generation_seconds": 0.5, "generation_device": "cpu"},
        "defense_source": defense_source or {},
        "metrics": {"test_acc": acc, "peak_test_acc": peak if peak is not None else max(tests + [acc]),
                    "peak_epoch": epochs, "train_acc": train_acc, "per_epoch": per_epoch,
                    "defense": defense_metrics or {}} if finished else {},
        "timings": {"training": 10.0 if defense == "none" else 20.0, "evaluation": 1.0},
        "error": None if finished else "RuntimeError: boom",
    }
    if defense_info and stack is not None:
        rec["defense_info"] = stack.info()
    assert validate_record(rec) is None
    return rec


def write(results: Path, rec: dict[str, Any], name: str | None = None) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    path = results / (name or record_filename(rec["config"], rec["run_id"]))
    path.write_text(json.dumps(rec, indent=2))
    return path


def write_all(results: Path, recs: list[dict[str, Any]]) -> Path:
    for rec in recs:
        write(results, rec)
    return results
