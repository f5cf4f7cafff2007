"""Early stopping on a clean validation split (the honest counterpart of the "peak" accuracy).

Sandoval-Segura et al., "Poisons that are learned faster are more effective" (CVPR-W 2022,
arXiv 2204.08615) rank availability poisons by the *peak* clean test accuracy over training: an
oracle that picks the epoch by looking at the test set. A defender cannot do that. This defense picks
the epoch the way a practitioner would: it holds ``val_size`` clean images (stratified, seeded) out of
its training images before they are poisoned, evaluates them after every epoch, and keeps the model
of the epoch with the best validation accuracy (the earliest on ties). The test set never takes part
in the choice. With ``patience`` > 0 training also stops after that many epochs without a better
validation accuracy (the learning-rate schedule still spans the full budget, as in Keras/Lightning
``EarlyStopping``: stopping truncates it).

Threat model: the defender owns clean in-distribution data the poisoner never touched, so the
defense is ranked in the ``extra-clean-data`` tier, never with poisoned-only defenses. The victim
trains on ``val_size`` fewer images than plain training (19,000 instead of 20,000 at the cpu preset).
The smoke preset (512 training images) holds out 50 (``preset_params``), so the defense runs there at
its defaults too (an audit's suite runs every defense at its defaults).
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmark.errors import BenchError
from benchmark.params import param
from benchmark.registry import register_defense
from defenses.base import Defense, TrainContext, Validation


@dataclass(frozen=True)
class EarlyStopParams:
    val_size: int = param(1000, "clean validation images held out of the training set before poisoning "
                                "(stratified)", ge=1)
    val_seed: int = param(0, "seed of the stratified validation draw", ge=0)
    patience: int = param(0, "stop after this many epochs without a better validation accuracy "
                             "(0: train the whole budget, then restore the best epoch)", ge=0)


@register_defense("early-stop")
class EarlyStop(Defense[EarlyStopParams], family="model-selection", default_tier="extra-clean-data",
                preset_params={"smoke": {"val_size": 50}}):
    """Early stopping (Sandoval-Segura et al. 2022, peak without the oracle): keep the epoch with the best
    accuracy on a held-out clean validation split."""

    headline = "clean test accuracy of the epoch with the best accuracy on the held-out clean validation split"
    notes = ("early-stop holds clean images out of the victim's training set (1,000 by default) and selects "
             "the epoch on them: extra clean data, and that many fewer training images.",)

    def validation(self) -> Validation:
        p = self.params
        return Validation(size=p.val_size, seed=p.val_seed, patience=p.patience)

    def check_run(self, ctx: TrainContext) -> None:
        p = self.params
        n = len(ctx.train_indices) if ctx.train_indices is not None else 0
        if not ctx.num_classes <= p.val_size <= n // 2:
            raise BenchError(f"early-stop val_size={p.val_size} must lie between the number of classes "
                             f"({ctx.num_classes}) and half the training set ({n // 2}); set it with "
                             f"--defense-param val_size=N")
