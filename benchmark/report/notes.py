"""Protocol, caveats and provenance of one protocol group, generated from the records and from what the
poison and defense classes declare (``notes``, ``budget_type``, ``headline``, tiers, generation presets),
never typed into the report: a caveat changes when the code or the records change.

Provenance: which git commits and dates the records come from, and, where the records of one poison or
defense span several commits, whether its source file changed between them (``git log A..B -- FILE``;
records of another poison *revision* are separate rows anyway, a defense has no revision); a poison whose
runs all carry one digest of the poisoned set trained on the same bytes whatever its code did, and is not flagged.
"""

from __future__ import annotations

import inspect
import json
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.records import REPEATS
from benchmark.report import aggregate as agg
from benchmark.report.collect import CLEAN as CLEAN_LABEL
from benchmark.report.collect import (
    STANDARD_TIER,
    dataset_sources,
    defense_class_notes,
    final_epoch_headline,
    fmt_param,
    poison_class_info,
    poison_defaults,
    threads_text,
)
from benchmark.report.references import load_caveats, source_caveats

PAPER_PRESET = "paper"


def caveats(g: pd.DataFrame, c: pd.DataFrame, tiers: dict[str, str], noise: dict[str, Any]) -> list[dict[str, str]]:
    """Caveats of one group, each {topic, text}, in a fixed order."""
    out: list[dict[str, str]] = []
    source = dataset_sources().get(str(g["dataset_source"].iloc[0]), {})
    if source.get("note"):
        out.append({"topic": "dataset", "text": str(source["note"])})
    for name in sorted(set(g["poison"]) - {"none"}):
        info = poison_class_info(name)
        if (recipe := _recipe_note(g[g["poison"] == name], name)) is not None:
            out.append({"topic": f"poison {name}", "text": recipe})
        out += [{"topic": f"poison {name}", "text": n} for n in info["notes"]]
    bounded = sorted({n for n in set(g["poison"]) - {"none"} if poison_class_info(n)["budget_type"] in ("linf", "l2", "l0")})
    unbounded = sorted({n for n in set(g["poison"]) - {"none"} if poison_class_info(n)["budget_type"] == "unbounded"})
    if unbounded:
        out.append({"topic": "budgets", "text": f"Lp-bounded poisons: {', '.join(bounded) or 'none'}; not Lp-bounded "
                    f"(declared budget_type 'unbounded'): {', '.join(unbounded)}. Their measured budgets are in the "
                    "budget table; accuracies of bounded and unbounded poisons answer different threat models."})
    for name in sorted(set(g["defense"])):
        for part in name.split("+"):
            out += [{"topic": f"defense {part}", "text": n} for n in defense_class_notes(part)]
    for label, rows in g.groupby("defense_label", sort=True):
        head = str(rows["headline"].iloc[0])
        if not final_epoch_headline(head):
            out.append({"topic": f"defense {label}", "text": f"its number is {head}."})
        evals = sorted(set(rows["per_epoch_eval"]) - {""})
        if evals:
            out.append({"topic": f"defense {label}", "text": "its per-epoch curve is measured as "
                        + "; ".join(_short_json(e) for e in evals) + " (record metrics.per_epoch_eval)."})
        backbones = sorted(set(rows["backbone"]) - {""})
        if backbones:
            out.append({"topic": f"defense {label}", "text": "backbone: " + "; ".join(backbones) + "."})
    out += _tier_notes(tiers)
    out += _set_notes(g)
    out += source_caveats(c, load_caveats())  # published numbers we disagree with, and why (references.toml)
    bad = c[~c["converged"]] if not c.empty else c
    if not bad.empty:
        cells = "; ".join(f"{d} on {p}: {row['not_converged']}" for (p, d), row in bad.sort_index(level=1).iterrows())
        out.append({"topic": "stability", "text": f"{len(bad)} cells are not a verdict (rule in the matrix legend): shown, "
                    f"never a verdict, a worst case, a claim cell or a ranking input: {cells}."})
    under = c[c["caveat"] != ""] if not c.empty else c
    if not under.empty:
        cells = "; ".join(f"{d} on {p} ({row['mean']:.1f}" + (f" vs its own clean cell {c.loc[(CLEAN_LABEL, d), 'mean']:.1f}"
                          if (CLEAN_LABEL, d) in c.index and p != CLEAN_LABEL else "") + f"): {row['caveat']}"
                          for (p, d), row in under.sort_index(level=1).iterrows())
        out.append({"topic": "fit", "text": f"{len(under)} cells converged at a high cost in fit (a verdict, with this "
                    "caveat): the defense keeps the model from fitting its training set, so its cells say how much of the "
                    f"defense's own clean accuracy survives the poison, not that the poison is defeated: {cells}."})
    out += noise_notes(noise)
    envs = sorted({d + (f" {cpu}" if cpu else "") + (f" {threads_text([int(t)])}" if not pd.isna(t) else "")
                   for d, cpu, t in zip(g["device"], g["cpu"], g["threads"], strict=True)})
    out.append({"topic": "hardware", "text": "Runs made on: " + ", ".join(envs) + " (record environment)."})
    return out


def noise_notes(noise: dict[str, Any]) -> list[dict[str, str]]:
    """σ by random source (:mod:`benchmark.report.noise`), which one the verdicts use, and the machine spread."""
    from benchmark.report.noise import SOURCES

    src = noise.get("sources") or {}
    parts = []
    for s in SOURCES:
        v = src.get(s)
        if v and v.get("sigma") is not None:
            parts.append(f"{s} σ = {v['sigma']:.2f} over {v['cells']} {'pairs' if s == 'machine' else 'cells'}")
        else:
            parts.append(f"{s}: not measured")
    where = f" (borrowed from {noise['borrowed_from']}: every cell of this table is a single run)" if noise.get("borrowed_from") else ""
    used = (f"Verdicts use σ = {noise['sigma']:.2f} ({noise['source']}), the largest measured on at least "
            f"{noise['min_cells']} cells" if noise.get("sigma") is not None else "No σ is measured: verdicts use the sign alone")
    out = [{"topic": "noise", "text": "Noise by random source" + where + ": " + "; ".join(parts) + ". victim = seeds of one "
            "poisoned set (init, batch order); poison instance = runs on other keys or bytes of one poison config; "
            "machine = one config and seed on two machines (σ = rms(Δ)/√2). " + used
            + (f"; {noise['caveat']}" if noise.get("caveat") else "") + "."}]
    if noise.get("machine"):
        out.append({"topic": "noise", "text": machine_text(noise["machine"])})
    return out


def machine_text(m: dict[str, Any]) -> str:
    """The machine-to-machine spread (:func:`noise.machine_spreads`) in one sentence."""
    n = m["cells"]
    return (f"Machine-to-machine spread measured on {n} cell{'' if n == 1 else 's'} run on two machines "
            f"({'; '.join(m['machines'])}), same config and seed, each machine making its own poison and backbone "
            f"({m['same_poison_bytes']} of {n} trained on byte-identical poisoned sets): "
            f"median |Δ| {m['median_abs']:.2f}, max {m['max_abs']:.2f} points ({m['max_cell']}, "
            f"{m['max_delta']:+.2f}); the older run of each pair is kept in the results' `{REPEATS}` folder.")


def _short_json(text: str) -> str:
    data = json.loads(text)
    if isinstance(data, dict):
        return ", ".join(f"{k} {v}" for k, v in sorted(data.items()))
    return str(data)


def _recipe_note(runs: pd.DataFrame, name: str) -> str | None:
    """How the generation recipe of these runs differs from the paper preset's (the official one)."""
    info = poison_class_info(name)
    if PAPER_PRESET not in info["preset_params"]:
        return None
    paper = poison_defaults(name, PAPER_PRESET)
    if paper is None:
        return None
    defaults, _ = paper
    texts = []
    for params_json in sorted(set(runs["poison_params"])):
        params = json.loads(params_json)
        diff = [f"{k} {fmt_param(k, v)} (paper: {fmt_param(k, defaults[k])})" for k, v in sorted(params.items())
                if k in defaults and k in info["preset_params"][PAPER_PRESET] and v != defaults[k]]
        if diff:
            texts.append(", ".join(diff))
    if not texts:
        return None
    presets = ", ".join(sorted(set(runs["preset"])))
    return (f"generated with the reduced recipe of preset {presets}, not the paper preset's official hyperparameters: "
            + " / ".join(texts) + ". Read its cells as a lower bound on the poison's strength.")


def _set_notes(g: pd.DataFrame) -> list[dict[str, str]]:
    """Per poison whose cells trained on more than one poisoned set (``frame.poison_sets``): the sets, how
    they differ, and which cells used each."""
    out = []
    poisoned = g[g["poison_set"] > 0]
    for (label, key), rows in poisoned.groupby(["poison_label", "key_fingerprint"], sort=True):
        if rows["poison_set"].nunique() < 2:
            continue
        if poisoned.loc[poisoned["poison_label"] == label, "key_fingerprint"].nunique() > 1:
            label = f"{label} (key #{str(key)[:8]})"  # seeds that drew their own key: sets are numbered per key
        parts = []
        for number, s in rows.groupby("poison_set", sort=True):
            digests = sorted(set(s["poison_digest"]) - {""})
            reference = " (the no-defense cell's)" if (s["defense"] == "none").any() else ""
            runs_text = f"{len(s)} run{'' if len(s) == 1 else 's'} ({', '.join(sorted(set(s['defense_label'])))})"
            parts.append(f"set {number}{reference}: L2 {s['l2_mean'].iloc[0]:.4f}, PSNR {s['psnr'].iloc[0]:.2f} dB"
                         + (f", digest {', '.join(digests)}" if digests else "") + f", {runs_text}")
        out.append({"topic": "poison sets", "text": f"{label}: its cells trained on {len(parts)} poisoned sets of the "
                    "same poison, parameters and key (other bytes: a surrogate-trained poison generated on another CPU ends "
                    "elsewhere, as can changed code): "
                    + "; ".join(parts) + ". Cells of a set other than 1 are marked ‡ in the matrix."})
    return out


def _tier_notes(tiers: dict[str, str]) -> list[dict[str, str]]:
    from defenses.base import TIERS

    out = []
    for tier in agg.tier_order():
        members = sorted(d for d, t in tiers.items() if t == tier)
        if tier != STANDARD_TIER and members:
            out.append({"topic": f"tier {tier}", "text": f"{', '.join(members)}: {TIERS[tier]}. Shown in their own table, "
                        "ranked separately, and never a poison's worst case."})
    return out


# ----------------------------------------------------------------------------------- provenance

def provenance_line(runs: pd.DataFrame) -> str:
    """`N runs from commits a1b2c3d, ... (k commits), created D1 – D2` for a table legend."""
    commits = _ordered_commits(runs)
    dates = sorted(d[:10] for d in runs["created"] if d)
    span = f"{dates[0]} – {dates[-1]}" if dates and dates[0] != dates[-1] else (dates[0] if dates else "unknown date")
    shown = ", ".join(c[:7] for c in commits[:3]) + (f" … {commits[-1][:7]}" if len(commits) > 3 else "")
    what = f"commit {shown}" if len(commits) == 1 else f"{len(commits)} commits ({shown})" if commits else "unknown commit"
    return f"Records: {len(runs)} runs, {what}, created {span}."


def _ordered_commits(runs: pd.DataFrame) -> list[str]:
    first = runs[runs["commit"] != ""].groupby("commit")["created"].min()
    return [str(c) for c in first.sort_values(kind="stable").index]


def provenance(g: pd.DataFrame) -> dict[str, Any]:
    """Commits of the group's records (records, first and last creation date) and code-change warnings."""
    rows = []
    for commit, runs in g.groupby(g["commit"].replace("", "unknown"), sort=False):
        dates = sorted(runs["created"])
        rows.append({"commit": str(commit), "records": len(runs), "first": dates[0][:16], "last": dates[-1][:16],
                     "date": _commit_date(str(commit))})
    rows.sort(key=lambda r: (r["first"], r["commit"]))
    warnings = []
    for kind, column in (("poison", "poison"), ("defense", "defense")):
        for name in sorted(set(g[column]) - {"none"}):
            runs = g[g[column] == name]
            if kind == "poison" and _same_bytes(runs):
                continue  # its code changed, but every run trained on the same poisoned set
            for part in name.split("+"):
                if (w := _changed(kind, part, runs)) is not None:
                    warnings.append(w)
    return {"commits": rows, "warnings": warnings}


def _same_bytes(runs: pd.DataFrame) -> bool:
    """Whether every run of a poison carries a digest and, per ratio and key, all runs share one."""
    if not (runs["poison_digest"] != "").all():
        return False
    return bool((runs.groupby(["ratio", "clean_only", "key_fingerprint"])["poison_digest"].nunique() == 1).all())


def _changed(kind: str, name: str, runs: pd.DataFrame) -> str | None:
    commits = _ordered_commits(runs)
    if len(commits) < 2:
        return None
    path = _source_file(kind, name)
    if path is None:
        return None
    root, rel = path
    changed = _git(root, "log", "--format=%h", f"{commits[0]}..{commits[-1]}", "--", rel)
    if changed is None:
        return f"{kind} {name}: cannot tell whether {rel} changed between its records' commits ({commits[0][:7]} … {commits[-1][:7]} not in this repository)"
    if not changed.split():
        return None
    labels = sorted(set(runs["poison_label" if kind == "poison" else "defense_label"]))
    return (f"{kind} {name} ({', '.join(labels)}): its records span {len(commits)} commits ({commits[0][:7]} … "
            f"{commits[-1][:7]}) and {rel} changed in {len(changed.split())} commit(s) between them "
            f"({', '.join(changed.split()[:5])}); cells of different commits may measure different code.")


@cache
def _source_file(kind: str, name: str) -> tuple[str, str] | None:
    """(repository root, path of the module that defines the poison/defense relative to it)."""
    try:
        from benchmark.registry import DEFENSES, POISONS

        cls = (POISONS if kind == "poison" else DEFENSES).get(name)
        file = Path(inspect.getsourcefile(cls) or "").resolve()
    except Exception:  # an unregistered or builtin class: nothing to check
        return None
    root = _git(str(file.parent), "rev-parse", "--show-toplevel")
    if not root:
        return None
    return root.strip(), file.relative_to(root.strip()).as_posix()


@cache
def _commit_date(commit: str) -> str:
    root = _git(str(Path(__file__).resolve().parent), "rev-parse", "--show-toplevel")
    out = _git(root.strip(), "show", "-s", "--format=%cs", commit) if root else None
    return out.strip() if out else ""


@cache
def _git(cwd: str, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None

