"""Stage 3 of the report: the tidy frame of one protocol group -> cells, rankings (pandas).

A *cell* is one (poison, defense) pair of full-ratio runs: mean, sample std and n of the final test
accuracy over seeds, the oracle peak, and its stability label. Every rule that decides what a number
may be used for is a constant here or in :mod:`benchmark.verdicts` and is stated on the page:

* stability (:func:`benchmark.verdicts.run_status`): a run still rising, collapsed, unstable, still
  learning or diverged is shown, marked, and never a verdict (rankings, worst cases, claims); one that
  *underfits* (low fit, flat end) is a verdict with a caveat against the defense's own clean cell. A cell
  takes the most serious label of its runs.
* noise (:mod:`benchmark.report.noise`): σ by random source; two cells are within noise when their means
  differ by less than ``TIE_SIGMAS`` standard errors of the difference, σ·sqrt(1/n_a + 1/n_b)
  (:func:`margin_tolerance`). Ranks within noise of the first of their run share its rank; claims use the
  same rule. :func:`holm` adjusts a table's p-values for multiplicity.
* a defense whose clean accuracy is below ``FAILS_CLEAN_FRACTION`` of plain training's fails on clean
  data; one with verdict cells on fewer than ``MIN_COVERAGE`` of the comparable poisons is incomplete.
  Neither is ranked. Poisons are ranked within budget classes (:func:`budget_class`).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from benchmark.report import noise as noise_mod
from benchmark.report.collect import CLEAN, NO_DEFENSE, STANDARD_TIER
from benchmark.verdicts import (
    FLAT_EPOCHS,
    LABELS,
    NOT_VERDICT,
    RISE_WINDOW,
    SETTLE_POINTS,
    TIE_SIGMAS,
    TRAIN_GAP_POINTS,
    UNDERFITS,
    is_verdict,
    margin_tolerance,
    run_status,
)

__all__ = ["TIE_SIGMAS", "margin_tolerance", "run_flags", "run_labels", "cells", "holm", "budget_class"]

FAILS_CLEAN_FRACTION = 0.5
MIN_COVERAGE = 0.5
PEAK_NOTE_POINTS = 3.0
NEUTRALISED_WITHIN = 5.0
LINF_SMALL = 8.0  # /255: the common L-inf budget of the field; a larger measured L-inf is its own class
DIGITS = 4


def rnd(value: Any) -> float | None:
    """A float rounded for the JSON (stable bytes), or None."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return round(float(value), DIGITS)


def stat(values: pd.Series) -> dict[str, Any] | None:
    vals = values.dropna().astype(float)
    if vals.empty:
        return None
    std = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    return {"mean": rnd(vals.mean()), "std": rnd(std), "n": len(vals)}


def family_order() -> list[str]:
    from defenses.base import FAMILIES

    return list(FAMILIES)


def tier_order() -> list[str]:
    from defenses.base import TIER_ORDER

    return list(TIER_ORDER)


# ------------------------------------------------------------------------------------------- cells

def _own_sigma(g: pd.DataFrame) -> float | None:
    return noise_mod.source_noise(g)[noise_mod.VICTIM]["sigma"]


def run_labels(g: pd.DataFrame, sigma: float | None = None) -> pd.DataFrame:
    """Per run of the group: stability ``label`` and one-line ``reason`` (:func:`benchmark.verdicts.run_status`;
    ``sigma``: the victim σ the thresholds scale with, default the group's own)."""
    sigma = _own_sigma(g) if sigma is None else sigma
    base_runs = g[g["full"] & (g["poison_label"] == CLEAN) & (g["defense_label"] == NO_DEFENSE)]["train_acc"].dropna()
    base = float(base_runs.mean()) if not base_runs.empty else None
    out = []
    for _i, run in g.iterrows():
        curve = json.loads(run["test_curve"]) if run.get("test_curve") else []
        fit = None if pd.isna(run["fit_acc"]) else float(run["fit_acc"])
        out.append(run_status(curve, fit, base, bool(run["diverged"]), sigma))
    return pd.DataFrame(out, index=g.index, columns=["label", "reason"])


def run_flags(g: pd.DataFrame, sigma: float | None = None) -> pd.Series:
    """Why each run of the group is not a verdict ("" when it is), ``label: reason``."""
    return flags_of(run_labels(g, sigma))


def flags_of(labels: pd.DataFrame) -> pd.Series:
    """:func:`run_flags` from :func:`run_labels` already computed."""
    return pd.Series([f"{lab}: {why}" if lab in NOT_VERDICT else "" for lab, why in zip(labels["label"], labels["reason"],
                                                                                         strict=True)],
                     index=labels.index, dtype=object)


def _reasons(rows: pd.DataFrame, labels: tuple[str, ...]) -> str:
    """One line for a cell's runs with one of ``labels``: ``seed 0: ...; seed 1: ...``."""
    bad = rows[rows["label"].isin(labels)].sort_values("seed")
    if len(rows) == 1:
        return f"{bad['label'].iloc[0]}: {bad['reason'].iloc[0]}" if not bad.empty else ""
    return "; ".join(f"seed {int(r['seed'])}: {r['label']}: {r['reason']}" for _i, r in bad.iterrows())


def _cell_label(labels: pd.Series) -> str:
    found = [lab for lab in labels if lab]
    return min(found, key=LABELS.index) if found else ""


def cells(g: pd.DataFrame, sigma: float | None = None) -> pd.DataFrame:
    """One row per (poison_label, defense_label) of the group's full-ratio runs (``sigma``: the victim σ the
    stability rules scale with, default the group's own)."""
    labels = run_labels(g, sigma)
    full = g[g["full"]].assign(label=labels["label"][g["full"]], reason=labels["reason"][g["full"]])
    if full.empty:
        return pd.DataFrame()
    grouped = full.groupby(["poison_label", "defense_label"], sort=True)
    out = grouped.agg(mean=("test_acc", "mean"), std=("test_acc", "std"), n=("test_acc", "size"),
                      peak=("peak_test_acc", "mean"), train=("train_acc", "mean"), rise=("final_rise", "max"),
                      family=("family", "first"), poison=("poison", "first"), defense=("defense", "first"),
                      variant=("variant", "first"), poison_params=("poison_params", "first"),
                      defense_params=("defense_params", "first"))
    out["tier"] = grouped["tier"].agg(lambda s: max(s, key=tier_order().index))
    out["std"] = out["std"].fillna(0.0)
    out["seeds"] = grouped["seed"].agg(lambda s: sorted(int(v) for v in s))
    out["records"] = grouped["record"].agg(lambda s: sorted(s))
    out["commits"] = grouped["commit"].agg(lambda s: sorted(set(s) - {""}))
    out["poison_sets"] = grouped["poison_set"].agg(lambda s: sorted({int(v) for v in s} - {0}))
    out["peak_epoch"] = grouped["peak_epoch"].agg(lambda s: int(s.dropna().iloc[0]) if s.notna().any() else None)
    out["stability"] = grouped["label"].agg(_cell_label)
    out["not_converged"] = grouped[["seed", "label", "reason"]].apply(lambda r: _reasons(r, NOT_VERDICT))
    out["caveat"] = grouped[["seed", "label", "reason"]].apply(lambda r: _reasons(r, (UNDERFITS,)))
    out["converged"] = out["stability"].map(is_verdict)
    return out


def other_sets(sets: list[int] | None) -> list[int]:
    """The poisoned sets of a cell other than its column's reference set 1 (``frame.poison_sets``)."""
    return [n for n in sets or [] if n > 1]


def cell_dict(row: pd.Series) -> dict[str, Any]:
    """A cell as JSON: accuracy statistics, peak, convergence and the records behind it."""
    return {"test_acc": {"mean": rnd(row["mean"]), "std": rnd(row["std"]), "n": int(row["n"])},
            "seeds": list(row["seeds"]), "peak_test_acc": rnd(row["peak"]), "peak_epoch": row["peak_epoch"],
            "train_acc": rnd(row["train"]), "final_rise": rnd(row["rise"]), "converged": bool(row["converged"]),
            "stability": row["stability"] or None, "not_converged": row["not_converged"] or None,
            "caveat": row["caveat"] or None, "poison_sets": list(row["poison_sets"]),
            "records": list(row["records"]),
            "commits": list(row["commits"])}


def ordered_defenses(c: pd.DataFrame) -> list[str]:
    """Defense labels by family (base-class order), plain training first, then by label."""
    fams = family_order()
    fam = c.reset_index().groupby("defense_label")["family"].first()
    return sorted(fam.index, key=lambda d: (fams.index(fam[d]) if fam[d] in fams else len(fams), d != NO_DEFENSE, d))


def ordered_poisons(c: pd.DataFrame) -> list[str]:
    labels = sorted(set(c.index.get_level_values("poison_label")))
    return ([CLEAN] if CLEAN in labels else []) + [p for p in labels if p != CLEAN]


def defense_tiers(c: pd.DataFrame) -> dict[str, str]:
    order = tier_order()
    tiers = c.reset_index().groupby("defense_label")["tier"].agg(lambda s: max(s, key=order.index))
    return {str(k): str(v) for k, v in tiers.items()}


# ------------------------------------------------------------------------------------------- noise

def noise(c: pd.DataFrame) -> dict[str, Any]:
    """Pooled seed-to-seed std of the multi-seed cells of ``c`` (all sources together) and the tolerance it
    implies between two single runs (:func:`margin_tolerance`)."""
    multi = c[c["n"] > 1]["std"] if not c.empty else pd.Series(dtype=float)
    out = noise_mod.pooled(multi)
    return {**out, "tolerance": rnd(margin_tolerance(out["sigma"], 1, 1)), "tie_sigmas": TIE_SIGMAS}


def group_noises(frame: pd.DataFrame, group_cells: Any = None,
                 repeats: list[tuple[Any, dict[str, Any]]] | None = None) -> dict[str, dict[str, Any]]:
    """σ by source and the σ verdicts use, per protocol group (:func:`benchmark.report.noise.group_noises`;
    ``group_cells`` is accepted for callers that have them and not needed)."""
    return noise_mod.group_noises(frame, repeats)


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (same order as given): the family-wise error rate of a table of
    claims stays at alpha when a claim is decided only where its adjusted p-value is below alpha."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [1.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def pair_pvalue(margin: float, sigma: float | None, n_a: int, n_b: int) -> float | None:
    """Two-sided p-value of a margin between two means of ``n_a`` and ``n_b`` runs under noise σ (normal)."""
    if sigma is None or sigma <= 0:
        return None
    z = abs(margin) / (sigma * math.sqrt(1 / n_a + 1 / n_b))
    return math.erfc(z / math.sqrt(2))


def tie_ranks(values: list[float], sigma: float | None, runs: list[int] | None = None) -> list[int]:
    """Competition ranks of ``values`` (already sorted best first; ``runs``: how many seeds each is the
    mean of, default 1) where a value within :func:`margin_tolerance` of the first value of the current
    run of ties shares that value's rank (1, 2, 2, 4, ...)."""
    runs = runs or [1] * len(values)
    ranks: list[int] = []
    leader = None
    for i, v in enumerate(values):
        if leader is None or abs(values[leader] - v) >= margin_tolerance(sigma, runs[leader], runs[i]):
            leader = i
        ranks.append(leader + 1)
    return ranks


# ---------------------------------------------------------------------------------------- rankings

def _get(c: pd.DataFrame, poison: str, defense: str) -> pd.Series | None:
    return c.loc[(poison, defense)] if (poison, defense) in c.index else None


def _mini(row: pd.Series | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"mean": rnd(row["mean"]), "std": rnd(row["std"]), "n": int(row["n"]), "seeds": list(row["seeds"]),
            "converged": bool(row["converged"])}


def defense_status(c: pd.DataFrame, defense: str, base: float | None) -> str:
    """``fails on clean`` / ``not converged`` (on clean data) / "" (judged further by coverage)."""
    clean = _get(c, CLEAN, defense)
    if clean is not None and base is not None and clean["mean"] < FAILS_CLEAN_FRACTION * base:
        return "fails on clean"
    if clean is not None and not clean["converged"]:
        return "not converged"
    return ""


def comparable_poisons(c: pd.DataFrame, defenses: list[str]) -> list[str]:
    """Poisons run under at least one of ``defenses`` other than plain training (a control run only
    without defense would otherwise count as a gap of every defense); all poisons if there is none."""
    poisons = [p for p in ordered_poisons(c) if p != CLEAN]
    defended = [p for p in poisons if any(_get(c, p, d) is not None for d in defenses if d != NO_DEFENSE)]
    return defended or poisons


def defense_ranking(c: pd.DataFrame, tier: str, sigma: float | None) -> dict[str, Any]:
    """Defenses of one tier: clean accuracy, cost, worst case and mean over the comparable poisons
    (converged cells only); ranked with ties, or listed with the reason they are not ranked."""
    tiers = defense_tiers(c)
    base_row = _get(c, CLEAN, NO_DEFENSE)
    base = float(base_row["mean"]) if base_row is not None else None
    members = [d for d in ordered_defenses(c) if tiers[d] == tier]
    poisons = comparable_poisons(c, members)
    entries = []
    for d in members:
        clean = _get(c, CLEAN, d)
        run = [(p, r) for p in poisons if (r := _get(c, p, d)) is not None]
        usable = [(p, r) for p, r in run if r["converged"]]
        worst = min(usable, key=lambda pr: (pr[1]["mean"], pr[0])) if usable else None
        status = "reference" if d == NO_DEFENSE else defense_status(c, d, base)
        if not status and (not usable or len(usable) < MIN_COVERAGE * len(poisons)):
            status = "incomplete"  # includes a results folder with clean runs only: nothing to rank on
        entries.append({
            "defense": d, "status": status or "ranked", "clean": _mini(clean),
            "cost": rnd(clean["mean"] - base) if clean is not None and base is not None else None,
            "worst": _mini(worst[1]) if worst else None, "worst_poison": worst[0] if worst else None,
            "mean": rnd(sum(r["mean"] for _, r in usable) / len(usable)) if usable else None,
            "covered": len(usable), "total": len(poisons),
            "not_run": [p for p in poisons if _get(c, p, d) is None],
            "not_converged": [p for p, r in run if not r["converged"]],
            "labels": {p: str(r["stability"]) for p, r in run if not r["converged"]},
        })
    ranked = sorted((e for e in entries if e["status"] == "ranked"),
                    key=lambda e: (-(e["worst"]["mean"] if e["worst"] else -1.0), -(e["mean"] or 0.0), e["defense"]))
    for e, r in zip(ranked, tie_ranks([e["worst"]["mean"] for e in ranked], sigma, [e["worst"]["n"] for e in ranked]),
                    strict=True):
        e["rank"] = r
    rest = [e for e in entries if e["status"] != "ranked"]
    rest.sort(key=lambda e: (e["status"] != "reference", e["status"], e["defense"]))
    return {"tier": tier, "poisons": poisons, "entries": [e for e in rest if e["status"] == "reference"] + ranked
            + [e for e in rest if e["status"] != "reference"]}


BUDGET_CLASSES = ("L∞ ≤ 8/255", "L∞ > 8/255", "L2", "L0", "unbounded / perceptual", "unknown")


def budget_class(budget_type: str, linf_255: float | None) -> str:
    """A poison's threat-model class from its declared budget type and measured L∞ (of 255): an L∞ poison
    whose images move more than ``LINF_SMALL``/255 (rounding aside) is not in the 8/255 class, and one with
    no declared bound whose images move no more than that is in it (it meets that threat model)."""
    if budget_type == "linf":
        return BUDGET_CLASSES[0] if linf_255 is not None and linf_255 <= LINF_SMALL + 0.5 else BUDGET_CLASSES[1]
    if budget_type == "unbounded" and linf_255 is not None and linf_255 <= LINF_SMALL + 0.5:
        return BUDGET_CLASSES[0]  # no declared bound (e.g. an imported poison) but measured within 8/255
    return {"l2": "L2", "l0": "L0", "unbounded": "unbounded / perceptual"}.get(budget_type, "unknown")


def poison_ranking(c: pd.DataFrame, sigma: float | None, defenses: dict[str, Any],
                   classes: dict[str, str] | None = None) -> dict[str, Any]:
    """Poisons by their worst case over the standard tier: the highest accuracy any usable defense
    (not failing or unstable on clean data) recovers on a verdict cell; lower = stronger. Ranked within
    budget classes (``classes``: poison label -> :func:`budget_class`; one class when not given). Beside
    the worst case: the defenses within noise of it (``within_noise``), how many defenses ran, and whether
    the worst case rests on one run."""
    classes = classes or {}
    usable = [e["defense"] for e in defenses["entries"] if e["status"] in ("reference", "ranked", "incomplete")]
    run_on_poison = [d for d in usable if any(_get(c, p, d) is not None for p in ordered_poisons(c) if p != CLEAN)]
    base_row = _get(c, CLEAN, NO_DEFENSE)
    entries = []
    for p in ordered_poisons(c):
        if p == CLEAN:
            continue
        got = [(d, r) for d in run_on_poison if (r := _get(c, p, d)) is not None and r["converged"]]
        if not got and all(_get(c, p, d) is None for d in run_on_poison):
            continue
        best = max(got, key=lambda dr: (dr[1]["mean"], -run_on_poison.index(dr[0]))) if got else None
        status = "ranked" if len(got) >= MIN_COVERAGE * len(run_on_poison) and best else "incomplete"
        within = [d for d, r in got if best and d != best[0]
                  and best[1]["mean"] - r["mean"] < margin_tolerance(sigma, int(best[1]["n"]), int(r["n"]))]
        entries.append({
            "poison": p, "status": status, "class": classes.get(p, "unknown"), "worst": _mini(best[1]) if best else None,
            "best_defense": best[0] if best else None, "within_noise": within, "undefended": _mini(_get(c, p, NO_DEFENSE)),
            "drop": rnd(base_row["mean"] - best[1]["mean"]) if best and base_row is not None else None,
            "covered": len(got), "run": sum(_get(c, p, d) is not None for d in run_on_poison), "total": len(run_on_poison),
            "not_run": [d for d in run_on_poison if _get(c, p, d) is None],
            "not_converged": [d for d in run_on_poison if (r := _get(c, p, d)) is not None and not r["converged"]],
            "labels": {d: str(r["stability"]) for d in run_on_poison if (r := _get(c, p, d)) is not None
                       and not r["converged"]},
        })
    order = {k: i for i, k in enumerate(BUDGET_CLASSES)}
    ranked = sorted((e for e in entries if e["status"] == "ranked"),
                    key=lambda e: (order.get(e["class"], len(order)), e["worst"]["mean"], e["poison"]))
    for cls in dict.fromkeys(e["class"] for e in ranked):
        members = [e for e in ranked if e["class"] == cls]
        for e, r in zip(members, tie_ranks([e["worst"]["mean"] for e in members], sigma,
                                           [e["worst"]["n"] for e in members]), strict=True):
            e["rank"] = r
    return {"defenses": run_on_poison, "classes": [k for k in BUDGET_CLASSES if any(e["class"] == k for e in entries)],
            "entries": ranked + sorted((e for e in entries if e["status"] != "ranked"), key=lambda e: e["poison"])}


def pareto(points: dict[str, tuple[float, float]]) -> dict[str, list[str]]:
    """Defenses on the Pareto front of (clean accuracy, worst case), both higher = better, and for each
    dominated one the defenses that dominate it (at least as good on both, better on one)."""
    dominated = {d: sorted(o for o, (oc, ow) in points.items() if o != d and oc >= c and ow >= w and (oc > c or ow > w))
                 for d, (c, w) in points.items()}
    return {"front": sorted(d for d, by in dominated.items() if not by),
            "dominated": {d: by for d, by in sorted(dominated.items()) if by}}


# ------------------------------------------------------------------------------------------ notes

def peak_notes(c: pd.DataFrame) -> list[dict[str, Any]]:
    """Cells whose oracle peak (best epoch chosen on the test set) is more than PEAK_NOTE_POINTS above
    their final accuracy."""
    out = []
    for (p, d), row in c.iterrows():
        if not pd.isna(row["peak"]) and row["peak"] - row["mean"] > PEAK_NOTE_POINTS:
            out.append({"poison": p, "defense": d, "final": rnd(row["mean"]), "peak": rnd(row["peak"]),
                        "peak_epoch": row["peak_epoch"]})
    return sorted(out, key=lambda x: (x["defense"], x["poison"]))


def highlights(c: pd.DataFrame, ranking: dict[str, Any]) -> dict[str, Any]:
    """Facts the summary sentences state, on standard-tier converged cells of usable defenses."""
    base = _get(c, CLEAN, NO_DEFENSE)
    if base is None:
        return {}
    status = {e["defense"]: e["status"] for e in ranking["entries"]}
    usable = [d for d, s in status.items() if s in ("ranked", "incomplete") and _get(c, CLEAN, d) is not None]
    poisons = [p for p in ordered_poisons(c) if p != CLEAN]
    undefended = sorted(((p, r) for p in poisons if (r := _get(c, p, NO_DEFENSE)) is not None),
                        key=lambda pr: (pr[1]["mean"], pr[0]))
    out: dict[str, Any] = {"clean": rnd(base["mean"]), "undefended": [{"poison": p, "acc": rnd(r["mean"])}
                                                                      for p, r in undefended]}
    out["no_effect"] = [p for p, r in undefended if base["mean"] - r["mean"] <= NEUTRALISED_WITHIN]
    out["neutralised"], out["standing"] = [], []
    for p in poisons:
        if p in out["no_effect"]:
            continue
        runs = [(d, r, _get(c, CLEAN, d)) for d in usable if (r := _get(c, p, d)) is not None and r["converged"]]
        hits = [{"defense": d, "acc": rnd(r["mean"]), "clean": rnd(cl["mean"])} for d, r, cl in runs
                if cl["mean"] - r["mean"] <= NEUTRALISED_WITHIN]
        if hits:
            out["neutralised"].append({"poison": p, "by": hits})
        elif runs:
            d, r, cl = min(runs, key=lambda t: (t[2]["mean"] - t[1]["mean"], t[0]))
            out["standing"].append({"poison": p, "closest": d, "acc": rnd(r["mean"]), "clean": rnd(cl["mean"]),
                                    "run": len(runs), "usable": len(usable)})
    out["costly"] = sorted(({"defense": d, "cost": rnd(_get(c, CLEAN, d)["mean"] - base["mean"])} for d in usable
                            if base["mean"] - _get(c, CLEAN, d)["mean"] > NEUTRALISED_WITHIN), key=lambda x: x["cost"])
    out["unranked"] = [{"defense": d, "status": s} for d, s in status.items() if s in ("fails on clean", "not converged")]
    return out


def rules() -> dict[str, Any]:
    return {"rise_window": RISE_WINDOW, "settle_points": SETTLE_POINTS, "train_gap_points": TRAIN_GAP_POINTS,
            "flat_epochs": FLAT_EPOCHS, "min_noise_cells": noise_mod.MIN_NOISE_CELLS, "linf_small": LINF_SMALL,
            "tie_sigmas": TIE_SIGMAS, "fails_clean_fraction": FAILS_CLEAN_FRACTION, "min_coverage": MIN_COVERAGE,
            "peak_note_points": PEAK_NOTE_POINTS, "neutralised_within": NEUTRALISED_WITHIN,
            "standard_tier": STANDARD_TIER}
