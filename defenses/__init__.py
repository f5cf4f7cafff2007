"""Defenses. Importing this package registers every built-in defense."""

from defenses import (  # noqa: F401  (imports register the defenses)
    at,
    bit_depth,
    cutmix,
    cutout,
    dat,
    finetune,
    gaussian_blur,
    grayscale,
    jpeg,
    median_filter,
    mixup,
    none,
    random_blur,
    smoothing,
)
