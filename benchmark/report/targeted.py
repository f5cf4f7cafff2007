"""Targeted poisoning, a threat model of its own (Witches' Brew, MetaPoison): records -> one cell per
(protocol, poison + params, defense + params) with the attack success rate over trials.

A trial is one seed: its key chooses the target test image, the adversarial class and the poisoned training
images; a victim is trained from scratch on the poisoned set, and the trial succeeds when the target is
classified as the adversarial class (``metrics.target.success``). The headline of a cell is the success rate
k/n with an exact two-sided Clopper-Pearson interval, beside the victim's clean test accuracy and the same
defense's accuracy on clean data (a poison that wrecks accuracy is not a targeted poison). These cells are
never ranked, and never mixed into an availability table, noise estimate or claim (collect.collect_runs
leaves their records out).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.params import format_value
from benchmark.records import canonical_json
from benchmark.report import aggregate as agg
from benchmark.report.collect import (
    AVAILABILITY,
    NO_DEFENSE,
    TARGETED,
    collect_all,
    collect_repeats,
    flat,
    num,
    protocol_of,
    split_runs,
    threat_model,
)
from benchmark.report.frame import build_frame
from benchmark.verdicts import NOT_VERDICT

LEVEL = 0.95  # confidence level of the interval around each success rate
#: ``metrics.target`` fields -> frame columns (``bench results``)
TARGET_FIELDS = ("test_index", "true_class", "adversarial_class", "predicted_class", "success", "adversarial_prob",
                 "true_prob")
MEASURED = ("A trial: the seed's key chooses a target test image and an adversarial class, the poison is crafted, a "
            "victim is trained from scratch on the poisoned set, and the trial succeeds when the victim classifies "
            "the target as the adversarial class. Headline: the **attack success rate** over the trials with its "
            f"exact two-sided {100 * LEVEL:g} % Clopper-Pearson interval, beside the victim's clean test accuracy. **Never ranked "
            "with the availability matrix.**")

Runs = list[tuple[Path, dict[str, Any]]]


# ------------------------------------------------------------------------------------ the interval

def clopper_pearson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Exact two-sided interval for a binomial proportion with ``k`` successes in ``n`` trials (Clopper-Pearson:
    the lower bound solves P(X >= k | p) = α/2, the upper P(X <= k | p) = α/2; 0 and 1 at the ends), as
    ``scipy.stats.binomtest(...).proportion_ci(method="exact")`` computes it."""
    if not 0 <= k <= n or n < 1:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    # imported here: the report package imports without scipy's start-up cost
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


# ------------------------------------------------------------------------------------- the frame

def cohort(rec: dict[str, Any]) -> str:
    """What puts runs in one table: dataset and source, model, preset and protocol (as frame._groups)."""
    cfg = rec["config"]
    return canonical_json([cfg["dataset"], cfg.get("dataset_source") or "", cfg["model"], cfg["preset"],
                           protocol_of(cfg)])


def _target(rec: dict[str, Any]) -> dict[str, Any] | None:
    target = (rec.get("metrics") or {}).get("target")
    return target if isinstance(target, dict) and isinstance(target.get("success"), bool) else None


def _trial_columns(rec: dict[str, Any]) -> dict[str, Any]:
    """The target, the poison budget and the outcome of one trial (None where the record lacks them)."""
    target = _target(rec) or {}
    info = ((rec.get("poison") or {}).get("info") or {}).get("target") or {}
    params = flat(rec["config"]["poison"].get("params") or {})
    budget = num(params.get("budget"))
    num_poisons = num(info.get("num_poisons"))
    train_size = num(rec["config"].get("train_size"))
    if budget is None and num_poisons is not None and train_size:
        budget = num_poisons / train_size
    eps = num(params.get("eps"))
    row: dict[str, Any] = {f"target_{k}": target.get(k) for k in TARGET_FIELDS}
    row.update({"poison_class": info.get("poison_class"), "num_poisons": num_poisons, "budget_fraction": budget,
                "eps_255": None if eps is None else round(eps * 255, 3)})
    return row


def trial_frame(targeted: Runs, clean: Runs = ()) -> pd.DataFrame:
    """The tidy frame (frame.build_frame) of the targeted records with their trial columns (``target_*``,
    ``num_poisons``, ``budget_fraction``, ``eps_255``). ``clean``: availability records on clean data of the
    same protocols, framed together so that groups and defense labels match; returned with ``poison ==
    "none"``, their trial columns empty."""
    cohorts = {cohort(rec) for _p, rec in targeted}
    runs = list(targeted) + [(p, rec) for p, rec in clean if cohort(rec) in cohorts]
    frame = build_frame(runs)
    if frame.empty:
        return frame
    by_path = {str(p): rec for p, rec in runs}
    extra = pd.DataFrame([{**_trial_columns(by_path[r]), "cohort": cohort(by_path[r])} if threat_model(by_path[r])
                          == TARGETED else {"cohort": cohort(by_path[r])} for r in frame["record"]], index=frame.index)
    return frame.join(extra)


# ----------------------------------------------------------------------------------- the cells

def cohort_sigmas(frame: pd.DataFrame, runs: Runs, noises: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """The victim σ (``curve_sigma``) of each availability table, by cohort: the stability rules of a targeted
    trial scale with the σ of the availability table of its protocol."""
    by_path = {str(p): rec for p, rec in runs}
    out: dict[str, float | None] = {}
    if frame.empty:
        return out
    for slug, g in frame.groupby("group", sort=False):
        out[cohort(by_path[str(g["record"].iloc[0])])] = noises.get(str(slug), {}).get("curve_sigma")
    return out


def _budget(rows: pd.DataFrame) -> dict[str, Any]:
    def one(column: str) -> float | None:
        values = rows[column].dropna()
        return None if values.empty else float(values.max())

    return {"fraction": agg.rnd(one("budget_fraction")), "num_poisons": one("num_poisons"),
            "eps_255": agg.rnd(one("eps_255")), "linf_255": agg.rnd(one("linf_255"))}


def _trial(row: pd.Series) -> dict[str, Any]:
    out = {"seed": int(row["seed"]), "record": str(row["record"]), "key_fingerprint": str(row["key_fingerprint"]),
           "test_acc": agg.rnd(row["test_acc"]), "stability": row["label"] or None}
    for k in TARGET_FIELDS:
        value = row[f"target_{k}"]
        out[k] = None if value is None or (isinstance(value, float) and math.isnan(value)) else \
            (bool(value) if k == "success" else agg.rnd(value) if k.endswith("prob") else int(value))
    return out


def _cell(rows: pd.DataFrame, clean: pd.DataFrame, level: float) -> dict[str, Any]:
    trials = rows[rows["target_success"].notna()].sort_values("seed", kind="stable")
    n, k = len(trials), int(trials["target_success"].astype(bool).sum())
    low, high = clopper_pearson(k, n, level) if n else (None, None)
    first = rows.iloc[0]
    victim = agg.stat(trials["test_acc"])
    clean_stat = agg.stat(clean["test_acc"])
    unsettled = trials[trials["label"].isin(NOT_VERDICT)]
    return {
        "poison": str(first["poison_label"]), "poison_name": str(first["poison"]), "poison_params": str(first["poison_params"]),
        "defense": str(first["defense_label"]), "defense_name": str(first["defense"]), "tier": str(first["tier"]),
        "family": str(first["family"]), "trials": n, "successes": k, "rate": agg.rnd(k / n) if n else None,
        # how far the poison moved the target when it did not flip it: the median adversarial-class probability
        "median_adversarial_prob": agg.rnd(float(trials["target_adversarial_prob"].astype(float).median()))
        if n else None,
        "ci": [agg.rnd(low), agg.rnd(high)] if n else None, "level": level, "test_acc": victim,
        "clean": clean_stat, "clean_records": [str(r) for r in clean.sort_values("seed", kind="stable")["record"]],
        "clean_seeds": sorted(int(s) for s in clean["seed"]),
        "drop": agg.rnd(clean_stat["mean"] - victim["mean"]) if victim and clean_stat else None,
        "budget": _budget(trials if n else rows), "seeds": [int(s) for s in trials["seed"]],
        "records": [str(r) for r in trials["record"]],
        "without_target": sorted(str(r) for r in rows.loc[rows["target_success"].isna(), "record"]),
        "not_converged": "; ".join(f"seed {int(r['seed'])}: {r['label']}: {r['reason']}" for _i, r in unsettled.iterrows())
        or None,
        "trials_detail": [_trial(r) for _i, r in trials.iterrows()],
    }


def _defense_order(cell: dict[str, Any]) -> tuple[Any, ...]:
    tiers, fams = agg.tier_order(), agg.family_order()
    return (cell["poison"], tiers.index(cell["tier"]) if cell["tier"] in tiers else len(tiers),
            fams.index(cell["family"]) if cell["family"] in fams else len(fams), cell["defense"] != NO_DEFENSE,
            cell["defense"])


def build_targeted(targeted: Runs, clean: Runs, sigmas: dict[str, float | None], results_label: str = "",
                   level: float = LEVEL) -> dict[str, Any]:
    """The targeted section as data: per protocol group its cells (success rate, interval, victim and clean
    accuracy, budget, trials). ``clean``: the availability records on clean data (the same defense's clean
    accuracy); ``sigmas``: :func:`cohort_sigmas` (the victim σ of the stability rules)."""
    out: dict[str, Any] = {"measured": MEASURED, "level": level, "records": len(targeted), "results": results_label,
                           "groups": []}
    frame = trial_frame(targeted, clean)
    if frame.empty:
        return out
    out["newest"] = max((str(d) for d in frame.loc[frame["poison"] != "none", "created"] if d), default="")[:10] or None
    for slug, g in frame.groupby("group", sort=False):
        sigma = sigmas.get(str(g["cohort"].iloc[0]))
        labels = agg.run_labels(g, sigma)
        g = g.assign(label=labels["label"], reason=labels["reason"])
        poisoned = g[g["poison"] != "none"]
        clean_rows = g[(g["poison"] == "none") & g["full"]]
        cells = [_cell(rows, clean_rows[clean_rows["defense_label"] == defense], level)
                 for (_p, defense), rows in poisoned.groupby(["poison_label", "defense_label"], sort=True)]
        first = poisoned.iloc[0]
        by_path = {str(p): rec for p, rec in targeted}
        out["groups"].append({
            "slug": f"targeted-{slug}", "title": str(first["group_title"]), "dataset": str(first["dataset"]),
            "dataset_source": str(first["dataset_source"]), "model": str(first["model"]), "preset": str(first["preset"]),
            "epochs": first["epochs"], "protocol": protocol_of(by_path[str(first["record"])]["config"]),
            "protocol_variant": str(first["protocol_variant"]), "runs": len(poisoned),
            "trials": int(poisoned["target_success"].notna().sum()),
            "seeds": sorted({int(s) for s in poisoned["seed"]}), "curve_sigma": agg.rnd(sigma),
            "cells": sorted(cells, key=_defense_order),
        })
    return out


def budget_text(budget: dict[str, Any]) -> str:
    """``1 % (50 img), ε 16/255`` from a cell's budget (what is missing is left out)."""
    parts = []
    if budget.get("fraction") is not None:
        share = f"{100 * budget['fraction']:.3g} %"
        parts.append(share + (f" ({int(budget['num_poisons'])} img)" if budget.get("num_poisons") is not None else ""))
    elif budget.get("num_poisons") is not None:
        parts.append(f"{int(budget['num_poisons'])} img")
    if budget.get("eps_255") is not None:
        parts.append(f"ε {format_value('eps', budget['eps_255'] / 255)}")
    elif budget.get("linf_255") is not None:
        parts.append(f"L∞ {budget['linf_255']:g}/255 measured")
    return ", ".join(parts) or "–"


# ---------------------------------------------------------------------------------- bench results

#: nullable dtypes of the trial columns: a table of availability runs and trials stays typed (parquet)
TRIAL_DTYPES = {"target_success": "boolean", **{f"target_{k}": "Int64" for k in TARGET_FIELDS if k.endswith("class")},
                "target_test_index": "Int64", "target_adversarial_prob": "Float64", "target_true_prob": "Float64",
                "poison_class": "Int64", "num_poisons": "Float64", "budget_fraction": "Float64", "eps_255": "Float64"}


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its trial columns in :data:`TRIAL_DTYPES` (missing values as <NA>)."""
    return frame.astype({k: v for k, v in TRIAL_DTYPES.items() if k in frame})


def results_rows(targeted: Runs, clean: Runs, sigmas: dict[str, float | None]) -> pd.DataFrame:
    """``bench results``' rows of the targeted trials: the tidy frame with the trial columns and each victim's
    stability label and reason (the same rule as the leaderboard's, with its table's σ)."""
    frame = trial_frame(targeted, clean)
    if frame.empty:
        return frame
    parts = []
    for _slug, g in frame.groupby("group", sort=False):
        labels = agg.run_labels(g, sigmas.get(str(g["cohort"].iloc[0])))
        parts.append(g.assign(stability=labels["label"], stability_reason=labels["reason"]))
    out = pd.concat(parts)
    return out[out["poison"] != "none"].drop(columns="cohort").reset_index(drop=True)


def clean_runs(availability: Runs) -> Runs:
    """The availability records on clean data (poison ``none``): each defense's clean accuracy."""
    return [(p, rec) for p, rec in availability if rec["config"]["poison"]["name"] == "none"]


def trial_status(results: Path | str, record: Path | str, warn: Any = None) -> dict[str, Any] | None:
    """How the page's targeted section reads one trial record (``bench run``'s summary): its outcome and
    its cell's success rate and interval, or None when the record is not a usable targeted trial."""
    warn = warn or (lambda msg: None)
    by_model = split_runs(collect_all(Path(results), warn))
    here = Path(record).resolve()
    if not any(Path(p).resolve() == here for p, _rec in by_model[TARGETED]):
        return None
    frame = build_frame(by_model[AVAILABILITY])
    noises = agg.group_noises(frame, repeats=collect_repeats(Path(results), warn)) if not frame.empty else {}
    data = build_targeted(by_model[TARGETED], clean_runs(by_model[AVAILABILITY]),
                          cohort_sigmas(frame, by_model[AVAILABILITY], noises))
    for g in data["groups"]:
        for c in g["cells"]:
            trial = next((t for t in c["trials_detail"] if Path(t["record"]).resolve() == here), None)
            if trial is not None or any(Path(r).resolve() == here for r in c["without_target"]):
                return {"group": g["title"], "cell": c, "trial": trial}
    return None
