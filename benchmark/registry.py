"""Name -> plugin registries for poisons, defenses, models and datasets.

Entries register with a decorator (``@POISONS.register("cuda")``). Third-party packages add entries
through entry points (groups ``bench.poisons``, ``bench.defenses``, ``bench.models``,
``bench.datasets``): the entry point's object is imported on first lookup, and importing it runs its
own ``register`` decorator (an entry point may also point straight at the plugin object).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib import import_module
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any, Generic, TypeVar

from benchmark.errors import BenchError, did_you_mean

T = TypeVar("T")

# Built-in modules whose import registers the built-in entries.
_BUILTIN_MODULES = {
    "poison": ("attacks",),
    "defense": ("defenses",),
    "model": ("benchmark.models",),
    "dataset": ("benchmark.data",),
}


class Registry(Generic[T]):
    """A named collection of plugins with aliases, lazy built-ins and entry-point discovery."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._loaded = False

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name`` (and ``aliases``)."""

        def deco(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                existing = self._entries[name]
                # Re-importing the same module (e.g. reload) re-registers an equal object: allow it.
                if getattr(existing, "__qualname__", None) != getattr(obj, "__qualname__", None):
                    raise BenchError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = obj
            if isinstance(obj, type):
                obj.name = name  # type: ignore[attr-defined]
            for alias in aliases:
                self._aliases[alias] = name
            return obj

        return deco

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in _BUILTIN_MODULES.get(self.kind, ()):
            import_module(module)
        for ep in entry_points(group=self.group):
            if ep.name in self._entries:
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break the built-ins
                raise BenchError(
                    f"plugin {self.kind} '{ep.name}' ({ep.value}) failed to import: {exc}"
                ) from exc
            if ep.name not in self._entries and not isinstance(obj, ModuleType):
                # The entry point names the object itself rather than a module that registers it.
                self.register(ep.name)(obj)

    def canonical(self, name: str) -> str:
        """The registered name behind ``name`` (resolving aliases), or a did-you-mean error."""
        self._load()
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        prefix = name.split(":", 1)[0] + ":"
        if ":" in name and prefix in self._entries:
            return prefix
        valid = sorted(self._entries)
        raise BenchError(f"unknown {self.kind} '{name}': {did_you_mean(name, valid)}")

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def aliases_of(self, name: str) -> list[str]:
        return sorted(a for a, n in self._aliases.items() if n == name)

    def __contains__(self, name: str) -> bool:
        try:
            self.canonical(name)
        except BenchError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


POISONS: Registry[Any] = Registry("poison", "bench.poisons")
DEFENSES: Registry[Any] = Registry("defense", "bench.defenses")
MODELS: Registry[Any] = Registry("model", "bench.models")
DATASETS: Registry[Any] = Registry("dataset", "bench.datasets")

register_poison = POISONS.register
register_defense = DEFENSES.register
register_model = MODELS.register
register_dataset = DATASETS.register
