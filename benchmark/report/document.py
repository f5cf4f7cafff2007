"""Stage 5 of the report: the leaderboard data (build.py) -> format-neutral blocks the renderers print.

No number is computed here: every value comes from the data dict, so the pages are thin renderings of
``leaderboard.json``. Wording that states a rule quotes the rule's constant from the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.report.aggregate import margin_tolerance, other_sets
from benchmark.report.collect import CLEAN as CLEAN_LABEL
from benchmark.report.collect import NO_DEFENSE as NO_DEFENSE_LABEL
from benchmark.report.collect import threads_text

NOT_CONVERGED = "†"
UNDERFITS_MARK = "§"
OTHER_SET = "‡"


@dataclass
class Heading:
    level: int
    text: str
    anchor: str = ""


@dataclass
class Para:
    text: str  # may use `code`, **bold** and [text](#anchor)


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Image:
    path: Path
    alt: str


@dataclass
class Cell:
    """A table cell: text, the records behind it (linked in HTML) and whether it is greyed out."""

    text: str
    links: list[tuple[str, str]] = field(default_factory=list)  # (label, record path)
    muted: bool = False
    #: where the value lies between 0 % (0) and plain training on clean data (1); HTML colours the cell by it
    shade: float | None = None


@dataclass
class Section:
    """A row that titles the rows under it (a defense family)."""

    title: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell | str] | Section]
    legend: str
    align: str = ""  # l/r/p per column; default first column left, the rest right


Block = Heading | Para | Bullets | Image | Table


def fmt(stat: dict[str, Any] | None, digits: int = 1, runs: bool = True) -> str:
    """``mean ± std (n=runs)`` for several runs (the count spelled out, never a superscript), ``mean`` for one."""
    if not stat or stat.get("mean") is None:
        return "–"
    text = f"{stat['mean']:.{digits}f}"
    n = stat.get("n", 1)
    return text + (f" ± {stat['std']:.{digits}f}" + (f" (n={n})" if runs else "") if n > 1 else "")


def cell_marks(e: dict[str, Any]) -> str:
    """The marks a matrix cell carries (not a verdict, underfits, another poisoned set), wherever it is shown."""
    return (("" if e["converged"] else NOT_CONVERGED) + (UNDERFITS_MARK if e.get("caveat") else "")
            + (OTHER_SET if other_sets(e.get("poison_sets")) else ""))


def shade(value: float | None, g: dict[str, Any]) -> float | None:
    """``value`` on the colour scale of a group: 0 at 0 %, 1 at plain training on clean data (and above)."""
    top = (g.get("highlights") or {}).get("clean")
    if value is None or not top:
        return None
    return max(0.0, min(1.0, value / top))


def _seeds_text(n_values: set[int]) -> str:
    ns = sorted(n for n in n_values if n > 1)
    if not ns:
        return "Every cell is a single run (one seed)."
    return "± = sample std over seeds, (n=…) = the number of runs (seeds) behind the cell; the others are one run."


def record_links(records: list[str], seeds: list[int]) -> list[tuple[str, str]]:
    return [(f"seed {s}", r) for s, r in zip(seeds, records, strict=False)] if len(records) == len(seeds) else \
        [(f"record {i + 1}", r) for i, r in enumerate(records)]


def protocol_legend(g: dict[str, Any]) -> str:
    p = g["protocol"]
    text = (f"Protocol: preset `{g['preset']}`, model {g['model']}, {p.get('epochs', '?')} epochs, batch "
            f"{p.get('batch_size', '?')}, lr {p.get('lr', '?')} ({p.get('schedule', '?')}), {g['title'].split(' · ')[0]}, "
            f"{p.get('train_size', '?')} train / {p.get('test_size', '?')} test images.")
    return text + (f" Differs from the other groups in: {g['protocol_variant']}." if g["protocol_variant"] else "")


def _convergence_rule(rules: dict[str, Any], g: dict[str, Any]) -> str:
    """The stability rule (benchmark.verdicts) with this table's numbers."""
    noise = g["noise"]
    t, cs = noise.get("settle_threshold"), noise.get("curve_sigma")
    scale = (f"T = {rules['settle_points']:g} points + {rules['tie_sigmas']:g}σ√2 with the victim σ = {cs:.2f}, "
             f"i.e. T = {t:.1f} points" if cs is not None else f"T = {rules['settle_points']:g} points (no σ measured)")
    return (f"{NOT_CONVERGED} = not a verdict: **still rising** (final epoch more than T above each of the "
            f"{rules['rise_window']} before it), **collapsed** (more than T below the peak of the last third of the "
            f"schedule), **unstable** (the last {rules['rise_window'] + 1} epochs swing more than T down and up), **still "
            f"learning** (train accuracy more than {rules['train_gap_points']:g} points below plain training's on clean "
            f"data, for a defense that selects an earlier epoch the last epoch's, and the last {rules['flat_epochs']} "
            f"epochs span more than T) or **diverged**; {scale}. Shown, never a verdict, worst case, claim cell or "
            f"ranking input. {UNDERFITS_MARK} = underfits: the same fit gap with a flat end (converged at a high cost "
            "in fit): a verdict, read against the defense's own clean cell (caveat `fit`).")


def matrix(g: dict[str, Any], tier: str, rules: dict[str, Any]) -> Table:
    """Defenses (rows, grouped by family) x poisons (columns, clean first) of one tier, final accuracy."""
    from defenses.base import FAMILIES

    entries = {(e["poison"], e["defense"]): e for e in g["entries"]}
    poisons = [p["label"] for p in g["poisons"]]
    rows: list[list[Cell | str] | Section] = []
    family = None
    for d in (d for d in g["defenses"] if d["tier"] == tier):
        if d["family"] != family:
            family = d["family"]
            rows.append(Section(FAMILIES.get(family, family)))
        row: list[Cell | str] = [d["label"]]
        for p in poisons:
            e = entries.get((p, d["label"]))
            if e is None:
                row.append("–")
                continue
            row.append(Cell(fmt(e["test_acc"]) + cell_marks(e), record_links(e["records"], e["seeds"]),
                            shade=shade(e["test_acc"]["mean"], g)))
        rows.append(row)
    n_values = {e["test_acc"]["n"] for e in g["entries"]}
    other = (f" {OTHER_SET} = trained on another poisoned set than the column's no-defense cell (same poison, "
             "parameters and key, other bytes; caveat `poison sets`)."
             if any(other_sets(e.get("poison_sets")) for e in g["entries"]) else "")
    legend = (f"{_headline_text(g, tier)}; rows: defenses by family, columns: poisons (clean = "
              f"no poison). Lower = stronger poison, higher = better defense; in the HTML page the colour runs from red "
              f"(0 %) to green (plain training on clean data). {_seeds_text(n_values)} "
              f"{_convergence_rule(rules, g)}{other} {protocol_legend(g)} {g['table_provenance'].get(tier, '')}")
    return Table(["defense", *poisons], rows, legend)


def _headline_text(g: dict[str, Any], tier: str) -> str:
    """What the tier's numbers are: final-epoch accuracy, except where a defense's headline is another metric."""
    other = [f"{d['label']}: {d['headline']}" for d in g["defenses"] if d["tier"] == tier and not d["final_epoch"]]
    text = "Final-epoch clean test accuracy (%) of the victim"
    return text + (f" (except {'; '.join(other)})" if other else "")


def peak_table(g: dict[str, Any], rules: dict[str, Any]) -> Table | None:
    """The cells whose best epoch (picked on the test set) lies well above the final one: a caveat, not a result."""
    notes = g.get("peak_notes") or []
    if not notes:
        return None
    rows: list[list[Cell | str] | Section] = [[n["defense"], n["poison"], f"{n['final']:.1f}", f"{n['peak']:.1f}",
                                               str(n["peak_epoch"])] for n in notes]
    return Table(["defense", "poison", "final", "peak", "peak epoch"], rows,
                 f"Cells whose peak accuracy is more than {rules['peak_note_points']:g} points above the final one. The "
                 "peak is the best epoch picked on the test set: an oracle, not a result; the tables use the final "
                 "epoch.", align="llrrr")


def _status_note(e: dict[str, Any]) -> str:
    """Status and how many comparable cells are missing or not a verdict (which ones: the matrix's – and † marks,
    and leaderboard.json): counts keep the ranking tables narrow."""
    parts = []
    if e["status"] not in ("ranked", "reference"):
        parts.append(f"**{e['status']}**")
    if e["not_run"]:
        parts.append(f"{len(e['not_run'])} not run")
    if e["not_converged"]:
        parts.append(f"{len(e['not_converged'])} not a verdict")
    return "; ".join(parts) or "–"


def _pareto_note(r: dict[str, Any], defense: str) -> str:
    par = r.get("pareto") or {}
    if defense in par.get("front", []):
        return "front"
    by = par.get("dominated", {}).get(defense)
    return f"dominated by {', '.join(by[:2])}" + (f" +{len(by) - 2}" if len(by) > 2 else "") if by else "–"


def _tie_text(noise: dict[str, Any]) -> str:
    if noise["sigma"] is None:
        return "No cell has several seeds, so the noise is not measured and only equal values tie."
    return (f"Ranks within noise share a rank: a worst case less than {noise['tie_sigmas']:g} standard errors of "
            f"the difference, {noise['tie_sigmas']:g}σ·√(1/n_a + 1/n_b) (σ = {noise['sigma']:.2f}, {_noise_source(noise)}; "
            f"{margin_tolerance(noise['sigma'], 1, 1):.2f} points between two single runs), below the first of its run "
            "of ties gets that one's rank.")


def defense_ranking(g: dict[str, Any], tier: str, rules: dict[str, Any]) -> Table:
    r = g["rankings"][tier]
    rows: list[list[Cell | str] | Section] = []
    for e in r["entries"]:
        rank = "ref" if e["status"] == "reference" else str(e["rank"]) if "rank" in e else "–"
        compute = f"{e['compute']:.2f}×" if e.get("compute") is not None else "–"
        rows.append([rank, e["defense"], fmt(e["clean"]), f"{e['cost']:+.1f}" if e["cost"] is not None else "–", compute,
                     fmt(e["worst"]), e["worst_poison"] or "–", f"{e['mean']:.1f}" if e["mean"] is not None else "–",
                     f"{e['covered']}/{e['total']}", _pareto_note(r, e["defense"]), _status_note(e)])
    legend = (f"Comparable poisons (K = {len(r['poisons'])}): {', '.join(r['poisons'])}. Worst case = lowest accuracy over "
              "the verdict cells of those poisons (k of K, column poisons; cells marked † in the matrix are never "
              "used); mean over the same cells. Cost = clean accuracy minus plain training's; compute = training time "
              "over plain training's on the same hardware (cost table). Pareto = on the front of (clean accuracy, worst "
              "case), or dominated by the defenses named (at least as good on both, better on one; figure below). Ranked "
              "by worst case, higher = better. " + _tie_text(g["noise"]) + " Not ranked: "
              f"`none` (reference), **fails on clean** (clean accuracy below {rules['fails_clean_fraction']:.0%} of plain "
              "training's), **not converged** (its clean cell is not a verdict), **incomplete** (verdict cells on fewer "
              f"than {rules['min_coverage']:.0%} of the comparable poisons). " + g["table_provenance"].get(tier, ""))
    return Table(["rank", "defense", "clean", "cost", "compute", "worst case", "worst poison", "mean", "poisons",
                  "Pareto", "note"], rows, legend, align="rlrrrrlrrll")


def _budget_text(b: dict[str, Any] | None) -> str:
    if not b:
        return "–"
    m = {k: (v or {}).get("mean") for k, v in b["budget"].items()}
    eps = f"L∞ {m['linf_255']:.0f}/255" if m.get("linf_255") is not None else ""
    l2 = f"L2 {m['l2_mean']:.2f}" if m.get("l2_mean") is not None else ""
    psnr = f"{m['psnr']:.1f} dB" if m.get("psnr") is not None else ""
    ssim = f"SSIM {m['ssim']:.2f}" if m.get("ssim") is not None else ""
    return ", ".join(x for x in (eps, l2, psnr, ssim) if x)


def poison_ranking(g: dict[str, Any], rules: dict[str, Any]) -> Table:
    r = g["poison_ranking"]
    budgets = {b["poison"]: b for b in g["poison_costs"]}
    rows: list[list[Cell | str] | Section] = []
    cls = None
    for e in r["entries"]:
        if e.get("rank") is not None and e["class"] != cls:
            cls = e["class"]
            rows.append(Section(f"budget class: {cls}"))
        elif e.get("rank") is None and cls != "":
            cls = ""
            rows.append(Section("not ranked"))
        within = ", ".join(e["within_noise"]) if e.get("within_noise") else "–"
        single = " (1 run)" if e["worst"] and e["worst"]["n"] == 1 else ""
        rows.append([str(e["rank"]) if "rank" in e else "–", e["poison"], _budget_text(budgets.get(e["poison"])),
                     fmt(e["worst"]) + single, e["best_defense"] or "–", within, fmt(e["undefended"]),
                     f"{e['drop']:.1f}" if e["drop"] is not None else "–", f"{e['covered']}/{e['total']}", _status_note(e)])
    legend = ("Ranked within budget classes (declared budget type and measured L∞: an L∞ poison moving pixels more than "
              f"{rules['linf_small']:g}/255 is not in the 8/255 class; L2, L0 and unbounded/perceptual poisons answer other "
              "threat models, so ranks never cross a class). Worst case of a poison = the highest accuracy any "
              "standard-tier defense recovers on a verdict cell (defenses that fail or are not a verdict on clean data "
              f"excluded; D = {len(r['defenses'])}: {', '.join(r['defenses'])}); lower = stronger poison. Within noise = "
              "the other defenses whose cell is within the tie margin of the worst case (the best defense is one of "
              "them, not a single winner); (1 run) = a single seed. Defenses = verdict cells of the D defenses (the rest "
              "not run or not a verdict: note). Drop = plain training's clean accuracy minus the worst case. Same tie "
              f"rule as the defense ranking; a poison with verdict cells under fewer than {rules['min_coverage']:.0%} of D "
              "is **incomplete** and not ranked. " + g["table_provenance"].get(rules["standard_tier"], ""))
    return Table(["rank", "poison", "budget", "worst case", "best defense", "within noise", "no defense", "drop",
                  "defenses", "note"], rows, legend, align="rllrllrrrl")


def _no_verdict(r: dict[str, Any], best: str | None) -> str:
    """The summary's verdict column for a poison the highlights do not judge (the ranking entry says why)."""
    if best is None:  # the ranking's covered count includes plain training itself
        return "no defense above plain training" if r["covered"] > 1 else "no defense run"
    return r["status"] if r["status"] != "ranked" else "–"


def summary_table(g: dict[str, Any], rules: dict[str, Any]) -> Table | None:
    """One row per poison: without defense, the best standard-tier defense (that defense on clean data beside
    it) and the verdict, from the poison ranking and the highlights (no new judgement here)."""
    h = g.get("highlights") or {}
    ranking = (g.get("poison_ranking") or {}).get("entries") or []
    if not h or not ranking:
        return None
    entries = {(e["poison"], e["defense"]): e for e in g["entries"]}
    within = rules["neutralised_within"]
    verdicts = {p: "no effect" for p in h.get("no_effect", [])}
    verdicts.update({n["poison"]: "neutralised by " + ", ".join(b["defense"] for b in n["by"][:3])
                     + (f" +{len(n['by']) - 3} more" if len(n["by"]) > 3 else "") for n in h.get("neutralised", [])})
    verdicts.update({s["poison"]: f"**stands** ({s['run']} of {s['usable']} usable defenses run)"
                     for s in h.get("standing", [])})
    order = {u["poison"]: i for i, u in enumerate(h.get("undefended", []))}
    rows: list[list[Cell | str] | Section] = []
    for r in sorted(ranking, key=lambda r: (order.get(r["poison"], len(order)), r["poison"])):
        best = r["best_defense"] if r["best_defense"] not in (None, NO_DEFENSE_LABEL) else None
        cell = entries.get((r["poison"], best)) if best else None
        own = entries.get((CLEAN_LABEL, best)) if best else None
        none = entries.get((r["poison"], NO_DEFENSE_LABEL))
        rows.append([r["poison"], r.get("class") or "–",
                     Cell(fmt(r["undefended"]) + (cell_marks(none) if none else ""),
                          record_links(none["records"], none["seeds"]) if none else [],
                          shade=shade((r["undefended"] or {}).get("mean"), g)),
                     best or "–",
                     Cell(fmt(r["worst"]), record_links(cell["records"], cell["seeds"]) if cell else [],
                          shade=shade((r["worst"] or {}).get("mean"), g)) if best else "–",
                     fmt(own["test_acc"]) if own else "–",
                     verdicts.get(r["poison"], _no_verdict(r, best))])
    clean = entries.get((CLEAN_LABEL, NO_DEFENSE_LABEL))
    legend = (f"Clean test accuracy (%) per poison; plain training on clean data: {fmt(clean['test_acc']) if clean else '–'}. "
              "Best defense = the standard-tier defense (the defender has only the poisoned set) with the highest "
              "accuracy on a converged cell of that poison; beside it the same defense on clean data. Verdict: "
              f"**neutralised** = within {within:g} points of the same defense on clean data (the first three such defenses "
              "named, the rest counted; all in leaderboard.json), "
              f"**no effect** = within {within:g} points of clean data without defense, **stands** = no standard-tier "
              f"defense run neutralises it. {NOT_CONVERGED} = not a verdict (the marks are the matrix's). Budget class: "
              "the threat model the poison is ranked in (poison ranking). Rows: strongest poison (without defense) "
              "first. Details: the matrix and the rankings below.")
    return Table(["poison", "budget class", "no defense", "best defense", "with it", "it on clean data", "verdict"],
                 rows, legend, align="llrlrrl")


def _noise_source(noise: dict[str, Any]) -> str:
    borrowed = noise.get("borrowed_from")
    where = f"borrowed from {borrowed}: every cell of this table is a single run" if borrowed else "this table"
    return f"the {noise.get('source') or 'pooled'} σ of {where}, the largest measured source (caveat `noise`)"


def cost_tables(g: dict[str, Any]) -> list[Table]:
    tiers = {d["label"]: d["tier"] for d in g["defenses"]}
    steps = any(c["steps"] is not None for c in g["defense_costs"])
    cpu = any(c.get("relative_cpu") is not None for c in g["defense_costs"])
    reference = next((c["reference_hardware"] for c in g["defense_costs"] if c.get("reference_hardware")), None)
    rows: list[list[Cell | str] | Section] = []
    for c in g["defense_costs"]:
        mark = "" if c.get("timed_on_reference", True) or not c.get("reference_hardware") else "*"
        rows.append([c["defense"], tiers.get(c["defense"], "–"), str(c["runs"]), f"{c['training_s'] / 60:.1f}{mark}",
                     (f"{c['relative']:.2f}×" + (f" ({c['compared']} of {c['runs']})" if c["compared"] < c["runs"] else ""))
                     if c["relative"] is not None else "–",
                     *([f"{c['relative_cpu']:.2f}×" if c.get("relative_cpu") is not None else "–"] if cpu else []),
                     f"{c['evaluation_s']:.0f}",
                     *([f"{c['steps']:.0f}" if c["steps"] is not None else "–"] if steps else []),
                     ", ".join(c["devices"]) + (f" {threads_text(c['threads'])}" if c["threads"] else "")])
    out = [Table(["defense", "tier", "runs", "training (min)", "× plain", *(["× plain (CPU)"] if cpu else []),
                  "eval (s)", *(["steps"] if steps else []), "device"], rows,
                 "Mean training wall time per run (record timings.training) and evaluation time"
                 + (f", on {reference} (where most plain-training runs were made; * = no run of that defense there: "
                    "the mean over its runs elsewhere)" if reference else "") + ". × plain: each run's training time over "
                 "the mean of plain training's runs on the same hardware (record environment: device, CPU model, "
                 "instruction set, threads), averaged over the runs that have one; (n of m): only n of the "
                 "defense's m runs have one; –: none has (runs made elsewhere, or by records that do not name "
                 "their CPU), since machines of one kind differ up to ~3x in speed. Evaluation time includes the "
                 "defense's own metrics (robust accuracy, certification)"
                 + ("; steps = optimiser steps (record training.steps)" if steps else "")
                 + ("; × plain (CPU): the same ratio of CPU seconds (record timings.training_cpu, records that count "
                    "them), robust to other processes on the machine" if cpu else "") + ". Runs shared the machine "
                 "with other runs, so times are indicative (`bench perf defenses` measures the cost per step side by side). " + g["table_provenance"].get("all", ""),
                 align="llrrr" + ("r" if cpu else "") + "r" + ("r" if steps else "") + "l")]
    prow: list[list[Cell | str] | Section] = []
    for p in g["poison_costs"]:
        b = p["budget"]
        prow.append([p["poison"], p["budget_type"], fmt(b.get("linf_255"), 0), fmt(b.get("l2_mean"), 2),
                     fmt(b.get("psnr"), 1), fmt(b.get("ssim"), 3), fmt(p["generation_s"], 1),
                     ", ".join(p["devices"]) + (f"; {p['surrogate']}" if p["surrogate"] else ""), p["params"]])
    out.append(Table(["poison", "budget type", "L∞ (/255)", "L2", "PSNR", "SSIM", "generation (s)", "device; surrogate",
                      "params"], prow,
                     "Budget type as the poison declares it (linf / l2 / l0 bounded, unbounded, none); measured "
                     "perturbation of the poisoned images vs their originals (L∞ in grey levels, mean per-image L2 in "
                     "[0,1] units, mean PSNR in dB and SSIM); wall-clock generation time of one poison (cached afterwards), "
                     "the device and the surrogate model it trained. Params: only those that differ from the poison's "
                     "defaults under this preset's generation recipe. " + g["table_provenance"].get("all", ""),
                     align="llrrrrrlp"))
    return out


def defense_metrics_tables(g: dict[str, Any]) -> list[tuple[str, Table]]:
    """One small table per defense that reports metrics besides its headline: poisons as rows, only the
    metrics that defense reports as columns (plain names, the meaning of each in the legend)."""
    m = g["defense_metrics"]
    out: list[tuple[str, Table]] = []
    for defense in dict.fromkeys(r["defense"] for r in m["rows"]):
        rows_of = [r for r in m["rows"] if r["defense"] == defense]
        keys = [k for k in m["keys"] if any(r["values"].get(k) is not None for r in rows_of)]
        if not keys:
            continue
        rows: list[list[Cell | str] | Section] = [[r["poison"], *(fmt(r["values"].get(k)) for k in keys)]
                                                  for r in rows_of]
        meaning = " ".join(f"{k}: {m['help'][k]}." for k in keys if k in m["help"])
        out.append((defense, Table(["poison", *keys], rows, meaning, align="l" + "r" * len(keys))))
    return out


def defense_metrics_legend(g: dict[str, Any]) -> Para:
    m = g["defense_metrics"]
    constants = ", ".join(f"{k} = {v:g}" for k, v in sorted(m["constants"].items()))
    return Para("Numbers the defenses report besides the headline (record metrics.defense), final model, one table per "
                "defense." + (f" Settings (the same in every run, so not columns): {constants}." if constants else "")
                + " " + g["table_provenance"].get("all", ""))


def partial_table(g: dict[str, Any]) -> Table | None:
    part = g["partial"]
    if not part["rows"]:
        return None
    rows: list[list[Cell | str] | Section] = []
    for r in part["rows"]:
        cells = [r["cells"].get(f"{x:g}") for x in part["ratios"]]
        rows.append([r["poison"], r["defense"], r["setting"],
                     *(Cell(fmt(c) + (f" ({c['steps']:.0f} steps)" if c and c.get("steps") else ""),
                            [(f"record {i + 1}", rec) for i, rec in enumerate(c["records"])]) if c else "–"
                       for c in cells)])
    header = ["poison", "defense", "training set"] + [f"{x * 100:g}%" + (" (clean)" if x == 0 else "") for x in part["ratios"]]
    return Table(header, rows, "Columns: fraction of the training set poisoned. mixed = poisoned images plus the clean "
                 "rest; clean-only = the clean rest alone (the baseline a partial poison is compared with), for as many epochs "
                 "or, where it says steps matched, for as many optimiser steps as the full run. 0% = the "
                 "clean run, 100% = the full poison, under the same defense; optimiser steps shown where records carry "
                 "them. " + g["table_provenance"].get("partial", ""), align="lll" + "r" * len(part["ratios"]))


def provenance_blocks(g: dict[str, Any]) -> list[Block]:
    prov = g["provenance"]
    rows: list[list[Cell | str] | Section] = [[c["commit"][:10], c["date"] or "–", str(c["records"]),
                                               f"{c['first']} – {c['last']}"] for c in prov["commits"]]
    out: list[Block] = [Table(["commit", "commit date", "records", "created (UTC)"], rows,
                              "Code version (record environment.git_commit) behind this group's records.", align="llrl")]
    if prov["warnings"]:
        out.append(Bullets([f"**Warning:** {w}" for w in prov["warnings"]]))
    return out
