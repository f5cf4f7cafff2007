"""UEraser: adversarial augmentations against unlearnable examples (Qin, Gao, Zhao, Ye, Xu, "Learning
the unlearnable: adversarial augmentations suppress unlearnable example attacks", arXiv 2303.15127,
ICCV 2023 AROW workshop). Official code: github.com/lafeat/ueraser @6076a27 — ``ueraser.py`` (the
kornia policy ``UEraser`` and ``adversarial_augmentation_loss``), ``LSP/cifar_train.py`` and
``EM/QuickStart.ipynb`` (the schedules).

During the first ``ceil(adv_fraction * epochs)`` epochs each training image gets ``repeats`` (K)
independently augmented views from the official kornia policy — PlasmaBrightness (roughness 0.3–0.7,
intensity 0.5–1, p = ``plasma_p``) → PlasmaContrast (roughness 0.3–0.7, p = ``plasma_p``) →
ChannelShuffle (p 0.5) → TrivialAugment — and the loss is the mean over images of the *per-image
maximum* cross-entropy over its K views (the gradient flows through each image's worst view only).
Afterwards each image gets one augmented view (K = 1). Variants: Lite = ``repeats=1`` (or
``adv_fraction=0``); standard = ``adv_fraction=0.25`` (the official scripts: 50 of 200 epochs; the
README example uses 60 of 200); Max = ``adv_fraction=1`` (the ``em`` mode: every epoch).

Decisions and deviations:

* Each of the K views is its own policy call, so each view draws its own TrivialAugment operation
  (kornia picks one operation per call), as in the official training scripts, which loop over the
  views; all K·B views then go through the model in one forward pass, as the official
  ``adversarial_augmentation_loss`` does (its single tiled policy call shares one TrivialAugment
  operation across the views; the scripts' one forward per view gives "batch norm statistics [that]
  may not be correct", as the notebook says).
* Optimisation (``recipe``): the ``paper`` preset sets ``recipe=official``, the official LSP script's
  recipe: 200 epochs, batch 128, SGD lr 0.01, momentum 0.9 (no Nesterov), weight decay 5e-4, lr ÷10
  at 50 % and ÷100 at 75 % of the epochs (``adjust_learning_rate``: epochs 100 and 150), no gradient
  clipping, the adversarial phase the first 50 epochs (``epoch < 50``; ``adv_fraction`` 0.25 of 200).
  Its loader does not shuffle and drops the last batch; here batches are shuffled as in every run.
  Other presets keep ``recipe=protocol``: the run's protocol trains, and the adversarial phase is
  ``adv_fraction`` of its epochs (cpu: the first 4 of 15).
* ``plasma_p``: 0.5 as in ``ueraser.py``; the EM notebook (and APBench) use 1.0.
* The JPEG-10 variant (``UEraserJPEG``) is not implemented.
* kornia draws from torch's global generators; every call runs under ``torch.random.fork_rng``
  seeded by one draw from the run's generator, so the augmentations are seeded and resume exactly.
* The protocol's crop/flip runs first, as the official loaders' RandomCrop + HorizontalFlip do.
  With soft labels (``mixup+ueraser``) the per-view loss is the soft cross-entropy.

kornia is an optional dependency: ``pip install '.[kornia]'``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmark.errors import BenchError
from benchmark.params import param
from benchmark.registry import register_defense
from defenses.base import Defense, TrainContext

INSTALL_HINT = "the 'ueraser' defense needs kornia; install it with: pip install '.[kornia]' (or pip install kornia)"


@dataclass(frozen=True)
class UEraserParams:
    repeats: int = param(5, "K: augmented views per image during the adversarial epochs (official 5; 1 = UEraser-Lite)",
                         ge=1, le=64)
    adv_fraction: float = param(0.25, "share of the epochs (the first ones) trained on the max-loss view; "
                                "0.25 = official standard (50 of 200), 1 = UEraser-Max, 0 = Lite", ge=0.0, le=1.0)
    plasma_p: float = param(0.5, "probability of each plasma op (ueraser.py 0.5; the EM notebook and APBench 1.0)",
                            ge=0.0, le=1.0)
    recipe: str = param("protocol", "optimisation: protocol = the run's protocol (adversarial phase scaled to its "
                        "epochs); official = the official LSP script's (200 epochs, batch 128, SGD 0.01, momentum "
                        "0.9, wd 5e-4, lr /10 at epoch 100 and /100 at 150; the paper preset's)",
                        choices=("protocol", "official"), legacy="protocol")


#: the official LSP script's optimisation (``LSP/cifar_train.py`` and ``util.adjust_learning_rate``)
OFFICIAL_RECIPE: dict[str, Any] = dict(epochs=200, batch_size=128, lr=0.01, momentum=0.9, nesterov=False,
                                       weight_decay=5e-4, schedule="multistep", lr_milestones="100,150",
                                       lr_gamma=0.1, grad_clip=0.0, warmup=0.0)


def build_policy() -> nn.Module:
    """The official kornia augmentation policy (``ueraser.py``'s ``UEraser``), plasma p set later."""
    try:
        import kornia.augmentation as K
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise BenchError(INSTALL_HINT) from None
    return K.AugmentationSequential(
        K.RandomPlasmaBrightness(roughness=(0.3, 0.7), intensity=(0.5, 1.0), same_on_batch=False, p=0.5, keepdim=True),
        K.RandomPlasmaContrast(roughness=(0.3, 0.7), p=0.5),
        K.RandomChannelShuffle(same_on_batch=False, p=0.5, keepdim=True),
        K.auto.TrivialAugment(),
    )


@contextmanager
def seeded_global_rng(ctx: TrainContext, device: torch.device) -> Iterator[None]:
    """Run a block that draws from torch's global generators (kornia does) seeded from the run's
    generator, leaving the global state as it was."""
    seed = int(torch.randint(0, 2**62, (1,), generator=ctx.generator))
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        torch.manual_seed(seed)
        yield


def max_loss_view(logits: torch.Tensor, y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image maximum soft cross-entropy over ``k`` views stacked view-major ((k*B, classes) logits,
    (B, classes) targets); returns (mean of the maxima, logits of each image's worst view)."""
    n = y.shape[0]
    per = -(y.repeat(k, 1) * F.log_softmax(logits, dim=1)).sum(1).view(k, n)
    worst, which = per.max(dim=0)
    picked = logits.view(k, n, -1)[which, torch.arange(n, device=logits.device)]
    return worst.mean(), picked


@register_defense("ueraser")
class UEraser(Defense[UEraserParams], family="augmentation", preset_params={"paper": {"recipe": "official"}}):
    """UEraser (Qin et al. 2023, lafeat/ueraser): train on each image's max-loss view of K kornia augmentations."""

    notes = ("`ueraser` trains on the max-loss of K = 5 kornia views during the first quarter of the epochs (the "
             "official 50 of 200), then on one view; `ueraser (max)` uses K views in every epoch, `ueraser (lite)` "
             "never.",)

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.policy = build_policy()  # fails here, before any work, when kornia is missing
        p = self.params
        for op in list(self.policy.children())[:2]:  # the two plasma ops
            op.p = p.plasma_p
        self._policy_device: torch.device | None = None

    def variant(self) -> str | None:
        p = self.params
        if p.repeats == 1 or p.adv_fraction == 0:
            return "lite"
        if p.adv_fraction >= 1:
            return "max"
        return None

    def adjust_protocol(self, proto: Any) -> Any:
        """``recipe=official``: the official script's optimisation replaces the protocol's."""
        return dataclasses.replace(proto, **OFFICIAL_RECIPE) if self.params.recipe == "official" else proto

    def adversarial_epochs(self, ctx: TrainContext) -> int:
        """Number of leading epochs with K views (all of them when the protocol is unknown)."""
        p = self.params
        if ctx.protocol is None:
            return 1 if p.adv_fraction > 0 else 0
        return math.ceil(p.adv_fraction * self.adjust_protocol(ctx.protocol).epochs)

    def views(self, x: torch.Tensor, k: int, ctx: TrainContext) -> torch.Tensor:
        """``k`` independent policy draws of the batch, stacked view-major: (k*B, C, H, W)."""
        if self._policy_device != x.device:
            self.policy.to(x.device)
            self._policy_device = x.device
        with torch.no_grad(), seeded_global_rng(ctx, x.device):
            return torch.cat([self.policy(x) for _ in range(k)])

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        k = p.repeats if ctx.epoch < self.adversarial_epochs(ctx) else 1
        logits = model(self.views(x, k, ctx))
        return max_loss_view(logits, y, k)
