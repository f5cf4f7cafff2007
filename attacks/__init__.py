"""Availability poisons. Importing this package registers every built-in poison."""

from attacks import cuda, em, none, random_noise, rem, sem  # noqa: F401  (imports register the poisons)
