"""Stage 3 of the report: the tidy frame of one protocol group -> cells, noise, rankings, costs (pandas).

A *cell* is one (poison, defense) pair of full-ratio runs: mean, sample std and n of the final test
accuracy over seeds, the oracle peak, and whether it converged. Every rule that decides what a number
may be used for is a constant here and is stated on the page:

* convergence: a cell did not converge when a run's final test accuracy is more than ``RISE_POINTS``
  above every one of the ``RISE_WINDOW`` epochs before it (still climbing or jumping when training
  stopped), when its train accuracy is more than ``TRAIN_GAP_POINTS`` below plain training's on clean
  data (for a defense that selects an earlier epoch: the last epoch's, :func:`frame.fit_acc`), or when a
  run diverged. Such a cell is shown, marked, and never used as a verdict (rankings,
  worst cases, claims).
* noise: sigma = pooled seed-to-seed std (root mean square of the std of every cell run with several
  seeds); two cells are within noise when their means differ by less than ``TIE_SIGMAS`` standard
  errors of the difference, sigma·sqrt(1/n_a + 1/n_b) (:func:`margin_tolerance`). Ranks within noise
  of the first of their run share its rank; claims use the same rule.
* a defense whose clean accuracy is below ``FAILS_CLEAN_FRACTION`` of plain training's fails on clean
  data; one with converged cells on fewer than ``MIN_COVERAGE`` of the comparable poisons is incomplete.
  Neither is ranked.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from benchmark.records import machine
from benchmark.report.collect import CLEAN, NO_DEFENSE, STANDARD_TIER, num
from benchmark.report.frame import RISE_WINDOW

RISE_POINTS = 5.0
TRAIN_GAP_POINTS = 30.0
TIE_SIGMAS = 2.0
FAILS_CLEAN_FRACTION = 0.5
MIN_COVERAGE = 0.5
PEAK_NOTE_POINTS = 3.0
NEUTRALISED_WITHIN = 5.0
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

def run_flags(g: pd.DataFrame) -> pd.Series:
    """Why each run of the group did not converge ("" when it did), by the rules of this module."""
    base_runs = g[g["full"] & (g["poison_label"] == CLEAN) & (g["defense_label"] == NO_DEFENSE)]["train_acc"].dropna()
    base = float(base_runs.mean()) if not base_runs.empty else None
    reasons = []
    for _i, run in g.iterrows():
        why = []
        if not pd.isna(run["final_rise"]) and run["final_rise"] > RISE_POINTS:
            why.append(f"final epoch {run['final_rise']:.1f} points above the {RISE_WINDOW} before it")
        if base is not None and not pd.isna(run["fit_acc"]) and base - run["fit_acc"] > TRAIN_GAP_POINTS:
            why.append(f"train accuracy {run['fit_acc']:.1f} % vs {base:.1f} % for plain training on clean data")
        if run["diverged"]:
            why.append("diverged (non-finite loss)")
        reasons.append("; ".join(why))
    return pd.Series(reasons, index=g.index, dtype=object)


def _reasons(rows: pd.DataFrame) -> str:
    """One line for a cell's runs that did not converge: ``seed 0: ...; seed 1: ...``."""
    bad = rows[rows["flag"] != ""].sort_values("seed")
    if len(rows) == 1:
        return str(bad["flag"].iloc[0]) if not bad.empty else ""
    return "; ".join(f"seed {int(r['seed'])}: {r['flag']}" for _i, r in bad.iterrows())


def cells(g: pd.DataFrame) -> pd.DataFrame:
    """One row per (poison_label, defense_label) of the group's full-ratio runs."""
    full = g[g["full"]].assign(flag=run_flags(g)[g["full"]])
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
    out["not_converged"] = grouped[["seed", "flag"]].apply(_reasons)
    out["converged"] = out["not_converged"] == ""
    return out


def other_sets(sets: list[int] | None) -> list[int]:
    """The poisoned sets of a cell other than its column's reference set 1 (``frame.poison_sets``)."""
    return [n for n in sets or [] if n > 1]


def cell_dict(row: pd.Series) -> dict[str, Any]:
    """A cell as JSON: accuracy statistics, peak, convergence and the records behind it."""
    return {"test_acc": {"mean": rnd(row["mean"]), "std": rnd(row["std"]), "n": int(row["n"])},
            "seeds": list(row["seeds"]), "peak_test_acc": rnd(row["peak"]), "peak_epoch": row["peak_epoch"],
            "train_acc": rnd(row["train"]), "final_rise": rnd(row["rise"]), "converged": bool(row["converged"]),
            "not_converged": row["not_converged"] or None, "poison_sets": list(row["poison_sets"]),
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
    """Pooled seed-to-seed std of the group's multi-seed cells and the tolerance it implies between two
    single runs (:func:`margin_tolerance`)."""
    multi = c[c["n"] > 1]["std"] if not c.empty else pd.Series(dtype=float)
    if multi.empty:
        return {"cells": 0, "median_std": None, "max_std": None, "sigma": None, "tolerance": 0.0, "tie_sigmas": TIE_SIGMAS}
    sigma = math.sqrt(float((multi ** 2).mean()))
    return {"cells": int(len(multi)), "median_std": rnd(multi.median()), "max_std": rnd(multi.max()),
            "sigma": rnd(sigma), "tolerance": rnd(margin_tolerance(sigma, 1, 1)), "tie_sigmas": TIE_SIGMAS}


def group_noises(frame: pd.DataFrame, group_cells: dict[str, pd.DataFrame] | None = None) -> dict[str, dict[str, Any]]:
    """:func:`noise` of every protocol group of ``frame``. A group with no multi-seed cell (a protocol
    variant run once per cell, e.g. a longer schedule) borrows sigma from the group of the same dataset,
    source, model and preset with the most multi-seed cells, and names it (``borrowed_from``): a verdict
    needs a noise scale, and one measured under the same preset is the closest there is. ``group_cells``:
    each group's :func:`cells`, when the caller has them already."""
    groups = {str(slug): g for slug, g in frame.groupby("group", sort=False)}
    group_cells = group_cells or {slug: cells(g) for slug, g in groups.items()}
    own = {slug: noise(group_cells[slug]) for slug in groups}
    sibling_key = {slug: tuple(str(g[k].iloc[0]) for k in ("dataset", "dataset_source", "model", "preset"))
                   for slug, g in groups.items()}
    out = {}
    for slug, n in own.items():
        donors = [s for s in own if s != slug and sibling_key[s] == sibling_key[slug] and own[s]["sigma"] is not None]
        if n["sigma"] is None and donors:
            best = max(donors, key=lambda s: own[s]["cells"])
            n = {**own[best], "borrowed_from": str(groups[best]["group_title"].iloc[0])}
        out[slug] = n
    return out


def machine_spreads(frame: pd.DataFrame, repeats: list[tuple[Any, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per protocol group: how far a cell moves when the same config and seed run on another machine.
    ``repeats`` are the finished records a re-run elsewhere replaced (``records.REPEATS``); each is
    paired with the current record of its run id when the two machines differ."""
    if frame.empty or not repeats:
        return {}
    now = frame.drop_duplicates("run_id").set_index("run_id")
    rows = []
    for _path, rec in repeats:
        rid = rec.get("run_id")
        before = machine(rec.get("environment") or {})
        if rid not in now.index or not before or not now.at[rid, "machine"] or before == now.at[rid, "machine"]:
            continue
        acc = num((rec.get("metrics") or {}).get("test_acc"))
        if acc is None or pd.isna(now.at[rid, "test_acc"]):
            continue
        digest = str((rec.get("poison") or {}).get("digest") or "")
        rows.append({"group": now.at[rid, "group"], "delta": float(now.at[rid, "test_acc"]) - acc,
                     "cell": f"{now.at[rid, 'poison_label']} × {now.at[rid, 'defense_label']}",
                     "machines": " and ".join(sorted({before, str(now.at[rid, "machine"])})),
                     "same_bytes": bool(digest) and digest == now.at[rid, "poison_digest"]})
    out = {}
    for slug, g in pd.DataFrame(rows, columns=["group", "delta", "cell", "machines", "same_bytes"]).groupby("group"):
        size = g["delta"].abs()
        worst = g.loc[size.idxmax()]
        out[str(slug)] = {"cells": len(g), "median_abs": rnd(size.median()), "max_abs": rnd(size.max()),
                          "max_cell": str(worst["cell"]), "max_delta": rnd(worst["delta"]),
                          "machines": sorted(set(g["machines"])), "same_poison_bytes": int(g["same_bytes"].sum())}
    return out


def margin_tolerance(sigma: float | None, n_a: int, n_b: int) -> float:
    """How far apart two cells' means must be to differ beyond noise: TIE_SIGMAS standard errors of the
    difference of two means of ``n_a`` and ``n_b`` independent runs, sigma·sqrt(1/n_a + 1/n_b) (two single
    runs differ by sigma·sqrt(2) on average; more seeds narrow it); 0 when no spread is measured."""
    return 0.0 if sigma is None else TIE_SIGMAS * sigma * math.sqrt(1 / n_a + 1 / n_b)


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


def poison_ranking(c: pd.DataFrame, sigma: float | None, defenses: dict[str, Any]) -> dict[str, Any]:
    """Poisons by their worst case over the standard tier: the highest accuracy any usable defense
    (not failing or unconverged on clean data) recovers on a converged cell; lower = stronger."""
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
        entries.append({
            "poison": p, "status": status, "worst": _mini(best[1]) if best else None,
            "best_defense": best[0] if best else None, "undefended": _mini(_get(c, p, NO_DEFENSE)),
            "drop": rnd(base_row["mean"] - best[1]["mean"]) if best and base_row is not None else None,
            "covered": len(got), "total": len(run_on_poison),
            "not_run": [d for d in run_on_poison if _get(c, p, d) is None],
            "not_converged": [d for d in run_on_poison if (r := _get(c, p, d)) is not None and not r["converged"]],
        })
    ranked = sorted((e for e in entries if e["status"] == "ranked"), key=lambda e: (e["worst"]["mean"], e["poison"]))
    for e, r in zip(ranked, tie_ranks([e["worst"]["mean"] for e in ranked], sigma, [e["worst"]["n"] for e in ranked]),
                    strict=True):
        e["rank"] = r
    return {"defenses": run_on_poison, "entries": ranked + sorted((e for e in entries if e["status"] != "ranked"),
                                                                 key=lambda e: e["poison"])}


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
    return {"rise_window": RISE_WINDOW, "rise_points": RISE_POINTS, "train_gap_points": TRAIN_GAP_POINTS,
            "tie_sigmas": TIE_SIGMAS, "fails_clean_fraction": FAILS_CLEAN_FRACTION, "min_coverage": MIN_COVERAGE,
            "peak_note_points": PEAK_NOTE_POINTS, "neutralised_within": NEUTRALISED_WITHIN,
            "standard_tier": STANDARD_TIER}
