"""Stage 3a of the report: how much a cell moves by chance, measured per random source (pandas).

A seed varies the victim (initialisation, batch order); a poison instance varies the attacker's
randomness too (another key or surrogate run, so other bytes); a machine varies the arithmetic (and a
surrogate-trained poison's bytes). Each source is pooled on its own cells and shown with its count:

* **victim**: multi-seed cells whose runs all trained on one poisoned set (one key fingerprint, one
  poisoned-set digest where records carry one, one set in ``frame.poison_sets``) — the pooled std;
* **poison instance**: multi-seed cells whose runs trained on different keys or sets of one poison config;
* **machine**: pairs of one config and seed run on two machines (``records.REPEATS``): σ = rms(Δ)/√2,
  since a difference of two runs has variance 2σ².

Every verdict margin uses the largest σ measured on at least ``MIN_NOISE_CELLS`` cells (pairs), never a
smaller one: with fewer, the victim σ, with a caveat saying so. The per-epoch stability rules
(:mod:`benchmark.verdicts`) use the victim σ: one run's curve moves by the victim's randomness alone.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from benchmark.records import machine
from benchmark.report.collect import num
from benchmark.verdicts import TIE_SIGMAS, margin_tolerance

MIN_NOISE_CELLS = 3
VICTIM, INSTANCE, MACHINE = "victim", "poison instance", "machine"
SOURCES = (VICTIM, INSTANCE, MACHINE)
DIGITS = 4


def _rnd(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else round(float(value), DIGITS)


def pooled(stds: pd.Series) -> dict[str, Any]:
    """Pooled std (root mean square of the cells' sample stds) with its count, median and max."""
    stds = stds.dropna().astype(float)
    if stds.empty:
        return {"cells": 0, "sigma": None, "median_std": None, "max_std": None}
    return {"cells": int(len(stds)), "sigma": _rnd(math.sqrt(float((stds ** 2).mean()))),
            "median_std": _rnd(stds.median()), "max_std": _rnd(stds.max())}


def cell_spreads(g: pd.DataFrame) -> pd.DataFrame:
    """Per multi-seed full-ratio cell of a group: sample std of the final accuracy, runs, and its source
    (victim when every run trained on one poisoned set, poison instance otherwise)."""
    full = g[g["full"]]
    rows = []
    for (p, d), runs in full.groupby(["poison_label", "defense_label"], sort=True):
        acc = runs["test_acc"].dropna().astype(float)
        if len(acc) < 2:
            continue
        keys = set(runs["key_fingerprint"]) - {""}
        sets = set(runs["poison_set"].astype(int)) - {0}
        digests = set(runs["poison_digest"]) - {""}
        source = INSTANCE if len(keys) > 1 or len(sets) > 1 or len(digests) > 1 else VICTIM
        rows.append({"poison": p, "defense": d, "std": float(acc.std(ddof=1)), "n": len(acc), "source": source})
    return pd.DataFrame(rows, columns=["poison", "defense", "std", "n", "source"])


def source_noise(g: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """{victim, poison instance}: :func:`pooled` over the group's cells of each source."""
    spreads = cell_spreads(g)
    return {s: pooled(spreads.loc[spreads["source"] == s, "std"]) for s in (VICTIM, INSTANCE)}


def machine_pairs(frame: pd.DataFrame, repeats: list[tuple[Any, dict[str, Any]]]) -> pd.DataFrame:
    """Records a re-run on another machine replaced (``repeats``), each paired with the current record of its
    run id when the two machines differ: group, Δ accuracy, cell, machines, same poison bytes."""
    cols = ["group", "delta", "cell", "machines", "same_bytes"]
    if frame.empty or not repeats:
        return pd.DataFrame(columns=cols)
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
    return pd.DataFrame(rows, columns=cols)


def machine_spreads(frame: pd.DataFrame, repeats: list[tuple[Any, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per protocol group: how far a cell moves when the same config and seed run on another machine, and
    the σ that implies (rms(Δ)/√2)."""
    out = {}
    for slug, g in machine_pairs(frame, repeats).groupby("group"):
        size = g["delta"].abs()
        worst = g.loc[size.idxmax()]
        out[str(slug)] = {"cells": len(g), "median_abs": _rnd(size.median()), "max_abs": _rnd(size.max()),
                          "max_cell": str(worst["cell"]), "max_delta": _rnd(worst["delta"]),
                          "sigma": _rnd(math.sqrt(float((g["delta"] ** 2).mean()) / 2)),
                          "machines": sorted(set(g["machines"])), "same_poison_bytes": int(g["same_bytes"].sum())}
    return out


def choose(sources: dict[str, dict[str, Any] | None]) -> tuple[float | None, str | None, str]:
    """(σ, its source, caveat): the largest σ measured on at least MIN_NOISE_CELLS cells; else the victim σ
    (or any measured one) with a caveat that the larger sources are not measured well enough."""
    measured = {s: v for s, v in sources.items() if v and v.get("sigma") is not None}
    enough = {s: v for s, v in measured.items() if v["cells"] >= MIN_NOISE_CELLS}
    if enough:
        best = max(enough, key=lambda s: (enough[s]["sigma"], -SOURCES.index(s)))
        thin = [s for s in SOURCES if s not in enough]
        caveat = (f"not measured on {MIN_NOISE_CELLS}+ cells: {', '.join(thin)} (a larger σ there would widen "
                  "every margin)") if thin else ""
        return enough[best]["sigma"], best, caveat
    if not measured:
        return None, None, "no cell has several runs: the noise is not measured"
    best = VICTIM if VICTIM in measured else max(measured, key=lambda s: measured[s]["sigma"])
    return measured[best]["sigma"], best, (f"σ from {measured[best]['cells']} cells only (fewer than "
                                           f"{MIN_NOISE_CELLS}); the other sources are not measured")


def group_noises(frame: pd.DataFrame, repeats: list[tuple[Any, dict[str, Any]]] | None = None) -> dict[str, dict[str, Any]]:
    """Noise of every protocol group: σ by source, the σ verdicts use (``sigma``, ``source``, ``caveat``)
    and the σ the stability rules use (``curve_sigma``, the victim's). A group with no multi-seed cell
    (a protocol variant run once per cell, e.g. a longer schedule) borrows the sources of the group of the
    same dataset, source, model and preset with the most multi-seed cells, and names it (``borrowed_from``)."""
    groups = {str(slug): g for slug, g in frame.groupby("group", sort=False)}
    spreads = machine_spreads(frame, repeats or [])
    own = {slug: {**source_noise(g), MACHINE: spreads.get(slug)} for slug, g in groups.items()}
    key = {slug: tuple(str(g[k].iloc[0]) for k in ("dataset", "dataset_source", "model", "preset"))
           for slug, g in groups.items()}

    def cells(slug: str) -> int:
        return own[slug][VICTIM]["cells"] + own[slug][INSTANCE]["cells"]

    out = {}
    for slug in groups:
        sources, borrowed = own[slug], None
        donors = [s for s in own if s != slug and key[s] == key[slug] and cells(s)]
        if not cells(slug) and donors:
            best = max(donors, key=cells)
            sources, borrowed = own[best], str(groups[best]["group_title"].iloc[0])
        sigma, source, caveat = choose(sources)
        victim = sources[VICTIM]["sigma"] if sources[VICTIM]["sigma"] is not None else sigma
        out[slug] = {"sources": sources, "sigma": sigma, "source": source, "caveat": caveat,
                     "curve_sigma": victim, "cells": cells(slug) if borrowed is None else sum(
                         sources[s]["cells"] for s in (VICTIM, INSTANCE)),
                     "tolerance": _rnd(margin_tolerance(sigma, 1, 1)), "tie_sigmas": TIE_SIGMAS,
                     "min_cells": MIN_NOISE_CELLS, "machine": sources[MACHINE],
                     **({"borrowed_from": borrowed} if borrowed else {})}
    return out
