"""Defenses. Importing this package registers every built-in defense."""

from defenses import none  # noqa: F401  (imports register the defenses)
