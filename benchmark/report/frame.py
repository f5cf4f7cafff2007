"""Stage 2 of the report: run records -> one tidy pandas DataFrame, one row per run.

Every table of the leaderboard is a groupby / pivot of this frame, and ``bench results`` /
``benchmark.report.load_frame`` hand it to users as it is, so a notebook gets the records in one line.
Columns (stable names): record, run_id, threat_model (availability or targeted), created, commit, group,
group_title, dataset, dataset_source, model, preset, epochs, protocol_variant, seed, poison, poison_label, poison_params, poison_revision,
ratio, clean_only, match_steps, key_fingerprint, full, defense, defense_label, defense_params, tier, family, variant, headline,
test_acc, peak_test_acc, peak_epoch, train_acc, fit_acc, final_rise, test_curve, diverged, steps, training_s, training_cpu_s, evaluation_s,
wall_s, device, cpu, threads, hardware, generation_s, generation_device, surrogate, budget_type, linf_255, l2_mean,
psnr, ssim, num_poisoned, poison_digest, poison_set, per_epoch_eval, backbone, and ``defense.<key>`` for each numeric
metric a defense reports.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.errors import BenchError
from benchmark.poisoning import SET_TOLERANCE, same_poisoned_set
from benchmark.protocol import full_protocol
from benchmark.records import canonical_json, machine
from benchmark.records import run_id as config_hash
from benchmark.report.collect import (
    CLEAN,
    PRESET_ORDER,
    Warn,
    collect_runs,
    dataset_title,
    defense_defaults,
    defense_info,
    flat,
    make_labels,
    num,
    part_id,
    poison_class_info,
    poison_defaults,
    protocol_of,
    slug,
    threads_text,
    threat_model,
)

#: epochs before the last one that ``final_rise`` compares it with
RISE_WINDOW = 3


def final_rise(per_epoch: Any) -> float | None:
    """Final test accuracy minus the highest of the ``RISE_WINDOW`` epochs before it (points): large
    when the run was still climbing, or jumped, when it stopped."""
    accs = [v for e in per_epoch or [] if isinstance(e, dict) and (v := num(e.get("test_acc"))) is not None]
    if len(accs) <= RISE_WINDOW:
        return None
    return round(accs[-1] - max(accs[-1 - RISE_WINDOW:-1]), 4)


def test_curve(per_epoch: Any) -> str:
    """The per-epoch test accuracies as a JSON list (the stability rules of :mod:`benchmark.verdicts` read it)."""
    return canonical_json([v for e in per_epoch or [] if isinstance(e, dict) and (v := num(e.get("test_acc"))) is not None])


def hardware(env: dict[str, Any]) -> str:
    """Where a run's times were measured: the machine (:func:`benchmark.records.machine`) and, on a CPU,
    the thread count; "" where the record does not say (records made before it named the CPU). Times are
    only compared between runs of the same hardware."""
    where = machine(env)
    device = str(env.get("device") or "")
    if not where or (device and device != "cpu"):
        return where
    if env.get("torch_threads") is None:
        return ""
    return f"{where} {threads_text([int(env['torch_threads'])])}"


def fit_acc(metrics: dict[str, Any]) -> float | None:
    """How well the training run fitted its data: the victim's train accuracy, except for a defense that
    selects an earlier epoch (``selected_epoch``, e.g. early-stop), whose chosen model stops before fitting
    by design; there it is the last epoch's training accuracy (running, over that epoch's batches)."""
    per_epoch = metrics.get("per_epoch") or []
    if metrics.get("selected_epoch") is not None and per_epoch and isinstance(per_epoch[-1], dict):
        return num(per_epoch[-1].get("train_acc"))
    return num(metrics.get("train_acc"))


def _groups(runs: list[tuple[Path, dict[str, Any]]]) -> dict[str, tuple[str, str, str]]:
    """run path -> (group slug, group title, protocol variant text). Records are grouped by dataset and
    source, model, preset and resolved protocol; protocol variants of one preset get their own group."""
    buckets: dict[tuple, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    protos: dict[str, dict[str, Any]] = {}
    for path, rec in runs:
        cfg = rec["config"]
        key = (str(cfg["dataset"]), str(cfg.get("dataset_source") or ""), str(cfg["model"]), str(cfg["preset"]))
        proto = protocol_of(cfg)
        sig = canonical_json(proto)
        protos[sig] = proto
        buckets[key][sig].append(path)
    out = {}
    ordered = sorted(buckets, key=lambda k: (k[0], k[1], k[2], PRESET_ORDER.get(k[3], 9), k[3]))
    for rank, key in enumerate(ordered):
        # the protocol most records share first (the preset's main table), its variants after it
        sigs = sorted(buckets[key], key=lambda s: (-len(buckets[key][s]), s))
        keys = sorted({k for s in sigs for k in protos[s]})
        full = {s: full_protocol(protos[s]) for s in sigs}  # a field a record leaves out at its neutral value
        differ = [k for k in keys if len({repr(full[s].get(k)) for s in sigs}) > 1]
        for order, sig in enumerate(sigs):
            variant = ", ".join(f"{k}={full[sig].get(k)}" for k in differ)
            base = "-".join(key)
            gslug = slug(f"{base}-{config_hash(protos[sig])[:6]}" if order else base)  # the main table's links stay
            title = f"{dataset_title(key[0], key[1])} · {key[2]} · preset {key[3]}" + (f" · {variant}" if variant else "")
            for path in buckets[key][sig]:
                out[str(path)] = (f"{rank:02d}.{order:02d}:{gslug}", title, variant)
    return out


def build_frame(runs: list[tuple[Path, dict[str, Any]]]) -> pd.DataFrame:
    """The tidy frame of ``runs`` (as returned by :func:`collect_runs`), sorted by group then record."""
    groups = _groups(runs)
    rows = []
    infos: dict[str, dict[str, Any]] = {}
    for path, rec in runs:
        infos[str(path)] = defense_info(rec)
        rows.append(_row(path, rec, infos[str(path)], groups[str(path)]))
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    # labels are unique within a group: a column says e.g. `at (eps=4/255, norm=linf)`, `dat (official)`
    by_path = {str(p): r for p, r in runs}
    frame["poison_label"] = ""
    frame["defense_label"] = ""
    for _key, idx in frame.groupby("group_key").groups.items():
        recs = {i: by_path[frame.at[i, "record"]] for i in idx}
        pids = {i: part_id(r["config"]["poison"]) for i, r in recs.items()}
        dids = {i: part_id(r["config"]["defense"]) for i, r in recs.items()}
        variants = {dids[i]: infos[frame.at[i, "record"]]["variant"] for i in idx}
        preset = str(frame.at[idx[0], "preset"])
        plabels = make_labels(pids.values(), {"none": CLEAN}, lambda name, p=preset: _poison_defaults(name, p))
        dlabels = make_labels(dids.values(), {}, lambda name, p=preset: defense_defaults(name, p), variants)
        frame.loc[idx, "poison_label"] = [plabels[pids[i]] for i in idx]
        frame.loc[idx, "defense_label"] = [dlabels[dids[i]] for i in idx]
    frame["group"] = frame["group_key"].str.split(":", n=1).str[1]
    frame = frame.sort_values(["group_key", "record"], kind="stable").drop(columns="group_key").reset_index(drop=True)
    frame["poison_set"] = poison_sets(frame)
    return frame


def _poison_defaults(name: str, preset: str) -> dict[str, Any] | None:
    """A poison's defaults under ``preset`` for the params added after records existed (those declaring a
    ``legacy`` value): a record that ran another value of one is labelled with it (an AR record of the key
    draw reads ``ar (coefficients=key)``, never as the new default); other params show only where records
    of one poison differ, so a column's label (and its sample grid's file) stays when they change."""
    known = poison_defaults(name, preset)
    if known is None:
        return None
    try:
        from benchmark.registry import POISONS

        fields = dataclasses.fields(POISONS.get(name).Params)
    except (BenchError, ImportError, TypeError):
        return None
    added = {f.name for f in fields if "legacy" in f.metadata}
    return {k: v for k, v in known[0].items() if k in added}


def _set_summary(row: pd.Series) -> dict[str, Any]:
    """A run's poisoned set as :func:`benchmark.poisoning.same_poisoned_set` compares it."""
    return {"digest": row["poison_digest"], "budget": {k: row[k] for k in SET_TOLERANCE if not pd.isna(row[k])}}


def poison_sets(frame: pd.DataFrame) -> pd.Series:
    """Which poisoned training set each full-ratio poisoned run trained on, numbered per group, poison
    label and key: 1 = the set of the column's no-defense runs of that key (else its most used set), 2,
    3, ... other sets; 0 for clean and partial runs. One recipe and key give other bytes when a
    surrogate-trained poison is generated on another CPU, so a column can hold cells of different sets;
    another key (a seed's own poison instance, :func:`benchmark.poisoning.seed_key`) is another instance
    by design, numbered on its own."""
    out = pd.Series(0, index=frame.index, dtype=int)
    rows = frame[frame["full"] & (frame["poison"] != "none")]
    for _key, g in rows.groupby(["group", "poison_label", "key_fingerprint"], sort=False):
        summary = {i: _set_summary(row) for i, row in g.iterrows()}
        members: list[list[int]] = []
        for i in g.index:
            home = next((m for m in members if same_poisoned_set(summary[m[0]], summary[i])), None)
            if home is None:
                members.append([i])
            else:
                home.append(i)
        members.sort(key=lambda m: (-int((g.loc[m, "defense"] == "none").sum()), -len(m), m[0]))
        for number, m in enumerate(members, 1):
            out[m] = number
    return out


def _row(path: Path, rec: dict[str, Any], info: dict[str, Any], group: tuple[str, str, str]) -> dict[str, Any]:
    cfg = rec["config"]
    poison, defense = cfg["poison"], cfg["defense"]
    metrics = rec.get("metrics") or {}
    timings = rec.get("timings") or {}
    env = rec.get("environment") or {}
    gen = rec.get("poison") or {}
    budget = gen.get("budget") or {}
    ratio = float(poison.get("ratio", 1.0))
    clean_only = bool(poison.get("clean_only"))
    training = rec.get("training") if isinstance(rec.get("training"), dict) else {}
    row = {
        "record": str(path), "run_id": rec["run_id"], "threat_model": threat_model(rec), "created": str(rec.get("created") or ""),
        "commit": str(env.get("git_commit") or ""), "group_key": group[0], "group_title": group[1],
        "dataset": str(cfg["dataset"]), "dataset_source": str(cfg.get("dataset_source") or ""),
        "model": str(cfg["model"]), "preset": str(cfg["preset"]),
        "epochs": (cfg.get("protocol") or {}).get("epochs"), "protocol_variant": group[2],
        "seed": int(cfg["seed"]), "poison": str(poison["name"]),
        "poison_params": canonical_json(poison.get("params") or {}), "poison_revision": int(poison.get("revision") or 1),
        "ratio": ratio, "clean_only": clean_only, "match_steps": bool(poison.get("match_steps")), "key_fingerprint": str(poison.get("key_fingerprint") or ""), "full": poison["name"] == "none" or (ratio >= 1.0 and not clean_only),
        "defense": str(defense["name"]), "defense_params": canonical_json(defense.get("params") or {}),
        "tier": info["tier"], "family": info["family"], "variant": info["variant"] or "", "headline": info["headline"],
        "test_acc": num(metrics.get("test_acc")), "peak_test_acc": num(metrics.get("peak_test_acc")),
        "peak_epoch": num(metrics.get("peak_epoch")), "train_acc": num(metrics.get("train_acc")),
        "fit_acc": fit_acc(metrics), "final_rise": final_rise(metrics.get("per_epoch")), "diverged": bool(metrics.get("diverged")),
        "test_curve": test_curve(metrics.get("per_epoch")),
        "steps": num(training.get("steps")) if training else None,
        "training_s": num(timings.get("training")), "training_cpu_s": num(timings.get("training_cpu")),
        "evaluation_s": num(timings.get("evaluation")),
        "wall_s": num(timings.get("wall")), "device": str(env.get("device_name") or env.get("device") or ""),
        "cpu": str(env.get("cpu") or ""),
        "threads": num(env.get("torch_threads")), "hardware": hardware(env), "machine": machine(env),
        "generation_s": num(gen.get("generation_seconds")), "generation_device": str(gen.get("generation_device") or ""),
        "surrogate": str((poison.get("params") or {}).get("surrogate") or ""),
        "budget_type": poison_class_info(str(poison["name"]))["budget_type"],
        **{k: num(budget.get(k)) for k in ("linf_255", "l2_mean", "psnr", "ssim", "num_poisoned")},
        "poison_digest": str(gen.get("digest") or ""),
    }
    row["per_epoch_eval"] = canonical_json(metrics["per_epoch_eval"]) if metrics.get("per_epoch_eval") else ""
    row["backbone"] = _backbone_text(rec.get("defense_source"))
    for key, value in flat(metrics.get("defense") or {}).items():
        if num(value) is not None:
            row[f"defense.{key}"] = num(value)
    return row


def _backbone_text(source: Any) -> str:
    """What clean data a pretrained backbone saw (``defense_source.*.pretrained_on``), in a few words."""
    for part in (source or {}).values() if isinstance(source, dict) else ():
        seen = part.get("pretrained_on") if isinstance(part, dict) else None
        if isinstance(seen, dict):
            return (f"{seen.get('model', '?')} pretrained on {seen.get('train_images', '?')} clean "
                    f"{seen.get('dataset', '?')} images (split {seen.get('split', '?')}, {seen.get('epochs', '?')} epochs, "
                    f"clean test acc {seen.get('clean_test_acc', '?')} %)")
        if seen:
            return str(seen)
    return ""


def load_frame(path: Path | str = "results/runs", warn: Warn | None = None) -> pd.DataFrame:
    """The tidy frame of every finished record under ``path`` (bad files: one warning each)."""
    return build_frame(collect_runs(Path(path), warn or (lambda msg: None)))
