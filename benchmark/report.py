"""Leaderboard and plots generated from run records alone (``bench leaderboard``).

Records (benchmark/records.py) are grouped by (dataset + source, model, preset, protocol); presets and
protocol variants are never mixed in one table. Per group: the poison x defense matrix of final clean
test accuracy (mean +- std over runs), the peak-accuracy matrix (oracle upper bound), poisons ranked by
how many defenses were run on them, then their worst case over those (the highest accuracy any defense
recovers; lower = stronger poison), defenses ranked likewise over the comparable poisons (their lowest
accuracy; plain training is an unranked reference row), extra defense metrics, poison budgets and
generation cost, and partial poisoning; one sample grid per poison, with a JSON sidecar naming the poison
it shows. The same document renders to Markdown, one
self-contained HTML page, or LaTeX (booktabs). Output is deterministic: stable ordering, the only date
in it is the newest record's ``created`` date, and PNGs carry no timestamp metadata.

Bad records (corrupt JSON, unknown schema, failed runs) are skipped with one warning each; duplicate
records of one config and seed (same config hash) count once. Runs that share a config but differ in
seed or poison key are pooled as repeats (n).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.errors import BenchError
from benchmark.io import atomic_write, read_json, read_npz
from benchmark.params import format_value
from benchmark.records import canonical_json, load_records
from benchmark.records import run_id as config_hash

Warn = Callable[[str], None]

CLEAN = "clean"
NO_DEFENSE = "none"
PRESET_ORDER = {"smoke": 0, "cpu": 1, "paper": 2}
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "svhn": "SVHN", "fashion-mnist": "Fashion-MNIST"}
SOURCE_NOTES = {
    "cifar10-jpeg": ("CIFAR-10 (JPEG copy)",
                     "The CIFAR-10 images come from an offline JPEG copy, which is not bit-exact with the original "
                     "CIFAR-10 files; do not compare these numbers silently with published CIFAR-10 numbers."),
}
MAX_SAMPLE_CLASSES = 10


# ------------------------------------------------------------------------------------ statistics

@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (0 for one run) and number of runs of one cell."""

    mean: float
    std: float
    n: int

    def fmt(self, digits: int = 2) -> str:
        """``mean ± std (n=k)``; a count that is the same in every run (std 0, shown without decimals)
        reads ``1000 (n=2)``: "± 0" would suggest a measured spread."""
        if self.n > 1 and digits == 0 and self.std == 0:
            return f"{self.mean:.0f} (n={self.n})"
        if self.n > 1:
            return f"{self.mean:.{digits}f} ± {self.std:.{digits}f} (n={self.n})"
        return f"{self.mean:.{digits}f}"


def seed_spread_note(m: Matrix) -> str:
    """How much a single run may be trusted, measured on this table's own cells with several seeds."""
    stds = sorted(c.std for c in m.cells.values() if c.n > 1)
    if not stds:
        return "Every cell is a single run: its seed-to-seed spread is not measured here."
    return (f"Seed-to-seed std over the {len(stds)} cells run with several seeds: median {statistics.median(stds):.1f}, "
            f"max {stds[-1]:.1f} points; read differences between single runs smaller than that as noise.")


def stat(values: Iterable[float]) -> Stat | None:
    vals = [float(v) for v in values]
    if not vals:
        return None
    return Stat(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals))


def _fmt(s: Stat | None, digits: int = 2) -> str:
    return s.fmt(digits) if s is not None else "–"


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


# -------------------------------------------------------------------------------- loading runs

def collect_runs(results: Path, warn: Warn) -> list[tuple[Path, dict[str, Any]]]:
    """Finished, valid records under ``results``; failed runs and duplicates are skipped with a warning.

    Duplicates are records with the same config hash (config + seed); the newest ``created`` wins."""
    runs: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path, rec in load_records(Path(results), warn=warn):
        if rec["status"] != "finished":
            warn(f"skipping {path}: failed run ({rec.get('error') or 'no error message'})")
            continue
        if (problem := _shape_problem(rec)) is not None:
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
        runs[key] = (path, rec)
    return sorted(runs.values(), key=lambda pr: str(pr[0]))


def _shape_problem(rec: dict[str, Any]) -> str | None:
    """What the report needs beyond validate_record, as one line (None if usable)."""
    cfg = rec["config"]
    for part in ("poison", "defense"):
        if not isinstance(cfg.get(part), dict) or not isinstance(cfg[part].get("name"), str):
            return f"field 'config.{part}' is not an object with a name"
    if not isinstance(cfg.get("seed"), int) or isinstance(cfg.get("seed"), bool):
        return "field 'config.seed' is not an integer"
    if _num(cfg["poison"].get("ratio", 1.0)) is None:
        return "field 'config.poison.ratio' is not a number"
    if _num(rec["metrics"].get("test_acc")) is None:
        return "metrics.test_acc is not a finite number"
    return None


# ------------------------------------------------------------------------------------- grouping

def _flat(params: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(params, dict):
        return {prefix or "value": params}
    out: dict[str, Any] = {}
    for k in sorted(params):
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(params[k], dict):
            out.update(_flat(params[k], name))
        else:
            out[name] = params[k]
    return out


def _params_text(params: Any) -> str:
    flat = _flat(params or {})
    return ", ".join(f"{k}={_fmt_param(k, v)}" for k, v in flat.items()) or "–"


def _fmt_param(key: str, value: Any) -> str:
    """Short, readable parameter value: budgets as k/255 (:func:`format_value`), paths as their
    file stem, strings unquoted."""
    if isinstance(value, str):
        return Path(value).stem if "/" in value and ":" not in value else value
    return format_value(key, value)


def _defense_defaults(name: str) -> dict[str, Any] | None:
    """Flat default parameters of a registered defense (``None`` when it is not installed here)."""
    try:
        from defenses.base import build_defense
        return _flat(build_defense(name).record()["params"])
    except (BenchError, ImportError):
        return None


def _poison_defaults(name: str, preset: str) -> tuple[dict[str, Any], bool] | None:
    """Flat default parameters of a registered poison under a generation preset, and whether that
    preset replaces any of the poison's own defaults (``None`` when the poison is not installed here)."""
    try:
        from benchmark.poisoning import build_poison
        from benchmark.registry import POISONS

        spec = build_poison(name, {}, 0, 1.0, preset)
        return _flat(spec.params), bool(POISONS.get(name).preset_params.get(preset))
    except (BenchError, ImportError):
        return None


def _poison_params_text(poison: dict[str, Any], preset: str) -> str:
    """The params of a poison that differ from its defaults under ``preset`` (a full EM recipe is 15
    params, most of them the preset's); "defaults of preset X" when none differ. Every param when the
    poison is not installed here, since its defaults are then unknown."""
    flat = _flat(poison.get("params") or {})
    known = _poison_defaults(str(poison["name"]), preset)
    if known is None:
        return _params_text(poison.get("params"))
    defaults, by_preset = known
    changed = {k: v for k, v in flat.items() if k not in defaults or defaults[k] != v}
    if not changed:
        return f"defaults of preset {preset}" if by_preset else "defaults"
    return ", ".join(f"{k}={_fmt_param(k, v)}" for k, v in changed.items())


def _labels(ids: Iterable[tuple[str, str]], special: dict[str, str],
            defaults: Callable[[str], dict[str, Any] | None] | None = None) -> dict[tuple[str, str], str]:
    """Readable unique labels for (name, params-json) ids: the name, plus the params that differ
    between ids sharing a name and (with ``defaults``) the params that differ from the registered
    defaults, so a column says e.g. ``at (eps=4/255)``."""
    by_name: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for pid in sorted(set(ids)):
        by_name[pid[0]].append(pid)
    labels = {}
    for name, pids in by_name.items():
        base = special.get(name, name)
        flats = [_flat(json.loads(p[1])) for p in pids]
        keys = sorted({k for f in flats for k in f})
        shown = {k for k in keys if len({repr(f.get(k)) for f in flats}) > 1}
        default = defaults(name) if defaults else None
        if default is not None:
            shown |= {k for f in flats for k in f if k in default and f[k] != default[k]}
        for pid, f in zip(pids, flats, strict=True):
            text = ", ".join(f"{k}={_fmt_param(k, f[k])}" for k in keys if k in shown and k in f)
            labels[pid] = f"{base} ({text})" if text else base
    return labels


def _dataset_title(cfg: dict[str, Any]) -> tuple[str, str | None]:
    source = cfg.get("dataset_source") or "unknown source"
    if source in SOURCE_NOTES:
        return SOURCE_NOTES[source]
    name = str(cfg["dataset"])
    if name.startswith("imagefolder:"):
        return f"image folder {name.split(':', 1)[1]}", None
    return f"{DATASET_NAMES.get(name, name)} ({source})", None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]+", "-", text).strip("-").lower()[:80]


@dataclass
class Group:
    """All runs under one protocol: one set of tables and plots."""

    dataset: str
    source: str
    model: str
    preset: str
    protocol: dict[str, Any]
    variant: str  # "" or the protocol fields that set this group apart from its siblings
    runs: list[dict[str, Any]] = field(default_factory=list)
    poison_labels: dict[tuple[str, str], str] = field(default_factory=dict)
    defense_labels: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def cfg(self) -> dict[str, Any]:
        return self.runs[0]["config"]

    @property
    def title(self) -> str:
        ds, _ = _dataset_title(self.cfg)
        text = f"{ds} · {self.model} · preset {self.preset}"
        return text + (f" · {self.variant}" if self.variant else "")

    @property
    def slug(self) -> str:
        base = f"{self.dataset}-{self.source}-{self.model}-{self.preset}"
        if self.variant:
            base += "-" + config_hash(self.protocol)[:6]
        return _slug(base)

    def poison_label(self, rec: dict[str, Any]) -> str:
        return self.poison_labels[_pid(rec["config"]["poison"])]

    def defense_label(self, rec: dict[str, Any]) -> str:
        return self.defense_labels[_pid(rec["config"]["defense"])]

    def is_full(self, rec: dict[str, Any]) -> bool:
        p = rec["config"]["poison"]
        return p["name"] == "none" or (float(p.get("ratio", 1.0)) >= 1.0 and not p.get("clean_only"))

    def full_runs(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if self.is_full(r)]

    def partial_runs(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if not self.is_full(r)]


def _pid(part: dict[str, Any]) -> tuple[str, str]:
    """(name, params) identity of a poison or defense; a poison's algorithm revision counts as a param,
    so records of two revisions are never averaged together."""
    params = dict(part.get("params") or {})
    if part.get("revision"):
        params["revision"] = part["revision"]
    return str(part["name"]), canonical_json(params)


def _protocol_of(cfg: dict[str, Any]) -> dict[str, Any]:
    proto = dict(cfg.get("protocol") or {})
    proto["train_size"] = cfg.get("train_size")
    proto["test_size"] = cfg.get("test_size")
    return proto


def group_runs(runs: Iterable[tuple[Path, dict[str, Any]]]) -> list[Group]:
    """Group records by dataset (and source), model, preset and resolved protocol."""
    buckets: dict[tuple, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    protos: dict[str, dict[str, Any]] = {}
    for _path, rec in runs:
        cfg = rec["config"]
        key = (str(cfg["dataset"]), str(cfg.get("dataset_source") or ""), str(cfg["model"]), str(cfg["preset"]))
        proto = _protocol_of(cfg)
        sig = canonical_json(proto)
        protos[sig] = proto
        buckets[key][sig].append(rec)
    groups = []
    for key in sorted(buckets, key=lambda k: (k[0], k[1], k[2], PRESET_ORDER.get(k[3], 9), k[3])):
        variants = buckets[key]
        sigs = sorted(variants)
        differ = []
        if len(sigs) > 1:
            keys = sorted({k for s in sigs for k in protos[s]})
            differ = [k for k in keys if len({repr(protos[s].get(k)) for s in sigs}) > 1]
        for sig in sigs:
            proto = protos[sig]
            variant = ", ".join(f"{k}={proto.get(k)}" for k in differ)
            g = Group(key[0], key[1], key[2], key[3], proto, variant, variants[sig])
            g.poison_labels = _labels((_pid(r["config"]["poison"]) for r in g.runs), {"none": CLEAN})
            g.defense_labels = _labels((_pid(r["config"]["defense"]) for r in g.runs), {}, _defense_defaults)
            groups.append(g)
    return groups


# ------------------------------------------------------------------------------------ aggregates

@dataclass
class Matrix:
    """Poison (rows, clean first) x defense (columns, none first) cells of one metric."""

    rows: list[str]
    cols: list[str]
    cells: dict[tuple[str, str], Stat]

    def get(self, row: str, col: str) -> Stat | None:
        return self.cells.get((row, col))


def _ordered(labels: Iterable[str], first: str) -> list[str]:
    uniq = sorted(set(labels))
    return ([first] if first in uniq else []) + [x for x in uniq if x != first]


def metric_value(rec: dict[str, Any], metric: str) -> float | None:
    """``test_acc``/``peak_test_acc`` from metrics, or ``defense:<key>`` from metrics.defense (flattened)."""
    m = rec.get("metrics") or {}
    if metric.startswith("defense:"):
        return _num(_flat(m.get("defense") or {}).get(metric.split(":", 1)[1]))
    return _num(m.get(metric))


def accuracy_matrix(group: Group, metric: str = "test_acc") -> Matrix:
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for rec in group.full_runs():
        v = metric_value(rec, metric)
        if v is not None:
            values[(group.poison_label(rec), group.defense_label(rec))].append(v)
    cells = {k: s for k, v in values.items() if (s := stat(v)) is not None}
    rows = _ordered((r for r, _ in cells), CLEAN)
    cols = _ordered((c for _, c in cells), NO_DEFENSE)
    return Matrix(rows, cols, cells)


@dataclass(frozen=True)
class PoisonRank:
    poison: str
    worst: Stat  # the best accuracy any defense recovers
    defense: str  # which defense recovers it
    undefended: Stat | None
    drop: float | None  # clean/none accuracy minus worst case (points)
    covered: int  # defenses of the comparable set run on this poison
    total: int  # size of the comparable defense set
    missing: tuple[str, ...] = ()  # defenses of the comparable set not run on this poison


@dataclass(frozen=True)
class DefenseRank:
    defense: str
    clean: Stat | None  # clean-data accuracy under this defense
    cost: float | None  # clean accuracy under this defense minus under no defense (points)
    mean: float | None  # mean accuracy over the comparable poisons it was run on
    worst: Stat | None  # lowest accuracy over the comparable poisons it was run on
    poison: str | None  # the poison that gives it
    covered: int  # comparable poisons it was run on
    total: int  # size of the comparable poison set
    missing: tuple[str, ...] = ()  # comparable poisons it was not run on
    reference: bool = False  # the `none` row: shown first, unranked


def comparable_poisons(m: Matrix) -> list[str]:
    """The poisons defenses are compared on: those with a record under at least one defense other
    than ``none``. A control run only without defense (e.g. random noise) would otherwise count as a
    gap of every defense and leave plain training the only defense with full coverage. When no
    defense but ``none`` was run, every poison."""
    poisons = [r for r in m.rows if r != CLEAN]
    defended = [r for r in poisons if any(m.get(r, c) is not None for c in m.cols if c != NO_DEFENSE)]
    return defended or poisons


def comparable_defenses(m: Matrix) -> list[str]:
    """The defenses poisons are compared on: those run on at least one poison (a defense run only on
    clean data says nothing about any poison)."""
    return [c for c in m.cols if any(m.get(r, c) is not None for r in m.rows if r != CLEAN)]


def poison_ranking(m: Matrix) -> list[PoisonRank]:
    """Per poison: the highest accuracy over the comparable defenses (and which). Ranked by how many
    of those defenses were run on it (more first: a worst case over fewer defenses can only rise as
    defenses are added), then by that worst case ascending (lower = stronger)."""
    out = []
    base = m.get(CLEAN, NO_DEFENSE)
    defenses = comparable_defenses(m)
    for row in m.rows:
        if row == CLEAN:
            continue
        cells = [(c, s) for c in defenses if (s := m.get(row, c)) is not None]
        if not cells:
            continue
        col, worst = max(cells, key=lambda cs: cs[1].mean)  # first column wins ties
        drop = base.mean - worst.mean if base else None
        missing = tuple(c for c in defenses if m.get(row, c) is None)
        out.append(PoisonRank(row, worst, col, m.get(row, NO_DEFENSE), drop, len(cells), len(defenses), missing))
    return sorted(out, key=lambda r: (-r.covered, r.worst.mean, r.poison))


def defense_ranking(m: Matrix) -> list[DefenseRank]:
    """Per defense: its clean-data cost, and its mean and lowest accuracy over the comparable poisons
    (:func:`comparable_poisons`) it was run on. ``none`` comes first as an unranked reference; the
    others are ranked by how many comparable poisons they were run on (more first), then by their
    lowest accuracy, descending (higher = better)."""
    poisons = comparable_poisons(m)
    base = m.get(CLEAN, NO_DEFENSE)
    ref: list[DefenseRank] = []
    ranked: list[DefenseRank] = []
    for col in m.cols:
        clean = m.get(CLEAN, col)
        cells = [(r, s) for r in poisons if (s := m.get(r, col)) is not None]
        cost = clean.mean - base.mean if clean and base else None
        if cells:
            row, worst = min(cells, key=lambda rs: rs[1].mean)
            mean = statistics.fmean(s.mean for _, s in cells)
        else:
            row, worst, mean = None, None, None
        missing = tuple(r for r in poisons if m.get(r, col) is None)
        entry = DefenseRank(col, clean, cost, mean, worst, row, len(cells), len(poisons), missing,
                            reference=col == NO_DEFENSE)
        (ref if entry.reference else ranked).append(entry)
    ranked.sort(key=lambda d: (d.worst is None, -d.covered, -(d.worst.mean if d.worst else 0.0),
                               -(d.mean or 0.0), d.defense))
    return ref + ranked


def defense_metric_keys(group: Group) -> list[str]:
    keys = set()
    for rec in group.full_runs():
        for k, v in _flat((rec.get("metrics") or {}).get("defense") or {}).items():
            if _num(v) is not None:
                keys.add(k)
    return sorted(keys)


def _defense_metrics_table(group: Group, legend: str) -> Table | None:
    """One table of the extra metrics defenses report (``metrics.defense``, e.g. AT's robust accuracy,
    smoothing's certified-vote accuracy): a row per (poison, defense) cell, a column per metric."""
    keys = defense_metric_keys(group)
    if not keys:
        return None
    mats = {k: accuracy_matrix(group, f"defense:{k}") for k in keys}
    cells = sorted({(r, c) for m in mats.values() for r in m.rows for c in m.cols if m.get(r, c) is not None},
                   key=lambda rc: (_defense_sort_key(rc[1]), rc[0] != CLEAN, rc[0]))
    if not cells:
        return None
    digits = {k: 0 if all(st.mean.is_integer() for st in mats[k].cells.values()) else 2 for k in keys}
    rows = [[c, r] + [_fmt(mats[k].get(r, c), digits[k]) for k in keys] for r, c in cells]
    return Table(["defense", "poison"] + [f"`{k}`" for k in keys], rows,
                 "Extra metrics reported by the defenses themselves (record metrics.defense), final model. "
                 + "".join(f"`{k}`: {h}. " for k, h in _metrics_help(keys).items()) + legend,
                 align="ll" + "r" * len(keys))


def _metrics_help(keys: list[str]) -> dict[str, str]:
    """Meaning of each defense metric key, from the registered defenses that declare it."""
    try:
        import defenses  # noqa: F401  (registers the built-in defenses)
        from benchmark.registry import DEFENSES
    except ImportError:
        return {}
    known: dict[str, str] = {}
    for name in DEFENSES.names():
        known.update(getattr(DEFENSES.get(name), "metrics_help", {}))
    return {k: known[k] for k in keys if k in known}


def _defense_sort_key(label: str) -> tuple[bool, str]:
    return label != NO_DEFENSE, label


@dataclass
class PoisonCost:
    poison: str
    params: str
    budget: dict[str, Stat]
    seconds: Stat | None
    device: str
    keys: int


def poison_costs(group: Group) -> list[PoisonCost]:
    """Budget and generation cost per poison, averaged over distinct artifacts (keys); full-ratio runs
    are preferred because partial runs perturb fewer images."""
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in group.runs:
        if rec["config"]["poison"]["name"] != "none":
            by_label[group.poison_label(rec)].append(rec)
    out = []
    for label in sorted(by_label):
        recs = by_label[label]
        full = [r for r in recs if group.is_full(r)] or recs
        artifacts: dict[tuple, dict[str, Any]] = {}
        for r in full:
            p = r["config"]["poison"]
            artifacts.setdefault((str(p.get("key_fingerprint")), float(p.get("ratio", 1.0))), r)
        arts = [artifacts[k] for k in sorted(artifacts)]
        budget = {}
        for key in ("linf_255", "l2_mean", "psnr", "ssim", "num_poisoned"):
            s = stat(v for r in arts if (v := _num(((r.get("poison") or {}).get("budget") or {}).get(key))) is not None)
            if s:
                budget[key] = s
        seconds = stat(v for r in arts if (v := _num((r.get("poison") or {}).get("generation_seconds"))) is not None)
        devices = sorted({_device_text(r) for r in arts})
        out.append(PoisonCost(label, _poison_params_text(recs[0]["config"]["poison"], group.preset), budget, seconds,
                              ", ".join(devices), len(arts)))
    return out


def _device_text(rec: dict[str, Any]) -> str:
    dev = str((rec.get("poison") or {}).get("generation_device") or "?")
    env = rec.get("environment") or {}
    name = env.get("device_name")
    if dev.startswith("cuda") and name and name != dev and str(env.get("device", "")).startswith("cuda"):
        return f"{dev} ({name})"
    return dev


@dataclass
class PartialRow:
    poison: str
    defense: str
    setting: str  # "mixed" or "clean-only"
    cells: dict[float, Stat]  # ratio -> accuracy; 0.0 is the clean run under the same defense


def partial_rows(group: Group, metric: str = "test_acc") -> tuple[list[float], list[PartialRow]]:
    """Accuracy against poison ratio for poisons with partial runs: mixed (poisoned + clean images)
    and clean-only (only the unpoisoned part), with the clean run (0) and the full poison (1) as ends."""
    partial = group.partial_runs()
    if not partial:
        return [], []
    m = accuracy_matrix(group, metric)
    values: dict[tuple[str, str, str, float], list[float]] = defaultdict(list)
    for rec in partial:
        p = rec["config"]["poison"]
        v = metric_value(rec, metric)
        if v is not None:
            setting = "clean-only" if p.get("clean_only") else "mixed"
            values[(group.poison_label(rec), group.defense_label(rec), setting, float(p.get("ratio", 1.0)))].append(v)
    ratios = sorted({k[3] for k in values} | {0.0, 1.0})
    rows = []
    for poison, defense in sorted({(k[0], k[1]) for k in values}, key=lambda pd: (pd[0], pd[1] != NO_DEFENSE, pd[1])):
        for setting in ("mixed", "clean-only"):
            cells = {k[3]: s for k, v in values.items() if k[:3] == (poison, defense, setting) and (s := stat(v))}
            if not cells:
                continue
            if (c := m.get(CLEAN, defense)) is not None:
                cells[0.0] = c
            if setting == "mixed" and (f := m.get(poison, defense)) is not None:
                cells[1.0] = f
            rows.append(PartialRow(poison, defense, setting, cells))
    return ratios, rows


# ------------------------------------------------------------------------------------ document

@dataclass
class Heading:
    level: int
    text: str
    anchor: str = ""


@dataclass
class Para:
    text: str  # may use `code` and **bold**


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    legend: str
    caption: str = ""
    align: str = ""  # one of l/r per column; default: first column left, rest right


@dataclass
class Image:
    path: Path
    alt: str


@dataclass
class Bullets:
    items: list[str]  # each may use `code` and **bold**


Block = Heading | Para | Table | Image | Bullets


def _protocol_legend(group: Group) -> str:
    p = group.protocol
    ds, note = _dataset_title(group.cfg)
    parts = [f"Protocol: preset `{group.preset}`", f"{p.get('epochs', '?')} epochs",
             f"batch {p.get('batch_size', '?')}", f"lr {p.get('lr', '?')} ({p.get('schedule', '?')})",
             f"model {group.model}", f"dataset {ds}",
             f"{p.get('train_size', '?')} train / {p.get('test_size', '?')} test images"]
    text = ", ".join(parts) + "."
    if group.variant:
        text += f" Protocol differs from other groups in: {group.variant}."
    if note:
        text += " (JPEG copy: not bit-exact with the original; do not compare silently with published numbers.)" \
            if group.source == "cifar10-jpeg" else " " + note
    return text


def _not_run(missing: tuple[str, ...], covered: list[str]) -> str:
    """The comparable poisons/defenses a row lacks, short: the missing ones, or (when most are
    missing) their count and the ones that were run."""
    if not missing:
        return "–"
    if len(missing) <= len(covered) or not covered:
        return ", ".join(missing)
    return f"{len(missing)} (run: {', '.join(covered)})"


def _names(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def _rank_table(group: Group, m: Matrix, legend: str) -> tuple[Table, Table]:
    defenses = comparable_defenses(m)
    p_rows = []
    for i, r in enumerate(poison_ranking(m), 1):
        run = [c for c in defenses if c not in r.missing]
        p_rows.append([str(i), r.poison, r.worst.fmt(), r.defense, _fmt(r.undefended),
                       f"{r.drop:.2f}" if r.drop is not None else "–", f"{r.covered}/{r.total}",
                       _not_run(r.missing, run)])
    left_out = [c for c in m.cols if c not in defenses]
    d_set = (f"all {len(defenses)} defenses of the matrix" if not left_out else
             f"the {len(defenses)} defenses run on at least one poison (left out, run on clean data only: "
             f"{_names(left_out)})")
    poisons = Table(
        ["rank", "poison", "worst case (best defense acc.)", "best defense", "no defense", "drop vs clean",
         "defenses run", "defenses not run"],
        p_rows,
        align="rlrlrrrl",
        legend="Worst case of a poison = the highest clean test accuracy any defense run on it recovers (final "
        f"epoch). Comparable defenses: {d_set}; \"defenses run\" = k of them were run on the poison, and its worst "
        "case is over those k only. Ranked by k (more first: a worst case over fewer defenses can only rise as "
        "defenses are added), then by the worst case (lower = stronger poison). Drop = clean accuracy without "
        "defense minus the worst case (points). " + legend)
    poisons_k = comparable_poisons(m)
    all_poisons = [r for r in m.rows if r != CLEAN]
    undefended_only = [r for r in all_poisons if r not in poisons_k]
    k_set = _names(poisons_k) + (f" (left out: {_names(undefended_only)}, run only without defense)"
                                 if undefended_only else "")
    d_rows = []
    ranked = 0
    for d in defense_ranking(m):
        if not d.reference:
            ranked += 1
        run = [r for r in poisons_k if r not in d.missing]
        d_rows.append(["ref" if d.reference else str(ranked), d.defense, _fmt(d.clean),
                       f"{d.cost:+.2f}" if d.cost is not None else "–",
                       f"{d.mean:.2f}" if d.mean is not None else "–", _fmt(d.worst), d.poison or "–",
                       f"{d.covered}/{d.total}", _not_run(d.missing, run)])
    defenses_t = Table(
        ["rank", "defense", "clean acc.", "cost on clean", "mean over poisons", "worst case (lowest acc.)",
         "worst poison", "poisons run", "poisons not run"],
        d_rows,
        align="rlrrrrlrl",
        legend=f"Comparable poisons (K = {len(poisons_k)}): {k_set}; poisons run = k of them were run under the "
        "defense. Mean over poisons and worst case (its lowest clean test accuracy) are over those k poisons "
        "only, so rows with different k average over different poisons (see poisons not run). none (plain "
        "training) is the unranked reference row (rank ref); the other defenses are ranked by k (more first), "
        "then by the worst case (higher = better). Cost on clean = accuracy on clean (unpoisoned) training data "
        "under the defense minus without any defense (points; negative = the defense costs accuracy). " + legend)
    return poisons, defenses_t


#: a poison counts as neutralised by a defense when its accuracy is within this many points of the
#: same defense's accuracy on clean data (about the spread of a single seed plus a margin)
NEUTRALISED_WITHIN = 5.0


def _pct(s: Stat) -> str:
    return f"{s.mean:.1f} %"


def highlights(m: Matrix) -> list[str]:
    """What the matrix says, in a few generated sentences: each poison without defense; which
    defenses neutralise which poison (poisoned accuracy within ``NEUTRALISED_WITHIN`` points of the same
    defense on clean data); which poisons no defense run neutralises; and the defenses that cost
    accuracy on clean data. A defense whose clean accuracy is below half of plain training's fails on
    its own and is never counted as neutralising a poison."""
    out: list[str] = []
    base = m.get(CLEAN, NO_DEFENSE)
    poisons = [r for r in m.rows if r != CLEAN]
    if base is None or not poisons:
        return out
    undefended = sorted(((r, s) for r in poisons if (s := m.get(r, NO_DEFENSE))), key=lambda rs: (rs[1].mean, rs[0]))
    if undefended:
        out.append(f"**Without defense** (clean data: {_pct(base)}): " + ", ".join(
            f"{r} {_pct(s)} ({s.mean - base.mean:+.1f})" for r, s in undefended) + ".")
    clean_of = {c: s for c in m.cols if (s := m.get(CLEAN, c)) is not None}
    failing = sorted((c for c, s in clean_of.items() if s.mean < 0.5 * base.mean), key=lambda c: clean_of[c].mean)
    usable = [c for c in m.cols if c in clean_of and c not in failing and c != NO_DEFENSE]
    no_effect = [r for r, s in undefended if base.mean - s.mean <= NEUTRALISED_WITHIN]
    neutral: list[str] = []
    standing: list[str] = []
    for r in poisons:
        if r in no_effect:
            continue
        runs = [(c, s, clean_of[c]) for c in usable if (s := m.get(r, c)) is not None]
        hits = [f"{c} ({_pct(s)} vs {_pct(cl)})" for c, s, cl in runs if cl.mean - s.mean <= NEUTRALISED_WITHIN]
        if hits:
            neutral.append(f"{r} by {', '.join(hits)}")
        elif runs:
            c, s, cl = min(runs, key=lambda t: (t[2].mean - t[1].mean, t[0]))
            standing.append(f"{r} (closest: {c}, {_pct(s)} vs {_pct(cl)} on clean data; {len(runs)} of "
                            f"{len(usable)} usable defenses run)")
        else:
            standing.append(f"{r} (no defense run yet)")
    if no_effect:
        out.append(f"**No effect** even without defense (within {NEUTRALISED_WITHIN:g} points of clean): "
                   + ", ".join(no_effect) + ".")
    if neutral:
        out.append(f"**Neutralised** (poisoned accuracy within {NEUTRALISED_WITHIN:g} points of the same defense "
                   "on clean data): " + "; ".join(neutral) + ".")
    if standing:
        out.append("**Not neutralised by any defense run:** " + "; ".join(standing) + ".")
    costly = sorted(((c, clean_of[c].mean - base.mean) for c in usable
                     if base.mean - clean_of[c].mean > NEUTRALISED_WITHIN), key=lambda cd: cd[1])
    if costly:
        out.append(f"**Costly on clean data** (more than {NEUTRALISED_WITHIN:g} points below plain training): "
                   + ", ".join(f"{c} {d:+.1f}" for c, d in costly) + ".")
    if failing:
        out.append("**Fails on clean data** at this protocol (below half of plain training's accuracy, so not "
                   "counted as neutralising anything): " + ", ".join(f"{c} {_pct(clean_of[c])}" for c in failing)
                   + ".")
    return out


def _matrix_table(m: Matrix, legend: str) -> Table:
    return Table(["poison \\ defense", *m.cols], [[r, *(_fmt(m.get(r, c)) for c in m.cols)] for r in m.rows], legend)


def build_document(groups: list[Group], results_label: str, n_records: int, newest: str,
                   plots: dict[str, dict[str, Any]]) -> list[Block]:
    """The leaderboard as format-neutral blocks."""
    doc: list[Block] = [
        Heading(1, "Leaderboard: unlearnable-data poisons vs defenses"),
        Para(f"Generated by `bench leaderboard` from {n_records} run records in `{results_label}` "
             f"(newest record: {newest}). Do not edit by hand; regenerate it from the records."),
        Para("Every number is the **clean test accuracy (%)** of a victim trained on the (poisoned) training set "
             "under a defense. **Lower accuracy = stronger poison; higher accuracy = better defense.** Tables "
             "show mean ± std over seeds (sample std; n = runs, shown when above 1). Final accuracy is the "
             "accuracy after the last epoch; peak accuracy picks the best epoch on the test set and is an oracle "
             "upper bound, not a result. Presets and protocols are never mixed in one table."),
    ]
    if len(groups) > 1:
        doc.append(Para("Groups: " + "; ".join(f"[{g.title}](#{g.slug})" for g in groups) + "."))
    for g in groups:
        legend = _protocol_legend(g)
        gp = plots.get(g.slug, {})
        seeds = sorted({int(r["config"]["seed"]) for r in g.runs})
        doc.append(Heading(2, g.title, g.slug))
        _ds, note = _dataset_title(g.cfg)
        doc.append(Para(f"{len(g.runs)} runs, seeds {', '.join(map(str, seeds))}." + (f" **Note:** {note}" if note else "")))
        m = accuracy_matrix(g, "test_acc")
        if m.cells and (items := highlights(m)):
            doc.append(Heading(3, "Highlights"))
            doc.append(Bullets(items))
            doc.append(Para("Generated from the final-epoch matrix below (means over seeds). " + seed_spread_note(m)))
        if m.cells:
            doc.append(Heading(3, "Clean test accuracy, poison × defense (final epoch)"))
            doc.append(_matrix_table(m, "Rows: poisons (clean = no poison), columns: defenses (none = plain "
                                        "training). Final-epoch clean test accuracy (%); lower = stronger poison. "
                                        + legend))
            for key, alt in (("heatmap", "heatmap of the accuracy matrix"), ("bars", "grouped bars with std")):
                if key in gp:
                    doc.append(Image(gp[key], alt))
            pm = accuracy_matrix(g, "peak_test_acc")
            if pm.cells:
                doc.append(Heading(3, "Peak clean test accuracy (oracle upper bound)"))
                doc.append(_matrix_table(pm, "Best epoch chosen on the test set: an oracle upper bound (early "
                                             "stopping with test labels), not a comparable result. " + legend))
            doc.append(Heading(3, "Poisons ranked by defenses run, then worst case over them"))
            pt, dt = _rank_table(g, m, legend)
            doc.append(pt)
            doc.append(Heading(3, "Defenses ranked by poisons run, then worst case over them"))
            doc.append(dt)
            if (extra := _defense_metrics_table(g, legend)) is not None:
                doc.append(Heading(3, "Defense metrics"))
                doc.append(extra)
        costs = poison_costs(g)
        if costs:
            doc.append(Heading(3, "Poison budgets and generation cost"))
            rows = []
            for c in costs:
                b = c.budget
                rows.append([c.poison, c.params, _fmt(b.get("linf_255"), 1), _fmt(b.get("l2_mean"), 3),
                             _fmt(b.get("psnr"), 2), _fmt(b.get("ssim"), 4), _fmt(b.get("num_poisoned"), 0),
                             _fmt(c.seconds, 2), c.device])
            doc.append(Table(["poison", "params (non-default)", "L∞ (/255)", "L2 (mean)", "PSNR (dB)", "SSIM", "images poisoned",
                              "generation (s)", "device"], rows,
                             "Params: only those that differ from the poison's defaults under this preset's "
                             "generation recipe (`bench list poisons` shows them all; every record stores them all). "
                             "Perturbation of the poisoned images vs their clean originals (record poison.budget): "
                             "L∞ in grey levels out of 255, mean per-image L2 in [0,1] pixel units, mean PSNR and "
                             "SSIM. Generation time is wall-clock seconds to generate the poison once (cached "
                             "afterwards); mean ± std over poison keys when several keys were used. " + legend,
                             align="lprrrrrrl"))
        ratios, prows = partial_rows(g)
        if prows:
            doc.append(Heading(3, "Partial poisoning"))
            header = ["poison", "defense", "training set"] + [_ratio_label(r) for r in ratios]
            rows = [[p.poison, p.defense, p.setting, *(_fmt(p.cells.get(r)) for r in ratios)] for p in prows]
            doc.append(Table(header, rows,
                             "Columns: fraction of the training set poisoned (config.poison.ratio). mixed = poisoned "
                             "images plus the clean rest; clean-only = training on the unpoisoned rest alone (the "
                             "baseline a partial poison should be compared with). 0% = the clean run, 100% = the "
                             "full poison, both under the same defense. " + legend, align="lll" + "r" * len(ratios)))
            if "ratio" in gp:
                doc.append(Image(gp["ratio"], "accuracy vs poison ratio"))
        if "curves" in gp:
            doc.append(Heading(3, "Test accuracy per epoch"))
            doc.append(Image(gp["curves"], "test accuracy per epoch, clean vs poisoned, per defense"))
        samples = gp.get("samples") or {}
        if samples:
            doc.append(Heading(3, "Samples"))
            doc.append(Para("Per poison: clean training images (one per class), their poisoned versions and the "
                            "difference poisoned − clean, drawn as grey + factor × difference (grey = no change; "
                            "the factor, in the row label, makes the largest difference reach black or white)."))
            for label in sorted(samples):
                doc.append(Image(samples[label], f"samples of {label}"))
    return doc


def _ratio_label(r: float) -> str:
    return f"{r * 100:g}%" + (" (clean)" if r == 0 else "")


# ------------------------------------------------------------------------------------ renderers

def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(doc: list[Block], out_dir: Path) -> str:
    lines: list[str] = []
    for b in doc:
        if isinstance(b, Heading):
            if b.anchor:
                lines += [f'<a id="{b.anchor}"></a>', ""]
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            lines += [b.text, ""]
        elif isinstance(b, Table):
            align = b.align or "l" + "r" * (len(b.header) - 1)
            lines.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            lines.append("|" + "|".join("---:" if a == "r" else ":---" for a in align) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            lines += ["", f"<sub>{b.legend}</sub>", ""]
        elif isinstance(b, Image):
            rel = Path(os.path.relpath(b.path, out_dir)).as_posix()
            lines += [f"![{b.alt}]({rel})", ""]
        elif isinstance(b, Bullets):
            lines += [f"- {item}" for item in b.items] + [""]
    return "\n".join(lines).rstrip() + "\n"


def _inline_html(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"\[([^\]]+)\]\(#([^)]+)\)", r'<a href="#\2">\1</a>', text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 8px}"
        "th{background:#f3f3f3}td.r{text-align:right}.legend{font-size:0.8em;color:#555;max-width:60em}"
        "img{max-width:100%;display:block;margin:1em 0}code{background:#f3f3f3;padding:0 3px}")


def render_html(doc: list[Block]) -> str:
    """One self-contained page: plots embedded as base64 PNG."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>unlearnable-bench leaderboard</title>", f"<style>{_CSS}</style></head><body>"]
    for b in doc:
        if isinstance(b, Heading):
            anchor = f' id="{html.escape(b.anchor)}"' if b.anchor else ""
            parts.append(f"<h{b.level}{anchor}>{_inline_html(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            parts.append(f"<p>{_inline_html(b.text)}</p>")
        elif isinstance(b, Table):
            align = b.align or "l" + "r" * (len(b.header) - 1)
            parts.append("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
                         + "</tr></thead><tbody>")
            for row in b.rows:
                parts.append("<tr>" + "".join(f'<td class="{a}">{html.escape(c)}</td>'
                                              for a, c in zip(align, row, strict=True)) + "</tr>")
            parts.append(f'</tbody></table><p class="legend">{_inline_html(b.legend)}</p>')
        elif isinstance(b, Image):
            data = base64.b64encode(Path(b.path).read_bytes()).decode()
            parts.append(f'<img alt="{html.escape(b.alt)}" src="data:image/png;base64,{data}">')
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{_inline_html(item)}</li>" for item in b.items) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "∞": r"$\infty$",
        "×": r"$\times$", "–": "--", "·": r"$\cdot$", "<": r"$<$", ">": r"$>$", "|": r"$|$"}


def _tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def _inline_tex(text: str) -> str:
    text = re.sub(r"\[([^\]]+)\]\(#[^)]+\)", r"\1", text)
    out = _tex(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"\\textbf{\1}", out)
    return re.sub(r"`([^`]+)`", r"\\texttt{\1}", out)


#: LaTeX column of an ``align`` letter: ``p`` is a wrapped text column (long parameter lists)
_TEX_COLUMNS = {"l": "l", "r": "r", "p": "p{4.5cm}"}

#: shrink a table wider than the text to the text width (never enlarge a narrow one); graphicx's
#: \resizebox evaluates \width as the natural width of its content
_TEX_FIT = r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%"


def render_latex(doc: list[Block], out_dir: Path) -> str:
    """booktabs tables (and figures) for a paper. Wide tables (17 defense columns) are shrunk to the
    text width with \\resizebox, so the preamble needs \\usepackage{booktabs,graphicx}."""
    lines = ["% Generated by `bench leaderboard --format latex`. Preamble needs:",
             "%   \\usepackage{booktabs}  % table rules",
             "%   \\usepackage{graphicx}  % wide tables are shrunk to the text width; figures", ""]
    title = ""
    for b in doc:
        if isinstance(b, Heading):
            if b.level == 1:
                continue
            if b.level == 2:
                title = b.text
                lines += [f"\\subsection*{{{_inline_tex(b.text)}}}", ""]
            else:
                lines += [f"\\paragraph{{{_inline_tex(b.text)}}}", ""]
        elif isinstance(b, Para):
            lines += [_inline_tex(b.text), ""]
        elif isinstance(b, Table):
            align = b.align or "l" + "r" * (len(b.header) - 1)
            cols = "".join(_TEX_COLUMNS.get(a, "l") for a in align)
            lines += ["\\begin{table}[t]", "\\centering", "\\small", _TEX_FIT, f"\\begin{{tabular}}{{{cols}}}",
                      "\\toprule", " & ".join(_tex(h) for h in b.header) + r" \\", "\\midrule"]
            lines += [" & ".join(_tex(c) for c in row) + r" \\" for row in b.rows]
            lines += ["\\bottomrule", "\\end{tabular}}",
                      f"\\caption{{{_inline_tex(title)}. {_inline_tex(b.legend)}}}", "\\end{table}", ""]
        elif isinstance(b, Image):
            rel = Path(os.path.relpath(b.path, out_dir)).as_posix()
            lines += ["\\begin{figure}[t]", "\\centering", f"\\includegraphics[width=\\linewidth]{{{rel}}}",
                      f"\\caption{{{_inline_tex(title)}: {_tex(b.alt)}.}}", "\\end{figure}", ""]
        elif isinstance(b, Bullets):
            lines += ["\\begin{itemize}"] + [f"  \\item {_inline_tex(item)}" for item in b.items] + ["\\end{itemize}", ""]
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------------------- plots

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    plt.rcParams.update({"svg.hashsalt": "bench", "figure.dpi": 100})
    return plt, sns


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    data = buf.getvalue()
    _write_public(path, lambda p: p.write_bytes(data))
    return path


def _write_public(path: Path, write: Callable[[Path], None]) -> None:
    """Atomic write, then the usual file mode (mkstemp creates 0600; these files are for readers)."""
    atomic_write(path, write)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _wrap(text: str, width: int = 70) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def plot_heatmap(m: Matrix, title: str, path: Path) -> Path:
    plt, sns = _plt()
    import numpy as np

    data = np.full((len(m.rows), len(m.cols)), np.nan)
    annot = np.full(data.shape, "", dtype=object)
    for i, r in enumerate(m.rows):
        for j, c in enumerate(m.cols):
            s = m.get(r, c)
            if s is not None:
                data[i, j] = s.mean
                annot[i, j] = f"{s.mean:.1f}" + (f"\n±{s.std:.1f}" if s.n > 1 else "")
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(m.cols) + 2.5), max(2.8, 0.65 * len(m.rows) + 1.6)))
    sns.heatmap(data, annot=annot, fmt="", cmap="viridis", vmin=0, vmax=100, ax=ax, linewidths=0.5,
                cbar_kws={"label": "clean test accuracy (%)"}, xticklabels=m.cols, yticklabels=m.rows,
                annot_kws={"fontsize": 9})
    ax.grid(False)
    ax.set_facecolor("#f2f2f2")  # cells not run: light grey, not mistaken for a value
    ax.set_xlabel("defense")
    ax.set_ylabel("poison")
    ax.set_title(_wrap(title + " — final clean test accuracy (%); lower = stronger poison; grey = not run", 60),
                 fontsize=10)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    plt.setp(ax.get_yticklabels(), rotation=0)
    return _save(fig, path)


def _palette(n: int) -> list:
    """``n`` colours that can be told apart: tab10, or tab20 with its dark shades first (the light
    shade of a hue is then only used from the 11th entry on); cycles beyond 20."""
    _plt_, sns = _plt()
    if n <= 10:
        return sns.color_palette("tab10", n)
    tab20 = sns.color_palette("tab20", 20)
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return [tab20[order[i % 20]] for i in range(n)]


#: hatch of a bar by its colour slot's round (0-9: plain, 10-19: hatched light shades, ...)
_HATCHES = ("", "///", "...", "xxx", "\\\\\\", "+++")


def bar_styles(labels: list[str]) -> dict[str, tuple[Any, str]]:
    """A fixed (colour, hatch) per label by its position: tab20 gives 20 colours but a dark and a light
    shade of one hue look alike, so every label from the 11th on is also hatched, and labels beyond 20
    reuse colours with another hatch. Every label keeps a distinct style however many there are."""
    colors = _palette(len(labels))
    return {lab: (colors[i], _HATCHES[(i // 10) % len(_HATCHES)]) for i, lab in enumerate(labels)}


def plot_bars(m: Matrix, title: str, path: Path) -> Path:
    """Grouped bars, one group per poison holding only the defenses run on it (centred on its tick);
    error bars (std over seeds) only where a cell has more than one run."""
    plt, _sns = _plt()

    styles = bar_styles(m.cols)
    present = [[c for c in m.cols if m.get(r, c) is not None] for r in m.rows]
    slots = max([len(p) for p in present] + [1])
    width = 0.8 / slots
    # width grows with the bars up to a page-wide 16 in; a capped figure gets taller instead
    want = max(6.0, 0.35 * sum(len(p) for p in present) + 0.6 * len(m.rows) + 3)
    fig, ax = plt.subplots(figsize=(min(16.0, want), 4.0 if want <= 16.0 else 5.5))
    ax.grid(False, axis="x")
    labelled: set[str] = set()
    for i, (r, cols) in enumerate(zip(m.rows, present, strict=True)):
        for j, c in enumerate(cols):
            s = m.get(r, c)
            color, hatch = styles[c]
            ax.bar(i - width * len(cols) / 2 + width * (j + 0.5), s.mean, width * 0.92,
                   yerr=s.std if s.n > 1 else None, capsize=3, color=color, hatch=hatch, edgecolor="#3a3a3a",
                   linewidth=0, error_kw={"elinewidth": 1}, label=c if c not in labelled else None)
            labelled.add(c)
    n_rows = len(m.rows)
    ax.set_xticks(range(n_rows), m.rows, rotation=30 if n_rows > 6 else 0, ha="right" if n_rows > 6 else "center")
    ax.set_xlim(-0.6, n_rows - 0.4)
    ax.set_ylim(0, 100)
    ax.set_ylabel("clean test accuracy (%)")
    ax.set_xlabel("poison")
    ax.set_title(_wrap(title + " — bars: mean over seeds; error bars: std over seeds (where n > 1); "
                       "lower = stronger poison", 70), fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda k: m.cols.index(labels[k]))
    ax.legend([handles[k] for k in order], [labels[k] for k in order], title="defense",
              bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8, title_fontsize=9,
              handleheight=1.6, handlelength=2.4)
    return _save(fig, path)


def _curve(recs: list[dict[str, Any]]) -> tuple[list[int], list[float], list[float]]:
    per: dict[int, list[float]] = defaultdict(list)
    for r in recs:
        for e in (r.get("metrics") or {}).get("per_epoch") or []:
            if isinstance(e, dict) and _num(e.get("epoch")) is not None and _num(e.get("test_acc")) is not None:
                per[int(e["epoch"])].append(float(e["test_acc"]))
    epochs = sorted(per)
    stats = [stat(per[e]) for e in epochs]
    return epochs, [s.mean for s in stats], [s.std for s in stats]


def plot_curves(group: Group, m: Matrix, title: str, path: Path) -> Path | None:
    plt, _sns = _plt()
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    cells: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for rec in group.full_runs():
        cells[(group.poison_label(rec), group.defense_label(rec))].append(rec)
    if not any(_curve(v)[0] for v in cells.values()):
        return None
    ncols = min(3, len(m.cols))
    nrows = math.ceil(len(m.cols) / ncols)
    legend_rows = math.ceil(len(m.rows) / 6)
    height = 3.2 * nrows + 1.0 + 0.2 * legend_rows
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, height), squeeze=False, sharey=True)
    colors = dict(zip(m.rows, _palette(len(m.rows)), strict=True))
    colors[CLEAN] = (0.1, 0.1, 0.1)
    for k, c in enumerate(m.cols):
        ax = axes[k // ncols][k % ncols]
        for r in m.rows:
            epochs, mean, std = _curve(cells.get((r, c), []))
            if not epochs:
                continue
            style = {"linewidth": 2.2, "linestyle": "-"} if r == CLEAN else {"linewidth": 1.4, "linestyle": "--"}
            ax.plot(epochs, mean, marker="o", markersize=3, color=colors[r], label=r, **style)
            if any(s > 0 for s in std):
                ax.fill_between(epochs, np.array(mean) - std, np.array(mean) + std, color=colors[r], alpha=0.15)
        ax.set_title(f"defense: {c}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 100)
        if k % ncols == 0:
            ax.set_ylabel("test accuracy (%)")
    for k in range(len(m.cols), nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    handles = [plt.Line2D([], [], color=colors[r], linewidth=2.2 if r == CLEAN else 1.4,
                          linestyle="-" if r == CLEAN else "--", marker="o", markersize=3) for r in m.rows]
    fig.legend(handles, m.rows, title="poison", loc="lower center", ncol=min(len(m.rows), 6), fontsize=8,
               title_fontsize=9, bbox_to_anchor=(0.5, 0.0), frameon=False)
    fig.suptitle(_wrap(title + " — test accuracy per epoch (mean over seeds, band = std)", 90), fontsize=10)
    # margins in inches, so the legend sits right under the panels however many rows there are
    fig.tight_layout(rect=(0, (0.45 + 0.2 * legend_rows) / height, 1, 1 - 0.55 / height))
    return _save(fig, path)


def plot_ratio(ratios: list[float], rows: list[PartialRow], title: str, path: Path) -> Path:
    plt, _sns = _plt()
    poisons = sorted({r.poison for r in rows})
    fig, axes = plt.subplots(1, len(poisons), figsize=(5 * len(poisons), 3.8), squeeze=False, sharey=True)
    defenses = sorted({r.defense for r in rows}, key=lambda d: (d != NO_DEFENSE, d))
    colors = dict(zip(defenses, _palette(len(defenses)), strict=True))
    for k, poison in enumerate(poisons):
        ax = axes[0][k]
        for row in (r for r in rows if r.poison == poison):
            xs = [x for x in ratios if x in row.cells]
            ax.errorbar([100 * x for x in xs], [row.cells[x].mean for x in xs], yerr=[row.cells[x].std for x in xs],
                        marker="o" if row.setting == "mixed" else "s", capsize=3, color=colors[row.defense],
                        linestyle="-" if row.setting == "mixed" else ":", label=f"{row.defense}, {row.setting}")
        ax.set_title(f"poison: {poison}", fontsize=10)
        ax.set_xlabel("poisoned fraction of the training set (%)")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=8, loc="lower left")
        if k == 0:
            ax.set_ylabel("clean test accuracy (%)")
    fig.suptitle(_wrap(title + " — partial poisoning (mixed vs clean-only)", 90), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def diff_image(clean: Any, poisoned: Any) -> tuple[Any, float, float]:
    """The difference row of a sample grid: ``0.5 + amp * (poisoned - clean)`` on [0, 1] images, with
    ``amp`` chosen so the largest |difference| reaches black or white (grey = no change). Returns the
    images, ``amp`` (the factor the row label states) and the largest |difference|."""
    d = poisoned - clean
    peak = float(abs(d).max()) if d.size else 0.0
    amp = 0.5 / peak if peak > 0 else 1.0
    return 0.5 + amp * d, amp, peak


def diff_label(amp: float) -> str:
    """Row label: the factor by which the drawn difference is scaled (deviation from grey = amp x diff)."""
    return f"diff ×{amp:.3g}"


def plot_samples(clean: Any, poisoned: Any, classes: list[str], title: str, path: Path) -> Path:
    """3 rows: clean, poisoned, signed difference scaled (by the factor in its row label) so its largest
    value reaches black or white."""
    plt, _sns = _plt()
    import numpy as np

    c = clean.numpy().astype(np.float64) / 255.0
    p = poisoned.numpy().astype(np.float64) / 255.0
    shown, amp, peak = diff_image(c, p)
    k = c.shape[0]
    fig, axes = plt.subplots(3, k, figsize=(1.15 * k + 1.2, 4.0), squeeze=False)
    gray = c.shape[1] == 1

    def show(ax: Any, img: Any) -> None:
        img = np.clip(img.transpose(1, 2, 0), 0, 1)
        ax.imshow(img[..., 0] if gray else img, cmap="gray" if gray else None, vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)

    row_names = ["clean", "poisoned", diff_label(amp)]
    for j in range(k):
        show(axes[0][j], c[j])
        show(axes[1][j], p[j])
        show(axes[2][j], shown[j])
        axes[0][j].set_title(classes[j][:12], fontsize=8)
    for i, name in enumerate(row_names):
        axes[i][0].set_ylabel(name, fontsize=9)
    fig.suptitle(_wrap(f"{title} (max |diff| = {round(peak * 255)}/255)", 90), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------------- sample images

def _is_cheap(cls: type) -> bool:
    """Poisons that need no surrogate training can be re-created on a few images for a preview; a class
    may say so explicitly with ``preview_cheap = True/False``."""
    return bool(getattr(cls, "preview_cheap", not getattr(cls, "preset_params", {})))


class SampleSource:
    """Clean and poisoned sample images for a record: from the cached poison artifact if present, else
    by re-running a cheap poison on one training image per class (deterministic: first image of each
    class of the protocol's training subset, the key recovered from its fingerprint)."""

    def __init__(self, data_root: Path | None, cache: Path | None, warn: Warn) -> None:
        self.data_root, self.cache, self.warn = data_root, cache, warn
        self._datasets: dict[str, Any] = {}
        self._manifests: list[tuple[Path, dict[str, Any]]] | None = None

    def _dataset(self, name: str) -> Any:
        if name not in self._datasets:
            from benchmark.data import load_dataset

            try:
                self._datasets[name] = load_dataset(name, Path(self.data_root or "data"), Path(self.cache or "."))
            except BenchError as exc:
                self._datasets[name] = exc
        return self._datasets[name]

    def _artifact(self, dataset_id: dict[str, Any], poison: dict[str, Any]) -> Path | None:
        if self.cache is None:
            return None
        if self._manifests is None:
            self._manifests = []
            for path in sorted((Path(self.cache) / "poisons").glob("*.json")):
                try:
                    self._manifests.append((path, read_json(path)))
                except BenchError:
                    continue
        want = {k: poison.get(k) for k in ("name", "params", "ratio", "key_fingerprint")}
        if poison.get("revision"):  # an artifact of another algorithm revision is not this record's poison
            want["revision"] = poison["revision"]
        for path, man in self._manifests:
            if isinstance(man, dict) and man.get("dataset") == dataset_id and man.get("poison") == want:
                npz = path.with_suffix(".npz")
                if npz.exists():
                    return npz
        return None

    def images(self, rec: dict[str, Any], label: str) -> tuple[Any, Any, list[str]] | None:
        import torch

        from benchmark.data import poison_dataset_id, stratified_subset

        cfg = rec["config"]
        proto = cfg.get("protocol") or {}
        data = self._dataset(str(cfg["dataset"]))
        if isinstance(data, BenchError):
            self.warn(f"no sample grid for {label}: {data}")
            return None
        if data.source != cfg.get("dataset_source"):
            self.warn(f"no sample grid for {label}: dataset source is {data.source}, the records used "
                      f"{cfg.get('dataset_source')}")
            return None
        train = data.train
        if proto.get("train_subset"):
            train = train.subset(stratified_subset(train.y, int(proto["train_subset"]), int(proto.get("subset_seed", 0))))
        dataset_id = poison_dataset_id(data, train, int(proto.get("train_subset") or 0), int(proto.get("subset_seed") or 0))
        poison = cfg["poison"]
        npz = self._artifact(dataset_id, poison)
        if npz is not None:
            try:
                arrays = read_npz(npz, required=("x_train", "poisoned_indices"))
            except BenchError as exc:
                self.warn(f"no sample grid for {label}: {exc}")
                return None
            allowed = torch.zeros(len(train), dtype=torch.bool)
            allowed[torch.from_numpy(arrays["poisoned_indices"].astype("int64"))] = True
            idx = self._pick(train.y, allowed)
            px = torch.from_numpy(arrays["x_train"][idx.numpy()].transpose(0, 3, 1, 2).copy())
            return train.x[idx], px, [train.classes[int(c)] if train.classes else str(int(c)) for c in train.y[idx]]
        return self._recreate(train, poison, cfg, label)

    @staticmethod
    def _pick(y: Any, allowed: Any) -> Any:
        import torch

        picks = []
        for c in torch.unique(y).tolist()[:MAX_SAMPLE_CLASSES]:
            hits = torch.nonzero((y == c) & allowed).flatten()
            if hits.numel():
                picks.append(int(hits[0]))
        return torch.tensor(picks, dtype=torch.long)

    def _recreate(self, train: Any, poison: dict[str, Any], cfg: dict[str, Any], label: str) -> Any:
        import torch

        from attacks.base import PoisonContext, key_fingerprint
        from benchmark.poisoning import build_poison
        from benchmark.registry import POISONS

        try:
            cls = POISONS.get(poison["name"])
        except BenchError as exc:
            self.warn(f"no sample grid for {label}: {exc}")
            return None
        if not _is_cheap(cls):
            self.warn(f"no sample grid for {label}: no cached poison artifact, and re-creating '{poison['name']}' "
                      "needs surrogate training (keep the cache or run `bench poison` first)")
            return None
        candidates = [0]
        if os.environ.get("BENCH_POISON_KEY", "").isdigit():
            candidates.insert(0, int(os.environ["BENCH_POISON_KEY"]))
        fp = poison.get("key_fingerprint")
        key = next((k for k in candidates if fp is None or key_fingerprint(k) == fp), None)
        if key is None:
            self.warn(f"no sample grid for {label}: the poison key is private (set BENCH_POISON_KEY to the key "
                      "with fingerprint " + str(fp) + ")")
            return None
        try:
            spec = build_poison(poison["name"], poison.get("params") or {}, key, 1.0, str(cfg.get("preset")))
            idx = self._pick(train.y, torch.ones(len(train), dtype=torch.bool))
            sub = train.subset(idx)
            ctx = PoisonContext(key=key, ratio=1.0, device=torch.device("cpu"), preset=str(cfg.get("preset")),
                                num_classes=train.num_classes)
            out = spec.poison.generate(sub, ctx)
        except (BenchError, RuntimeError, ValueError) as exc:
            self.warn(f"no sample grid for {label}: re-creating the poison failed ({exc})")
            return None
        return sub.x, out.x.cpu(), [train.classes[int(c)] if train.classes else str(int(c)) for c in sub.y]


# ------------------------------------------------------------------------------------- top level

@dataclass
class Summary:
    out: Path
    records: int
    groups: int
    plots: list[Path]


def grid_identity(rec: dict[str, Any]) -> dict[str, Any]:
    """What a sample grid shows: the dataset and the poison (name, params, revision, key fingerprint,
    ratio) of the record it was made for."""
    cfg = rec["config"]
    poison = cfg["poison"]
    return {"dataset": cfg.get("dataset"), "dataset_source": cfg.get("dataset_source"),
            "train_size": cfg.get("train_size"), "poison": poison.get("name"), "params": poison.get("params") or {},
            "revision": poison.get("revision") or 1, "key_fingerprint": poison.get("key_fingerprint"),
            "ratio": poison.get("ratio", 1.0)}


def _sidecar(png: Path) -> Path:
    return png.with_name(png.name + ".json")


def write_grid_sidecar(png: Path, identity: dict[str, Any]) -> Path:
    """``<grid>.png.json`` beside a sample grid: the identity of the poison drawn in it, so a later run
    that cannot re-make the grid can tell whether the existing PNG still shows the records' poison."""
    path = _sidecar(png)
    text = json.dumps(identity, sort_keys=True, indent=1) + "\n"
    _write_public(path, lambda p: p.write_text(text, encoding="utf-8"))
    return path


def grid_sidecar_problem(png: Path, identity: dict[str, Any],
                         also: Iterable[dict[str, Any]] = ()) -> str | None:
    """Why an existing grid must not be shown for ``identity`` (one line), or None when its sidecar
    says it shows exactly that poison (or one of ``also``: other records pooled under the same label,
    e.g. another poison key)."""
    path = _sidecar(png)
    if not path.is_file():
        return f"no {path.name} says which poison it shows"
    try:
        made_for = read_json(path)
    except BenchError:
        return f"{path.name} is unreadable"
    if not isinstance(made_for, dict):
        return f"{path.name} is not a JSON object"
    if any(canonical_json(made_for) == canonical_json(other) for other in also):
        return None
    changed = sorted(k for k in set(identity) | set(made_for)
                     if canonical_json(made_for.get(k)) != canonical_json(identity.get(k)))
    if changed:
        return f"it was made for another poison ({', '.join(changed)} differ from the records')"
    return None


def make_plots(group: Group, plots_dir: Path, samples: SampleSource | None) -> dict[str, Any]:
    """Write this group's PNGs; returns {kind: path} (``samples``: {poison label: path})."""
    out: dict[str, Any] = {}
    m = accuracy_matrix(group, "test_acc")
    stem = Path(plots_dir) / group.slug
    if m.cells:
        out["heatmap"] = plot_heatmap(m, group.title, Path(f"{stem}-heatmap.png"))
        out["bars"] = plot_bars(m, group.title, Path(f"{stem}-bars.png"))
        if (curves := plot_curves(group, m, group.title, Path(f"{stem}-curves.png"))) is not None:
            out["curves"] = curves
    ratios, prows = partial_rows(group)
    if prows:
        out["ratio"] = plot_ratio(ratios, prows, group.title, Path(f"{stem}-ratio.png"))
    if samples is not None:
        chosen: dict[str, dict[str, Any]] = {}
        pooled: dict[str, list[dict[str, Any]]] = defaultdict(list)  # full-ratio records if any, as chosen
        for rec in sorted(group.runs, key=lambda r: (not group.is_full(r), r["run_id"])):
            if rec["config"]["poison"]["name"] != "none":
                label = group.poison_label(rec)
                chosen.setdefault(label, rec)
                if group.is_full(rec) == group.is_full(chosen[label]):
                    pooled[label].append(grid_identity(rec))
        sample_paths = {}
        for label in sorted(chosen):
            path = Path(f"{stem}-samples-{_slug(label)}.png")
            identity = grid_identity(chosen[label])
            got = samples.images(chosen[label], f"{group.title} / {label}")
            if got is not None:
                clean, poisoned, classes = got
                sample_paths[label] = plot_samples(clean, poisoned, classes, f"{label} on {group.title}", path)
                write_grid_sidecar(path, identity)
            elif path.is_file() and path.stat().st_size > 0:
                # Keep the grid made earlier (e.g. the committed one, made where the dataset and the
                # poison cache were at hand), so the document does not depend on this machine's cache;
                # but only if it shows this poison: a label's file name stays the same when its params,
                # revision or key change.
                if (problem := grid_sidecar_problem(path, identity, pooled[label])) is None:
                    samples.warn(f"kept the existing sample grid {path}")
                    sample_paths[label] = path
                else:
                    samples.warn(f"not showing the existing sample grid {path}: {problem}")
        if sample_paths:
            out["samples"] = sample_paths
    return out


def write_leaderboard(results: Path | str = "results/runs", out: Path | str | None = None,
                      plots_dir: Path | str = "results/plots", fmt: str = "md", data_root: Path | str | None = None,
                      cache_dir: Path | str | None = None, samples: bool = True, warn: Warn | None = None) -> Summary:
    """Regenerate the leaderboard (``md``, ``html`` or ``latex``) and its plots from the records."""
    warn = warn or (lambda msg: None)
    if fmt not in ("md", "html", "latex"):
        raise BenchError(f"unknown format '{fmt}'; valid: md, html, latex")
    results = Path(results)
    if not results.is_dir():
        raise BenchError(f"results folder '{results}' does not exist; run `bench run` first or pass --results")
    out = Path(out) if out else Path({"md": "leaderboard.md", "html": "leaderboard.html", "latex": "leaderboard.tex"}[fmt])
    runs = collect_runs(results, warn)
    if not runs:
        raise BenchError(f"no usable finished run records in '{results}'; nothing to report")
    groups = group_runs(runs)
    source = SampleSource(Path(data_root) if data_root else None, Path(cache_dir) if cache_dir else None, warn) \
        if samples else None
    plots = {g.slug: make_plots(g, Path(plots_dir), source) for g in groups}
    newest = max(str(rec.get("created") or "") for _p, rec in runs)[:10] or "unknown"
    doc = build_document(groups, results.as_posix(), len(runs), newest, plots)
    out_dir = out.resolve().parent
    text = {"md": lambda: render_markdown(doc, out_dir), "html": lambda: render_html(doc),
            "latex": lambda: render_latex(doc, out_dir)}[fmt]()
    _write_public(out, lambda p: p.write_text(text, encoding="utf-8"))
    written = []
    for gp in plots.values():
        for v in gp.values():
            written += list(v.values()) if isinstance(v, dict) else [v]
    return Summary(out, len(runs), len(groups), sorted(written))
