"""One benchmark run end to end: data -> poison -> defense -> victim training -> evaluation -> record.

``prepare_run`` validates everything (names, params, data) before any expensive work; ``execute``
does the work and writes the record atomically. The CLI and the sweep both drive these two calls.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attacks.base import PoisonedSet, SplitRows
from benchmark import paths
from benchmark.data import (
    Dataset,
    ImageSet,
    load_dataset,
    poison_dataset_id,
    stratified_subset,
    victim_indices,
)
from benchmark.device import default_preset, resolve_device, seed_everything
from benchmark.errors import BenchError
from benchmark.evaluate import evaluate
from benchmark.locks import exclusive
from benchmark.models import check_model
from benchmark.poisoning import PoisonSpec, build_poison, get_poisoned, seed_key
from benchmark.protocol import Protocol, check_subset_sizes, protocol_dict, resolve_protocol
from benchmark.records import (
    SCHEMA_VERSION,
    environment,
    find_record,
    finished_record,
    now_iso,
    record_filename,
    run_id,
    write_record,
)
from benchmark.registry import POISONS
from benchmark.targets import target_outcome
from benchmark.train import StopTraining, batch_bounds, numerics, prepare_model, train_model
from defenses.base import DefenseStack, TrainContext, Validation, build_defense

Event = Callable[[str, dict[str, Any]], None]


@dataclass
class RunSpec:
    """Everything a user can set for one run (CLI flags map onto these)."""

    dataset: str = "cifar10"
    poison: str = "none"
    poison_params: dict[str, Any] = field(default_factory=dict)
    key: int | None = None  # None: drawn from the seed (:func:`benchmark.poisoning.seed_key`)
    ratio: float = 1.0
    clean_only: bool = False  # partial poisoning baseline: train on the unpoisoned part only
    defense: str = "none"
    defense_params: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    data_root: str | None = None
    cache_dir: str | None = None
    results: str | None = None
    download: bool = False
    device: str = "auto"
    force: bool = False
    match_steps: bool = True  # clean-only baseline: as many optimizer steps as the full run (else epochs)


@dataclass
class PreparedRun:
    spec: RunSpec
    device: torch.device
    protocol: Protocol
    poison: PoisonSpec
    defense: DefenseStack
    data: Dataset
    train: ImageSet
    test: ImageSet
    config: dict[str, Any]
    run_id: str
    record_path: Path
    cache: Path
    train_indices: torch.Tensor  # indices, into the dataset's training split, of the victim's images
    #: the clean split a model-selecting defense holds out, and its positions in ``train``
    validation: Validation | None = None
    val_positions: torch.Tensor | None = None

    @property
    def dataset_id(self) -> dict[str, Any]:
        return poison_dataset_id(self.data, self.train, self.protocol.train_subset, self.protocol.subset_seed)

    @property
    def split_rows(self) -> SplitRows:
        """Where the victim's images sit in the whole training split (an imported file may hold it all)."""
        return SplitRows(self.train_indices, len(self.data.train), self.data)

    def poisoned_set(self, progress: Any = None) -> tuple[PoisonedSet, dict[str, Any]]:
        """This run's poisoned training set and its manifest, generated or read from the cache: the one
        place a run, a sweep worker and ``bench poison`` enter the poisoned-set code."""
        return get_poisoned(self.train, self.dataset_id, self.poison, self.cache, self.device, self.protocol.preset,
                            progress=progress, split_rows=self.split_rows)

    @property
    def checkpoint_path(self) -> Path:
        """The per-epoch training checkpoint an interrupted run resumes from."""
        return self.cache / "checkpoints" / f"{self.run_id}.pt"


def prepare_run(spec: RunSpec, data: Dataset | None = None) -> PreparedRun:
    """Validate the request and load data; raises BenchError (one line) on any bad input.

    ``data``: the already loaded ``spec.dataset`` (a sweep validates many cells of one dataset and
    loads it once)."""
    if spec.seed < 0:
        raise BenchError(f"--seed must be >= 0, got {spec.seed}")
    device = resolve_device(spec.device)
    preset = spec.preset or default_preset(device)
    proto = resolve_protocol(preset, spec.overrides)
    check_model(proto.model)
    keyed = POISONS.get(spec.poison).uses_key  # clean data ("none") has no key: one artifact for every seed
    poison = build_poison(spec.poison, spec.poison_params, seed_key(spec.seed, spec.key) if keyed else spec.key or 0,
                          spec.ratio, preset)
    defense = build_defense(spec.defense, spec.defense_params, preset)
    if spec.clean_only and (poison.name == "none" or poison.ratio >= 1.0):
        raise BenchError("--clean-only needs a partial poison (--ratio below 1) of a real poison")
    cache = paths.cache_dir(spec.cache_dir)
    if data is None:
        data = load_dataset(spec.dataset, paths.data_root(spec.data_root), cache, spec.download)
    check_subset_sizes(spec.overrides, len(data.train), len(data.test))
    train_indices = victim_indices(data.train, proto)
    train, test = data.train.subset(train_indices) if proto.train_subset else data.train, data.test
    if proto.test_subset:
        test = test.subset(stratified_subset(test.y, proto.test_subset, proto.subset_seed))
    poison_rec = poison.record()
    poison_rec["clean_only"] = spec.clean_only
    if spec.clean_only:  # the clean-only baseline takes as many optimizer steps as the full run
        poison_rec["match_steps"] = spec.match_steps
    config = {
        "dataset": data.name,
        "dataset_source": data.source,
        "train_size": len(train),
        "test_size": len(test),
        "model": proto.model,
        "preset": proto.preset,
        "protocol": protocol_dict(proto),
        "seed": spec.seed,
        "poison": poison_rec,
        "defense": defense.record(),
    }
    rid = run_id(config)
    results = paths.results_dir(spec.results)
    existing = find_record(results, rid)
    path = existing or results / record_filename(config, rid)
    prep = PreparedRun(spec, device, proto, poison, defense, data, train, test, config, rid, path, cache,
                       train_indices)
    defense.check_run(make_context(prep))
    prep.validation = defense.validation()
    if prep.validation is not None:
        prep.val_positions = stratified_subset(train.y, prep.validation.size, prep.validation.seed)
    validate_poison(prep)
    return prep


def validate_poison(prep: PreparedRun) -> None:
    """The poison's checks against the clean training set (:meth:`attacks.base.Poison.validate`: an
    imported file's shape, labels, indices, clean rows), before any training, the clean baseline's
    included: a bad file is a one-line BenchError here, never after hours of training."""
    prep.poison.poison.validate(prep.train, prep.split_rows)


def make_context(prep: PreparedRun, generator: torch.Generator | None = None,
                 emit: Callable[[str], None] | None = None) -> TrainContext:
    """The context defense hooks see for this run."""
    c, h, w = prep.data.shape
    ctx = TrainContext(device=prep.device, num_classes=prep.data.num_classes, in_channels=c, image_size=(h, w),
                       protocol=prep.protocol, seed=prep.spec.seed, generator=generator, cache_dir=prep.cache,
                       dataset=prep.data, train_indices=prep.train_indices, data_root=prep.spec.data_root)
    if emit is not None:
        ctx.emit = emit
    return ctx


def existing_record(prep: PreparedRun, warn: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """The finished record of this exact config, if there is one (an unreadable file counts as none:
    the run is done again and rewrites it, after a warning)."""
    return finished_record(prep.record_path, warn)


def execute(prep: PreparedRun, on_event: Event | None = None) -> dict[str, Any]:
    """Run (or resume) training and write the record. Returns the record.

    One process at a time runs a config (its checkpoint is the holder's alone): one that waited for
    another running the same config returns that run's finished record (unless ``--force``)."""
    emit = on_event or (lambda kind, data: None)
    with exclusive(prep.checkpoint_path, f"the record of run {prep.record_path.stem}",
                   notify=lambda text: emit("note", {"text": text})) as waited:
        if waited and not prep.spec.force and (rec := existing_record(prep)) is not None:
            return rec
        return _execute(prep, emit)


def _execute(prep: PreparedRun, emit: Event) -> dict[str, Any]:
    t_start = time.perf_counter()
    emit("poison_start", {"name": prep.poison.name})
    poisoned, manifest = prep.poisoned_set(
        progress=lambda step, total, info: emit("poison_progress", {"step": step, "total": total, **info}))
    emit("poison_done", manifest)
    train = poisoned.as_imageset(prep.train.classes)
    keep = torch.ones(len(train), dtype=torch.bool)
    if prep.spec.clean_only:
        keep[poisoned.poisoned_indices] = False
    val_set = None
    if prep.val_positions is not None:  # held out before poisoning: the defender keeps the clean images
        keep[prep.val_positions] = False
        val_set = prep.train.subset(prep.val_positions).to(prep.device)
    if not keep.all():
        train = train.subset(torch.nonzero(keep).flatten())
    gen = seed_everything(prep.spec.seed)
    ctx = make_context(prep, gen, emit=lambda text: emit("note", {"text": text}))
    ckpt = prep.checkpoint_path
    try:
        with numerics(prep.protocol):
            rec = _train_and_record(prep, manifest, train, val_set, ctx, t_start, emit)
    except (KeyboardInterrupt, BenchError, StopTraining):
        raise
    except Exception as exc:
        rec = build_record(prep, manifest, status="failed", error=f"{type(exc).__name__}: {exc}",
                      traceback_text=traceback.format_exc(limit=8))
        write_record(prep.record_path, rec)
        raise
    ckpt.unlink(missing_ok=True)
    emit("done", rec)
    return rec


def _train_and_record(prep: PreparedRun, manifest: dict[str, Any], train: ImageSet, val_set: ImageSet | None,
                      ctx: TrainContext, t_start: float, emit: Event) -> dict[str, Any]:
    """Train, evaluate and write the finished record (``execute`` handles failures)."""
    num_classes = prep.data.num_classes
    c = prep.data.shape[0]
    ckpt = prep.checkpoint_path
    proto = prep.defense.adjust_protocol(prep.protocol)
    total_steps = None
    if prep.spec.clean_only and prep.spec.match_steps:
        total_steps = proto.epochs * len(batch_bounds(len(prep.train), proto.batch_size))
    train_dev = prep.defense.prepare(train, ctx).to(prep.device)
    model = prepare_model(prep.defense.build_model(proto.model, num_classes, c, ctx), proto, prep.device)
    test_dev = prep.test.to(prep.device)
    epochs = math.ceil(total_steps / len(batch_bounds(len(train_dev), proto.batch_size))) if total_steps \
        else proto.epochs
    emit("train_start", {"epochs": epochs, "resume": ckpt.exists()})
    result = train_model(model, train_dev, test_dev, proto, prep.defense, ctx, ckpt,
                         on_epoch=lambda e: emit("epoch", e), total_steps=total_steps, val=val_set,
                         patience=prep.validation.patience if prep.validation else 0)
    t_eval = time.perf_counter()
    if prep.defense.cheap_epoch_predictor:  # the per-epoch curve was an approximation: measure again
        result.test_acc, result.per_class_test_acc = evaluate(
            model, test_dev, num_classes, prep.defense.predictor(ctx, final=True), proto.eval_batch_size)
    # a stratified probe: datasets are stored sorted by class, so the first 10k are a few classes
    probe = train_dev if len(train_dev) <= 10000 else train_dev.subset(
        stratified_subset(train_dev.y.cpu(), 10000, 0).to(train_dev.y.device))
    train_acc, _ = evaluate(model, probe, num_classes, prep.defense.predictor(ctx, final=False),
                            proto.eval_batch_size)
    extra = prep.defense.evaluate(model, test_dev, ctx)
    target = (manifest.get("info") or {}).get("target")  # a targeted poison's trial: did the target flip?
    outcome = None if target is None else target_outcome(model, prep.data.test, target, prep.device,
                                                          prep.defense.predictor(ctx, final=True))
    eval_extra = time.perf_counter() - t_eval
    per_epoch = result.per_epoch
    peak = max(per_epoch, key=lambda e: e["test_acc"])
    diverged = not all(math.isfinite(e["train_loss"]) for e in per_epoch)
    metrics = {
        "test_acc": round(result.test_acc, 3),
        "peak_test_acc": peak["test_acc"],
        "peak_epoch": peak["epoch"],
        "train_acc": round(train_acc, 3),
        "per_class_test_acc": result.per_class_test_acc,
        "per_epoch": per_epoch,
        "defense": extra,
        "resumed_from_epoch": result.resumed_from_epoch,
        "diverged": diverged,
    }
    if outcome is not None:
        metrics["target"] = outcome
    epoch_eval = prep.defense.epoch_eval_info()
    if epoch_eval:
        metrics["per_epoch_eval"] = epoch_eval
    training = {"steps": result.steps, "epochs": result.epochs_run, "images": len(train_dev),
                "batch_size": proto.batch_size, "lr": proto.lr, "schedule": proto.schedule,
                "step_matched": total_steps is not None}
    if val_set is not None:
        metrics.update({"selected_epoch": result.selected_epoch, "selected_val_acc": round(result.selected_val_acc, 3),
                        "stopped_early": result.stopped_early})
        training["validation_images"] = len(val_set)
    timings = {
        "poison_generation": manifest.get("generation_seconds"),
        "poison_cached": bool(manifest.get("cached")),
        "training": round(result.train_seconds, 3),
        "training_cpu": round(result.train_cpu_seconds, 3) if result.train_cpu_seconds is not None else None,
        "evaluation": round(result.eval_seconds + eval_extra, 3),
        "wall": round(time.perf_counter() - t_start, 3),
    }
    rec = build_record(prep, manifest, status="finished", metrics=metrics, timings=timings, training=training)
    write_record(prep.record_path, rec)
    return rec


def build_record(prep: PreparedRun, manifest: dict[str, Any], status: str, metrics: dict | None = None,
                 timings: dict | None = None, error: str | None = None, traceback_text: str | None = None,
                 training: dict | None = None) -> dict[str, Any]:
    """The run record (also what sweeps write for a failed worker and what report tests build)."""
    poison = {
        "budget": manifest.get("budget"),
        "generation_seconds": manifest.get("generation_seconds"),
        "generation_device": manifest.get("generation_device"),
        "num_poisoned": (manifest.get("budget") or {}).get("num_poisoned"),
        "digest": manifest.get("digest"),  # which bytes were trained on (the same recipe can differ per CPU)
        "info": manifest.get("info", {}),
    }
    # generation bookkeeping when present: a resumed generation, a ratio derived from the full-ratio noise
    poison.update({k: manifest[k] for k in ("resumed", "generation_sessions", "derived_from") if k in manifest})
    rec = {
        "schema_version": SCHEMA_VERSION,
        "run_id": prep.run_id,
        "status": status,
        "threat_model": type(prep.poison.poison).threat_model,
        "created": now_iso(),
        "config": prep.config,
        "environment": environment(str(prep.device)),
        "poison": poison,
        "defense_source": prep.defense.describe_source(),
        "defense_info": prep.defense.info(),
        "metrics": metrics or {},
        "training": training or {},
        "timings": timings or {},
        "error": error,
    }
    if traceback_text:
        rec["traceback"] = traceback_text
    return rec
