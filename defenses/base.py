"""The defense interface: a defense implements only the hooks it needs.

Hooks:

* ``prepare(train, ctx) -> ImageSet``  data level, once before training (JPEG, grayscale, ...); chains.
  ``ImageDefense`` subclasses write only ``transform_images(x_uint8) -> uint8``.
* ``before_crop(x, ctx) -> images``   per use of a batch, before the protocol's crop/flip: the stored uint8
  images in, uint8 or float images (in [0,1] pixel units) out, possibly smaller (the crop, padding 4,
  returns the input size, as torchvision's ``RandomCrop(size, padding=4)`` does): for official pipelines
  that filter each image and then crop it (RSK+FF) or that train on floats uint8 storage cannot hold
  (ortho-proj's unclamped projection); chains.
* ``batch(x, y, ctx) -> (x, y)``       after crop/flip, float images in [0,1] and soft labels; chains.
* ``loss(model, x, y, ctx) -> (loss, logits)``   owns the training step (AT, DAT); at most one.
* ``build_model(arch, num_classes, in_channels, ctx) -> nn.Module``   owns the model; at most one.
* ``train_mode(model, ctx)``          after ``model.train()`` each epoch (e.g. freeze BN); chains.
* ``predict(model, x) -> logits``     owns test-time prediction (randomized smoothing); at most one.
  ``predictor(ctx, final)`` returns the prediction function of one evaluation pass (a stochastic
  predictor seeds its own stream there; ``final=False`` for the cheaper per-epoch curve).
* ``adjust_protocol(proto) -> Protocol``  the defense's own optimisation (fine-tuning's lr); chains.
* ``check_run(run) -> None``          validation against the run's data before any work (leakage).
* ``validation() -> Validation | None``  a clean split held out of the training images before
  poisoning; the trainer selects the epoch with the best accuracy on it (early stopping); at most one.
* ``evaluate(model, test, ctx) -> dict``   extra metrics after training (robust accuracy); merged.

Defenses compose with ``+`` (``at+mixup``): chained hooks run left to right; two components that
both own the same hook are a one-line error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmark.data import ImageSet
from benchmark.errors import BenchError
from benchmark.evaluate import forward_in_slices
from benchmark.imageops import CHUNK as IMAGE_CHUNK
from benchmark.imageops import map_chunks
from benchmark.models import build_model
from benchmark.params import NoParams, build_params, params_dict, route_params
from benchmark.plugin import P, Plugin
from benchmark.registry import DEFENSES

#: What the defender has beyond the poisoned training set. Tables rank each tier separately, and a
#: poison's worst case is taken over ``poisoned-only`` defenses alone.
TIERS: dict[str, str] = {
    "poisoned-only": "the defender has only the poisoned training set",
    "extra-clean-data": "the defender also has clean in-distribution data disjoint from the poisoned set",
    "overlapping-data": "the defender has clean data overlapping the clean versions of the poisoned images "
                        "(an optimistic upper bound, not a defense)",
}
#: what ``test_acc`` measures for a defense that declares no ``headline`` of its own
DEFAULT_HEADLINE = "clean test accuracy (argmax of the trained model)"
TIER_ORDER = tuple(TIERS)

#: Defense families, in the order the report groups its rows.
FAMILIES: dict[str, str] = {
    "baseline": "plain training",
    "augmentation": "data augmentation",
    "filtering": "input filtering / squeezing",
    "adversarial-training": "adversarial training",
    "adaptive": "adaptive attacks on a specific poison",
    "certified": "certified (randomized smoothing)",
    "transfer": "transfer from a pretrained backbone",
    "model-selection": "model selection on held-out clean data",
    "other": "other",
}

OWNED_HOOKS = ("loss", "build_model", "predict", "validation")
HOOK_ROLES = {"loss": "the training step (loss)", "build_model": "the model (build_model)",
              "predict": "prediction (predict)", "validation": "model selection (validation)"}


@dataclass(frozen=True)
class Validation:
    """A clean validation split the defender holds out of its training images before poisoning: the
    trainer evaluates it every epoch and keeps the model of the epoch with the best accuracy on it."""

    size: int
    seed: int = 0
    #: stop after this many epochs without a better validation accuracy (0: train the whole budget)
    patience: int = 0


@dataclass
class TrainContext:
    """What hooks may use: device, shapes, protocol, seeded generator, position in training."""

    device: torch.device
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    protocol: Any = None
    seed: int = 0
    #: the run's seeded CPU generator (epoch order, host-side scalar draws); checkpointed by the trainer
    generator: torch.Generator | None = None
    epoch: int = 0
    step: int = 0
    cache_dir: Any = None
    #: the dataset the run loaded (benchmark.data.Dataset) and the indices, into its training split, of
    #: the images the victim trains on: what a defense needs to check or find data disjoint from them
    dataset: Any = None
    train_indices: torch.Tensor | None = None
    data_root: str | None = None
    #: status messages for the user (e.g. "pretraining the default backbone"): emit(text)
    emit: Callable[[str], None] = field(default=lambda text: None)
    #: per-batch draws (crop offsets, flips, mixing weights, noise) on the training device, so a GPU step
    #: makes no host-to-device copy for them: on a GPU a generator of that device seeded from the run's
    #: generator (checkpointed with it); on the CPU the run's generator itself (the same numbers as ever)
    device_generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.device_generator is None and self.generator is not None:
            self.device_generator = self.generator
            if self.device.type != "cpu":
                seed = self.generator.initial_seed() + 1
                self.device_generator = torch.Generator(device=self.device).manual_seed(seed)

    def _draw_args(self) -> dict[str, Any]:
        gen = self.device_generator
        return {"generator": gen, "device": gen.device if gen is not None else self.device}

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform [0,1) numbers from the run's device generator, on the training device."""
        return torch.rand(*shape, **self._draw_args()).to(self.device)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, **self._draw_args()).to(self.device)

    def randint(self, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(high, shape, **self._draw_args()).to(self.device)

    def randperm(self, n: int) -> torch.Tensor:
        return torch.randperm(n, **self._draw_args()).to(self.device)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft labels (rows sum to 1): what mixing defenses need."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class Defense(Plugin[P]):
    """Base class: every hook is the identity / plain ERM. Subclasses override what they need."""

    #: what each key this defense writes to ``metrics.defense`` means (shown under the leaderboard's table)
    metrics_help: ClassVar[dict[str, str]] = {}
    #: row group in the report (a key of ``FAMILIES``)
    family: ClassVar[str] = "other"
    #: what ``test_acc`` (the headline) measures, when it is not plain argmax accuracy on clean test images
    headline: ClassVar[str] = ""
    #: threat-model tier (a key of ``TIERS``) of the defense as configured by default; :meth:`tier` may
    #: refine it from the parameters and the data
    default_tier: ClassVar[str] = "poisoned-only"

    def prepare(self, train: ImageSet, ctx: TrainContext) -> ImageSet:
        return train

    def before_crop(self, x: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        return x

    def batch(self, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: TrainContext) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return soft_cross_entropy(logits, y), logits

    def build_model(self, arch: str, num_classes: int, in_channels: int, ctx: TrainContext) -> nn.Module:
        return build_model(arch, num_classes, in_channels)

    def train_mode(self, model: nn.Module, ctx: TrainContext) -> None:
        return None

    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return forward_in_slices(model, x)

    #: True when the per-epoch predictor is a cheaper approximation of the final one, so the final test
    #: accuracy is measured again with ``predictor(ctx, final=True)`` after training
    cheap_epoch_predictor: ClassVar[bool] = False

    def predictor(self, ctx: TrainContext, final: bool = True) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
        """The prediction function of one evaluation pass over a test set."""
        return self.predict

    def epoch_eval_info(self) -> dict[str, Any] | None:
        """How the per-epoch curve differs from the final evaluation (recorded), if it does."""
        return None

    def adjust_protocol(self, proto: Any) -> Any:
        """The optimisation this defense trains with (default: the preset's)."""
        return proto

    def check_run(self, ctx: TrainContext) -> None:
        """Reject a run this defense cannot measure honestly (BenchError), before any work starts."""
        return None

    def validation(self) -> Validation | None:
        """The clean split this defense selects the model on (an extra-clean-data defense), if any."""
        return None

    def evaluate(self, model: nn.Module, test: ImageSet, ctx: TrainContext) -> dict[str, Any]:
        return {}

    def describe_source(self) -> dict[str, Any]:
        """Extra facts for the record (e.g. which backbone a fine-tune started from)."""
        return {}

    def tier(self) -> str:
        """Threat-model tier of this configured defense (a key of ``TIERS``)."""
        return self.default_tier

    def test_set(self) -> str:
        """The test images ``test_acc`` is measured on: ``clean`` (the data set's own), or the transform
        the defense applies to them too (``grayscale``); claims compare it with their source's setting."""
        return "clean"

    def variant(self) -> str | None:
        """Short variant name for tables (``official`` for DAT with the official BN leak); None = default."""
        return None

    @classmethod
    def owns(cls, hook: str) -> bool:
        aliases = {"predict": ("predict", "predictor")}.get(hook, (hook,))
        return any(getattr(cls, h) is not getattr(Defense, h) for h in aliases)


class ImageDefense(Defense[P]):
    """A data-level defense: one map of the uint8 training images before training (JPEG, blur, ...).

    Subclasses write only ``transform_images``; ``prepare`` maps the training set through it in chunks
    of ``chunk`` images on the training device and keeps labels and class names. Test images are not
    transformed."""

    #: images per ``transform_images`` call (bounds the float temporaries of a 50k-image set)
    chunk: ClassVar[int] = IMAGE_CHUNK

    def transform_images(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> uint8 images of the same shape."""
        raise NotImplementedError

    def prepare(self, train: ImageSet, ctx: TrainContext) -> ImageSet:
        return ImageSet(map_chunks(self.transform_images, train.x, ctx.device, self.chunk), train.y,
                        list(train.classes))


class DefenseStack(Defense):
    """Composition ``a+b+...``: chains data/batch hooks, delegates owned hooks to their one owner."""

    def __init__(self, components: list[Defense]) -> None:
        super().__init__(NoParams())
        self.components = components
        self.owner: dict[str, Defense] = {}
        for hook in OWNED_HOOKS:
            owners = [c for c in components if type(c).owns(hook)]
            if len(owners) > 1:
                names = " and ".join(f"'{c.name}'" for c in owners)
                raise BenchError(f"defenses {names} both own {HOOK_ROLES[hook]}; combine at most one of them "
                                 "with data- or batch-level defenses")
            if owners:
                self.owner[hook] = owners[0]

    @property
    def spec_name(self) -> str:
        return "+".join(c.name for c in self.components) or "none"

    def prepare(self, train: ImageSet, ctx: TrainContext) -> ImageSet:
        for c in self.components:
            train = c.prepare(train, ctx)
        return train

    def before_crop(self, x, ctx):
        for c in self.components:
            x = c.before_crop(x, ctx)
        return x

    def batch(self, x, y, ctx):
        for c in self.components:
            x, y = c.batch(x, y, ctx)
        return x, y

    def loss(self, model, x, y, ctx):
        owner = self.owner.get("loss")
        return owner.loss(model, x, y, ctx) if owner else super().loss(model, x, y, ctx)

    def build_model(self, arch, num_classes, in_channels, ctx):
        if "build_model" in self.owner:
            return self.owner["build_model"].build_model(arch, num_classes, in_channels, ctx)
        return super().build_model(arch, num_classes, in_channels, ctx)

    def train_mode(self, model, ctx):
        for c in self.components:
            c.train_mode(model, ctx)

    def predict(self, model, x):
        return self.owner["predict"].predict(model, x) if "predict" in self.owner else super().predict(model, x)

    @property
    def cheap_epoch_predictor(self) -> bool:  # type: ignore[override]
        return "predict" in self.owner and self.owner["predict"].cheap_epoch_predictor

    def predictor(self, ctx, final=True):
        return self.owner["predict"].predictor(ctx, final) if "predict" in self.owner else self.predict

    def epoch_eval_info(self):
        return self.owner["predict"].epoch_eval_info() if "predict" in self.owner else None

    def adjust_protocol(self, proto):
        for c in self.components:
            proto = c.adjust_protocol(proto)
        return proto

    def check_run(self, ctx):
        for c in self.components:
            c.check_run(ctx)

    def validation(self):
        return self.owner["validation"].validation() if "validation" in self.owner else None

    def evaluate(self, model, test, ctx):
        out: dict[str, Any] = {}
        for c in self.components:
            out.update(c.evaluate(model, test, ctx))
        return out

    def describe_source(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for c in self.components:
            out.update(c.describe_source())
        return out

    def tier(self) -> str:
        """The composition is as permissive as its most permissive component."""
        tiers = [c.tier() for c in self.components] or ["poisoned-only"]
        return max(tiers, key=TIER_ORDER.index)

    def test_set(self) -> str:
        return next((t for c in self.components if (t := c.test_set()) != "clean"), "clean")

    def families(self) -> list[str]:
        return [c.family for c in self.components] or ["baseline"]

    def variant(self) -> str | None:
        parts = [f"{c.name} ({c.variant()})" for c in self.components if c.variant()]
        return ", ".join(parts) or None

    def info(self) -> dict[str, Any]:
        """``defense_info`` of a run record: threat-model tier, family, variant, what the headline is.
        Kept out of ``config`` so that run ids (a hash of the config) do not depend on it."""
        heads = [c.headline for c in self.components if c.headline]
        return {"tier": self.tier(), "tier_meaning": TIERS[self.tier()], "family": self.families()[-1],
                "families": self.families(), "variant": self.variant(),
                "headline": heads[0] if heads else DEFAULT_HEADLINE}

    def record(self) -> dict[str, Any]:
        """``config.defense`` of a run record."""
        comps = [{"name": c.name, "params": params_dict(c.params)} for c in self.components]
        params: dict[str, Any] = comps[0]["params"] if len(comps) == 1 else {c["name"]: c["params"] for c in comps}
        return {"name": self.spec_name, "params": params, "components": comps}


def build_defense(spec: str, params: dict[str, Any] | None = None, preset: str | None = None) -> DefenseStack:
    """Build ``spec`` (``name`` or ``a+b``) with params; keys may be ``name.param`` to target one
    component of a composition, or plain ``param`` when exactly one component declares it. A component's
    ``preset_params`` for the protocol ``preset`` fill in what ``params`` leaves unset."""
    names = [s.strip() for s in spec.split("+")]
    if not any(names):
        raise BenchError("empty defense name; see 'bench list defenses'")
    if not all(names):
        raise BenchError(f"defense '{spec}' has an empty component; write names joined by '+', e.g. 'at+mixup'")
    classes = [DEFENSES.get(n) for n in names]
    canon = [DEFENSES.canonical(n) for n in names]
    if len(set(canon)) != len(canon):
        raise BenchError(f"defense '{spec}' lists the same defense twice")
    per, reached = route_params(params or {}, {c: {c: cls.Params} for c, cls in zip(canon, classes, strict=True)},
                                DEFENSES.canonical)
    for key, holders in reached.items():
        if "." in key and not holders:
            raise BenchError(f"defense parameter '{key}' names '{DEFENSES.canonical(key.split('.', 1)[0])}', "
                             f"which is not in '{spec}'")
        if len(holders) > 1:
            raise BenchError(f"defense parameter '{key}' is ambiguous in '{spec}'; write e.g. '{holders[0]}.{key}'")
        if not holders:  # no component declares it: build_params names it as unknown
            per[canon[0]][key] = params[key]  # type: ignore[index]
    components = []
    for name, cls in zip(canon, classes, strict=True):
        comp = cls(build_params(cls.Params, {**cls.preset_params.get(preset or "", {}), **per[name]},
                                owner=f"defense {name}"))
        comp.name = name
        components.append(comp)
    if canon != ["none"]:
        components = [c for c in components if c.name != "none"]
    return DefenseStack(components)
