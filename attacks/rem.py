"""REM: Robust Error-Minimizing noise (Fu et al., "Robust Unlearnable Examples: Protecting Data Privacy Against
Adversarial Learning", ICLR 2022), official code fshp971/robust-unlearnable-examples
(``generate_robust_em.py``, ``attacks/robust_workers.py``).

min-min-max with EOT over flip + crop: the noise minimises the surrogate's loss under the worst-case
perturbation δa of radius ρa that a defender could add, found by PGD ascent, while the surrogate is
adversarially trained on the noisy data. The generation (steps, final pass, random streams,
checkpoints) and its documented deviations from the official code are in
:mod:`benchmark.robust_noise`, which SEM (:mod:`attacks.sem`) shares; this poison writes its defender.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from benchmark.registry import register_poison
from benchmark.robust_noise import RobustNoisePoison, pgd_ascent


@register_poison("rem", aliases=("robust-em",))
class RobustErrorMinimizing(RobustNoisePoison):
    """Robust error-minimizing noise: min-min-max over a PGD defender with EOT (REM, ICLR'22)."""

    def inner_perturbation(self, model: nn.Module, x_def: torch.Tensor, y: torch.Tensor,
                           gen: torch.Generator) -> torch.Tensor:
        """The defender's perturbation of the augmented noisy images: PGD ascent of radius ρa."""
        p = self.params
        return pgd_ascent(model, x_def, y, p.rho_a, p.pgd_steps, p.pgd_step_size, gen)

    def inner_passes(self) -> int:
        p = self.params
        return p.pgd_steps if p.rho_a > 0 else 0
