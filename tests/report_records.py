"""The one factory of run records for the report tests (leaderboard, results, claims).

Records are made by the runner itself: ``prepare_run`` resolves the config (protocol preset, poison and
defense params, run id) on a tiny in-memory stand-in for CIFAR-10 and ``build_record`` writes the record
around it (defense_info, training, environment), exactly as a run does; only the measured numbers
(accuracies, per-epoch curve, timings) are chosen, so that every aggregate has a hand-computable answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from benchmark.data import Dataset, ImageSet
from benchmark.records import record_filename, run_id, validate_record
from benchmark.runner import RunSpec, build_record, prepare_run

CUDA_PARAMS = {"pb": 0.3, "k": 3, "universal": False}
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_DATA: dict[str, Dataset] = {}


def tiny_cifar(source: str) -> Dataset:
    """60 train / 50 test 8x8 images per class, enough for the smoke preset's stratified subsets."""
    if source not in _DATA:
        gen = torch.Generator().manual_seed(0)

        def split(per_class: int) -> ImageSet:
            y = torch.arange(10).repeat_interleave(per_class)
            return ImageSet(torch.randint(0, 256, (len(y), 3, 8, 8), generator=gen, dtype=torch.uint8), y, CLASSES)

        _DATA[source] = Dataset("cifar10", source, split(60), split(50), digest=f"tiny-{source}")
    return _DATA[source]


def make_record(poison: str = "none", defense: str = "none", acc: float = 50.0, seed: int = 0,
                preset: str = "smoke", ratio: float = 1.0, clean_only: bool = False, peak: float | None = None,
                params: dict[str, Any] | None = None, defense_params: dict[str, Any] | None = None,
                status: str = "finished", train_acc: float = 90.0, curve: list[float] | None = None,
                commit: str = "0" * 40, created: str | None = None, defense_info: bool = True,
                defense_source: dict[str, Any] | None = None, source: str = "cifar10-jpeg",
                defense_metrics: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A record with final accuracy ``acc``; ``curve`` sets the per-epoch test accuracies (default: a
    steady climb to ``acc``); ``overrides`` are protocol overrides (a protocol variant); ``defense_info=False`` drops the field, as in records made before it.
    ``finetune`` records are records of that older kind: no backbone file is at hand to build the defense,
    so the run is prepared without it and its recorded defense config and source are written in."""
    recorded = defense == "finetune"
    spec = RunSpec(dataset="cifar10", poison=poison, poison_params=CUDA_PARAMS if params is None and poison == "cuda"
                   else dict(params or {}), ratio=ratio, clean_only=clean_only, defense="none" if recorded else defense,
                   defense_params={} if recorded else dict(defense_params or {}), preset=preset, seed=seed, device="cpu",
                   overrides={**({} if preset == "smoke" else {"train_subset": 0}), **(overrides or {})}, results="no-such-results-folder")
    prep = prepare_run(spec, data=tiny_cifar(source))
    epochs = prep.protocol.epochs
    tests = curve or [round(acc * e / epochs, 3) for e in range(1, epochs + 1)]
    per_epoch = [{"epoch": e, "train_loss": 1.0, "train_acc": train_acc, "test_acc": t, "lr": 0.01, "seconds": 0.1}
                 for e, t in enumerate(tests, 1)]
    finished = status == "finished"
    budget = None if poison == "none" else {"linf": 0.5, "linf_255": 128, "l2_mean": 5.0, "psnr": 20.0, "ssim": 0.8,
                                            "num_poisoned": len(prep.train)}
    manifest = {"budget": budget, "generation_seconds": 0.5, "generation_device": "cpu", "info": {}}
    metrics = {"test_acc": acc, "peak_test_acc": peak if peak is not None else max(tests + [acc]), "peak_epoch": epochs,
               "train_acc": train_acc, "per_epoch": per_epoch, "defense": defense_metrics or {}, "diverged": False}
    rec = build_record(prep, manifest, status, metrics=metrics if finished else None,
                       timings={"training": 10.0 if defense == "none" else 20.0, "evaluation": 1.0},
                       error=None if finished else "RuntimeError: boom",
                       training={"steps": 24 * epochs, "epochs": epochs} if finished else None)
    rec["created"] = created or f"2026-01-{10 + seed:02d}T12:00:00+00:00"
    rec["environment"]["git_commit"] = commit
    if defense_source is not None:
        rec["defense_source"] = defense_source
    if recorded:
        dp = dict(defense_params or {})
        rec["config"]["defense"] = {"name": defense, "params": dp, "components": [{"name": defense, "params": dp}]}
        rec["run_id"] = run_id(rec["config"])
    if not defense_info or recorded:
        rec.pop("defense_info", None)
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


def make_targeted_record(poison: str = "witches-brew", defense: str = "none", acc: float = 50.0, seed: int = 0,
                         success: bool = True, target: bool = True, budget: float = 0.01, eps: float = 16 / 255,
                         target_index: int = 7, **kw: Any) -> dict[str, Any]:
    """A record of one targeted trial as the runner writes it (``threat_model: "targeted"``): a run record
    of ``defense`` whose poison part names a targeted poison with its budget and key, and whose metrics hold
    the target's outcome (``target=False``: a trial without it, e.g. written before its evaluation)."""
    rec = make_record("none", defense, acc, seed=seed, **kw)
    cfg = rec["config"]
    true_class, adversarial = target_index % 10, (target_index + 1 + seed) % 10
    adversarial = adversarial if adversarial != true_class else (adversarial + 1) % 10
    num_poisons = round(budget * cfg["train_size"])
    cfg["poison"] = {"name": poison, "params": {"budget": budget, "eps": eps}, "ratio": 1.0,
                     "key_fingerprint": f"{seed:016x}", "clean_only": False}
    rec["run_id"] = run_id(cfg)
    rec["threat_model"] = "targeted"
    rec["poison"] = {"budget": {"linf": eps, "linf_255": round(eps * 255), "l2_mean": 0.1, "psnr": 40.0, "ssim": 0.99,
                                "num_poisoned": num_poisons},
                     "generation_seconds": 2.0, "generation_device": "cpu", "num_poisoned": num_poisons,
                     "info": {"target": {"test_index": target_index, "true_class": true_class,
                                         "adversarial_class": adversarial, "poison_class": adversarial,
                                         "num_poisons": num_poisons}}}
    if target:
        rec["metrics"]["target"] = {"test_index": target_index, "true_class": true_class,
                                    "adversarial_class": adversarial,
                                    "predicted_class": adversarial if success else true_class, "success": success,
                                    "adversarial_prob": 0.8 if success else 0.1, "true_prob": 0.1 if success else 0.8}
    assert validate_record(rec) is None
    return rec
