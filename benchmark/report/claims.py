"""Claims of the papers, machine-checked on our cells (``claims.toml``; ``bench claims``).

A claim names a poison, the defenses it is checked under and a test ``acc OP REF [+|- k]``; each named
cell gets a verdict: *holds* / *fails* when its accuracy clears the threshold, one way or the other, by
at least aggregate.TIE_SIGMAS standard errors of the difference between the cell and its reference,
sigma·sqrt(1/n_cell + 1/n_ref) with sigma the group's pooled seed-to-seed std (both are means of
independent runs, so two single runs differ by sigma·sqrt(2) on average, and more seeds on either side
narrow it), *within noise* when it is closer than that, *not run* when a cell or its reference has no
record, *not converged* when one of them did not converge (aggregate.run_flags): such a cell is never a
verdict. The claim's verdict: fails if a
cell fails, else within noise if one is, else holds if one holds, else not run.
"""

from __future__ import annotations

import json
import math
import operator
import re
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.errors import BenchError
from benchmark.report.aggregate import TIE_SIGMAS, margin_tolerance, other_sets, rnd
from benchmark.report.collect import defense_defaults, flat
from benchmark.report.select import load_toml, mask, same

CLAIMS_FILE = Path(__file__).with_name("claims.toml")
REQUIRED = ("id", "claim", "source", "poison", "defenses", "test")
TEST = re.compile(r"^\s*acc\s*(<=|>=|<|>)\s*(baseline|clean|other)\s*(?:([+-])\s*(\d+(?:\.\d+)?))?\s*$")
OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
SHOWN_OPS = {"<=": "≤", ">=": "≥", "<": "<", ">": ">"}
VERDICTS = ("holds", "fails", "within noise", "not run")


def load_claims(path: Path | None = None) -> tuple[int, list[dict[str, Any]]]:
    """(version, claims) with each test parsed; a malformed claim is a one-line error."""
    path = path or CLAIMS_FILE
    version, rows = load_toml(path, "claim", REQUIRED)
    for row in rows:
        m = TEST.match(str(row["test"]))
        if not m:
            raise BenchError(f"{path}: claim '{row['id']}': test {row['test']!r} is not 'acc OP baseline|clean|other [+|- k]'")
        if m.group(2) == "other" and not isinstance(row.get("other"), dict):
            raise BenchError(f"{path}: claim '{row['id']}' compares with 'other' but has no other = {{...}}")
        row["_test"] = (m.group(1), m.group(2), (-1 if m.group(3) == "-" else 1) * float(m.group(4) or 0))
    return version, rows


def _sel(value: Any) -> dict[str, Any]:
    return {"name": value} if isinstance(value, str) else dict(value)


def lookup(g: pd.DataFrame, flags: pd.Series, poison: dict[str, Any], defense: dict[str, Any],
           ratio: float) -> dict[str, Any] | None:
    """Accuracy of the runs a selector pair names at ``ratio`` (None if there are none)."""
    clean_only = bool(poison.get("clean_only", False))
    ratio = 1.0 if poison["name"] == "none" else ratio
    hit = mask(g, poison, defense, any_variant=False)
    hit &= g["ratio"].map(lambda r: same(float(r), ratio)) & (g["clean_only"] == clean_only)
    runs = g[hit]
    if clean_only and runs["match_steps"].any():  # the step-matched baseline when there is one
        runs = runs[runs["match_steps"]]
    if runs.empty:
        return None
    if runs[["poison_label", "defense_label"]].drop_duplicates().shape[0] > 1:
        runs = _one_config(runs)
    acc = runs["test_acc"].astype(float)
    return {"poison": str(runs["poison_label"].iloc[0]), "defense": str(runs["defense_label"].iloc[0]),
            "ratio": ratio, "clean_only": clean_only, "mean": rnd(acc.mean()),
            "std": rnd(acc.std(ddof=1) if len(acc) > 1 else 0.0), "n": len(acc),
            "seeds": sorted(int(s) for s in runs["seed"]), "converged": bool((flags[runs.index] == "").all()),
            "poison_sets": sorted({int(s) for s in runs["poison_set"]} - {0}), "records": sorted(runs["record"])}


def _one_config(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of one cell when a selector names several (e.g. records made before a defense's defaults
    changed): the cell at today's defaults for the params the selector leaves open, else the one with
    most runs; never an average over different configurations."""
    def at_defaults(row: pd.Series) -> bool:
        want = defense_defaults(str(row["defense"]), str(row["preset"]))
        have = flat(json.loads(row["defense_params"]))
        return want is not None and all(have.get(k) == v for k, v in want.items())

    cells = runs.groupby(["poison_label", "defense_label"], sort=True)
    best = min(cells.groups, key=lambda key: (not at_defaults(runs.loc[cells.groups[key][0]]),
                                              -len(cells.groups[key]), key))
    return runs.loc[cells.groups[best]]


def _reference(g: pd.DataFrame, flags: pd.Series, claim: dict[str, Any], kind: str, poison: dict[str, Any],
               defense: dict[str, Any], ratio: float) -> dict[str, Any] | None:
    if kind == "baseline":
        return lookup(g, flags, {"name": "none"}, {"name": "none"}, 1.0)
    if kind == "clean":
        return lookup(g, flags, {"name": "none"}, defense, 1.0)
    other = claim["other"]
    return lookup(g, flags, _sel(other.get("poison", poison)), _sel(other.get("defense", defense)), ratio)


def check_pair(cell: dict[str, Any] | None, ref: dict[str, Any] | None, test: tuple[str, str, float],
               sigma: float | None) -> dict[str, Any]:
    op, _kind, offset = test
    if cell is None or ref is None:
        return {"verdict": "not run", "threshold": None, "offset": offset, "margin": None, "tolerance": None}
    threshold = ref["mean"] + offset
    if not (cell["converged"] and ref["converged"]):
        return {"verdict": "not converged", "threshold": rnd(threshold), "offset": offset, "margin": None,
                "tolerance": None}
    margin = cell["mean"] - threshold
    tolerance = margin_tolerance(sigma, cell["n"], ref["n"])
    verdict = "within noise" if abs(margin) < tolerance else ("holds" if OPS[op](cell["mean"], threshold) else "fails")
    return {"verdict": verdict, "threshold": rnd(threshold), "offset": offset, "margin": rnd(margin),
            "tolerance": rnd(tolerance)}


def claim_rule_text(noise: dict[str, Any]) -> str:
    """The verdict rule of :func:`check_pair` with this table's numbers, for the claims legends."""
    sigma = noise.get("sigma")
    if sigma is None:
        return ("No seed-to-seed spread is measured for this table, so a cell holds or fails on which side of "
                "its threshold it lies.")
    k = noise.get("tie_sigmas", TIE_SIGMAS)
    return (f"A cell holds or fails when it clears its threshold, one way or the other, by at least {k:g} standard "
            f"errors of the difference, {k:g}σ·√(1/n_cell + 1/n_ref) with σ = {sigma:.2f} (the pooled seed-to-seed "
            f"std): {margin_tolerance(sigma, 1, 1):.2f} points for two single runs, {margin_tolerance(sigma, 1, 3):.2f} "
            f"against a 3-seed reference, {margin_tolerance(sigma, 3, 3):.2f} for 3 seeds each (± after the seeds), "
            "and is within noise otherwise.")


def evaluate(claims: list[dict[str, Any]], g: pd.DataFrame, flags: pd.Series, sigma: float | None) -> list[dict[str, Any]]:
    """Every claim's verdict on one protocol group (``g``: its tidy runs; ``flags``: run_flags(g); ``sigma``:
    its pooled seed-to-seed std, :func:`aggregate.group_noises`)."""
    out = []
    for claim in claims:
        poison = _sel(claim["poison"])
        pairs = []
        for ratio in claim.get("ratios") or [1.0]:
            for d in claim["defenses"]:
                defense = _sel(d)
                cell = lookup(g, flags, poison, defense, float(ratio))
                ref = _reference(g, flags, claim, claim["_test"][1], poison, defense, float(ratio))
                pairs.append({"selector": _selector_text(poison, defense, float(ratio)), "cell": cell, "reference": ref,
                              **check_pair(cell, ref, claim["_test"], sigma)})
        out.append({"id": claim["id"], "claim": claim["claim"], "source": claim["source"], "test": _test_text(claim),
                    "verdict": overall([p["verdict"] for p in pairs]), "pairs": pairs,
                    "note": _note(pairs)})
    return out


def overall(verdicts: list[str]) -> str:
    for v in ("fails", "within noise", "holds"):
        if v in verdicts:
            return v
    return "not run"


def _note(pairs: list[dict[str, Any]]) -> str:
    run = [p for p in pairs if p["verdict"] in ("holds", "fails", "within noise")]
    if len(run) == len(pairs):
        return ""
    left = [f"{p['selector']}: {p['verdict']}" for p in pairs if p not in run]
    return f"{len(run)} of {len(pairs)} cells judged; " + "; ".join(left)


def _selector_text(poison: dict[str, Any], defense: dict[str, Any], ratio: float) -> str:
    text = f"{poison['name']} × {defense['name']}"
    extras = [f"{k}={v}" for k, v in sorted((defense.get("params") or {}).items())]
    if "variant" in defense:
        extras.insert(0, str(defense["variant"]))
    if extras:
        text += f" ({', '.join(extras)})"
    return text + (f" at {ratio * 100:g}%" if not math.isclose(ratio, 1.0) else "")


def _test_text(claim: dict[str, Any]) -> str:
    op, kind, offset = claim["_test"]
    shown = {"baseline": "plain training on clean data", "clean": "same defense on clean data"}.get(kind, "other")
    if kind == "other":
        other = claim["other"]
        poison = _sel(other.get("poison", claim["poison"]))
        shown = poison["name"] + (" clean-only" if poison.get("clean_only") else "")
        if "defense" in other:
            defense = _sel(other["defense"])
            params = ", ".join(f"{k}={v}" for k, v in sorted((defense.get("params") or {}).items()))
            shown += f" × {defense['name']}" + (f" ({params})" if params else "")
        else:
            shown += " × same defense"
    return f"acc {SHOWN_OPS[op]} {shown}" + (f" {'+' if offset > 0 else '−'} {abs(offset):g}" if offset else "")


def pair_text(pair: dict[str, Any]) -> str:
    """``at 20.1 (seed 0) vs 37.7 = 67.7 − 30 (seed 0): holds`` for the Claims table: the threshold, and
    the reference cell it derives from when the claim's test adds an offset, so no number reads as a cell."""
    cell, ref = pair["cell"], pair["reference"]
    if cell is None:
        return f"{pair['selector']}: not run"
    where = cell["defense"] + (f" at {cell['ratio'] * 100:g}%" if not math.isclose(cell["ratio"], 1.0) else "")
    text = f"{cell['poison']} × {where} {cell['mean']:.1f} ({_seeds(cell)})"
    if ref is None:
        return text + ": reference not run"
    offset = pair["offset"]
    against = f"{pair['threshold']:.1f}" if not offset else (
        f"{pair['threshold']:.1f} = {ref['mean']:.1f} {'+' if offset > 0 else '−'} {abs(offset):g}")
    noise = f", ±{pair['tolerance']:.1f}" if pair.get("tolerance") else ""
    return text + f" vs {against} ({_seeds(ref)}{noise}): {pair['verdict']}"


def claims_unrecorded(g: dict[str, Any]) -> list[dict[str, Any]]:
    """Claims none of whose cells has a record in this table: listed in one line, not as table rows."""
    return [c for c in g["claims"] if not any(p["cell"] for p in c["pairs"])]


def unrecorded_text(claims: list[dict[str, Any]]) -> str:
    return (f"Not run, no record for any of its cells ({len(claims)}): "
            + "; ".join(f"{c['claim']} ({', '.join(p['selector'] for p in c['pairs'])})" for c in claims) + ".")


def _seeds(cell: dict[str, Any]) -> str:
    """The runs behind a number, and the poisoned set where it is not its column's reference set (‡)."""
    other = other_sets(cell.get("poison_sets"))
    return (("seed " if cell["n"] == 1 else "seeds ") + ", ".join(map(str, cell["seeds"]))
            + (f"; poisoned set {', '.join(map(str, other))} ‡" if other else ""))


def exit_code(results: list[dict[str, Any]]) -> int:
    """1 when a claim that was run fails, else 0."""
    return int(any(c["verdict"] == "fails" for c in results))
