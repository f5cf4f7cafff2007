"""What ``bench list`` and ``bench claims`` print: the registries and the papers' claims as tables."""

from __future__ import annotations

import dataclasses
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmark.errors import BenchError
from benchmark.params import describe_params, format_value, param_help
from benchmark.plugin import first_paragraph
from benchmark.protocol import PRESET_HELP
from benchmark.registry import DATASETS, DEFENSES, MODELS, POISONS
from benchmark.report.claims import claims_unrecorded, pair_text, unrecorded_text
from defenses.base import TIERS

LIST_SECTIONS = ("poisons", "defenses", "models", "datasets", "presets")
MAX_UNRECORDED_LISTED = 8  # beyond this, a count: a table with a handful of records would list every claim


def _bounds(f: Any) -> str:
    m = f.metadata
    parts = [f"{sym} {format_value(f.name, m[key])}" for key, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
             if m.get(key) is not None]
    if m.get("odd"):
        parts.append("odd")
    if m.get("choices"):
        parts.append(" | ".join(str(c) for c in m["choices"]))
    return ", ".join(parts)


def detail_table(section: str, name: str) -> Table:
    """Every parameter of one poison or defense: type, default, valid range, meaning, preset values."""
    if section not in ("poisons", "defenses"):
        raise BenchError(f"'bench list {section} NAME' is not available; NAME works with: poisons, defenses")
    reg = POISONS if section == "poisons" else DEFENSES
    cls = reg.get(name)
    canonical = reg.canonical(name)
    aliases = reg.aliases_of(canonical)
    presets = {k: v for k, v in getattr(cls, "preset_params", {}).items()
               if any(getattr(cls.Params(), n) != x for n, x in v.items())}  # presets that change something
    kind = (f"threat model: {cls.threat_model} · budget: {cls.budget_type}" if section == "poisons" else
            f"family: {cls.family} · tier by default: {cls.default_tier} ({TIERS[cls.default_tier]})")
    table = Table(title=f"{section[:-1]} {canonical}" + (f" (aliases: {', '.join(aliases)})" if aliases else "")
                  + f": {cls.describe()}", title_justify="left", caption=kind, caption_justify="left")
    for col in ("parameter", "type", "default", "valid", "meaning", *(f"{p} preset" for p in presets)):
        table.add_column(col, style="bold cyan" if col == "parameter" else None, no_wrap=col == "parameter")
    for f in dataclasses.fields(cls.Params):
        row = [f.name, type(f.default).__name__, format_value(f.name, f.default), _bounds(f), param_help(f)]
        row += [format_value(f.name, v[f.name]) if f.name in v and v[f.name] != f.default else "" for v in presets.values()]
        table.add_row(*row)
    if not dataclasses.fields(cls.Params):
        table.add_row("(none)", "", "", "", "")
    return table


def _kind(cls: Any, section: str) -> str:
    """What kind of poison (threat model, budget type) or defense (family, and threat-model tier by default)."""
    return f"{cls.threat_model} · budget {cls.budget_type}" if section == "poisons" else \
        f"{cls.family} · {cls.default_tier}"


def _plugin_rows(table: Table, section: str) -> None:
    table.add_column("parameters (default)")
    reg = POISONS if section == "poisons" else DEFENSES
    for entry in reg.names():
        cls = reg.get(entry)
        defaults = {n: d for n, _t, d, _h in describe_params(cls.Params)}
        params = ", ".join(f"{n}={format_value(n, d)}" for n, d in defaults.items()) or "-"
        for preset, values in getattr(cls, "preset_params", {}).items():
            changed = {n: v for n, v in values.items() if defaults.get(n) != v}
            if changed:  # generation presets follow --preset and replace these defaults
                params += f"\n{preset} preset: " + ", ".join(f"{n}={format_value(n, v)}" for n, v in changed.items())
        aliases = reg.aliases_of(entry)
        label = entry + (f" ({', '.join(aliases)})" if aliases else "")
        table.add_row(f"{label}\n[not bold dim]{_kind(cls, section)}[/]", cls.describe(), params)


def list_tables(what: str | None) -> list[Table]:
    """One table per section (all of them without ``what``)."""
    tables = []
    for section in [what] if what else LIST_SECTIONS:
        table = Table(title=section, title_justify="left", show_lines=False)
        table.add_column("name", style="bold cyan", no_wrap=True)
        table.add_column("description")
        if section in ("poisons", "defenses"):
            _plugin_rows(table, section)
        elif section in ("models", "datasets"):
            reg = MODELS if section == "models" else DATASETS
            for entry in reg.names():
                label = entry + "<name>" if entry.endswith(":") and section == "models" else entry
                label = "imagefolder:PATH" if entry == "imagefolder:" else label
                aliases = reg.aliases_of(entry)
                label += f" ({', '.join(aliases)})" if aliases else ""
                table.add_row(label, first_paragraph(reg.get(entry).__doc__))
        else:
            for entry, text in PRESET_HELP.items():
                table.add_row(entry, text)
        tables.append(table)
    return tables


def show_list(console: Console, what: str | None, name: str | None) -> None:
    if name is not None:
        console.print(detail_table(str(what), name))
        return
    for table in list_tables(what):
        console.print(table)
    if what in ("poisons", "defenses", None):
        console.print("Details of one entry (meaning and range of every parameter): bench list poisons cuda, "
                      "bench list defenses at")


def show_claims(console: Console, groups: list[dict[str, Any]]) -> None:
    """One table per paper group (claims with a recorded cell; the others in one line), then verdict counts."""
    for g in groups:
        sigma = g["noise"]["sigma"]
        borrowed = g["noise"].get("borrowed_from")
        source = f", borrowed from {borrowed}: every cell here is a single run" if borrowed else ""
        kind = {"poison instance": "poison-instance", "machine": "machine-to-machine"}.get(g["noise"].get("source"),
                                                                                             "seed-to-seed")
        scale = (f"{kind} σ {sigma:.2f} points, the largest measured source{source}; ± = the margin a verdict needs"
                 if sigma is not None else "no seed-to-seed spread measured")
        table = Table(title=f"{g['title']} ({scale})", show_lines=True, title_justify="left")
        for col in ("claim", "test", "our cells (seeds)", "verdict"):
            table.add_column(col, overflow="fold")
        unrecorded = claims_unrecorded(g)
        for c in (c for c in g["claims"] if c not in unrecorded):
            cells = "\n".join(pair_text(p) + (f"\n[dim]  ({p['why']})[/dim]" if p.get("why") else "") for p in c["pairs"])
            test = c["test"] + (f"\n[dim]source: {c['protocol']}[/dim]" if c.get("protocol") else "")
            table.add_row(f"{c['claim']}\n[dim]{c['source']}[/dim]", test, cells, c["verdict"])
        if table.row_count:
            console.print(table)
        else:
            console.print(f"{table.title}: no claim has a recorded cell")
        if len(unrecorded) > MAX_UNRECORDED_LISTED:
            console.print(f"[dim]{len(unrecorded)} claims have no record for any of their cells in this table.[/dim]")
        elif unrecorded:
            console.print(f"[dim]{unrecorded_text(unrecorded)}[/dim]")
    counts = {v: sum(c["verdict"] == v for g in groups for c in g["claims"]) for v in ("holds", "fails", "within noise", "inconclusive", "not run")}
    console.print(", ".join(f"{n} {v}" for v, n in counts.items()))
