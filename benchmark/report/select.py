"""Selectors of the curated files (references.toml, claims.toml): which of our runs a row of them means.

A selector names a poison or defense and optionally parameters it must have (``eps = "4/255"``: every
key given must equal the record's value; fractions are written as text) and, for defenses, a variant
label (``variant = "official"``).
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.errors import BenchError


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; unreadable or malformed is a one-line error naming the file."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise BenchError("reading the report's TOML files on Python 3.10 needs tomli: pip install tomli") from None
    try:
        with Path(path).open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BenchError(f"cannot read {path}: {exc}") from None


def load_toml(path: Path, table: str, required: tuple[str, ...]) -> tuple[int, list[dict[str, Any]]]:
    """(version, rows) of a curated file; a missing file, bad TOML or a row without a required key
    is a one-line error naming the file."""
    data = read_toml(path)
    rows = data.get(table)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise BenchError(f"{path}: expected [[{table}]] tables")
    for i, row in enumerate(rows, 1):
        missing = [k for k in required if k not in row]
        if missing:
            raise BenchError(f"{path}: [[{table}]] number {i} lacks {', '.join(missing)}")
    return int(data.get("version", 0)), rows


def value_of(value: Any) -> Any:
    """A curated value as the records store it: ``"4/255"`` -> float, other values unchanged."""
    if isinstance(value, str) and "/" in value:
        try:
            return float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            return value
    return value


def same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def params_match(want: dict[str, Any] | None, params_json: str) -> bool:
    have = json.loads(params_json)
    return all(k in have and same(value_of(v), have[k]) for k, v in (want or {}).items())


def variant_of(label: str, name: str) -> str:
    """The short variant of a ``defense_info.variant`` text (``dat (official)`` -> ``official``)."""
    prefix = f"{name} ("
    return label[len(prefix):-1] if label.startswith(prefix) and label.endswith(")") else label


def mask(frame: pd.DataFrame, poison: dict[str, Any], defense: dict[str, Any],
         any_variant: bool) -> pd.Series:
    """Rows of ``frame`` (tidy runs or cells with the same columns) that the two selectors name.
    Without ``variant`` a defense selector means the default variant, unless ``any_variant``."""
    hit = (frame["poison"] == poison["name"]) & (frame["defense"] == defense["name"])
    hit &= frame["poison_params"].map(lambda p: params_match(poison.get("params"), p))
    hit &= frame["defense_params"].map(lambda p: params_match(defense.get("params"), p))
    if "variant" in defense:
        hit &= frame["variant"].map(lambda v: variant_of(v, defense["name"]) == str(defense["variant"]))
    elif not any_variant:
        hit &= frame["variant"] == ""
    return hit
