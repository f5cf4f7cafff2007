"""Stage 3b of the report: what each defense and poison costs, what each poison's budget is, the extra
metrics defenses report, and the partial-poisoning curves, from the tidy frame of one protocol group (pandas groupby)."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from benchmark.report.aggregate import budget_class, rnd, stat
from benchmark.report.collect import (
    CLEAN,
    NO_DEFENSE,
    metrics_help,
    poison_class_info,
    poison_params_text,
)


def same_hardware_ratio(runs: pd.DataFrame, plain: pd.DataFrame, column: str) -> tuple[float | None, int]:
    """Mean over ``runs`` of each run's ``column`` divided by plain training's mean on the same hardware
    (frame column ``hardware``), and how many runs had such a baseline. Machines of one kind differ up
    to ~3x in speed, so a run is never compared with plain training measured elsewhere."""
    base = plain[plain["hardware"] != ""].groupby("hardware")[column].mean()
    ratios = (runs[column] / runs["hardware"].map(base)).dropna()
    return (rnd(ratios.mean()) if len(ratios) else None), len(ratios)


def reference_hardware(plain: pd.DataFrame) -> str:
    """The hardware most of plain training's runs were made on ("" when no record names it): absolute
    times are shown for that machine only, since machines of one kind differ up to ~3x in speed."""
    named = plain["hardware"][plain["hardware"] != ""]
    return str(named.value_counts().sort_index().idxmax()) if not named.empty else ""


def defense_costs(g: pd.DataFrame, order: list[str]) -> list[dict[str, Any]]:
    """Per defense: mean training wall time of its full-ratio runs and its ratio to plain training's on
    the same hardware, evaluation time, optimiser steps (records that carry them), and where the runs ran."""
    full = g[g["full"]]
    plain = full[full["defense_label"] == NO_DEFENSE]
    reference = reference_hardware(plain)
    out = []
    for d in order:
        runs = full[full["defense_label"] == d]
        if runs["training_s"].dropna().empty:
            continue
        here = runs[runs["hardware"] == reference] if reference else runs.iloc[:0]
        timed = here if not here["training_s"].dropna().empty else runs  # absolute times: one machine's
        steps = runs["steps"].dropna()
        relative, compared = same_hardware_ratio(runs, plain, "training_s")
        # CPU seconds (records that count them): robust to other processes on the machine
        relative_cpu, _ = same_hardware_ratio(runs, plain, "training_cpu_s")
        out.append({
            "defense": d, "runs": len(runs), "training_s": rnd(timed["training_s"].dropna().mean()),
            "evaluation_s": rnd(timed["evaluation_s"].dropna().mean()), "timed_on_reference": timed is here,
            "reference_hardware": reference or None,
            "relative": relative, "compared": compared, "relative_cpu": relative_cpu,
            "steps": rnd(steps.mean()) if not steps.empty else None,
            "devices": sorted(set(runs["device"]) - {""}),
            "threads": sorted({int(t) for t in runs["threads"].dropna()}),
        })
    return out


def poison_costs(g: pd.DataFrame, preset: str) -> list[dict[str, Any]]:
    """Per poison: budget type (declared by the class) and measured budget, generation cost, device and
    surrogate, averaged over distinct artifacts (poison keys); full-ratio runs preferred."""
    out = []
    poisoned = g[g["poison"] != "none"]
    for label, recs in poisoned.groupby("poison_label", sort=True):
        full = recs[recs["full"]]
        use = full if not full.empty else recs
        arts = use.drop_duplicates(["key_fingerprint", "ratio"]).sort_values(["key_fingerprint", "ratio"])
        first = recs.iloc[0]
        budget = {k: stat(arts[k]) for k in ("linf_255", "l2_mean", "psnr", "ssim", "num_poisoned")}
        out.append({
            "poison": label, "name": first["poison"],
            "params": poison_params_text({"name": first["poison"], "params": _json(first["poison_params"])}, preset),
            "budget_type": poison_class_info(str(first["poison"]))["budget_type"],
            "budget": {k: v for k, v in budget.items() if v is not None},
            "generation_s": stat(arts["generation_s"]), "devices": sorted(set(arts["generation_device"]) - {""}),
            "surrogate": ", ".join(sorted(set(arts["surrogate"]) - {""})) or None, "keys": len(arts),
        })
    return out


def _json(text: str) -> dict[str, Any]:
    return json.loads(text)


def partial(g: pd.DataFrame, c: pd.DataFrame) -> dict[str, Any]:
    """Accuracy against poison ratio: mixed (poisoned + clean rest) and clean-only (the rest alone),
    with the clean run under the same defense at 0 and the full poison at 1 (mixed only)."""
    part = g[~g["full"]]
    if part.empty:
        return {"ratios": [], "rows": []}
    # a clean-only baseline trained for as many optimiser steps as the full run is another row than one
    # trained for as many epochs (fewer steps): never averaged together
    setting = ["mixed" if not co else "clean-only, steps matched" if ms else "clean-only"
               for co, ms in zip(part["clean_only"], part["match_steps"], strict=True)]
    part = part.assign(setting=setting)
    ratios = sorted(set(part["ratio"].astype(float)) | {0.0, 1.0})
    rows = []
    keys = part[["poison_label", "defense_label"]].drop_duplicates()
    keys = sorted(map(tuple, keys.to_numpy()), key=lambda pd_: (pd_[0], pd_[1] != NO_DEFENSE, pd_[1]))
    for poison, defense in keys:
        for setting in ("mixed", "clean-only", "clean-only, steps matched"):
            sub = part[(part["poison_label"] == poison) & (part["defense_label"] == defense) & (part["setting"] == setting)]
            if sub.empty:
                continue
            cells: dict[str, Any] = {}
            for ratio, runs in sub.groupby("ratio", sort=True):
                cells[f"{ratio:g}"] = {**stat(runs["test_acc"]), "steps": rnd(runs["steps"].dropna().mean())
                                       if runs["steps"].notna().any() else None, "records": sorted(runs["record"])}
            if (CLEAN, defense) in c.index:
                cells["0"] = _cell(c.loc[(CLEAN, defense)])
            if setting == "mixed" and (poison, defense) in c.index:
                cells["1"] = _cell(c.loc[(poison, defense)])
            rows.append({"poison": poison, "defense": defense, "setting": setting, "cells": cells})
    return {"ratios": ratios, "rows": rows}


def _cell(row: pd.Series) -> dict[str, Any]:
    return {"mean": rnd(row["mean"]), "std": rnd(row["std"]), "n": int(row["n"]), "steps": None,
            "records": list(row["records"])}


def defense_metrics(g: pd.DataFrame, order: list[str], poisons: list[str]) -> dict[str, Any]:
    """Extra numbers the defenses report (``metrics.defense``: robust accuracy, certified accuracy, ...)
    per (defense, poison) cell. A key with the same value in every run is a setting, not a result: it
    goes to ``constants`` instead of a column."""
    full = g[g["full"]]
    keys = sorted(c for c in full.columns if c.startswith("defense.") and full[c].notna().any())
    varying = [k for k in keys if full[k].dropna().nunique() > 1]
    constants = {k.split(".", 1)[1]: rnd(full[k].dropna().iloc[0]) for k in keys if k not in varying}
    rows = []
    for d in order:
        for p in poisons:
            runs = full[(full["defense_label"] == d) & (full["poison_label"] == p)]
            values = {k.split(".", 1)[1]: s for k in varying if (s := stat(runs[k])) is not None}
            if values:
                rows.append({"defense": d, "poison": p, "values": values})
    names = [k.split(".", 1)[1] for k in varying]
    return {"keys": names, "constants": constants, "rows": rows, "help": metrics_help(names + list(constants))}


def budget_classes(g: pd.DataFrame, preset: str) -> dict[str, str]:
    """Poison label -> its budget class (:func:`aggregate.budget_class`) from the declared budget type and
    the measured L∞ of the group's records: the one mapping the page and ``bench audit`` rank within."""
    return {b["poison"]: budget_class(b["budget_type"], (b["budget"].get("linf_255") or {}).get("mean"))
            for b in poison_costs(g, preset)}
