"""Audit suites: which defenses (poison audits) and poisons (defense audits) an audit runs, as
versioned TOML files in ``benchmark/audit/suites/`` (or any file given to ``--suite``).

A suite file::

    version = 3
    description = "..."
    [computed_from]          # quick suites only: the records the selection was made from
    [[defense]]              # name, tier, optional params (only those that differ from the defaults)
    [[poison]]               # name, optional params

``standard`` lists every registered defense and poison at its default parameters (a test keeps it
equal to the registry). ``quick`` is computed from the records by :func:`quick_selection`, the
smallest cover described there; ``bench audit --recompute-quick`` rewrites it (the version goes up
when the selection changes).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.errors import BenchError
from benchmark.io import atomic_write
from benchmark.report.select import read_toml

SUITES_DIR = Path(__file__).with_name("suites")
#: plugins that are not methods to audit against: the clean reference and the import front end
NOT_SUITE_POISONS = ("none", "import")
NOT_SUITE_DEFENSES = ("none",)


@dataclass(frozen=True)
class Entry:
    """One defense or poison of a suite: its name, the params that differ from its defaults, its tier
    (defenses) and, in a computed suite, what it was chosen for."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    tier: str = ""
    covers: tuple[str, ...] = ()

    def text(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return self.name + (f" ({extra})" if extra else "")


@dataclass
class Suite:
    name: str
    version: int
    description: str
    path: Path
    defenses: list[Entry]
    poisons: list[Entry]
    computed_from: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """What an audit's output says about its suite."""
        return {"name": self.name, "version": self.version, "file": self.path.name, "description": self.description,
                "computed_from": self.computed_from or None}


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def _entries(path: Path, rows: Any, table: str) -> list[Entry]:
    if rows is None:
        return []
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("name"), str) for r in rows):
        raise BenchError(f"suite {path}: [[{table}]] entries must be tables with a name")
    out = []
    for row in rows:
        params = row.get("params") or {}
        if not isinstance(params, dict):
            raise BenchError(f"suite {path}: [[{table}]] {row['name']}: params must be a table")
        out.append(Entry(row["name"], dict(params), str(row.get("tier") or ""), tuple(row.get("covers") or ())))
    return out


def load_suite(name: str) -> Suite:
    """A suite by name (``standard``, ``quick``) or by path to a TOML file; one-line errors."""
    path = Path(name).expanduser()
    if not (path.suffix == ".toml" and path.is_file()):
        path = SUITES_DIR / f"{name}.toml"
        if not path.is_file():
            raise BenchError(f"unknown suite '{name}'; valid: {', '.join(suite_names())} or a path to a suite .toml file")
    data = read_toml(path)
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BenchError(f"suite {path}: needs an integer version")
    suite = Suite(name=path.stem, version=version, description=str(data.get("description") or ""), path=path,
                  defenses=_entries(path, data.get("defense"), "defense"),
                  poisons=_entries(path, data.get("poison"), "poison"),
                  computed_from=dict(data.get("computed_from") or {}))
    return suite


# ------------------------------------------------------------------------------------ selection

def min_cover(needs: Mapping[str, set[str]], order: Sequence[str], score: Mapping[tuple[str, str], float]) -> list[str]:
    """The smallest set of candidates that holds at least one of ``needs[item]`` for every item (an exact
    set cover: subsets are tried by increasing size, a few thousand for this benchmark's size). Among
    covers of that size: the highest sum over items of the best ``score[(item, candidate)]`` in the cover
    (the cover closest to each item's own best), then the first in ``order``. Items that nothing covers
    are left out."""
    wanted = {item: set(c) for item, c in needs.items() if c}
    candidates = [c for c in order if any(c in s for s in wanted.values())]
    for size in range(len(candidates) + 1):
        best: tuple[float, list[str]] | None = None
        for combo in itertools.combinations(candidates, size):
            chosen = set(combo)
            if not all(s & chosen for s in wanted.values()):
                continue
            total = sum(max(score.get((item, c), 0.0) for c in s & chosen) for item, s in wanted.items())
            if best is None or total > best[0] + 1e-12:
                best = (total, list(combo))
        if best is not None:
            return best[1]
    return []


def write_suite(path: Path, suite: Suite) -> None:
    """A suite file in the format :func:`load_suite` reads (atomic)."""
    lines = [f"# {suite.description}", "# Written by `bench audit --recompute-quick`; edit the records, not this file.",
             f"version = {suite.version}", f"description = {json.dumps(suite.description)}", ""]
    if suite.computed_from:
        lines.append("[computed_from]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in suite.computed_from.items()]
        lines.append("")
    for table, entries in (("defense", suite.defenses), ("poison", suite.poisons)):
        for e in entries:
            lines.append(f"[[{table}]]")
            lines.append(f"name = {json.dumps(e.name)}")
            if e.tier:
                lines.append(f"tier = {json.dumps(e.tier)}")
            if e.params:
                lines.append("params = { " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in sorted(e.params.items()))
                             + " }")
            if e.covers:
                lines.append(f"covers = {_toml_value(list(e.covers))}")
            lines.append("")
    atomic_write(path, lambda p: p.write_text("\n".join(lines), encoding="utf-8"))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))
