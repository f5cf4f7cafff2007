"""Typed, validated parameters for poisons and defenses.

A plugin declares its parameters as a dataclass whose fields use :func:`param` (default, help text,
bounds, choices). :func:`build_params` turns ``name=value`` strings from the CLI (or a dict from a
config file) into a validated instance, so bad values fail before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from benchmark.errors import BenchError


def param(
    default: Any,
    help: str = "",
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | None = None,
    odd: bool = False,
    legacy: Any = None,
) -> Any:
    """A dataclass field with a help line and validation bounds.

    ``legacy``: for a parameter added after records existed, the value those records ran with. A params
    dict leaves the field out at that value (:func:`params_dict`), so the records, run ids and cached
    artifacts of the old behaviour stay valid, and :func:`complete_params` fills it back in when a record
    is read, so an old record reads as what it ran, not as the new default."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "odd": odd}
    if legacy is not None:
        meta["legacy"] = legacy
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class NoParams:
    """For plugins without parameters."""


def convert_value(owner: str, name: str, raw: Any, default: Any) -> Any:
    """``raw`` (a CLI string or a config value) as the type of ``default``; one-line error if it is not."""
    kind = type(default)
    if isinstance(raw, str):
        text = raw.strip()
        try:
            if kind is bool:
                low = text.lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if kind is int:
                return int(text)
            if kind is float:
                return _parse_float(text)
        except (ValueError, ZeroDivisionError, OverflowError):
            raise BenchError(
                f"{owner}: parameter '{name}' must be a {kind.__name__}, got '{raw}'"
            ) from None
        return text
    if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if default is not None and not isinstance(raw, kind):
        raise BenchError(f"{owner}: parameter '{name}' must be a {kind.__name__}, got {raw!r}")
    return raw


def _parse_float(text: str) -> float:
    """Floats, plus fractions such as ``8/255`` (budgets are written that way in papers)."""
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)


def check_field(owner: str, f: dataclasses.Field, value: Any) -> None:
    """Raise a one-line BenchError if ``value`` breaks the field's declared bounds."""
    m = f.metadata
    if m.get("choices") is not None and value not in m["choices"]:
        valid = ", ".join(str(c) for c in m["choices"])
        raise BenchError(f"{owner}: parameter '{f.name}'={value!r} is not valid; valid: {valid}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise BenchError(f"{owner}: parameter '{f.name}'={value} is not a finite number")
        bounds = [("ge", ">=", lambda a, b: a >= b), ("gt", ">", lambda a, b: a > b),
                  ("le", "<=", lambda a, b: a <= b), ("lt", "<", lambda a, b: a < b)]
        for key, sym, ok in bounds:
            bound = m.get(key)
            if bound is not None and not ok(value, bound):
                raise BenchError(
                    f"{owner}: parameter '{f.name}'={value} is out of range; it must be {sym} {bound}"
                )
        if m.get("odd") and int(value) % 2 != 1:
            raise BenchError(f"{owner}: parameter '{f.name}'={value} must be an odd integer")


def build_params(cls: type, overrides: Mapping[str, Any] | None, owner: str) -> Any:
    """Instantiate the params dataclass ``cls`` from defaults plus validated ``overrides``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for name, raw in (overrides or {}).items():
        if name not in fields:
            valid = ", ".join(fields) or "(none)"
            raise BenchError(f"{owner}: unknown parameter '{name}'; valid: {valid}")
        values[name] = convert_value(owner, name, raw, fields[name].default)
    instance = cls(**values)
    for name, f in fields.items():
        check_field(owner, f, getattr(instance, name))
    validate = getattr(instance, "validate", None)
    if callable(validate):
        validate(owner)
    return instance


def params_dict(instance: Any) -> dict[str, Any]:
    """Plain JSON-ready dict of a params instance (what records and artifact ids hold); a field at its
    declared ``legacy`` value is left out (see :func:`param`)."""
    out = dataclasses.asdict(instance)
    for f in dataclasses.fields(instance):
        if "legacy" in f.metadata and out.get(f.name) == f.metadata["legacy"]:
            del out[f.name]
    return out


def complete_params(cls: type, recorded: Mapping[str, Any]) -> dict[str, Any]:
    """A record's params with the ``legacy`` value of each field the record leaves out: what that run
    used (the inverse of :func:`params_dict`; other fields are kept as recorded)."""
    out = dict(recorded)
    if dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            if "legacy" in f.metadata and f.name not in out:
                out[f.name] = f.metadata["legacy"]
    return out


_FRACTION_KEYS = ("eps", "rho", "step_size")


def format_value(name: str, value: Any) -> str:
    """A parameter value as a user would type it: L-inf-sized budgets and step sizes (names with
    eps, rho or step_size) as k/255 (``8/255``, ``0.8/255``; whole k up to 32, or k below 10 with one
    decimal), so L2 radii such as 0.5 stay plain; other floats short."""
    if isinstance(value, float):
        k = value * 255
        whole = abs(k - round(k)) < 1e-6 and round(k) <= 32
        tenth = abs(10 * k - round(10 * k)) < 1e-6 and k < 10
        if any(part in name for part in _FRACTION_KEYS) and value > 0 and (whole or tenth):
            return f"{round(k, 1):g}/255"
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


def describe_params(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for ``bench list``."""
    return [(f.name, type(f.default).__name__, f.default, param_help(f)) for f in dataclasses.fields(cls)]


def param_help(f: dataclasses.Field) -> str:
    """A field's help line; for a parameter with a ``legacy`` value, also what records without it ran."""
    text = f.metadata.get("help", "")
    if "legacy" in f.metadata:
        text += f" (records without this parameter ran with {f.metadata['legacy']})"
    return text


def parse_kv(items: tuple[str, ...] | list[str], what: str) -> dict[str, str]:
    """Parse CLI ``name=value`` pairs into a dict, with a clear error for malformed items."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise BenchError(f"{what} '{item}' must look like name=value")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def param_names(cls: type) -> set[str]:
    """The parameter names a params dataclass declares."""
    return {f.name for f in dataclasses.fields(cls)}


def route_params(raw: Mapping[str, Any], owners: Mapping[str, Mapping[str, type]], canonical: Callable[[str], str],
                 keep_scope: bool = False) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """Send ``name=value`` pairs to their owners, each a set of named components with a params class.

    ``scope.param`` goes to every owner with component ``scope``; a plain ``param`` to every owner with
    a component that declares it. Scoped keys come last, so they win over the plain form; the scope is
    dropped unless ``keep_scope`` (a composed defense routes it again to one component). Returns each
    owner's params and, per key, the owners it reached (empty: it names nothing), so each caller
    words its own errors."""
    out: dict[str, dict[str, Any]] = {o: {} for o in owners}
    reached: dict[str, list[str]] = {}
    for key, value in sorted(raw.items(), key=lambda kv: "." in kv[0]):
        if "." in key:
            scope, name = key.split(".", 1)
            scope = canonical(scope)
            targets = [o for o, comps in owners.items() if scope in comps]
        else:
            name = key
            targets = [o for o, comps in owners.items() if any(name in param_names(c) for c in comps.values())]
        reached[key] = targets
        for o in targets:
            out[o][key if keep_scope else name] = value
    return out, reached
