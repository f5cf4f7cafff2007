"""Defenses. Importing this package registers every built-in defense."""

from defenses import (  # noqa: F401  (imports register the defenses)
    at,
    bit_depth,
    cutmix,
    cutout,
    dat,
    dp_instahide,
    early_stop,
    finetune,
    gaussian_blur,
    grayscale,
    jpeg,
    median_filter,
    mixup,
    none,
    ortho_proj,
    poison_aware_at,
    random_blur,
    rsk_ff,
    smoothing,
    ueraser,
)
