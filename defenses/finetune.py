"""Fine-tuning a pretrained backbone on the poisoned set (CUDA paper, Sec. 5.2: "fine-tuning the full
network and a newly trained final layer"; the paper gives no code or recipe for it).

``mode=full`` trains every layer from the backbone's weights with a fresh linear head;
``mode=linear`` trains only the fresh head: the backbone's parameters are frozen and its BatchNorm layers
stay in eval mode, so their statistics are not re-estimated on poisoned data.

Optimisation (our choice, as a transfer-learning practitioner would; the CUDA paper defers its recipe to
a supplement we could not read): cosine decay from ``lr_scale`` x the preset's learning rate, with
``lr_scale`` 0.1 for full fine-tuning (pretrained weights are kept near their optimum, as in Kornblith,
Shlens & Le, CVPR 2019, who fine-tune at a tenth of the from-scratch rate) and 1.0 for the fresh head of
a linear probe; ``epochs`` 0 keeps the preset's. The preset's one-cycle schedule up to 0.2 erased the
pretrained features of the cpu preset's small CNN within four epochs (clean 70 % -> 30 %).

Backbones (``backbone=``):
* empty (default): a clean backbone of the run's architecture, pretrained once with the preset's recipe
  on the training images *outside* the victim's subset (the cpu preset: 30k held-out CIFAR-10 images)
  and cached; when the victim trains on the whole split (the paper preset) there are no such images
  and the run stops with a one-line error naming what works instead.
* ``PATH.safetensors`` from ``bench pretrain``: its metadata says which training images it saw.
* ``robustbench:NAME`` with ``model_dir=DIR``: a RobustBench checkpoint already placed at
  ``DIR/cifar10/<threat>/NAME.pt`` (RobustBench's layout), read with ``torch.load(weights_only=True)``
  into this benchmark's CIFAR ResNet-18 (RobustBench's ResNet-18 under other layer names; same outputs),
  doing what ``robustbench.utils.load_model`` does for these entries (``state_dict`` entry, ``module.`` /
  ``model.`` prefixes stripped, strict load). Not through robustbench itself, because its PyPI release
  (1.1.1) does not import: ``robustbench/__init__`` needs ``autoattack`` (its declared ``pyautoattack``
  installs ``pyautoattack``) and ``pkg_resources`` (gone in setuptools 82), and its ``torch.load`` call
  leaves ``weights_only`` to the environment (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` would unpickle).

Leakage guard: a backbone that saw any of the victim's training images (same dataset, overlapping
indices; a RobustBench CIFAR-10 model saw all of them) measures the clean data, not the defense; it is
refused unless ``allow_overlap=true``, and such a record's threat-model tier is ``overlapping-data``.
Otherwise the tier is ``extra-clean-data``: never ranked with defenses that have only the poisoned set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from benchmark.errors import BenchError
from benchmark.locks import load_or_make
from benchmark.models import build_model
from benchmark.params import param
from benchmark.pretrain import (
    indices_digest,
    pretrain_indices,
    read_backbone,
    save_backbone,
    train_backbone,
)
from benchmark.protocol import Protocol, resolve_protocol
from benchmark.registry import MODELS, register_defense
from defenses.base import Defense, TrainContext

#: RobustBench CIFAR-10 entries whose architecture is a plain CIFAR ResNet-18 (RobustBench model zoo, robustbench/model_zoo/cifar10.py)
ROBUSTBENCH_RESNET18 = ("Sehwag2021Proxy_R18", "Addepalli2022Efficient_RN18", "Addepalli2021Towards_RN18")
DOWNLOAD_HINT = ("https://github.com/RobustBench/robustbench (on a machine with internet: pip install "
                 "git+https://github.com/RobustBench/robustbench.git; robustbench.utils.load_model(NAME, model_dir=DIR) "
                 "saves DIR/cifar10/<threat>/NAME.pt)")


@dataclass(frozen=True)
class FinetuneParams:
    backbone: str = param("", "empty = a cached clean backbone pretrained on the images outside the victim's "
                          "subset; or PATH.safetensors from `bench pretrain`; or robustbench:NAME (with model_dir)")
    mode: str = param("full", "train every layer, or only a fresh linear head on the frozen backbone",
                      choices=("full", "linear"))
    lr_scale: float = param(0.0, "learning rate = this x the preset's (0 = 0.1 for full, 1.0 for linear)", ge=0.0)
    schedule: str = param("cosine", "learning-rate schedule of the fine-tuning (preset = the preset's)",
                          choices=("cosine", "preset", "onecycle", "step", "constant"))
    epochs: int = param(0, "fine-tuning epochs (0 = the preset's)", ge=0)
    allow_overlap: bool = param(False, "run even if the backbone saw clean versions of the victim's images "
                                "(the record's tier becomes overlapping-data)")
    model_dir: str = param("models", "robustbench: folder holding cifar10/<threat>/NAME.pt")
    threat: str = param("Linf", "robustbench: threat model folder of the checkpoint", choices=("Linf", "L2"))

    def validate(self, owner: str) -> None:
        if not self.backbone:
            return
        path = backbone_path(self)
        if not path.is_file():
            hint = f"; get it from {DOWNLOAD_HINT}" if self.backbone.startswith("robustbench:") else \
                "; make one with `bench pretrain --out ...`"
            raise BenchError(f"{owner}: backbone file not found: {path}{hint}")


def backbone_path(p: FinetuneParams) -> Path:
    if p.backbone.startswith("robustbench:"):
        name = p.backbone.split(":", 1)[1]
        if name not in ROBUSTBENCH_RESNET18:
            raise BenchError(f"unknown robustbench backbone '{name}'; supported (ResNet-18): {', '.join(ROBUSTBENCH_RESNET18)}")
        return Path(p.model_dir) / "cifar10" / p.threat / f"{name}.pt"
    if not p.backbone.endswith(".safetensors"):
        raise BenchError(f"backbone '{p.backbone}' must be a .safetensors file or robustbench:NAME")
    return Path(p.backbone)


def robustbench_to_bench(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """RobustBench ResNet-18 keys -> this benchmark's ResNet: strip ``module.``/``model.``, and
    ``layer{i}.{j}.`` (4 stages x 2 blocks) becomes ``layers.{2(i-1)+j}.``."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^(module\.|model\.)+", "", key)
        key = re.sub(r"^layer(\d)\.(\d)\.", lambda m: f"layers.{2 * (int(m[1]) - 1) + int(m[2])}.", key)
        out[key] = value
    return out


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The classifier head: the model's last nn.Linear."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise BenchError("finetune: the backbone has no linear classifier head")
    return found[-1]


def default_backbone_path(ctx: TrainContext, arch: str, preset: str) -> Path:
    """Cache path of the default backbone for this dataset (content digest), architecture, preset and
    victim subset: a different victim subset gets a different, again disjoint, backbone."""
    digest = indices_digest(ctx.train_indices) if ctx.train_indices is not None else "all"
    dataset = re.sub(r"[^A-Za-z0-9._-]+", "_", ctx.dataset.name).strip("_")[-40:]
    name = f"{dataset}-{ctx.dataset.digest or 'nodigest'}-{MODELS.canonical(arch)}-{preset}-holdout-{digest}"
    return Path(ctx.cache_dir) / "backbones" / f"{name}.safetensors"


@register_defense("finetune", aliases=("fine-tune", "transfer"))
class Finetune(Defense[FinetuneParams], family="transfer", default_tier="extra-clean-data"):
    """Fine-tune a pretrained clean backbone (all layers, or a fresh linear head on a frozen backbone)."""

    notes = ("`finetune` starts from a backbone pretrained on clean data the poisoned set does not contain "
             "(by default the training images outside the victim's subset): a defender with extra clean data, "
             "ranked in its own tier.",)

    #: the backbone this run started from, and its overlap with the victim's images (set by ``check_run``)
    _source: dict[str, Any] | None = None
    _overlap: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------ threat model

    def tier(self) -> str:
        return "overlapping-data" if self._overlap and self._overlap.get("overlapping_images") else self.default_tier

    def adjust_protocol(self, proto: Protocol) -> Protocol:
        p = self.params
        scale = p.lr_scale or (0.1 if p.mode == "full" else 1.0)
        changes: dict[str, Any] = {"lr": proto.lr * scale}
        if p.schedule != "preset":
            changes["schedule"] = p.schedule
        if p.epochs:
            changes["epochs"] = p.epochs
        return dataclasses.replace(proto, **changes)

    def check_run(self, ctx: TrainContext) -> None:
        """Before any work: a default backbone needs held-out images; an explicit one must not have seen
        the victim's images (unless allowed)."""
        p = self.params
        if ctx.dataset is None or ctx.train_indices is None:
            return
        n_train = len(ctx.dataset.train)
        if not p.backbone:
            if len(ctx.train_indices) >= n_train:
                raise BenchError(
                    f"finetune: no clean {ctx.dataset.name} training images are disjoint from the victim's "
                    f"{len(ctx.train_indices)} (preset {ctx.protocol.preset} trains on all of them), so there is no "
                    "default backbone; pass backbone=PATH from `bench pretrain --dataset cifar100 --out PATH`, or "
                    "a RobustBench/ImageNet backbone with allow_overlap=true")
            self._overlap = {"backbone_dataset": ctx.dataset.name, "overlapping_images": 0, "checked": "by construction"}
            return
        self._overlap = self._overlap_with(ctx)
        if self._overlap["overlapping_images"] and not p.allow_overlap:
            raise BenchError(
                f"finetune: backbone {p.backbone} saw clean versions of {self._overlap['overlapping_images']} of the "
                f"victim's {len(ctx.train_indices)} training images ({self._overlap['why']}); it would measure the clean "
                "data, not the defense. Use a backbone from `bench pretrain --split holdout`, or allow_overlap=true "
                "to run it as an overlapping-data upper bound")

    def _overlap_with(self, ctx: TrainContext) -> dict[str, Any]:
        p = self.params
        victim = ctx.train_indices
        name = ctx.dataset.name
        if p.backbone.startswith("robustbench:"):
            n = len(victim) if name == "cifar10" else 0
            return {"backbone_dataset": "cifar10", "overlapping_images": n,
                    "why": "RobustBench CIFAR-10 models were trained on the whole CIFAR-10 training split"}
        _, info, seen = read_backbone(backbone_path(p))
        if info.get("dataset") != name:
            return {"backbone_dataset": info.get("dataset"), "overlapping_images": 0,
                    "why": "pretrained on another dataset"}
        if seen is None:
            return {"backbone_dataset": name, "overlapping_images": len(victim),
                    "why": "its metadata does not say which training images it saw; remake it with `bench pretrain`"}
        both = torch.isin(victim.to(torch.int64), seen.to(torch.int64))
        return {"backbone_dataset": name, "overlapping_images": int(both.sum()),
                "why": f"pretrained on {len(seen)} {name} training images, split {info.get('split')}"}

    # ---------------------------------------------------------------------------------- loading

    def _default(self, arch: str, ctx: TrainContext) -> Path:
        """The cached default backbone, pretrained now if it is missing: by one process at a time (the
        others wait for it), resuming the per-epoch checkpoint that a killed pretraining left."""
        preset = ctx.protocol.preset
        path = default_backbone_path(ctx, arch, preset)

        def make() -> Path:
            proto = resolve_protocol(preset, {"model": arch, "train_subset": 0})
            indices = pretrain_indices(len(ctx.dataset.train), ctx.train_indices, "holdout")
            checkpoint = path.with_suffix(".training.pt")  # used only under the lock
            ctx.emit(f"finetune: pretraining the default {arch} backbone on {len(indices)} held-out clean "
                     f"{ctx.dataset.name} images ({proto.epochs} epochs, once; cached at {path})"
                     + (" - resuming from its checkpoint" if checkpoint.is_file() else ""))
            state, meta = train_backbone(ctx.dataset, indices, arch, proto, 0, ctx.device, "holdout",
                                         len(ctx.train_indices),
                                         on_epoch=lambda e: ctx.emit(f"  backbone epoch {e['epoch']}/{proto.epochs}: "
                                                                     f"clean test {e['test_acc']:.2f}%"),
                                         checkpoint=checkpoint)
            save_backbone(path, state, meta)
            checkpoint.unlink(missing_ok=True)
            return path

        return load_or_make(path, f"the default {arch} backbone {path.name}",
                            lambda: path if path.is_file() else None, make, notify=ctx.emit)

    def _load(self, path: Path) -> tuple[str, dict[str, torch.Tensor], dict[str, Any]]:
        """(architecture, state dict, provenance) of the backbone."""
        p = self.params
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        if p.backbone.startswith("robustbench:"):
            try:
                raw = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # pickled code objects etc. are refused by weights_only
                raise BenchError(f"finetune: cannot load {path} as plain weights (weights_only=True): "
                                 f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}") from None
            if isinstance(raw, dict) and "state_dict" in raw:
                raw = raw["state_dict"]
            if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
                raise BenchError(f"finetune: {path} is not a state dict of tensors")
            meta = {"backbone": p.backbone, "threat": p.threat, "file": str(path), "sha256": digest,
                    "pretrained_on": "CIFAR-10 train set, clean (RobustBench adversarial training)"}
            return "resnet18", robustbench_to_bench(raw), meta
        state, info, _ = read_backbone(path)
        if "model" not in info:
            raise BenchError(f"finetune: {path} has no `bench pretrain` metadata (architecture unknown)")
        meta = {"backbone": p.backbone or "default", "file": str(path), "sha256": digest, "pretrained_on": info}
        return info["model"], state, meta

    def build_model(self, arch: str, num_classes: int, in_channels: int, ctx: TrainContext) -> nn.Module:
        p = self.params
        path = backbone_path(p) if p.backbone else self._default(arch, ctx)
        bb_arch, state, meta = self._load(path)
        if MODELS.canonical(arch) != bb_arch:
            raise BenchError(f"finetune: the backbone is a {bb_arch} but the victim model is {arch}; "
                             f"pass --model {bb_arch}")
        head_classes = next((v.shape[0] for k, v in state.items() if k.endswith("linear.weight")), num_classes)
        model = build_model(bb_arch, int(head_classes), in_channels)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise BenchError(f"finetune: backbone weights do not fit {bb_arch} with {in_channels} input "
                             f"channels: {str(exc).splitlines()[0][:200]}") from None
        name, old = last_linear(model)
        head = nn.Linear(old.in_features, num_classes)  # fresh head, seeded by the run seed
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.rsplit(".", 1)[-1], head)
        if p.mode == "linear":
            for q in model.parameters():
                q.requires_grad_(False)
            for q in head.parameters():
                q.requires_grad_(True)
        self._head = head
        proto = self.adjust_protocol(ctx.protocol) if ctx.protocol is not None else None
        self._source = dict(meta, mode=p.mode, overlap=self._overlap,
                            optimisation={"lr": proto.lr, "schedule": proto.schedule, "epochs": proto.epochs}
                            if proto else None)
        return model

    def train_mode(self, model: nn.Module, ctx: TrainContext) -> None:
        """Linear probing: the frozen backbone (BatchNorm included) stays in eval mode."""
        if self.params.mode == "linear":
            model.eval()
            self._head.train()

    def describe_source(self) -> dict[str, Any]:
        return {"finetune": self._source} if self._source else {}
