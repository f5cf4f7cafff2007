"""Availability poisons. Importing this package registers every built-in poison."""

from attacks import cuda, none  # noqa: F401  (imports register the poisons)
