"""Availability poisons. Importing this package registers every built-in poison."""

from attacks import ar, cuda, em, imported, lsp, none, ops, random_noise, rem, sem, tap  # noqa: F401  (imports register the poisons)
