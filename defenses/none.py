"""Plain training (ERM): no defense."""

from __future__ import annotations

from benchmark.registry import register_defense
from defenses.base import Defense


@register_defense("none", aliases=("erm",))
class NoDefense(Defense, family="baseline"):
    """Standard training (ERM) with the preset's crop + flip augmentation."""
