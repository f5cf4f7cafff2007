"""Paper vs ours: published numbers (``references.toml``, curated and versioned) joined with our cells.

Each pair is *comparable* only when our cell has the paper's dataset from a source comparable to
papers (``sources.toml``), its model, its number of epochs and its protocol preset; every other pair is
marked *different protocol*, with what differs, and is never given a difference to the paper.

What is comparable across protocols is the direction: each side's accuracy as a ratio to its own clean
accuracy (the same defense on clean data where the paper reports it, else plain training on clean data, on
both sides alike), and whether the poison holds there (ratio below ``HOLDS_BELOW``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.report.aggregate import rnd
from benchmark.report.collect import CLEAN, NO_DEFENSE, dataset_sources
from benchmark.report.select import load_toml, mask

REFERENCES_FILE = Path(__file__).with_name("references.toml")
#: a poison holds against a defense when the accuracy is below this fraction of the matching clean accuracy
HOLDS_BELOW = 0.8
REQUIRED = ("paper", "table", "dataset", "model", "epochs", "protocol", "poison", "defense", "value", "note")


def load_references(path: Path | None = None) -> tuple[int, list[dict[str, Any]]]:
    return load_toml(path or REFERENCES_FILE, "reference", REQUIRED)


def load_caveats(path: Path | None = None) -> list[dict[str, Any]]:
    """The curated explanations of published numbers our cells disagree with (``[[caveat]]`` rows)."""
    return load_toml(path or REFERENCES_FILE, "caveat", ("topic", "poison", "defense", "text"))[1]


def source_caveats(c: pd.DataFrame, rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Each curated caveat whose poison × defense has cells in ``c`` (a group's cells), with our number for
    each of them, computed here from the records (never typed into the caveat)."""
    out = []
    for row in rows:
        if c.empty:
            break
        hit = c[mask(c, {"name": row["poison"]}, {"name": row["defense"]}, any_variant=True)]
        if hit.empty:
            continue
        ours = "; ".join(f"{p} × {d} {cell['mean']:.1f} % ({int(cell['n'])} seed{'' if int(cell['n']) == 1 else 's'})"
                         for (p, d), cell in hit.iterrows())
        out.append({"topic": str(row["topic"]), "text": f"{row['text']} Here: {ours}."})
    return out


def differences(ref: dict[str, Any], group: dict[str, Any]) -> list[str]:
    """What separates our group's protocol from the paper's, in a few words each (empty = comparable)."""
    out = []
    if group["dataset"] != ref["dataset"]:
        out.append(f"dataset {group['dataset']} vs {ref['dataset']}")
    if not dataset_sources().get(group["dataset_source"], {}).get("comparable_to_papers", False):
        out.append(f"source {group['dataset_source'] or 'unknown'}")
    if group["model"] != ref["model"]:
        out.append(f"{group['model']} vs {ref['model']}")
    if group["epochs"] != ref["epochs"]:
        out.append(f"{group['epochs']} vs {ref['epochs']} epochs")
    if group["preset"] != ref["protocol"]:
        out.append(f"preset {group['preset']} vs {ref['protocol']}")
    return out


def _params_match(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("defense") == b.get("defense") and a.get("defense_params") == b.get("defense_params")


def paper_clean(ref: dict[str, Any], refs: list[dict[str, Any]]) -> tuple[str, float] | None:
    """The paper's own clean accuracy for ``ref``: (``"defense"``, the same defense on clean data) when the paper
    reports it, else (``"plain"``, plain training on clean data); None when it reports neither."""
    same = [r for r in refs if r["paper"] == ref["paper"] and r["dataset"] == ref["dataset"] and r["poison"] == "none"]
    for kind, match in (("defense", lambda r: _params_match(r, ref)), ("plain", lambda r: r["defense"] == "none")):
        hit = next((r for r in same if match(r)), None)
        if hit is not None:
            return kind, float(hit["value"])
    return None


def _our_clean(c: pd.DataFrame, dlabel: str, kind: str) -> float | None:
    key = (CLEAN, dlabel if kind == "defense" else NO_DEFENSE)
    return rnd(c.loc[key, "mean"]) if key in c.index else None


def join(refs: list[dict[str, Any]], groups: list[tuple[dict[str, Any], pd.DataFrame]]) -> list[dict[str, Any]]:
    """One row per reference, with every cell of ours it names (any group, any variant of the defense
    unless the reference names one), each marked comparable or with its protocol differences."""
    out = []
    for ref in refs:
        clean = paper_clean(ref, refs) if ref["poison"] != "none" else None
        poison = {"name": ref["poison"], "params": ref.get("poison_params")}
        defense = {"name": ref["defense"], "params": ref.get("defense_params")}
        if "variant" in ref:
            defense["variant"] = ref["variant"]
        ours = []
        for meta, c in groups:
            if c.empty:
                continue
            hit = c[mask(c, poison, defense, any_variant=True)]
            for (plabel, dlabel), row in hit.iterrows():
                diff = differences(ref, meta)
                ours.append({"group": meta["slug"], "group_title": meta["title"], "poison": plabel, "defense": dlabel,
                             "mean": rnd(row["mean"]), "std": rnd(row["std"]), "n": int(row["n"]),
                             "seeds": list(row["seeds"]), "converged": bool(row["converged"]),
                             "records": list(row["records"]), "comparable": not diff, "differences": diff,
                             "delta": rnd(row["mean"] - ref["value"]) if not diff else None,
                             "clean": _our_clean(c, dlabel, clean[0]) if clean else None})
        entry = {k: ref[k] for k in REQUIRED}
        entry.update({k: ref[k] for k in ("url", "poison_params", "defense_params", "variant") if k in ref})
        entry["clean"] = {"kind": clean[0], "value": clean[1]} if clean else None
        entry["ours"] = ours
        out.append(entry)
    return out
