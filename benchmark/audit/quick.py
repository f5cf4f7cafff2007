"""The quick suite, computed from the records (``bench audit --recompute-quick``).

Defenses (for poison audits), per tier: the report's poison ranking (:func:`aggregate.poison_ranking`)
gives every poison's best defense of the tier (its worst case); a defense *covers* a poison when its
converged cell is within noise of that best one (:func:`aggregate.margin_tolerance`, the rule ranks and
claims use). The quick defenses are the smallest set that covers every poison (:func:`suites.min_cover`);
plain training is in every audit anyway, so the poisons it covers need nothing more.

Poisons (for defense audits), per tier: the report's defense ranking (:func:`aggregate.defense_ranking`)
gives every defense's worst poison; a poison covers a defense when its cell is within noise of that worst
one. The quick poisons are the smallest set that covers every ranked defense.

The records are one protocol group of the leaderboard: the group of ``preset`` with the most runs.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pandas as pd

from benchmark.audit.suites import (
    NOT_SUITE_POISONS,
    Entry,
    Suite,
    load_suite,
    min_cover,
    write_suite,
)
from benchmark.errors import BenchError
from benchmark.params import complete_params
from benchmark.registry import DEFENSES
from benchmark.report import aggregate as agg
from benchmark.report.collect import NO_DEFENSE, defense_defaults, flat, poison_defaults

RULE = ("per tier, the smallest set of defenses that holds, for every poison of the group, its best defense "
        "(the report's poison ranking) or one whose cell is within noise of it (the report's margin "
        "tolerance); poisons: the smallest set that holds every ranked defense's worst poison or one within "
        "noise of it")


def main_group(frame: pd.DataFrame, preset: str | None) -> str:
    """The protocol group the quick suite is computed from: ``preset``'s group with the most runs."""
    rows = frame if preset is None else frame[frame["preset"] == preset]
    if rows.empty:
        raise BenchError(f"no records of preset {preset} to compute the quick suite from" if preset else
                         "no records to compute the quick suite from")
    counts = rows.groupby("group", sort=True).size()
    return str(counts.sort_values(ascending=False, kind="stable").index[0])


def _changed(params_json: str, defaults: dict[str, Any] | None, registry: Any = None, name: str = "") -> dict[str, Any]:
    """The params that differ from the plugin's defaults; a field a default record leaves out at its legacy
    value (``benchmark.params.param(legacy=...)``) counts as a default too, as the report fills it in."""
    have = flat(json.loads(params_json))
    if defaults is None:
        return have
    if registry is not None:
        with contextlib.suppress(BenchError, KeyError):
            defaults = flat(complete_params(registry.get(name).Params, defaults))
    return {k: v for k, v in have.items() if k not in defaults or defaults[k] != v}


def _within(best: pd.Series, other: pd.Series, sigma: float | None) -> bool:
    return abs(float(best["mean"]) - float(other["mean"])) < agg.margin_tolerance(sigma, int(best["n"]), int(other["n"]))


def _row(c: pd.DataFrame, poison: str, defense: str) -> pd.Series | None:
    return c.loc[(poison, defense)] if (poison, defense) in c.index else None


def select(frame: pd.DataFrame, preset: str | None = None) -> dict[str, Any]:
    """The quick defenses and poisons of the main group of ``frame`` (see the module docstring)."""
    slug = main_group(frame, preset)
    g = frame[frame["group"] == slug]
    c = agg.cells(g)
    if c.empty:
        raise BenchError(f"group {slug} has no full-ratio cells to compute the quick suite from")
    sigma = agg.group_noises(frame)[slug]["sigma"]
    group_preset = str(g["preset"].iloc[0])
    tiers = agg.defense_tiers(c)
    rankings = {t: agg.defense_ranking(c, t, sigma) for t in agg.tier_order() if t in tiers.values()}
    defenses: dict[str, Entry] = {}
    poisons: dict[str, Entry] = {}
    for tier, ranking in rankings.items():
        pr = agg.poison_ranking(c, sigma, ranking)
        needs: dict[str, set[str]] = {}
        score: dict[tuple[str, str], float] = {}
        for e in pr["entries"]:
            if not e["best_defense"] or str(c.xs(e["poison"], level=0)["poison"].iloc[0]) in NOT_SUITE_POISONS:
                continue
            best = c.loc[(e["poison"], e["best_defense"])]
            near = {d for d in pr["defenses"] if (r := _row(c, e["poison"], d)) is not None and r["converged"]
                    and _within(best, r, sigma)}
            score.update({(e["poison"], d): float(c.loc[(e["poison"], d)]["mean"]) for d in near})
            if NO_DEFENSE not in near:  # plain training runs in every audit
                needs[e["poison"]] = near
        for d in min_cover(needs, pr["defenses"], score):
            row = c.xs(d, level=1).iloc[0]
            defenses[d] = Entry(str(row["defense"]), _changed(row["defense_params"], defense_defaults(
                str(row["defense"]), group_preset), DEFENSES, str(row["defense"])), tier, tuple(sorted(p for p, s in needs.items() if d in s)))
        needs, score = {}, {}
        for e in ranking["entries"]:
            if e["status"] not in ("ranked", "incomplete", "reference") or not e["worst_poison"]:
                continue
            worst = c.loc[(e["worst_poison"], e["defense"])]
            near = {p for p in ranking["poisons"] if (r := _row(c, p, e["defense"])) is not None and r["converged"]
                    and _within(worst, r, sigma) and str(r["poison"]) not in NOT_SUITE_POISONS}
            needs[e["defense"]] = near
            score.update({(e["defense"], p): -float(c.loc[(p, e["defense"])]["mean"]) for p in near})
        for p in min_cover(needs, ranking["poisons"], score):
            row = c.xs(p, level=0).iloc[0]
            old = poisons.get(p)
            covers = tuple(sorted({*(old.covers if old else ()), *(d for d, s in needs.items() if p in s)}))
            known = poison_defaults(str(row["poison"]), group_preset)
            poisons[p] = Entry(str(row["poison"]), _changed(row["poison_params"], known[0] if known else None),
                               "", covers)
    return {"group": slug, "title": str(g["group_title"].iloc[0]), "preset": group_preset, "sigma": sigma,
            "records": int(len(g)), "defenses": list(defenses.values()), "poisons": list(poisons.values())}


def recompute_quick(frame: pd.DataFrame, preset: str | None, path: Any = None) -> tuple[Suite, bool]:
    """Compute the quick suite and write it over ``path`` (default: the package's quick.toml) when the
    selection changed, with the version one higher. Returns (suite, whether it was written)."""
    chosen = select(frame, preset)
    old = load_suite(str(path) if path else "quick")
    computed = {"group": chosen["title"], "preset": chosen["preset"], "records": chosen["records"],
                "sigma": chosen["sigma"] if chosen["sigma"] is not None else "not measured", "rule": RULE}
    same = (old.defenses == chosen["defenses"] and old.poisons == chosen["poisons"]
            and old.computed_from.get("group") == computed["group"])
    if same:
        return old, False
    suite = Suite(name=old.name, version=old.version + 1, path=old.path, defenses=chosen["defenses"],
                  poisons=chosen["poisons"], computed_from=computed,
                  description="quick audit suite: the fewest defenses (poisons) that hold every poison's best "
                              "defense (every defense's worst poison) within noise, on the leaderboard's records")
    write_suite(suite.path, suite)
    return suite, True
