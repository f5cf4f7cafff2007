"""Stage 5b of the report: the papers' side of the page as blocks, the claims checked on our cells and the
published numbers beside ours (paper vs ours), from the leaderboard data like document.py."""

from __future__ import annotations

from typing import Any

from benchmark.report.claims import claim_rule_text, claims_unrecorded, pair_text, unrecorded_text
from benchmark.report.document import (
    NOT_CONVERGED,
    Block,
    Bullets,
    Cell,
    Section,
    Table,
    fmt,
    protocol_legend,
    record_links,
)
from benchmark.report.references import HOLDS_BELOW


def claims_blocks(g: dict[str, Any]) -> list[Block] | None:
    """The claims with at least one recorded cell (None when there is none), the others in the legend: a
    narrow table (claim, test, verdict linked to the records) and, under it, each claim's source and cells."""
    unrecorded = claims_unrecorded(g)
    rows: list[list[Cell | str] | Section] = []
    details: list[str] = []
    for c in (c for c in g["claims"] if c not in unrecorded):
        records = [(f"{p['selector']}", r) for p in c["pairs"] if p["cell"] for r in p["cell"]["records"]]
        rows.append([c["claim"], c["test"], Cell(f"**{c['verdict']}**", records)])
        conditions = f" Source conditions: {c['protocol']}." if c.get("protocol") else ""
        details.append(f"**{c['claim']}** ({c['source']}): " + "; ".join(
            pair_text(p) + (f" ({p['why']})" if p.get("why") else "") for p in c["pairs"]) + "." + conditions)
    noise = g["noise"]
    legend = ("Papers' claims checked on this table's cells (`bench claims`; claims in benchmark/report/claims.toml). "
              + claim_rule_text({**noise, "multiplicity": multiplicity_text(g.get("multiplicity"))})
              + " Cells that are not a verdict (stability rule in the matrix legend), or whose "
              "reference is not, are never a verdict; an underfitting cell is one, with its caveat. A claim fails if one "
              "of its cells fails, is within noise if one is, holds if a judged cell holds and none fails, is "
              "inconclusive if every cell run is, and is not run when none could be judged. Under the table, each "
              "claim's cells and the source's conditions (* = a cell must share it for a verdict). Seeds: the runs behind each number, and "
              "how many poison instances (keys) they trained on. " + protocol_legend(g) + " "
              + g["table_provenance"].get("all", ""))
    if not rows:
        return None
    if unrecorded:
        legend += " " + unrecorded_text(unrecorded)
    return [Table(["claim", "test", "verdict"], rows, legend, align="lll"), Bullets(details)]


def multiplicity_text(m: dict[str, Any] | None) -> str:
    """How the table handles multiplicity: Holm across its decided cells (build.multiplicity)."""
    if not m or not m["decided"]:
        return "Multiplicity: no cell is decided, so there is nothing to correct."
    if m["kept"] is None:
        return "Multiplicity: not corrected (no σ measured)."
    lost = f": {'; '.join(m['lost'])} would be within noise after it" if m["lost"] else ""
    return (f"Multiplicity: each cell is tested at about 5 % (two-sided, 2σ); across this table's {m['decided']} decided "
            f"cells, Holm's correction at family-wise α = {m['alpha']:g} keeps {m['kept']} of them decided{lost}.")


def _ratio_text(value: str, clean: float | None, mean: float | None) -> str:
    if clean is None or mean is None or clean <= 0:
        return f"{value} / –"
    return f"{value} / {clean:.1f} = {mean / clean:.2f}"


def _names_more(label: str, setting: str) -> bool:
    """Whether a defense label says more than the setting text (a variant, not just the same parameters)."""
    inner = label.partition("(")[2].rstrip(")")
    return bool(inner) and any(part.strip() not in setting for part in inner.split(","))


def _direction(paper: float | None, ours: float | None) -> str:
    if paper is None or ours is None:
        return "–"
    says = ["holds" if r < HOLDS_BELOW else "defended" for r in (paper, ours)]
    return f"agrees: {says[0]}" if says[0] == says[1] else f"**differs**: paper {says[0]}, ours {says[1]}"


def references_table(data: dict[str, Any]) -> Table:
    """Paper vs ours as ratios to each side's own clean accuracy, with the direction each side shows."""
    rows: list[list[Cell | str] | Section] = []
    several = len(data["groups"]) > 1
    kinds = {"defense": "same defense, clean data", "plain": "plain training, clean data"}
    differences: dict[str, list[str]] = {}
    for ref in (r for r in data["references"] if r["poison"] != "none"):
        clean = ref.get("clean")
        paper_ratio = ref["value"] / clean["value"] if clean and clean["value"] > 0 else None
        source = f"{ref['paper']}, {ref['table']}"
        params = ref.get("defense_params") or {}
        setting = f"{ref['poison']} × {ref['defense']}" + (
            f" ({', '.join(f'{k}={v}' for k, v in params.items())})" if params else "")
        paper = _ratio_text(f"{ref['value']:.1f}", clean["value"] if clean else None, ref["value"])
        if not ref["ours"]:
            rows.append([source, setting, paper, "not run", "–"])
        for o in ref["ours"]:
            if not o["comparable"]:
                differences.setdefault(o["group_title"], o["differences"])
            ours = _ratio_text(fmt(o) + ("" if o["converged"] else NOT_CONVERGED), o.get("clean"), o["mean"])
            ours += f" [{o['defense']}]" if _names_more(o["defense"], setting) else ""
            ours += f" ({o['group_title'].split(' · ')[-1]})" if several else ""
            ratio = o["mean"] / o["clean"] if o.get("clean") and o["mean"] is not None else None
            verdict = _direction(paper_ratio, ratio if o["converged"] else None)
            if o["comparable"]:
                verdict += f"; same protocol, ours − paper {o['delta']:+.1f}"
            rows.append([source, setting, paper, Cell(ours, record_links(o["records"], o["seeds"])), verdict])
    used = sorted({kinds[r["clean"]["kind"]] for r in data["references"] if r.get("clean")})
    protocols = sorted({r["protocol"] for r in data["references"]})
    diff_text = "; ".join(f"{title}: {', '.join(d)}" for title, d in differences.items())
    return Table(["source", "setting", "paper: acc / clean = ratio", "ours: acc / clean = ratio", "direction"], rows,
                 f"Published clean test accuracies (benchmark/report/references.toml, version {data['references_version']}) "
                 "beside our cells of the same poison and defense (another variant of the defense in brackets). Raw "
                 "accuracies are not comparable across protocols, so each side is divided by its own clean accuracy ("
                 + " or ".join(used) + ", the same kind on both sides; – where the paper reports none). Direction: the "
                 f"poison **holds** where the ratio is below {HOLDS_BELOW:g}, else the defense **defended**; cells that "
                 f"did not converge ({NOT_CONVERGED}) get no direction. Where our protocol is the paper's, ours − paper "
                 "is given too. Our protocols differ from the papers' in: " + (diff_text or "nothing") + ". Papers' "
                 "protocols: " + "; ".join(protocols) + " (`paper` = this benchmark's paper preset).",
                 align="llrrl")
