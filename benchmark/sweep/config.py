"""A sweep from CLI options and an optional TOML file (flags win over the file, the file over defaults)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.errors import BenchError
from benchmark.params import parse_kv
from benchmark.protocol import resolve_overrides
from benchmark.sweep.plan import SweepSpec

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

EXECUTORS = ("local", "ray")

CONFIG_KEYS = {
    "poisons", "defenses", "seeds", "models", "ratios", "dataset", "preset", "key", "poison_params",
    "defense_params", "protocol", "clean_row", "clean_only_baseline", "executor", "jobs", "address", "data_root",
    "cache_dir", "results", "device",
}
#: keys that must be TOML booleans (``bool("no")`` would silently be True)
BOOL_KEYS = ("clean_row", "clean_only_baseline")


@dataclass
class ExecutorOptions:
    executor: str = "local"
    jobs: int = 1
    jobs_given: bool = False  # a pool size asked for: on the command line, or other than 1 in the file
    address: str | None = None

    def check(self) -> None:
        """One-line errors for executor options that cannot work, before anything is planned."""
        if self.executor not in EXECUTORS:
            raise BenchError(f"unknown executor '{self.executor}'; valid: {', '.join(EXECUTORS)}")
        if self.jobs < 1:
            raise BenchError(f"--jobs must be >= 1, got {self.jobs}")
        if self.address and self.executor != "ray":
            raise BenchError("--address only applies to --executor ray")


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a sweep TOML file; nested tables ``[poison_params.cuda]`` become ``cuda.param`` keys."""
    if tomllib is None:
        raise BenchError("reading a TOML sweep file on Python 3.10 needs tomli: pip install tomli")
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"cannot read sweep file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"sweep file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - CONFIG_KEYS)
    if unknown:
        raise BenchError(f"sweep file {path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(CONFIG_KEYS))}")
    for key in BOOL_KEYS:
        if key in data and not isinstance(data[key], bool):
            raise BenchError(f"sweep file {path}: '{key}' must be true or false, got {data[key]!r}")
    for table in ("poison_params", "defense_params", "protocol"):
        value = data.get(table, {})
        if not isinstance(value, dict):
            raise BenchError(f"sweep file {path}: '{table}' must be a table")
        flat: dict[str, Any] = {}
        for k, v in value.items():
            if isinstance(v, dict) and table != "protocol":
                flat.update({f"{k}.{k2}": v2 for k2, v2 in v.items()})
            else:
                flat[k] = v
        data[table] = flat
    return data


def _split(value: Any, kind: Callable[[str], Any], what: str) -> list[Any]:
    """A comma-separated string or a list -> a de-duplicated list of ``kind`` values."""
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, list) else [value]
    out: list[Any] = []
    for item in items:
        text = item.strip() if isinstance(item, str) else item
        if text == "":
            continue
        try:
            converted = kind(text)
        except (TypeError, ValueError):
            raise BenchError(f"{what}: '{item}' is not a valid {kind.__name__}") from None
        if converted not in out:
            out.append(converted)
    if not out:
        raise BenchError(f"{what} is empty")
    return out


def _integer(value: Any, what: str) -> int:
    try:
        if isinstance(value, (bool, float)):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise BenchError(f"{what} must be an integer, got {value!r}") from None


def sweep_from_options(values: Mapping[str, Any], explicit: Iterable[str]) -> tuple[SweepSpec, ExecutorOptions]:
    """Merge CLI options with an optional TOML file: flags given on the command line win over the
    file, which wins over environment variables and defaults. Returns the sweep and executor options."""
    explicit = set(explicit)
    config = load_config(values["config"]) if values.get("config") else {}
    cli_to_config = {"protocol_params": "protocol"}

    def get(name: str) -> Any:
        key = cli_to_config.get(name, name)
        if name not in explicit and key in config:
            return config[key]
        return values.get(name)

    def kv(name: str, flag: str) -> dict[str, Any]:
        value = get(name)
        return dict(value) if isinstance(value, Mapping) else parse_kv(value or (), flag)

    def text(name: str, default: str | None = None) -> str | None:
        value = get(name)
        if value is not None and not isinstance(value, str):
            raise BenchError(f"'{name}' must be a string, got {value!r}")
        return value or default

    if get("poisons") is None:
        raise BenchError("a sweep needs --poisons (or 'poisons' in the --config file)")
    sweep = SweepSpec(
        poisons=_split(get("poisons"), str, "--poisons"),
        defenses=_split(get("defenses") or "none", str, "--defenses"),
        seeds=_split(get("seeds") if get("seeds") is not None else "0", int, "--seeds"),
        models=_split(get("models"), str, "--models") if get("models") else [],
        ratios=_split(get("ratios") if get("ratios") is not None else "1.0", float, "--ratios"),
        dataset=text("dataset", "cifar10"),
        preset=text("preset"),
        poison_params=kv("poison_params", "--poison-param"),
        defense_params=kv("defense_params", "--defense-param"),
        overrides=resolve_overrides(kv("protocol_params", "--protocol-param"), owner="--protocol-param"),
        key=_integer(get("key"), "--key") if get("key") is not None else None,
        clean_only_baseline=bool(get("clean_only_baseline") if get("clean_only_baseline") is not None else True),
        clean_row=bool(get("clean_row") if get("clean_row") is not None else True),
        strict_params=not any(key in config and flag not in explicit and list_ in explicit
                              for key, flag, list_ in (("poison_params", "poison_params", "poisons"),
                                                       ("defense_params", "defense_params", "defenses"))),
        data_root=text("data_root"), cache_dir=text("cache_dir"), results=text("results"),
        device=text("device", "auto"), download=bool(values.get("download")), force=bool(values.get("force")),
        rerun_stale=bool(values.get("rerun_stale")),
    )
    if min(sweep.seeds) < 0:
        raise BenchError(f"--seeds must be >= 0, got {min(sweep.seeds)}")
    jobs = _integer(get("jobs") if get("jobs") is not None else 1, "--jobs")
    executor = ExecutorOptions(text("executor", "local"), jobs, "jobs" in explicit or jobs != 1, text("address"))
    executor.check()
    return sweep, executor
