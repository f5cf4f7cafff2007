"""The part of the plugin contract that poisons and defenses share: a registered name, a declared
``Params`` dataclass (:mod:`benchmark.params`), report caveats and a one-line description.

A plugin declares its parameters as the base's type argument and its other class-level facts as
class keywords, so the declaration is the class line and ``self.params`` is typed::

    @register_defense("cutmix")
    class CutMix(Defense[CutMixParams], family="augmentation"): ...
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar, get_args

from benchmark.params import NoParams

P = TypeVar("P")


def first_paragraph(doc: str | None) -> str:
    """A docstring's first paragraph on one line, without reST markup (for ``bench list`` tables)."""
    text = " ".join((doc or "").strip().split("\n\n")[0].split())
    return text.replace("``", "")


class Plugin(Generic[P]):
    """Base of poisons and defenses. ``name`` is set by the registry decorator; ``params`` is an instance
    of ``Params`` (its defaults when None)."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    #: caveats the report prints whenever this plugin is in a table
    notes: ClassVar[tuple[str, ...]] = ()
    #: parameters that change with the protocol preset (e.g. a poison's surrogate steps, a defense's
    #: evaluation samples): {preset: {param: value}}; an explicit parameter overrides them
    preset_params: ClassVar[dict[str, dict[str, Any]]] = {}

    params: P

    def __init_subclass__(cls, **declared: Any) -> None:
        """``Params`` from a concrete type argument (``Defense[XParams]``); each class keyword sets the
        class attribute a base declares under that name (an unknown keyword is a TypeError at import)."""
        super().__init_subclass__()
        for base in cls.__dict__.get("__orig_bases__", ()):
            args = get_args(base)
            if args and isinstance(args[0], type):
                cls.Params = args[0]
        for key, value in declared.items():
            if not hasattr(cls, key) or callable(getattr(cls, key)):
                raise TypeError(f"{cls.__name__}: unknown plugin declaration {key}=")
            setattr(cls, key, value)

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()

    @classmethod
    def describe(cls) -> str:
        """The first paragraph of the class docstring, on one line (``bench list``)."""
        return first_paragraph(cls.__doc__)
