"""SEM: Stable Error-Minimizing noise (Liu et al., "Stable Unlearnable Example: Enhancing the Robustness
of Unlearnable Examples via Stable Error-Minimizing Noise", AAAI 2024), official code
liuyixin-louis/Stable-Unlearnable-Example.

Exactly REM except the defender used while crafting the noise: instead of a PGD-ascent δa, each EOT
sample gets one uniform random perturbation δa ~ U(-ρa, ρa) (then clipped to [0, 1]) — no gradient
steps. The surrogate is still adversarially trained with PGD (radius ρa, ``pgd_steps`` steps): the
robust surrogate gives the robustness, the random defender makes the noise "stable" and the generation
~9x cheaper per step (REM 10x5x(10+1)+11 = 561 passes, SEM 10x5x1+11 = 61). The final regeneration
pass also uses the random defender. The generation, its random streams, partial poisoning and their
deviations are REM's, shared through :mod:`benchmark.robust_noise`: on a CUDA device the draws happen
on the GPU, so GPU and CPU noise differ; the partial subset is an exact key-seeded one (official:
fixed index files).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from benchmark.noise import uniform
from benchmark.registry import register_poison
from benchmark.robust_noise import RobustNoisePoison


@register_poison("sem", aliases=("stable-em",))
class StableErrorMinimizing(RobustNoisePoison):
    """Stable error-minimizing noise: REM with a random (not adversarial) defender (SEM, AAAI'24)."""

    def inner_perturbation(self, model: nn.Module, x_def: torch.Tensor, y: torch.Tensor,
                           gen: torch.Generator) -> torch.Tensor:
        """One uniform random perturbation of radius ρa: no forward or backward pass. Like the
        official ``_get_adv_``, no perturbation at all when ρa or the attack steps are 0."""
        rho_a = self.params.rho_a
        if rho_a <= 0 or self.params.pgd_steps <= 0:
            return x_def.detach()
        return (x_def.detach() + uniform(x_def.shape, rho_a, gen, x_def.device)).clamp(0, 1)

    def inner_passes(self) -> int:
        return 0
