"""The targeted-poisoning threat model (Witches' Brew, MetaPoison): a trial's setup and its outcome.

A trial: from the poison key, choose a target image of the test split and an adversarial class, perturb a
budgeted set of training images (clean labels), train a victim from scratch on the poisoned set, and check
whether the victim classifies the target as the adversarial class. The headline over trials is the attack
success rate (the report adds its binomial confidence interval), beside the victim's clean accuracy.

The setup follows the group's toolbox (JonasGeiping/data-poisoning, ``forest/data/kettle_random_experiment.py``,
threat model ``single-class``, its default): a target class uniformly at random, an adversarial ("intended")
class uniformly among the others, a target image uniformly among the test images of the target class, and
ceil(budget x training-set size) poison images drawn without replacement among the training images of the
adversarial class (fewer when the class has fewer). All draws come from one stream derived from the key alone
(not from the poison's name), so two targeted poisons with the same key attack the same target with the same
images: their trials are paired.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from benchmark.data import ImageSet
from benchmark.errors import BenchError
from benchmark.noise import derived_generator

THREAT_MODELS = ("availability", "targeted")


@dataclass(frozen=True)
class TargetSetup:
    """One trial's choices: the target (a row of the dataset's whole test split), its true and adversarial
    classes, and the training rows to perturb (images of ``poison_class``, sorted)."""

    test_index: int
    true_class: int
    adversarial_class: int
    poison_class: int
    poison_rows: torch.Tensor

    def facts(self) -> dict[str, Any]:
        """What the manifest and the record say about the setup (the rows are the poisoned indices)."""
        return {"test_index": self.test_index, "true_class": self.true_class,
                "adversarial_class": self.adversarial_class, "poison_class": self.poison_class,
                "num_poisons": int(self.poison_rows.numel())}


def poison_count(budget: float, train_size: int) -> int:
    """forest: ceil(budget x training-set size) poison images."""
    return int(math.ceil(budget * train_size - 1e-9))


def choose_setup(key: int, train_y: torch.Tensor, test_y: torch.Tensor, num_classes: int,
                 budget: float) -> TargetSetup:
    """The seeded single-class setup of a trial (module docstring)."""
    if num_classes < 2:
        raise BenchError("targeted poisoning needs at least 2 classes")
    gen = derived_generator(key, "targeted-setup")
    train_y, test_y = train_y.cpu(), test_y.cpu()
    target_class = int(torch.randint(num_classes, (1,), generator=gen))
    others = [c for c in range(num_classes) if c != target_class]
    adversarial = others[int(torch.randint(len(others), (1,), generator=gen))]
    candidates = torch.nonzero(test_y == target_class).flatten()
    if candidates.numel() == 0:
        raise BenchError(f"targeted poisoning: the test split has no image of class {target_class}")
    test_index = int(candidates[int(torch.randint(candidates.numel(), (1,), generator=gen))])
    pool = torch.nonzero(train_y == adversarial).flatten()
    count = min(poison_count(budget, len(train_y)), pool.numel())
    if count == 0:
        raise BenchError(f"targeted poisoning: no training image of the adversarial class {adversarial} to perturb "
                         f"(budget {budget} of {len(train_y)} images)")
    rows = torch.sort(pool[torch.randperm(pool.numel(), generator=gen)[:count]]).values
    return TargetSetup(test_index, target_class, adversarial, adversarial, rows)


Predict = Callable[[nn.Module, torch.Tensor], torch.Tensor]


@torch.no_grad()
def target_outcome(model: nn.Module, test_split: ImageSet, target: dict[str, Any], device: torch.device,
                   predict: Predict | None = None) -> dict[str, Any]:
    """Whether the trained victim classifies the target as the adversarial class (with the defense's
    prediction hook, as its test accuracy), and the two classes' probabilities."""
    index = int(target["test_index"])
    if not 0 <= index < len(test_split):
        raise BenchError(f"target test_index {index} is outside the test split ({len(test_split)} images)")
    was_training = model.training
    model.eval()
    x = test_split.x[index:index + 1].to(device).float().div_(255)
    logits = predict(model, x) if predict is not None else model(x)
    model.train(was_training)
    probs = logits.float().softmax(dim=1)[0].cpu()
    predicted, adversarial, true = int(probs.argmax()), int(target["adversarial_class"]), int(target["true_class"])
    return {"test_index": index, "true_class": true, "adversarial_class": adversarial, "predicted_class": predicted,
            "success": predicted == adversarial, "adversarial_prob": round(float(probs[adversarial]), 6),
            "true_prob": round(float(probs[true]), 6)}
