"""The page's stability label of a run, for the commands that show runs outside the page (``bench run``'s
summary, ``bench results``, ``bench claims``): computed by the same rule (:func:`aggregate.run_labels`) with
the same noise (:func:`noise.group_noises`) as the leaderboard, so every view says the same thing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.report import aggregate as agg
from benchmark.report.collect import Warn, collect_repeats, collect_runs
from benchmark.report.frame import build_frame
from benchmark.verdicts import NOT_VERDICT, UNDERFITS


def with_status(frame: pd.DataFrame, noises: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """``frame`` with per-run ``stability`` (label, "" = a verdict without caveat) and ``stability_reason``."""
    parts = []
    for slug, g in frame.groupby("group", sort=False):
        labels = agg.run_labels(g, noises[str(slug)]["curve_sigma"])
        parts.append(labels.rename(columns={"label": "stability", "reason": "stability_reason"}))
    if not parts:
        return frame.assign(stability=pd.Series(dtype=object), stability_reason=pd.Series(dtype=object))
    return frame.join(pd.concat(parts))


def status_text(label: str, reason: str) -> str:
    """One line: what the page does with a run or cell of this label, and why."""
    if label in NOT_VERDICT:
        return f"{label}: not a verdict on the leaderboard ({reason})"
    if label == UNDERFITS:
        return f"{label}: a verdict with a caveat ({reason})"
    return "stable: a verdict on the leaderboard"


def record_status(results: Path | str, record: Path | str, warn: Warn | None = None) -> dict[str, Any] | None:
    """The page's view of the cell one record belongs to: its tier, the run's label and reason, and the cell's
    (the most serious label over its seeds), or None when the record is not among the folder's usable runs."""
    results = Path(results)
    runs = collect_runs(results, warn or (lambda msg: None))
    frame = build_frame(runs)
    if frame.empty:
        return None
    hit = frame.index[frame["record"].map(lambda r: Path(r).resolve() == Path(record).resolve())]
    if hit.empty:
        return None
    noises = agg.group_noises(frame, repeats=collect_repeats(results, warn or (lambda msg: None)))
    row = frame.loc[hit[0]]
    g = frame[frame["group"] == row["group"]]
    sigma = noises[str(row["group"])]["curve_sigma"]
    labels = agg.run_labels(g, sigma)
    out = {"tier": str(row["tier"]), "label": str(labels.at[hit[0], "label"]), "reason": str(labels.at[hit[0], "reason"]),
           "full": bool(row["full"]), "group": str(row["group_title"])}
    if row["full"]:
        c = agg.cells(g, sigma)
        cell = c.loc[(row["poison_label"], row["defense_label"])]
        out.update({"cell": f"{row['poison_label']} × {row['defense_label']}", "cell_label": str(cell["stability"]),
                    "cell_reason": str(cell["not_converged"] or cell["caveat"]), "seeds": list(cell["seeds"])})
    return out


def annotate_claims(claims: list[dict[str, Any]], labels: pd.DataFrame, g: pd.DataFrame) -> None:
    """Give each claim pair whose cell or reference is not a verdict, or is one with a caveat (underfits),
    the label and reason as the page states them (``why``; ``labels``: :func:`aggregate.run_labels` of ``g``)."""
    by_record = {r: f"{lab}: {why}" for r, lab, why in zip(g["record"], labels["label"], labels["reason"], strict=True) if lab}
    for c in claims:
        for p in c["pairs"]:
            why = [f"{side} {by_record[r]}" for side in ("cell", "reference") if p.get(side)
                   for r in p[side]["records"] if r in by_record]
            if why:
                p["why"] = "; ".join(dict.fromkeys(why))
