"""Stage 1 of the report: read the run records and describe each one (labels, tier, family, group).

Records (benchmark/records.py) are read with the tolerant reader: a corrupt or foreign file is a warning,
never a crash. Records of the targeted threat model (``threat_model: "targeted"``) are split off here, once:
every availability output reads :func:`collect_runs`, which leaves them out; report/targeted.py reads them. Failed runs are skipped; records of one config and seed (same config hash) count once, the
newest wins. What a defense is (threat-model tier, family, variant label, what its headline measures)
comes from the record's ``defense_info``; records made before that field existed get it by building the
defense from their config (``defenses.base.build_defense``), and a backbone pretrained on clean data
(``defense_source.*.pretrained_on``) puts the defense in the tier that data implies. A parameter added
after records existed is filled in with the value those records ran with (its declared ``legacy``
value, :func:`benchmark.params.complete_params`), so they are labelled by what they ran.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any

from benchmark.errors import BenchError
from benchmark.params import complete_params, format_value
from benchmark.records import canonical_json, load_records
from benchmark.records import run_id as config_hash

Warn = Callable[[str], None]

CLEAN = "clean"  # row/column label of the unpoisoned runs
NO_DEFENSE = "none"
STANDARD_TIER = "poisoned-only"
#: threat models of the records (``rec["threat_model"]``): never ranked together
AVAILABILITY = "availability"
TARGETED = "targeted"
PRESET_ORDER = {"smoke": 0, "cpu": 1, "paper": 2}
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "svhn": "SVHN", "fashion-mnist": "Fashion-MNIST"}
SOURCES_FILE = Path(__file__).with_name("sources.toml")


def num(value: Any) -> float | None:
    """A finite float, or None (JSON nulls, strings and booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


# -------------------------------------------------------------------------------------- records

def threads_text(counts: Iterable[int]) -> str:
    """``(1 thread)``, ``(1/2 threads)``: the CPU thread counts runs were made with."""
    counts = sorted(set(counts))
    return f"({'/'.join(map(str, counts))} thread{'' if counts == [1] else 's'})"


def threat_model(rec: dict[str, Any]) -> str:
    """The threat model a record measures (``threat_model``; records made before the field existed are
    availability runs)."""
    return str(rec.get("threat_model") or AVAILABILITY)


def collect_runs(results: Path, warn: Warn, model: str = AVAILABILITY) -> list[tuple[Path, dict[str, Any]]]:
    """Finished, usable records of one threat model under ``results`` (default availability: every
    availability table, ranking, noise estimate, claim and audit reads only these), sorted by path."""
    return [(p, rec) for p, rec in collect_all(results, warn) if threat_model(rec) == model]


def split_runs(runs: list[tuple[Path, dict[str, Any]]]) -> dict[str, list[tuple[Path, dict[str, Any]]]]:
    """``runs`` by threat model (availability and targeted always present, possibly empty)."""
    out: dict[str, list[tuple[Path, dict[str, Any]]]] = {AVAILABILITY: [], TARGETED: []}
    for path, rec in runs:
        out.setdefault(threat_model(rec), []).append((path, rec))
    return out


def collect_all(results: Path, warn: Warn) -> list[tuple[Path, dict[str, Any]]]:
    """Finished, usable records under ``results`` of every threat model, sorted by path; everything else one
    warning each."""
    runs: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path, rec in load_records(Path(results), warn=warn):
        if rec["status"] != "finished":
            warn(f"skipping {path}: failed run ({rec.get('error') or 'no error message'})")
            continue
        if (problem := shape_problem(rec)) is not None:
            warn(f"skipping {path}: {problem}")
            continue
        try:
            key = config_hash(rec["config"])
        except (TypeError, ValueError):
            key = rec["run_id"]
        if key in runs:
            other_path, other = runs[key]
            newer = (str(rec.get("created", "")), str(path)) > (str(other.get("created", "")), str(other_path))
            dropped = other_path if newer else path
            warn(f"skipping {dropped}: duplicate of {path if newer else other_path} (same config and seed)")
            if not newer:
                continue
        runs[key] = (path, with_legacy_params(rec))
    return sorted(runs.values(), key=lambda pr: str(pr[0]))


def collect_repeats(results: Path, warn: Warn) -> list[tuple[Path, dict[str, Any]]]:
    """Finished availability records a re-run on another machine replaced (``results/repeats``): the
    machine-to-machine spread is measured on them; they are never cells."""
    return [(p, with_legacy_params(r)) for p, r in load_records(Path(results), warn=warn, repeats=True)
            if r["status"] == "finished" and shape_problem(r) is None and threat_model(r) == AVAILABILITY]


def with_legacy_params(rec: dict[str, Any]) -> dict[str, Any]:
    """The record with the params its poison and defense components leave out at their ``legacy`` value
    filled in (a copy of the config; the file is not touched). Unknown plugins are left as they are."""
    from benchmark.registry import DEFENSES, POISONS

    def filled(registry: Any, part: dict[str, Any]) -> dict[str, Any]:
        try:
            cls = registry.get(str(part["name"]))
        except (BenchError, KeyError):
            return part
        params = part.get("params")
        return {**part, "params": complete_params(cls.Params, params if isinstance(params, dict) else {})}

    cfg = rec["config"]
    poison, defense = cfg["poison"], dict(cfg["defense"])
    comps = [filled(DEFENSES, c) if isinstance(c, dict) else c for c in defense.get("components") or []]
    if comps:
        defense["components"] = comps
        if len(comps) == 1 and isinstance(comps[0], dict):
            defense["params"] = comps[0].get("params", defense.get("params"))
        else:
            defense["params"] = {c["name"]: c.get("params") for c in comps if isinstance(c, dict)}
    elif "+" not in str(defense.get("name")):
        defense = filled(DEFENSES, defense)
    return {**rec, "config": {**cfg, "poison": filled(POISONS, poison) if poison.get("name") != "none" else poison,
                              "defense": defense}}


def shape_problem(rec: dict[str, Any]) -> str | None:
    """What the report needs beyond ``validate_record``, as one line (None if usable)."""
    cfg = rec["config"]
    for part in ("poison", "defense"):
        if not isinstance(cfg.get(part), dict) or not isinstance(cfg[part].get("name"), str):
            return f"field 'config.{part}' is not an object with a name"
    if not isinstance(cfg.get("seed"), int) or isinstance(cfg.get("seed"), bool):
        return "field 'config.seed' is not an integer"
    if num(cfg["poison"].get("ratio", 1.0)) is None:
        return "field 'config.poison.ratio' is not a number"
    if num(rec["metrics"].get("test_acc")) is None:
        return "metrics.test_acc is not a finite number"
    return None


# ----------------------------------------------------------------------------------- parameters

def flat(params: Any, prefix: str = "") -> dict[str, Any]:
    """Nested params as one level of ``a.b`` keys, sorted."""
    if not isinstance(params, dict):
        return {prefix or "value": params}
    out: dict[str, Any] = {}
    for k in sorted(params):
        name = f"{prefix}.{k}" if prefix else str(k)
        out.update(flat(params[k], name) if isinstance(params[k], dict) else {name: params[k]})
    return out


def fmt_param(key: str, value: Any) -> str:
    """Short, readable value: budgets as k/255, paths as their file stem, strings unquoted."""
    if isinstance(value, str):
        return Path(value).stem if "/" in value and ":" not in value else value
    return format_value(key, value)


@cache
def defense_defaults(name: str, preset: str = "") -> dict[str, Any] | None:
    """Flat default parameters of a registered defense under a protocol preset (None when it cannot be
    built without params)."""
    try:
        from defenses.base import build_defense

        return flat(build_defense(name, preset=preset).record()["params"])
    except (BenchError, ImportError):
        return None


@cache
def poison_defaults(name: str, preset: str) -> tuple[dict[str, Any], bool] | None:
    """Flat defaults of a registered poison under a generation preset, and whether the preset sets any."""
    try:
        from benchmark.poisoning import build_poison
        from benchmark.registry import POISONS

        spec = build_poison(name, {}, 0, 1.0, preset)
        return flat(spec.params), bool(POISONS.get(name).preset_params.get(preset))
    except (BenchError, ImportError):
        return None


def poison_params_text(poison: dict[str, Any], preset: str) -> str:
    """Params that differ from the poison's defaults under ``preset`` ("defaults of preset X" if none)."""
    values = flat(poison.get("params") or {})
    known = poison_defaults(str(poison["name"]), preset)
    if known is None:
        return ", ".join(f"{k}={fmt_param(k, v)}" for k, v in values.items()) or "–"
    defaults, by_preset = known
    changed = {k: v for k, v in values.items() if k not in defaults or defaults[k] != v}
    if not changed:
        return f"defaults of preset {preset}" if by_preset else "defaults"
    return ", ".join(f"{k}={fmt_param(k, v)}" for k, v in changed.items())


# ------------------------------------------------------------------------ what a defense/poison is

def _backbone_tier(rec: dict[str, Any]) -> str | None:
    """Tier implied by a pretrained backbone named in ``defense_source`` (records without defense_info):
    a `bench pretrain --split holdout` backbone saw clean data disjoint from the victim's images; any
    other split, or a backbone whose data is not described by a split, may overlap them."""
    for source in (rec.get("defense_source") or {}).values():
        if isinstance(source, dict) and "pretrained_on" in source:
            seen = source["pretrained_on"]
            return "extra-clean-data" if isinstance(seen, dict) and seen.get("split") == "holdout" else "overlapping-data"
    return None


def final_epoch_headline(headline: str) -> bool:
    """Whether a defense's number is the plain final-epoch accuracy (no headline of its own, or the
    default one), not a metric such as smoothing's vote or early-stop's validation-chosen epoch."""
    from defenses.base import DEFAULT_HEADLINE

    return not headline or headline == DEFAULT_HEADLINE


def defense_info(rec: dict[str, Any]) -> dict[str, Any]:
    """The record's ``defense_info``, or the same facts derived from its config (older records)."""
    from defenses.base import FAMILIES, TIER_ORDER

    info = rec.get("defense_info")
    if isinstance(info, dict) and info.get("tier") in TIER_ORDER:
        return {"tier": info["tier"], "family": info.get("family") if info.get("family") in FAMILIES else "other",
                "variant": info.get("variant") or None, "headline": info.get("headline") or "", "derived": False}
    cfg = rec["config"]["defense"]
    out = {"tier": STANDARD_TIER, "family": "other", "variant": None, "headline": "", "derived": True}
    try:
        from defenses.base import build_defense

        built = build_defense(cfg["name"], flat_component_params(cfg)).info()
        out.update({k: built[k] for k in ("tier", "family", "variant", "headline")})
    except (BenchError, ImportError, TypeError, ValueError):  # e.g. a backbone file not on this machine
        out["family"] = _declared_family(cfg)
    if (implied := _backbone_tier(rec)) is not None and TIER_ORDER.index(implied) > TIER_ORDER.index(out["tier"]):
        out["tier"] = implied
    return out


def _declared_family(defense: dict[str, Any]) -> str:
    """Family the last component's class declares (what ``DefenseStack.info`` reports), without
    building the defense."""
    try:
        from benchmark.registry import DEFENSES

        names = [c["name"] for c in defense.get("components") or []] or [defense["name"]]
        return str(getattr(DEFENSES.get(names[-1]), "family", "other"))
    except (BenchError, ImportError, KeyError, TypeError):
        return "other"


def flat_component_params(defense: dict[str, Any]) -> dict[str, Any]:
    """``config.defense`` params as ``build_defense`` takes them (``comp.param`` keys for a stack)."""
    comps = defense.get("components") or []
    if len(comps) > 1:
        return {f"{c['name']}.{k}": v for c in comps for k, v in (c.get("params") or {}).items()}
    return dict(defense.get("params") or {})


@cache
def poison_class_info(name: str) -> dict[str, Any]:
    """What a poison class declares for the report: budget type and notes (unknown if not installed)."""
    try:
        from benchmark.registry import POISONS

        cls = POISONS.get(name)
    except (BenchError, ImportError):
        return {"budget_type": "unknown", "notes": [], "preset_params": {}}
    return {"budget_type": getattr(cls, "budget_type", "unknown"), "notes": list(getattr(cls, "notes", ())),
            "preset_params": dict(getattr(cls, "preset_params", {}))}


@cache
def defense_class_notes(name: str) -> tuple[str, ...]:
    try:
        from benchmark.registry import DEFENSES

        return tuple(getattr(DEFENSES.get(name), "notes", ()))
    except (BenchError, ImportError):
        return ()


def metrics_help(keys: list[str]) -> dict[str, str]:
    """Meaning of each ``metrics.defense`` key, from the registered defenses that declare it."""
    try:
        from benchmark.registry import DEFENSES

        known: dict[str, str] = {}
        for name in DEFENSES.names():
            known.update(getattr(DEFENSES.get(name), "metrics_help", {}))
    except (BenchError, ImportError):
        return {}
    return {k: known[k] for k in keys if k in known}


@cache
def dataset_sources() -> dict[str, dict[str, Any]]:
    """Curated facts about dataset sources (``sources.toml``): title, note, comparable to papers."""
    from benchmark.report.select import read_toml

    return read_toml(SOURCES_FILE).get("source", {})


def dataset_title(dataset: str, source: str) -> str:
    known = dataset_sources().get(source)
    if known and known.get("title"):
        return str(known["title"])
    if dataset.startswith("imagefolder:"):
        return f"image folder {dataset.split(':', 1)[1]}"
    return f"{DATASET_NAMES.get(dataset, dataset)} ({source or 'unknown source'})"


# ------------------------------------------------------------------------------------------ labels

def part_id(part: dict[str, Any]) -> tuple[str, str]:
    """(name, params) identity of a poison or defense; a poison's revision counts as a param, so two
    algorithm revisions are never averaged as if they were seeds."""
    params = dict(part.get("params") or {})
    if part.get("revision"):
        params["revision"] = part["revision"]
    return str(part["name"]), canonical_json(params)


def make_labels(ids: Iterable[tuple[str, str]], special: dict[str, str],
                defaults: Callable[[str], dict[str, Any] | None] | None = None,
                variants: dict[tuple[str, str], str | None] | None = None) -> dict[tuple[str, str], str]:
    """Readable unique labels for (name, params-json) ids: the name (or its declared variant, e.g.
    ``dat (official)``), plus the params that differ between ids sharing a name and, with ``defaults``,
    those that differ from the registered defaults. Params that only select the variant are not repeated."""
    variants = variants or {}
    by_name: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for pid in sorted(set(ids)):
        by_name[pid[0]].append(pid)
    labels = {}
    for name, pids in by_name.items():
        flats = [flat(json.loads(p[1])) for p in pids]
        keys = sorted({k for f in flats for k in f})
        default = defaults(name) if defaults else None
        hidden = _variant_keys(name, flats, default, [variants.get(p) for p in pids])
        # with known defaults: params off their default, and params set differently in two ids (a param
        # that only older records carry is not shown); the full difference only if labels would collide
        differ = {k for k in keys if len({repr(f.get(k)) for f in flats if k in f}) > 1}
        off = {k for f in flats for k in f if default is not None and k in default and f[k] != default[k]}
        everything = {k for k in keys if len({repr(f.get(k)) for f in flats}) > 1} | off
        for shown in ((differ | off) - hidden, everything - hidden):
            named = {pid: _label(name, special, variants.get(pid), f, keys, shown) for pid, f in zip(pids, flats, strict=True)}
            if len(set(named.values())) == len(pids):
                break
        labels.update(named)
    return labels


def _label(name: str, special: dict[str, str], variant: str | None, values: dict[str, Any], keys: list[str],
           shown: set[str]) -> str:
    base = special.get(name, name)
    if variant:
        base = variant if variant.startswith(f"{name} (") else f"{name} ({variant})"
    text = ", ".join(f"{k}={fmt_param(k, values[k])}" for k in keys if k in shown and k in values)
    if text:
        base = f"{base[:-1]}, {text})" if base.endswith(")") else f"{base} ({text})"
    return base


def _variant_keys(name: str, flats: list[dict[str, Any]], default: dict[str, Any] | None,
                  variants: list[str | None]) -> set[str]:
    """Params whose value decides the variant label: resetting one to its default changes the variant."""
    if default is None or not any(variants):
        return set()
    from defenses.base import build_defense

    found = set()
    for f, variant in zip(flats, variants, strict=True):
        for k in f:
            if k in default and f[k] != default[k]:
                try:
                    if build_defense(name, {**f, k: default[k]}).variant() != variant:
                        found.add(k)
                except (BenchError, TypeError, ValueError):
                    continue
    return found


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]+", "-", text).strip("-").lower()[:80]


def protocol_of(cfg: dict[str, Any]) -> dict[str, Any]:
    proto = dict(cfg.get("protocol") or {})
    proto["train_size"] = cfg.get("train_size")
    proto["test_size"] = cfg.get("test_size")
    return proto
