"""Stage 5c of the report: the targeted-poisoning section as blocks, from ``leaderboard.json``'s ``targeted``
part (report/targeted.py), like document.py: no number is computed here."""

from __future__ import annotations

from typing import Any

from benchmark.report.collect import STANDARD_TIER
from benchmark.report.document import (
    NOT_CONVERGED,
    Block,
    Bullets,
    Cell,
    Heading,
    Para,
    Table,
    fmt,
    protocol_legend,
    record_links,
)
from benchmark.report.targeted import budget_text

ANCHOR = "targeted"
TITLE = "Targeted poisoning (a different threat model)"
HOW = "`bench sweep --poisons witches-brew --seeds 0,1,2,3,4,5,6,7,8,9 --defenses none,...` runs trials"


def targeted_link(data: dict[str, Any]) -> Para | None:
    """A pointer from the page's introduction to the section, when it has trials."""
    t = data.get("targeted") or {}
    if not t.get("groups"):
        return None
    return Para(f"Targeted poisoning is a different threat model (one chosen test image misclassified, not accuracy "
                f"lowered): its {_records(t['records'])} are not counted above, and have [their own section](#{ANCHOR}), "
                "never ranked with these tables.")


def section(data: dict[str, Any]) -> list[Block]:
    """The heading, what a trial measures, then one table per protocol group (one line when there is none)."""
    t = data.get("targeted") or {}
    out: list[Block] = [Heading(2, TITLE, ANCHOR)]
    if not t.get("groups"):
        return out + [Para(f"No records of targeted poisoning in `{data['results']}` ({HOW}).")]
    out.append(Para(t["measured"] + f" From {_records(t['records'])} in `{t['results']}`."))
    for g in t["groups"]:
        out += [Heading(3, g["title"], g["slug"]), cells_table(g, t["level"])]
        if unsettled := [f"{c['poison']} × {c['defense']}: {c['not_converged']}" for c in g["cells"] if c["not_converged"]]:
            out.append(Bullets([f"{NOT_CONVERGED} {u}" for u in unsettled]))
    return out


def rate_text(c: dict[str, Any]) -> str:
    """``7/10 = 70.0 % [34.8, 93.3]``: successes of trials, the rate and its interval in %."""
    if not c["trials"]:
        return "no trial"
    low, high = c["ci"]
    return f"{c['successes']}/{c['trials']} = {100 * c['rate']:.1f} % [{100 * low:.1f}, {100 * high:.1f}]"


def _seeds(seeds: list[int]) -> str:
    """``0–9`` for a run of consecutive seeds, else the list."""
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}–{seeds[-1]}"
    return " ".join(map(str, seeds)) or "–"


def cells_table(g: dict[str, Any], level: float) -> Table:
    """One row per (poison, defense): trials, success rate with its interval, victim and clean accuracy."""
    rows: list[list[Cell | str]] = []
    for c in g["cells"]:
        defense = c["defense"] if c["tier"] == STANDARD_TIER else f"{c['defense']} ({c['tier']})"
        victim = fmt(c["test_acc"], runs=False) + (f" {NOT_CONVERGED}" if c["not_converged"] else "")
        rows.append([c["poison"], budget_text(c["budget"]), defense,
                     Cell(rate_text(c), record_links(c["records"], c["seeds"])),
                     "–" if c.get("median_adversarial_prob") is None else f"{c['median_adversarial_prob']:.3f}",
                     victim, Cell(fmt(c["clean"]), record_links(c["clean_records"], c["clean_seeds"])),
                     "–" if c["drop"] is None else f"{c['drop']:.1f}", _seeds(c["seeds"])])
    missing = sum(len(c["without_target"]) for c in g["cells"])
    legend = (f"**success** = trials whose target the victim classified as the adversarial class, of the trials, with "
              f"the exact two-sided {100 * level:g} % Clopper-Pearson interval (%). **p(adv)** = the median over the "
              "trials of the victim's probability of the adversarial class on its target (how far the poison moved "
              "it, flipped or not). **victim acc** = the victim's clean "
              "test accuracy (%), mean ± sd over the trials; **clean data** = the same defense trained on clean data "
              "(availability records of this protocol; – = not run); **drop** = clean data − victim acc (points): a "
              "poison that wrecks accuracy is not a targeted poison. **budget** = share (and number) of poisoned "
              "training images and their L∞ bound. One seed = one trial = its own key, target and poison images. "
              f"{NOT_CONVERGED} = a victim that did not converge (the stability rule of the availability matrix, "
              "with its σ), listed under the table; its trial still counts. A defense outside the standard tier "
              f"({STANDARD_TIER}) is named with its tier; nothing here is ranked. " + protocol_legend(g)
              + (f" {missing} record{'s' if missing > 1 else ''} without a target outcome (not counted as "
                 "trials)." if missing else ""))
    return Table(["poison", "budget", "defense", f"success ({100 * level:g} % CI)", "p(adv)", "victim acc", "clean data",
                  "drop", "seeds"], rows, legend, align="lllrrrrrl")


def _records(n: int) -> str:
    return f"{n} record" + ("" if n == 1 else "s")
