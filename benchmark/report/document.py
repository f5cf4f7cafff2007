"""Stage 5 of the report: the leaderboard data (build.py) -> format-neutral blocks the renderers print.

No number is computed here: every value comes from the data dict, so the pages are thin renderings of
``leaderboard.json``. Wording that states a rule quotes the rule's constant from the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.report.aggregate import margin_tolerance, other_sets
from benchmark.report.claims import claim_rule_text, claims_unrecorded, pair_text, unrecorded_text
from benchmark.report.collect import threads_text

NOT_CONVERGED = "†"
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


def fmt(stat: dict[str, Any] | None, digits: int = 1) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    text = f"{stat['mean']:.{digits}f}"
    return text + (f" ± {stat['std']:.{digits}f}" if stat.get("n", 1) > 1 else "")


def _seeds_text(n_values: set[int]) -> str:
    ns = sorted(n for n in n_values if n > 1)
    if not ns:
        return "Every cell is a single run (one seed)."
    return f"± = sample std over seeds (cells with ± have {' or '.join(map(str, ns))} runs; the others one)."


def _links(records: list[str], seeds: list[int]) -> list[tuple[str, str]]:
    return [(f"seed {s}", r) for s, r in zip(seeds, records, strict=False)] if len(records) == len(seeds) else \
        [(f"record {i + 1}", r) for i, r in enumerate(records)]


def protocol_legend(g: dict[str, Any]) -> str:
    p = g["protocol"]
    text = (f"Protocol: preset `{g['preset']}`, model {g['model']}, {p.get('epochs', '?')} epochs, batch "
            f"{p.get('batch_size', '?')}, lr {p.get('lr', '?')} ({p.get('schedule', '?')}), {g['title'].split(' · ')[0]}, "
            f"{p.get('train_size', '?')} train / {p.get('test_size', '?')} test images.")
    return text + (f" Differs from the other groups in: {g['protocol_variant']}." if g["protocol_variant"] else "")


def _convergence_rule(rules: dict[str, Any]) -> str:
    return (f"{NOT_CONVERGED} = did not converge (final epoch more than {rules['rise_points']:g} points above each of "
            f"the {rules['rise_window']} before it, train accuracy more than {rules['train_gap_points']:g} points below "
            "plain training's on clean data (for a defense that selects an earlier epoch, the last epoch's), or a "
            "diverged run): shown, never used as a verdict.")


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
            mark = ("" if e["converged"] else NOT_CONVERGED) + (OTHER_SET if other_sets(e.get("poison_sets")) else "")
            row.append(Cell(fmt(e["test_acc"]) + mark, _links(e["records"], e["seeds"])))
        rows.append(row)
    n_values = {e["test_acc"]["n"] for e in g["entries"]}
    other = (f" {OTHER_SET} = trained on another poisoned set than the column's no-defense cell (same poison, "
             "parameters and key, other bytes; caveat `poison sets`)."
             if any(other_sets(e.get("poison_sets")) for e in g["entries"]) else "")
    legend = (f"{_headline_text(g, tier)}; rows: defenses by family, columns: poisons (clean = "
              f"no poison). Lower = stronger poison, higher = better defense. {_seeds_text(n_values)} "
              f"{_convergence_rule(rules)}{other} {protocol_legend(g)} {g['table_provenance'].get(tier, '')}")
    return Table(["defense", *poisons], rows, legend)


def _headline_text(g: dict[str, Any], tier: str) -> str:
    """What the tier's numbers are: final-epoch accuracy, except where a defense's headline is another metric."""
    other = [f"{d['label']}: {d['headline']}" for d in g["defenses"] if d["tier"] == tier and not d["final_epoch"]]
    text = "Final-epoch clean test accuracy (%) of the victim"
    return text + (f" (except {'; '.join(other)})" if other else "")


def peak_para(g: dict[str, Any], rules: dict[str, Any]) -> Para | None:
    notes = g.get("peak_notes") or []
    if not notes:
        return None
    items = "; ".join(f"{n['defense']} on {n['poison']} {n['peak']:.1f} (epoch {n['peak_epoch']}, final {n['final']:.1f})"
                      for n in notes)
    return Para(f"Peak accuracy (best epoch picked on the test set: an oracle, not a result) more than "
                f"{rules['peak_note_points']:g} points above the final one: {items}.")


def _status_note(e: dict[str, Any]) -> str:
    parts = []
    if e["status"] not in ("ranked", "reference"):
        parts.append(f"**{e['status']}**")
    if e["not_run"]:
        parts.append(f"not run on {', '.join(e['not_run'])}")
    if e["not_converged"]:
        parts.append(f"not converged on {', '.join(e['not_converged'])}")
    return "; ".join(parts) or "–"


def defense_ranking(g: dict[str, Any], tier: str, rules: dict[str, Any]) -> Table:
    r = g["rankings"][tier]
    rows: list[list[Cell | str] | Section] = []
    for e in r["entries"]:
        rank = "ref" if e["status"] == "reference" else str(e["rank"]) if "rank" in e else "–"
        rows.append([rank, e["defense"], fmt(e["clean"]), f"{e['cost']:+.1f}" if e["cost"] is not None else "–",
                     fmt(e["worst"]), e["worst_poison"] or "–", f"{e['mean']:.1f}" if e["mean"] is not None else "–",
                     f"{e['covered']}/{e['total']}", _status_note(e)])
    noise = g["noise"]
    tie = (f"Ranks within noise share a rank: a worst case less than {noise['tie_sigmas']:g} standard errors of "
           f"the difference, {noise['tie_sigmas']:g}σ·√(1/n_a + 1/n_b) (σ = {noise['sigma']:.2f}, the pooled "
           f"seed-to-seed std of {_noise_source(noise)}; {margin_tolerance(noise['sigma'], 1, 1):.2f} points "
           "between two single runs), below the first of its run of ties gets that one's rank."
           if noise["sigma"] is not None else
           "No cell has several seeds, so the noise is not measured and only equal values tie.")
    legend = (f"Comparable poisons (K = {len(r['poisons'])}): {', '.join(r['poisons'])}. Worst case = lowest accuracy over "
              "the converged cells of those poisons (k of K, column poisons); mean over the same cells. Cost = "
              "clean accuracy minus plain training's. Ranked by worst case, higher = better. " + tie + " Not ranked: "
              f"`none` (reference), **fails on clean** (clean accuracy below {rules['fails_clean_fraction']:.0%} of plain "
              "training's), **not converged** (its clean cell did not converge), **incomplete** (converged cells on fewer "
              f"than {rules['min_coverage']:.0%} of the comparable poisons). " + g["table_provenance"].get(tier, ""))
    return Table(["rank", "defense", "clean", "cost", "worst case", "worst poison", "mean", "poisons", "note"],
                 rows, legend, align="rlrrrlrrl")


def poison_ranking(g: dict[str, Any], rules: dict[str, Any]) -> Table:
    r = g["poison_ranking"]
    rows: list[list[Cell | str] | Section] = []
    for e in r["entries"]:
        rows.append([str(e["rank"]) if "rank" in e else "–", e["poison"], fmt(e["worst"]), e["best_defense"] or "–",
                     fmt(e["undefended"]), f"{e['drop']:.1f}" if e["drop"] is not None else "–",
                     f"{e['covered']}/{e['total']}", _status_note(e)])
    legend = ("Worst case of a poison = the highest accuracy any standard-tier defense recovers on a converged cell "
              f"(defenses that fail or do not converge on clean data excluded; D = {len(r['defenses'])}: "
              f"{', '.join(r['defenses'])}); lower = stronger poison. Drop = plain training's clean accuracy minus the "
              "worst case. Same tie rule as the defense ranking; a poison run under fewer than "
              f"{rules['min_coverage']:.0%} of D is **incomplete** and not ranked. "
              + g["table_provenance"].get(rules["standard_tier"], ""))
    return Table(["rank", "poison", "worst case", "best defense", "no defense", "drop", "defenses", "note"], rows,
                 legend, align="rlrlrrrl")


def highlight_items(h: dict[str, Any], within: float) -> list[str]:
    if not h:
        return []
    out = ["**Without defense** (clean data: " + f"{h['clean']:.1f} %): " + ", ".join(
        f"{u['poison']} {u['acc']:.1f} % ({u['acc'] - h['clean']:+.1f})" for u in h["undefended"]) + "."]
    if h["no_effect"]:
        out.append(f"**No effect** even without defense (within {within:g} points of clean): {', '.join(h['no_effect'])}.")
    if h["neutralised"]:
        out.append(f"**Neutralised** by a standard-tier defense (within {within:g} points of the same defense on clean "
                   "data, converged cells): " + "; ".join(
                       f"{n['poison']} by " + ", ".join(f"{b['defense']} ({b['acc']:.1f} vs {b['clean']:.1f})" for b in n["by"])
                       for n in h["neutralised"]) + ".")
    if h["standing"]:
        out.append("**Not neutralised by any standard-tier defense run:** " + "; ".join(
            f"{s['poison']} (closest: {s['closest']}, {s['acc']:.1f} vs {s['clean']:.1f} on clean data; {s['run']} of "
            f"{s['usable']} usable defenses run and converged)" for s in h["standing"]) + ".")
    if h["costly"]:
        out.append(f"**Costly on clean data** (more than {within:g} points below plain training): "
                   + ", ".join(f"{c['defense']} {c['cost']:+.1f}" for c in h["costly"]) + ".")
    if h["unranked"]:
        out.append("**Not judged**: " + ", ".join(f"{u['defense']} ({u['status']})" for u in h["unranked"]) + ".")
    return out


def claims_table(g: dict[str, Any]) -> Table | None:
    """The claims with at least one recorded cell (None when there is none); the others in the legend."""
    unrecorded = claims_unrecorded(g)
    rows: list[list[Cell | str] | Section] = []
    for c in (c for c in g["claims"] if c not in unrecorded):
        cells = "; ".join(pair_text(p) for p in c["pairs"])
        records = [(f"{p['selector']}", r) for p in c["pairs"] if p["cell"] for r in p["cell"]["records"]]
        test = c["test"] + (f" (source: {c['protocol']})" if c.get("protocol") else "")
        rows.append([c["claim"], c["source"], test, Cell(cells, records), f"**{c['verdict']}**"])
    noise = g["noise"]
    legend = ("Papers' claims checked on this table's cells (`bench claims`; claims in benchmark/report/claims.toml). "
              + claim_rule_text(noise) + " Cells that did not converge, or whose "
              "reference did not, are never a verdict. A claim fails if one of its cells fails, is within noise if one "
              "is, holds if a judged cell holds and none fails, is inconclusive if every cell run is, and is not run "
              "when none could be judged. The test column names the source's conditions (* = a cell must share it "
              "for a verdict). Seeds: the runs behind each number, and how many poison instances (keys) they "
              "trained on. " + protocol_legend(g) + " " + g["table_provenance"].get("all", ""))
    if not rows:
        return None
    if unrecorded:
        legend += " " + unrecorded_text(unrecorded)
    return Table(["claim", "source", "test", "our cells", "verdict"], rows, legend, align="lllpl")


def _noise_source(noise: dict[str, Any]) -> str:
    borrowed = noise.get("borrowed_from")
    return f"{borrowed}, borrowed: every cell of this table is a single run" if borrowed else "this table"


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


def defense_metrics_table(g: dict[str, Any]) -> Table | None:
    m = g["defense_metrics"]
    if not m["rows"]:
        return None
    digits = 1
    rows: list[list[Cell | str] | Section] = [[r["defense"], r["poison"], *(fmt(r["values"].get(k), digits) for k in m["keys"])]
                                              for r in m["rows"]]
    meaning = " ".join(f"`{k}`: {h}." for k, h in m["help"].items())
    constants = ", ".join(f"`{k}` = {v:g}" for k, v in sorted(m["constants"].items()))
    return Table(["defense", "poison", *(f"`{k}`" for k in m["keys"])], rows,
                 "Numbers the defenses report besides the headline (record metrics.defense), final model. " + meaning
                 + (f" Settings (the same in every run, so not columns): {constants}." if constants else "") + " "
                 + g["table_provenance"].get("all", ""), align="ll" + "r" * len(m["keys"]))


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


def references_table(data: dict[str, Any]) -> Table:
    rows: list[list[Cell | str] | Section] = []
    several = len(data["groups"]) > 1
    for ref in data["references"]:
        source = f"{ref['paper']}, {ref['table']}"
        setting = f"{ref['poison']} × {ref['defense']}"
        if not ref["ours"]:
            rows.append([source, setting, f"{ref['value']:.2f}", "not run", "–", ref["note"]])
        for o in ref["ours"]:
            ours = fmt(o) + ("" if o["converged"] else NOT_CONVERGED)
            ours += (f" ({o['defense']})" if o["defense"] != ref["defense"] else "") + (f" [{o['group']}]" if several else "")
            verdict = f"comparable, {o['delta']:+.1f}" if o["comparable"] else "different: " + "; ".join(o["differences"])
            rows.append([source, setting, f"{ref['value']:.2f}",
                         Cell(ours, _links(o["records"], o["seeds"]), muted=not o["comparable"]),
                         Cell(verdict, muted=not o["comparable"]), ref["note"]])
    protocols = sorted({r["protocol"] for r in data["references"]})
    return Table(["source", "setting", "paper", "ours", "protocol", "paper's setting"], rows,
                 f"Published clean test accuracies (benchmark/report/references.toml, version {data['references_version']}) "
                 "beside our cells of the same poison and defense (any variant of it, named in brackets). A pair is "
                 "comparable only with the same dataset (from a source comparable to papers), model, epochs and "
                 "protocol preset, and then shows ours minus the paper's; otherwise it is greyed (italics here) and "
                 "marked different, with what differs, and no difference is computed. Papers' protocols: "
                 + "; ".join(protocols) + f" (`paper` = this benchmark's paper preset). {NOT_CONVERGED} = did not converge.",
                 align="llrrll")


def provenance_blocks(g: dict[str, Any]) -> list[Block]:
    prov = g["provenance"]
    rows: list[list[Cell | str] | Section] = [[c["commit"][:10], c["date"] or "–", str(c["records"]),
                                               f"{c['first']} – {c['last']}"] for c in prov["commits"]]
    out: list[Block] = [Table(["commit", "commit date", "records", "created (UTC)"], rows,
                              "Code version (record environment.git_commit) behind this group's records.", align="llrl")]
    if prov["warnings"]:
        out.append(Bullets([f"**Warning:** {w}" for w in prov["warnings"]]))
    return out
