"""The leaderboard (``bench leaderboard``), the tidy results frame (``bench results``) and the claims
check (``bench claims``), generated from the run records alone.

One module per stage: collect (records -> described runs), frame (-> one tidy pandas DataFrame),
aggregate and costs (-> cells, noise, rankings, costs), references and claims (published numbers and
claims joined with our cells), notes (caveats, provenance), build (-> ``leaderboard.json``), document and
page (-> blocks), render (-> Markdown / HTML / LaTeX), plots and samples (PNG figures). Output is
deterministic: the same records (and git history) give the same bytes.

Records of targeted poisoning (a threat model of its own) are split off once, in collect: targeted (data)
and document_targeted (blocks) give them their own section; every availability table, ranking, noise
estimate, claim and audit reads availability records only (:func:`collect_runs`, :func:`load_frame`).

The package imports without torch (``from benchmark.report import load_frame`` in a notebook, the claims
check in CI): the plugin registries, matplotlib and torch are imported inside the functions that need
them, which is why these modules have function-level imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.errors import BenchError
from benchmark.io import atomic_write
from benchmark.report import aggregate as agg
from benchmark.report import targeted
from benchmark.report.build import build_data, to_json
from benchmark.report.collect import (
    AVAILABILITY,
    TARGETED,
    Warn,
    collect_all,
    collect_repeats,
    collect_runs,
    split_runs,
)
from benchmark.report.frame import build_frame, load_frame
from benchmark.report.page import build_document
from benchmark.report.plots import make_plots
from benchmark.report.render import render_html, render_latex, render_markdown
from benchmark.report.samples import SampleSource, sample_grids
from benchmark.report.status import annotate_claims, with_status

__all__ = ["Summary", "build_data", "build_frame", "collect_runs", "load_frame", "write_leaderboard",
           "write_results", "claims_report", "targeted"]

FORMATS = {"md": "leaderboard.md", "html": "leaderboard.html", "latex": "leaderboard.tex"}
JSON_NAME = Path("results") / "leaderboard.json"


@dataclass
class Summary:
    out: Path
    json: Path
    records: int
    groups: int
    plots: list[Path]


def _runs(results: Path | str, warn: Warn) -> dict[str, list[tuple[Path, dict[str, Any]]]]:
    """The usable records by threat model (availability, targeted); an error when there is none at all."""
    results = Path(results)
    if not results.is_dir():
        raise BenchError(f"results folder '{results}' does not exist; run `bench run` first or pass --results")
    runs = collect_all(results, warn)
    if not runs:
        raise BenchError(f"no usable finished run records in '{results}'; nothing to report")
    return split_runs(runs)


def write_leaderboard(results: Path | str = "results/runs", out: Path | str | None = None,
                      plots_dir: Path | str = "results/plots", fmt: str = "md", data_root: Path | str | None = None,
                      cache_dir: Path | str | None = None, samples: bool = True, warn: Warn | None = None,
                      json_out: Path | str | None = None) -> Summary:
    """Regenerate the leaderboard page (``md``, ``html`` or ``latex``), its plots and its data
    (``results/leaderboard.json`` beside the page unless ``json_out``) from the records."""
    warn = warn or (lambda msg: None)
    if fmt not in FORMATS:
        raise BenchError(f"unknown format '{fmt}'; valid: {', '.join(FORMATS)}")
    by_model = _runs(results, warn)
    runs = by_model[AVAILABILITY]
    out = Path(out) if out else Path(FORMATS[fmt])
    json_path = Path(json_out) if json_out else out.parent / JSON_NAME
    frame = build_frame(runs)
    data = build_data(frame, runs, Path(results).as_posix(), repeats=collect_repeats(Path(results), warn),
                      targeted=by_model[TARGETED])
    records = {str(p): rec for p, rec in runs}
    source = SampleSource(Path(data_root) if data_root else None, Path(cache_dir) if cache_dir else None, warn) \
        if samples else None
    plots: dict[str, dict[str, Any]] = {}
    for g in data["groups"]:
        plots[g["slug"]] = make_plots(g, records, Path(plots_dir), data["rules"]["standard_tier"])
        if source is not None:
            grids = sample_grids(frame[frame["group"] == g["slug"]], records, g["title"],
                                 Path(plots_dir) / g["slug"], source)
            if grids:
                plots[g["slug"]]["samples"] = grids
    blocks = build_document(data, plots)
    out_dir = out.resolve().parent
    text = {"md": render_markdown, "html": render_html, "latex": render_latex}[fmt](blocks, out_dir)
    atomic_write(json_path, lambda p: p.write_text(to_json(data), encoding="utf-8"))
    atomic_write(out, lambda p: p.write_text(text, encoding="utf-8"))
    written = [p for gp in plots.values() for v in gp.values() for p in (v.values() if isinstance(v, dict) else [v])]
    return Summary(out, json_path, len(runs) + len(by_model[TARGETED]), len(data["groups"]), sorted(written))


RESULT_FORMATS = ("csv", "parquet", "json")


def write_results(results: Path | str, fmt: str, out: Path | str | None, warn: Warn | None = None) -> tuple[str | None, int]:
    """The tidy frame of the records as csv / parquet / json, with each run's stability label and reason as
    the leaderboard reads it (``stability``, ``stability_reason``): written to ``out``, or returned as text
    (csv, json) when ``out`` is None. Returns (text or None, rows). The availability runs come first, then
    the targeted trials (``threat_model``; their outcome in ``target_*``), each computed on its own."""
    if fmt not in RESULT_FORMATS:
        raise BenchError(f"unknown format '{fmt}'; valid: {', '.join(RESULT_FORMATS)}")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise BenchError("--format parquet needs pyarrow: pip install pyarrow") from None
        if out is None:
            raise BenchError("--format parquet writes a binary file: give --out FILE.parquet")
    warn = warn or (lambda msg: None)
    by_model = _runs(results, warn)
    frame = build_frame(by_model[AVAILABILITY])
    noises = agg.group_noises(frame, repeats=collect_repeats(Path(results), warn)) if not frame.empty else {}
    frame = with_status(frame, noises) if not frame.empty else frame
    if by_model[TARGETED]:
        trials = targeted.results_rows(by_model[TARGETED], targeted.clean_runs(by_model[AVAILABILITY]),
                                       targeted.cohort_sigmas(frame, by_model[AVAILABILITY], noises))
        frame = targeted.typed(pd.concat([frame, trials], ignore_index=True) if not frame.empty else trials)
    if fmt == "parquet":
        atomic_write(Path(out), lambda p: frame.to_parquet(p, index=False))
        return None, len(frame)
    text = frame.to_csv(index=False) if fmt == "csv" else frame.to_json(orient="records", indent=1) + "\n"
    if out is not None:
        atomic_write(Path(out), lambda p: p.write_text(text, encoding="utf-8"))
        return None, len(frame)
    return text, len(frame)


def claims_report(results: Path | str, warn: Warn | None = None,
                  claims_file: Path | str | None = None) -> tuple[list[dict[str, Any]], int]:
    """Every claim's verdict per protocol group: ([{group, title, noise, claims}], exit code)."""
    from benchmark.report.claims import evaluate, exit_code, load_claims

    _version, rows = load_claims(Path(claims_file) if claims_file else None)
    warn = warn or (lambda msg: None)
    frame = build_frame(_runs(results, warn)[AVAILABILITY])
    out: list[dict[str, Any]] = []
    if frame.empty:  # only targeted records: no claim of the availability papers is about them
        return out, 0
    noises = agg.group_noises(frame, repeats=collect_repeats(Path(results), warn))
    for slug, g in frame.groupby("group", sort=False):
        noise = noises[str(slug)]
        labels = agg.run_labels(g, noise["curve_sigma"])
        claims = evaluate(rows, g, agg.flags_of(labels), noise["sigma"])
        annotate_claims(claims, labels, g)
        out.append({"group": slug, "title": str(g["group_title"].iloc[0]), "noise": noise, "claims": claims})
    return out, max((exit_code(g["claims"]) for g in out), default=0)
