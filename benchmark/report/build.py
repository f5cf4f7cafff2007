"""Stage 4 of the report: the tidy frame -> the leaderboard as data (``leaderboard.json``).

Everything the pages show is in this one JSON-ready dict (RobustBench-style: one entry per cell, with
its statistics, convergence, seeds and records), so the Markdown, HTML and LaTeX pages are thin
renderings of it. Floats are rounded and keys sorted when written, so the same records give the same bytes.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from benchmark.report import aggregate as agg
from benchmark.report import claims as claims_mod
from benchmark.report import costs, notes, references
from benchmark.report import targeted as targeted_mod
from benchmark.report.collect import (
    CLEAN,
    STANDARD_TIER,
    dataset_sources,
    final_epoch_headline,
    poison_class_info,
    protocol_of,
)
from benchmark.report.status import annotate_claims
from benchmark.verdicts import settle_threshold

SCHEMA = "unlearnable-bench/leaderboard/4"  # 4: the targeted threat model's own section (``targeted``)


def group_meta(g: pd.DataFrame, protocol: dict[str, Any]) -> dict[str, Any]:
    first = g.iloc[0]
    source = dataset_sources().get(str(first["dataset_source"]), {})
    return {"slug": str(first["group"]), "title": str(first["group_title"]), "dataset": str(first["dataset"]),
            "dataset_source": str(first["dataset_source"]), "source_note": source.get("note") or None,
            "model": str(first["model"]), "preset": str(first["preset"]), "epochs": first["epochs"],
            "protocol": protocol, "protocol_variant": str(first["protocol_variant"]), "runs": len(g),
            "seeds": sorted({int(s) for s in g["seed"]})}


def build_group(g: pd.DataFrame, protocol: dict[str, Any], claim_rows: list[dict[str, Any]],
                noise: dict[str, Any], c: pd.DataFrame) -> dict[str, Any]:
    """Everything one protocol group's section shows, as data (``noise``: the group's, possibly borrowed,
    from :func:`aggregate.group_noises`; ``c``: its :func:`aggregate.cells`)."""
    meta = group_meta(g, protocol)
    out: dict[str, Any] = {**meta, "noise": noise}
    if c.empty:
        out.update({"poisons": [], "defenses": [], "entries": [], "rankings": {}, "highlights": {}})
    else:
        tiers = agg.defense_tiers(c)
        fam = c.reset_index().groupby("defense_label")[["family", "defense", "variant"]].first()
        heads = g.groupby("defense_label")["headline"].first().to_dict()
        classes = costs.budget_classes(g, meta["preset"])
        out["poisons"] = [{"label": p, "name": str(c.xs(p, level=0)["poison"].iloc[0]),
                           "budget_type": poison_class_info(str(c.xs(p, level=0)["poison"].iloc[0]))["budget_type"],
                           "class": classes.get(p)}
                          for p in agg.ordered_poisons(c)]
        out["defenses"] = [{"label": d, "name": str(fam.at[d, "defense"]), "family": str(fam.at[d, "family"]),
                            "tier": tiers[d], "variant": str(fam.at[d, "variant"]) or None,
                            "headline": heads.get(d, ""), "final_epoch": final_epoch_headline(heads.get(d, ""))}
                           for d in agg.ordered_defenses(c)]
        out["entries"] = [{"poison": p, "defense": d, "tier": tiers[d], **agg.cell_dict(row)}
                          for (p, d), row in c.iterrows()]
        present = [t for t in agg.tier_order() if t in tiers.values()]
        rankings = {t: agg.defense_ranking(c, t, noise["sigma"]) for t in present}
        out["rankings"] = rankings
        if STANDARD_TIER in rankings:
            out["poison_ranking"] = agg.poison_ranking(c, noise["sigma"], rankings[STANDARD_TIER], classes)
            out["highlights"] = agg.highlights(c, rankings[STANDARD_TIER])
        out["peak_notes"] = agg.peak_notes(c)
        out["caveats"] = notes.caveats(g, c, tiers, noise)
        out["table_provenance"] = {t: notes.provenance_line(g[g["full"] & g["defense_label"].isin(
            [d for d, tt in tiers.items() if tt == t])]) for t in present}
    out["defense_costs"] = costs.defense_costs(g, [d["label"] for d in out["defenses"]])
    _add_costs(out)
    out["poison_costs"] = costs.poison_costs(g, meta["preset"])
    out["defense_metrics"] = costs.defense_metrics(g, [d["label"] for d in out["defenses"]],
                                                   [p["label"] for p in out["poisons"]])
    out["partial"] = costs.partial(g, c)
    partial_runs = g[~g["full"]]
    out["table_provenance"] = {**out.get("table_provenance", {}), "all": notes.provenance_line(g),
                               "partial": notes.provenance_line(partial_runs) if not partial_runs.empty else ""}
    labels = agg.run_labels(g, noise["curve_sigma"])
    out["claims"] = claims_mod.evaluate(claim_rows, g, agg.flags_of(labels), noise["sigma"]) if claim_rows else []
    annotate_claims(out["claims"], labels, g)
    out["multiplicity"] = multiplicity(out["claims"], noise["sigma"])
    out["provenance"] = notes.provenance(g)
    out.setdefault("caveats", [])
    return out


def _add_costs(out: dict[str, Any]) -> None:
    """Compute cost (× plain training's time) beside each ranked defense, and per tier the Pareto front of
    (clean accuracy, worst case) over the ranked and incomplete defenses with both."""
    relative = {c["defense"]: c["relative"] for c in out["defense_costs"]}
    for ranking in out.get("rankings", {}).values():
        points = {}
        for e in ranking["entries"]:
            e["compute"] = relative.get(e["defense"])
            if e["status"] in ("ranked", "incomplete", "reference") and e["clean"] and e["worst"]:
                points[e["defense"]] = (e["clean"]["mean"], e["worst"]["mean"])
        ranking["pareto"] = agg.pareto(points)


def multiplicity(claims: list[dict[str, Any]], sigma: float | None, alpha: float = 0.05) -> dict[str, Any]:
    """Holm across the decided cells (holds / fails) of a table of claims: how many stay decided at
    family-wise level ``alpha`` (two-sided normal p-values of each cell's margin under the table's σ)."""
    decided = [(c["id"], p) for c in claims for p in c["pairs"] if p["verdict"] in ("holds", "fails")
               and p.get("margin") is not None and p["cell"] and p["reference"]]
    pvals = [agg.pair_pvalue(p["margin"], sigma, p["cell"]["n"], p["reference"]["n"]) for _c, p in decided]
    if not decided or any(v is None for v in pvals):
        return {"decided": len(decided), "alpha": alpha, "kept": None, "lost": []}
    adjusted = agg.holm([float(v) for v in pvals])
    lost = [f"{cid}: {p['selector']}" for (cid, p), a in zip(decided, adjusted, strict=True) if a >= alpha]
    return {"decided": len(decided), "alpha": alpha, "kept": len(decided) - len(lost), "lost": lost}


def build_data(frame: pd.DataFrame, runs: list[tuple[Any, dict[str, Any]]], results_label: str,
               claims_file: Any = None, references_file: Any = None,
               repeats: list[tuple[Any, dict[str, Any]]] | None = None,
               targeted: list[tuple[Any, dict[str, Any]]] | None = None) -> dict[str, Any]:
    """The whole leaderboard as data (``frame`` and ``runs``: the availability records; ``repeats``: records
    replaced by a re-run on another machine, for the machine-to-machine spread; ``targeted``: the records of
    targeted poisoning, their own section ``targeted``, read beside the availability tables, never in them)."""
    protocols = {str(p): protocol_of(rec["config"]) for p, rec in runs}
    claims_version, claim_rows = claims_mod.load_claims(claims_file)
    refs_version, ref_rows = references.load_references(references_file)
    built, joined = [], []
    groups = {str(slug): g for slug, g in frame.groupby("group", sort=False)} if not frame.empty else {}
    noises = agg.group_noises(frame, repeats=repeats or []) if groups else {}
    group_cells = {slug: agg.cells(g, noises[slug]["curve_sigma"]) for slug, g in groups.items()}
    for slug, g in groups.items():
        c = group_cells[slug]
        noise = {**noises[slug], "settle_threshold": agg.rnd(settle_threshold(noises[slug]["curve_sigma"]))}
        data = build_group(g, protocols[str(g["record"].iloc[0])], claim_rows, noise, c)
        built.append(data)
        joined.append(({k: data[k] for k in ("slug", "title", "dataset", "dataset_source", "model", "preset", "epochs")}, c))
    newest = max((str(d) for d in frame.get("created", []) if d), default="")[:10] or "unknown"
    return {
        "schema": SCHEMA, "results": results_label, "records": len(frame), "newest": newest,
        "rules": agg.rules(), "clean_label": CLEAN, "tiers": _tiers(),
        "references_version": refs_version, "claims_version": claims_version,
        "references": references.join(ref_rows, joined), "groups": built,
        "targeted": targeted_mod.build_targeted(list(targeted or []), targeted_mod.clean_runs(runs),
                                                targeted_mod.cohort_sigmas(frame, runs, noises), results_label),
    }


def _tiers() -> dict[str, str]:
    from defenses.base import TIERS

    return dict(TIERS)


def to_json(data: dict[str, Any]) -> str:
    """Stable text: sorted keys, two-space indent, no NaN."""
    return json.dumps(_clean(data), sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float):
        return agg.rnd(value)
    if hasattr(value, "item"):  # numpy scalars
        return _clean(value.item())
    return value
