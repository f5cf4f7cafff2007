"""Defenses. Importing this package registers every built-in defense."""

from defenses import (  # noqa: F401  (imports register the defenses)
    bit_depth,
    cutmix,
    cutout,
    gaussian_blur,
    grayscale,
    jpeg,
    median_filter,
    mixup,
    none,
    smoothing,
)
