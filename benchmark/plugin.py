"""The part of the plugin contract that poisons and defenses share: a registered name, a declared
``Params`` dataclass (:mod:`benchmark.params`), report caveats and a one-line description."""

from __future__ import annotations

from typing import Any, ClassVar

from benchmark.params import NoParams


class Plugin:
    """Base of poisons and defenses. ``name`` is set by the registry decorator; ``params`` is an instance
    of ``Params`` (its defaults when None)."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    #: caveats the report prints whenever this plugin is in a table
    notes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()

    @classmethod
    def describe(cls) -> str:
        """The first line of the class docstring (``bench list``)."""
        doc = (cls.__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""
