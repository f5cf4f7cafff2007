"""Fine-tuning a pretrained backbone on the poisoned set (CUDA paper §5.2; spec defenses.md §9-10).

``mode=full`` trains every layer from the backbone's weights with a fresh linear head;
``mode=linear`` trains only the fresh head ("newly trained final layer"): the backbone's parameters
are frozen and its BatchNorm layers stay in eval mode, so their statistics are not re-estimated on
poisoned data (spec: our choice).

Backbones (``backbone=``):
* ``PATH.safetensors`` written by ``bench pretrain`` (the offline default): its metadata says which
  architecture, dataset, split and epochs it was trained with; the record copies it.
* ``robustbench:NAME`` with ``model_dir=DIR``: a RobustBench checkpoint already placed at
  ``DIR/cifar10/<threat>/NAME.pt`` (RobustBench's layout). It is read with
  ``torch.load(weights_only=True)`` (no unpickling of code, no network) into this benchmark's own
  CIFAR ResNet-18, whose layers are RobustBench's ResNet-18 under other names; the ``robustbench``
  package itself is not imported (its 1.1.1 wheel needs ``pkg_resources`` and a network path).
  Supported: the plain ResNet-18 entries (spec §10 recommends Sehwag2021Proxy_R18). Note: these were
  trained on clean CIFAR-10 (the victim's training images), an optimistic defense.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from benchmark.errors import BenchError
from benchmark.models import build_model
from benchmark.params import param
from benchmark.registry import MODELS, register_defense
from defenses.base import Defense, TrainContext

#: RobustBench CIFAR-10 entries whose architecture is a plain CIFAR ResNet-18 (spec defenses.md §10)
ROBUSTBENCH_RESNET18 = ("Sehwag2021Proxy_R18", "Addepalli2022Efficient_RN18", "Addepalli2021Towards_RN18")
DOWNLOAD_HINT = "https://github.com/RobustBench/robustbench (robustbench.utils.load_model downloads it on a machine with internet)"


@dataclass(frozen=True)
class FinetuneParams:
    backbone: str = param("", "PATH.safetensors from `bench pretrain`, or robustbench:NAME (with model_dir)")
    mode: str = param("full", "train every layer, or only a fresh linear head on the frozen backbone",
                      choices=("full", "linear"))
    model_dir: str = param("models", "robustbench: folder holding cifar10/<threat>/NAME.pt")
    threat: str = param("Linf", "robustbench: threat model folder of the checkpoint", choices=("Linf", "L2"))

    def validate(self, owner: str) -> None:
        if not self.backbone:
            raise BenchError(f"{owner}: needs --defense-param backbone=PATH.safetensors (make one with "
                             "`bench pretrain`) or backbone=robustbench:NAME model_dir=DIR")
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


@register_defense("finetune", aliases=("fine-tune", "transfer"))
class Finetune(Defense):
    """Fine-tune a pretrained backbone (all layers, or a fresh linear head on a frozen backbone)."""

    family = "transfer"
    Params = FinetuneParams

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self._source: dict[str, Any] | None = None

    # ---------------------------------------------------------------------------------- loading

    def _load(self, num_classes_hint: int) -> tuple[str, dict[str, torch.Tensor], dict[str, Any]]:
        """(architecture, state dict, provenance) of the backbone."""
        p: FinetuneParams = self.params
        path = backbone_path(p)
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
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                info = json.loads((f.metadata() or {}).get("bench", "{}"))
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        except Exception as exc:
            raise BenchError(f"finetune: cannot read {path} as safetensors: {type(exc).__name__}: {exc}") from None
        if "model" not in info:
            raise BenchError(f"finetune: {path} has no `bench pretrain` metadata (architecture unknown)")
        meta = {"backbone": p.backbone, "file": str(path), "sha256": digest, "pretrained_on": info}
        return info["model"], state, meta

    def build_model(self, arch: str, num_classes: int, in_channels: int, ctx: TrainContext) -> nn.Module:
        p: FinetuneParams = self.params
        bb_arch, state, meta = self._load(num_classes)
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
        self._source = dict(meta, mode=p.mode)
        return model

    def train_mode(self, model: nn.Module, ctx: TrainContext) -> None:
        """Linear probing: the frozen backbone (BatchNorm included) stays in eval mode."""
        if self.params.mode == "linear":
            model.eval()
            self._head.train()

    def describe_source(self) -> dict[str, Any]:
        return {"finetune": self._source} if self._source else {}
