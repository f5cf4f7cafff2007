"""Claims of the papers, machine-checked on our cells (``claims.toml``; ``bench claims``).

A claim names a poison, the defenses it is checked under, a test ``acc OP REF [± AMOUNT]`` and the
conditions its source measured under (``[claim.protocol]``). Each named cell gets a verdict:

* *inconclusive (protocol differs: …)* when the cell was measured under other conditions than the
  source's (:func:`protocol_differences`: the poison's generation recipe, the test images, the epochs
  where the claim depends on them) and *inconclusive (metric unspecified)* when the source does not say
  which of the defense's numbers it reports; the cell's number is still shown, never a verdict;
* *holds* / *fails* when its accuracy clears the threshold, one way or the other, by at least
  aggregate.TIE_SIGMAS standard errors of the difference between the cell and its reference,
  sigma·sqrt(1/n_cell + 1/n_ref), with sigma the group's noise (the largest measured source: victim
  seeds, poison instances, machines; :mod:`benchmark.report.noise`); *within noise* when it
  is closer than that (:func:`judge`, the one place a verdict is decided: a multiplicity correction
  plugs in there through the pair's ``z``);
* *not run* / *not converged* when a cell or its reference has no (converged) record.

Thresholds: an AMOUNT in ``span`` is a fraction of the reference defense's own span above chance (its
clean accuracy minus 100/classes), so a claim carries over between protocols whose ceilings differ;
``source`` derives the fraction from the source's own two numbers (``source_acc`` vs ``source_ref``,
lost fraction L of the source's span): a claim that the defense recovers accuracy (``>=``) may lose
max(L, RECOVER_FLOOR) of our span, a claim that the poison resists (``<=``) must lose at least L/2 of it
(half the source's effect). Plain numbers are points. ``~=`` is two-sided: the cell must lie within
± AMOUNT of the reference (holds beyond noise inside the band, fails beyond noise outside it).
The claim's verdict: fails if a judged cell fails, else within noise if one is, else holds if one
holds, else inconclusive if one is, else not run.
"""

from __future__ import annotations

import json
import math
import operator
import re
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.errors import BenchError
from benchmark.poisoning import SET_TOLERANCE, same_poisoned_set
from benchmark.report.aggregate import TIE_SIGMAS, margin_tolerance, other_sets, rnd
from benchmark.report.collect import defense_defaults, flat, poison_defaults
from benchmark.report.select import load_toml, mask, same, value_of

CLAIMS_FILE = Path(__file__).with_name("claims.toml")
REQUIRED = ("id", "claim", "source", "poison", "defenses", "test", "protocol")
TEST = re.compile(r"^\s*acc\s*(<=|>=|<|>|~=)\s*(baseline|clean|other)\s*"
                  r"(?:([+-]|±)\s*(?:(\d+(?:\.\d+)?)\s*(span)?|(source)))?\s*$")
OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
SHOWN_OPS = {"<=": "≤", ">=": "≥", "<": "<", ">": ">", "~=": "≈"}
VERDICTS = ("holds", "fails", "within noise", "inconclusive", "not run")
#: the least share of its span a defense may lose and still "recover" a poison (source-derived thresholds)
RECOVER_FLOOR = 0.10
#: the source conditions a cell must share for a verdict unless a claim names its own ``conditions``
DEFAULT_CONDITIONS = ("generation", "test_set", "metric")
CONDITIONS = ("generation", "test_set", "metric", "epochs")
METRICS = ("final", "peak", "unspecified")
#: the recipe parameters named first when a cell's generation differs from its source's
RECIPE_KEYS = ("surrogate", "steps", "num_steps", "pgd_steps", "train_steps", "train_step", "max_iters", "restarts",
               "eot_samples", "epochs")


def load_claims(path: Path | None = None) -> tuple[int, list[dict[str, Any]]]:
    """(version, claims) with each test and protocol parsed; a malformed claim is a one-line error."""
    path = path or CLAIMS_FILE
    version, rows = load_toml(path, "claim", REQUIRED)
    for row in rows:
        where = f"{path}: claim '{row['id']}'"
        m = TEST.match(str(row["test"]))
        if not m:
            raise BenchError(f"{where}: test {row['test']!r} is not 'acc OP baseline|clean|other [+|-|± k [span] | ± source]'")
        op, kind, sign, amount, span, source = m.groups()
        if kind == "other" and not isinstance(row.get("other"), dict):
            raise BenchError(f"{where} compares with 'other' but has no other = {{...}}")
        if (op == "~=") != (sign == "±"):
            raise BenchError(f"{where}: '~=' takes a band '± k' and '±' goes only with '~='")
        if source and not all(isinstance(row.get(k), (int, float)) for k in ("source_acc", "source_ref")):
            raise BenchError(f"{where}: a 'source' threshold needs the numbers source_acc and source_ref")
        unit = "source" if source else ("span" if span else "points")
        row["_test"] = (op, kind, -1.0 if sign == "-" else 1.0, float(amount or 0), unit)
        row["_protocol"] = _protocol(row, where)
    return version, rows


def _protocol(row: dict[str, Any], where: str) -> dict[str, Any]:
    proto = row["protocol"]
    if not isinstance(proto, dict):
        raise BenchError(f"{where}: protocol must be a table")
    conditions = proto.get("conditions", list(DEFAULT_CONDITIONS))
    bad = [c for c in conditions if c not in CONDITIONS]
    if bad:
        raise BenchError(f"{where}: unknown protocol condition(s) {', '.join(bad)}; valid: {', '.join(CONDITIONS)}")
    if proto.get("metric", "final") not in METRICS:
        raise BenchError(f"{where}: protocol metric must be one of {', '.join(METRICS)}")
    if "epochs" in conditions and not isinstance(proto.get("epochs"), int):
        raise BenchError(f"{where}: the 'epochs' condition needs protocol.epochs")
    return {"generation": proto.get("generation", "paper"), "test_set": proto.get("test_set", "clean"),
            "metric": proto.get("metric", "final"), "epochs": proto.get("epochs"), "model": proto.get("model", ""),
            "metric_note": proto.get("metric_note", ""), "conditions": list(conditions)}


def _sel(value: Any) -> dict[str, Any]:
    return {"name": value} if isinstance(value, str) else dict(value)


def lookup(g: pd.DataFrame, flags: pd.Series, poison: dict[str, Any], defense: dict[str, Any],
           ratio: float, metric: str = "final") -> dict[str, Any] | None:
    """Accuracy of the runs a selector pair names at ``ratio`` (None if there are none): the final-epoch
    ``test_acc``, or the peak over training (``metric = "peak"``)."""
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
    acc = runs["peak_test_acc" if metric == "peak" else "test_acc"].astype(float)
    first = runs.iloc[0]
    return {"poison": str(first["poison_label"]), "defense": str(first["defense_label"]),
            "ratio": ratio, "clean_only": clean_only, "mean": rnd(acc.mean()),
            "std": rnd(acc.std(ddof=1) if len(acc) > 1 else 0.0), "n": len(acc),
            "seeds": sorted(int(s) for s in runs["seed"]), "converged": bool((flags[runs.index] == "").all()),
            "poison_sets": sorted({int(s) for s in runs["poison_set"]} - {0}), "records": sorted(runs["record"]),
            "keys": poison_instances(runs), "poison_name": str(first["poison"]),
            "poison_params": str(first["poison_params"]), "defense_name": str(first["defense"]),
            "defense_params": str(first["defense_params"]), "preset": str(first["preset"]),
            "epochs": sorted({int(e) for e in runs["epochs"].dropna()})}


def poison_instances(runs: pd.DataFrame) -> int:
    """How many distinct poisoned sets the runs trained on (by digest, else by measured budget): seeds
    that drew other keys of a deterministic poison (OPS at ratio 1) share one set."""
    sets: list[dict[str, Any]] = []
    for _i, row in runs.iterrows():
        summary = {"digest": row["poison_digest"],
                   "budget": {k: row[k] for k in SET_TOLERANCE if k in row and not pd.isna(row[k])}}
        if not any(same_poisoned_set(s, summary) for s in sets):
            sets.append(summary)
    return max(1, len(sets))


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
    metric = claim["_protocol"]["metric"]
    if kind == "baseline":
        return lookup(g, flags, {"name": "none"}, {"name": "none"}, 1.0, metric)
    if kind == "clean":
        return lookup(g, flags, {"name": "none"}, defense, 1.0, metric)
    other = claim["other"]
    return lookup(g, flags, _sel(other.get("poison", poison)), _sel(other.get("defense", defense)), ratio, metric)


def _span_reference(g: pd.DataFrame, flags: pd.Series, kind: str, defense: dict[str, Any],
                    ref: dict[str, Any] | None) -> dict[str, Any] | None:
    """The clean accuracy a span is measured from: plain training for ``baseline``, else the defense's own."""
    if kind == "baseline":
        return ref
    return lookup(g, flags, {"name": "none"}, defense, 1.0) or lookup(g, flags, {"name": "none"}, {"name": "none"}, 1.0)


# ---------------------------------------------------------------------------------------- protocol

@cache
def _defense_test_set(name: str, params_json: str, preset: str) -> str:
    from defenses.base import build_defense

    try:
        return build_defense(name, json.loads(params_json), preset).test_set()
    except (BenchError, TypeError, ValueError):
        return "clean"


def _generation_differences(cell: dict[str, Any], claim: dict[str, Any]) -> list[str]:
    """Params of the cell's poison that differ from the source's recipe (our ``paper`` preset, with the
    claim's own poison params): a reduced recipe makes another poison than the one the source measured."""
    recipe = claim["_protocol"]["generation"]
    known = poison_defaults(cell["poison_name"], recipe)
    if known is None:
        return []
    want = dict(known[0])
    want.update({k: value_of(v) for k, v in flat(_sel(claim["poison"]).get("params") or {}).items()})
    have = flat(json.loads(cell["poison_params"]))
    keys = sorted(want, key=lambda k: (k not in RECIPE_KEYS, RECIPE_KEYS.index(k) if k in RECIPE_KEYS else 0, k))
    return [f"{k} {_short(have[k])} vs {_short(want[k])}" for k in keys if k in have and not same(have[k], want[k])]


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def protocol_differences(cell: dict[str, Any] | None, claim: dict[str, Any]) -> list[str]:
    """How the cell's conditions differ from the claim's source's, in words (empty: comparable). Each
    condition the claim names is checked: the poison's generation recipe, the test images, the epochs."""
    if cell is None or "poison_name" not in cell:
        return []
    proto, out = claim["_protocol"], []
    conditions = proto["conditions"]
    if "generation" in conditions:
        diffs = _generation_differences(cell, claim)
        if diffs:
            shown = ", ".join(diffs[:3]) + (f", +{len(diffs) - 3} more" if len(diffs) > 3 else "")
            out.append(f"generation recipe: preset {cell['preset']} vs the source's ({shown})")
    if "test_set" in conditions:
        have = _defense_test_set(cell["defense_name"], cell["defense_params"], cell["preset"])
        if have != proto["test_set"]:
            out.append(f"test images: {have} vs the source's {proto['test_set']}")
    if "epochs" in conditions and cell["epochs"] != [proto["epochs"]]:
        out.append(f"epochs: {', '.join(map(str, cell['epochs']))} vs the source's {proto['epochs']}")
    return out


# ----------------------------------------------------------------------------------------- verdicts

def threshold_of(test: tuple[str, str, float, float, str], claim: dict[str, Any], ref_mean: float,
                 span: float | None, chance: float) -> tuple[float | None, float | None, str]:
    """(threshold, its offset from the reference in points, how the offset was set); for ``~=`` the
    threshold is the reference and the offset the half-width of the band. None when a span is needed
    and the defense's clean cell is missing."""
    op, _kind, sign, amount, unit = test
    if unit == "points":
        offset = sign * amount
        return ref_mean + offset, offset, f"{abs(offset):g} points" if offset else ""
    if span is None:
        return None, None, "needs the defense's clean cell"
    k = amount
    if unit == "source":
        src_span = float(claim["source_ref"]) - chance
        lost = (float(claim["source_ref"]) - float(claim["source_acc"])) / src_span
        k = max(abs(lost), RECOVER_FLOOR) if op in (">=", ">", "~=") else lost / 2
    offset = (1.0 if op == "~=" else sign) * k * span
    basis = f"{k:.2f} of the span {span:.1f}"
    if unit == "source":
        basis += f" (source {claim['source_acc']:g} vs {claim['source_ref']:g})"
    return (ref_mean if op == "~=" else ref_mean + offset), offset, basis


def judge(toward: float, se: float, tie_sigmas: float = TIE_SIGMAS) -> str:
    """The verdict of one cell from its signed distance ``toward`` holding (points; positive on the side
    the claim predicts) and the standard error ``se`` of that distance: the one place a verdict is
    decided (a multiplicity correction replaces ``tie_sigmas`` per rank)."""
    tolerance = tie_sigmas * se
    if abs(toward) < tolerance:
        return "within noise"
    return "holds" if toward > 0 else "fails"


def check_pair(cell: dict[str, Any] | None, ref: dict[str, Any] | None, claim: dict[str, Any],
               sigma: float | None, span_ref: dict[str, Any] | None = None, chance: float = 10.0) -> dict[str, Any]:
    test = claim["_test"]
    op = test[0]
    empty = {"op": op, "threshold": None, "offset": None, "basis": "", "margin": None, "tolerance": None, "z": None,
             "protocol": [], "would": None}
    if cell is None or ref is None:
        return {**empty, "verdict": "not run"}
    span = span_ref["mean"] - chance if span_ref else None
    threshold, offset, basis = threshold_of(test, claim, ref["mean"], span, chance)
    base = {**empty, "threshold": rnd(threshold), "offset": rnd(offset), "basis": basis}
    if threshold is None:
        return {**base, "verdict": "not run"}
    if not (cell["converged"] and ref["converged"]):
        return {**base, "verdict": "not converged"}
    margin = cell["mean"] - threshold
    toward = abs(offset) - abs(margin) if op == "~=" else (margin if op in (">=", ">") else -margin)
    tolerance = margin_tolerance(sigma, cell["n"], ref["n"])
    se = tolerance / TIE_SIGMAS
    verdict = judge(toward, se) if se > 0 else ("holds" if toward > 0 or (toward == 0 and op in ("<=", ">=", "~=")) else "fails")
    differences = protocol_differences(cell, claim)
    out = {**base, "margin": rnd(margin), "tolerance": rnd(tolerance), "z": rnd(toward / se) if se > 0 else None,
           "protocol": differences, "would": verdict}
    if claim["_protocol"]["metric"] == "unspecified":
        return {**out, "verdict": "inconclusive (metric unspecified)"}
    if differences:
        return {**out, "verdict": f"inconclusive (protocol differs: {'; '.join(differences)})"}
    return {**out, "verdict": verdict}


def claim_rule_text(noise: dict[str, Any]) -> str:
    """The verdict rule of :func:`check_pair` with this table's numbers, for the claims legends."""
    sigma = noise.get("sigma")
    protocol = ("A cell measured under other conditions than the claim's source (the poison's generation recipe, "
                "the test images, the epochs where the claim depends on them) is inconclusive (protocol differs), and "
                "one whose source does not say which number it reports is inconclusive (metric unspecified): its number "
                "is shown, never a verdict. Thresholds in 'span' are fractions of the reference defense's own clean "
                f"accuracy above chance; 'source' sets the fraction from the source's two numbers (a recovery may lose "
                f"the source's share, at least {RECOVER_FLOOR:g}; a resistance must show at least half the source's "
                "loss); ≈ is two-sided. ")
    if sigma is None:
        return protocol + ("No seed-to-seed spread is measured for this table, so a cell holds or fails on which side "
                           "of its threshold it lies.")
    k = noise.get("tie_sigmas", TIE_SIGMAS)
    return protocol + (
        f"A cell holds or fails when it clears its threshold, one way or the other, by at least {k:g} standard "
        f"errors of the difference, {k:g}σ·√(1/n_cell + 1/n_ref) with σ = {sigma:.2f} (the largest measured "
        f"noise source, caveat `noise`): {margin_tolerance(sigma, 1, 1):.2f} points for two single runs, {margin_tolerance(sigma, 1, 3):.2f} "
        f"against a 3-seed reference, {margin_tolerance(sigma, 3, 3):.2f} for 3 seeds each (± after the seeds), "
        "and is within noise otherwise. " + (noise.get("multiplicity") or (
            f"No multiplicity correction is applied: at {k:g} standard errors a cell whose true accuracy sits on its "
            f"threshold gets a verdict by chance with probability {1 - _normal_cdf(k):.3f}, so among N judged cells "
            f"about {1 - _normal_cdf(k):.3f}·N verdicts may be noise (each pair keeps its z for a correction).")))


def _normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _chance(g: pd.DataFrame) -> float:
    """100 / classes of the group's data set (from a record's per-class accuracies), 10 if unknown."""
    for path in g["record"].head(5):
        try:
            classes = len(json.loads(Path(path).read_text())["metrics"]["per_class_test_acc"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if classes:
            return 100.0 / classes
    return 10.0


def evaluate(claims: list[dict[str, Any]], g: pd.DataFrame, flags: pd.Series, sigma: float | None) -> list[dict[str, Any]]:
    """Every claim's verdict on one protocol group (``g``: its tidy runs; ``flags``: run_flags(g); ``sigma``:
    its noise, :func:`aggregate.group_noises`)."""
    out = []
    chance = _chance(g) if not g.empty else 10.0
    for claim in claims:
        poison = _sel(claim["poison"])
        metric = claim["_protocol"]["metric"]
        pairs = []
        for ratio in claim.get("ratios") or [1.0]:
            for d in claim["defenses"]:
                defense = _sel(d)
                cell = lookup(g, flags, poison, defense, float(ratio), metric)
                kind = claim["_test"][1]
                ref = _reference(g, flags, claim, kind, poison, defense, float(ratio))
                span_ref = _span_reference(g, flags, kind, defense, ref) if claim["_test"][4] != "points" else None
                pairs.append({"selector": _selector_text(poison, defense, float(ratio)), "cell": cell, "reference": ref,
                              **check_pair(cell, ref, claim, sigma, span_ref, chance)})
        verdict = overall([p["verdict"] for p in pairs])
        out.append({"id": claim["id"], "claim": claim["claim"], "source": claim["source"], "test": _test_text(claim),
                    "protocol": protocol_text(claim), "verdict": verdict, "pairs": pairs, "note": _note(pairs)})
    return out


def overall(verdicts: list[str]) -> str:
    """fails > within noise > holds > inconclusive > not run (a pair's ``inconclusive (…)`` counts as inconclusive)."""
    short = [v.split(" (", 1)[0] for v in verdicts]
    for v in ("fails", "within noise", "holds", "inconclusive"):
        if v in short:
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
    op, kind, sign, amount, unit = claim["_test"]
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
    metric = "peak acc" if claim["_protocol"]["metric"] == "peak" else "acc"
    sign_text = "±" if op == "~=" else ("+" if sign > 0 else "−")
    if unit == "source":
        amount_text = f" {sign_text} the source's share of the span"
    elif unit == "span":
        amount_text = f" {sign_text} {amount:g}·span"
    else:
        amount_text = f" {sign_text} {amount:g}" if amount else ""
    return f"{metric} {SHOWN_OPS[op]} {shown}{amount_text}"


def protocol_text(claim: dict[str, Any]) -> str:
    """The source's conditions in a few words (what a cell must share for a verdict is marked *)."""
    proto = claim["_protocol"]
    cond = proto["conditions"]
    parts = [f"{'*' if 'generation' in cond else ''}generation {proto['generation']} recipe",
             f"{'*' if 'test_set' in cond else ''}{proto['test_set']} test images",
             f"{'*' if 'metric' in cond else ''}metric {proto['metric']}"]
    if proto["epochs"]:
        parts.append(f"{'*' if 'epochs' in cond else ''}{proto['epochs']} epochs")
    if proto["model"]:
        parts.append(proto["model"])
    return ", ".join(parts)


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
    if pair["threshold"] is None:
        return text + f": {pair['verdict']} ({pair.get('basis') or 'no threshold'})"
    if pair.get("op") == "~=":
        against = f"{ref['mean']:.1f} ± {_points(abs(offset))}"
    elif not offset:
        against = f"{pair['threshold']:.1f}"
    else:
        against = f"{pair['threshold']:.1f} = {ref['mean']:.1f} {'+' if offset > 0 else '−'} {_points(abs(offset))}"
    noise = f", ±{pair['tolerance']:.1f}" if pair.get("tolerance") else ""
    would = f"; would be {pair['would']}" if pair.get("would") and pair["verdict"].startswith("inconclusive") else ""
    return text + f" vs {against} ({_seeds(ref)}{noise}): {pair['verdict']}{would}"


def _points(value: float) -> str:
    """An offset in points: one decimal, without a trailing .0 (``30``, ``27.3``)."""
    return f"{value:.1f}".removesuffix(".0")


def claims_unrecorded(g: dict[str, Any]) -> list[dict[str, Any]]:
    """Claims none of whose cells has a record in this table: listed in one line, not as table rows."""
    return [c for c in g["claims"] if not any(p["cell"] for p in c["pairs"])]


def unrecorded_text(claims: list[dict[str, Any]]) -> str:
    return (f"Not run, no record for any of its cells ({len(claims)}): "
            + "; ".join(f"{c['claim']} ({', '.join(p['selector'] for p in c['pairs'])})" for c in claims) + ".")


def _seeds(cell: dict[str, Any]) -> str:
    """The runs behind a number (how many poison instances, where more than one), and the poisoned set
    where it is not its column's reference set (‡)."""
    other = other_sets(cell.get("poison_sets"))
    keys = cell.get("keys", 1)
    return (("seed " if cell["n"] == 1 else "seeds ") + ", ".join(map(str, cell["seeds"]))
            + (f"; {keys} poison instances" if keys > 1 else "")
            + (f"; poisoned set {', '.join(map(str, other))} ‡" if other else ""))


def exit_code(results: list[dict[str, Any]]) -> int:
    """1 when a claim that was run fails, else 0."""
    return int(any(c["verdict"] == "fails" for c in results))
