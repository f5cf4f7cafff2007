"""Poisons (availability and targeted). Importing this package registers every built-in poison."""

from attacks import (  # noqa: F401  (imports register the poisons)
    ar,
    cuda,
    em,
    imported,
    lsp,
    metapoison,
    none,
    ops,
    random_noise,
    rem,
    secure_release,
    sem,
    tap,
    witches_brew,
)
