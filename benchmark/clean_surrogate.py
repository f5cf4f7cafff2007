"""A surrogate trained on the clean training set, then fixed, for the poisons that attack one (TAP, the
gradient-matching poisons): the benchmark's own trainer (:func:`benchmark.train.train_model`, the one
``bench pretrain`` uses), cached as safetensors in ``bench pretrain``'s format under
``<cache>/surrogates`` (keyed by the images, the recipe, the key and the poison's name, which seeds it),
or a ``bench pretrain`` file given as ``backbone=PATH``.

A poison mixes :class:`CleanSurrogate` in and declares the surrogate fields in its params
(``surrogate``, ``surrogate_epochs``, ``surrogate_batch_size``, ``surrogate_lr``, ``surrogate_schedule``,
``backbone``). The official recipe of the group's code (forest ``conservative``): ResNet-18, 40 epochs,
batch 128, SGD 0.1 Nesterov momentum 0.9, weight decay 5e-4, learning rate x0.1 at epochs 14, 25, 35.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from attacks.base import PoisonContext, key_fingerprint
from benchmark.data import ImageSet, stratified_subset
from benchmark.errors import BenchError
from benchmark.locks import load_or_make
from benchmark.noise import derived_seed
from benchmark.params import param
from benchmark.pretrain import FORMAT, read_backbone, save_backbone
from benchmark.protocol import protocol_dict, resolve_protocol
from benchmark.registry import MODELS
from benchmark.surrogate import build_surrogate, check_surrogate
from benchmark.train import train_model
from defenses.base import TrainContext, build_defense

FORMAT_FAMILY = FORMAT.rsplit(" v", 1)[0]  # "unlearnable-bench backbone": every version holds the weights


def images_digest(train: ImageSet) -> str:
    h = hashlib.sha256()
    h.update(train.x.cpu().contiguous().numpy().tobytes())
    h.update(train.y.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class SurrogateParams:
    """The surrogate fields of a poison that attacks a clean surrogate (the official ``conservative`` recipe by
    default), and its forest-style crafting in poison batches with restarts (``forest/options.py``; TAP's
    official code is the same toolbox), checkpointed; a poison adds its own parameters."""

    surrogate: str = param("resnet18", "surrogate architecture (bench list models)")
    surrogate_epochs: int = param(40, "surrogate training epochs on the clean set", ge=1)
    surrogate_batch_size: int = param(128, "surrogate training batch size", ge=2)
    surrogate_lr: float = param(0.1, "surrogate peak learning rate (SGD, Nesterov momentum 0.9, wd 5e-4)", gt=0.0)
    surrogate_schedule: str = param("multistep", "multistep: x0.1 at epochs // 2.667, // 1.6, // 1.142 (the "
                                    "official MultiStepLR: 14, 24, 35 for 40); step: x0.1 every round(epochs/2.667) "
                                    "(15, 30 for 40); onecycle: the cpu victim schedule",
                                    choices=("multistep", "step", "onecycle"))
    backbone: str = param("", "PATH.safetensors from `bench pretrain` (--split train) used as the surrogate "
                              "instead of training one")
    checkpoint_every: int = param(8, "checkpoint the crafting every this many poison batches (0 = never)", ge=0)
    restarts: int = param(8, "full crafting restarts; the one with the lowest final loss is kept (forest --restarts)",
                          ge=1, le=64)
    batch_size: int = param(512, "poison batch size (forest --pbatch)", ge=1)
    augment: bool = param(True, "differentiable random shift (bilinear, up to size/8 px) + flip of the poison batch "
                                "(forest --paugment)")

    def validate(self, owner: str) -> None:
        check_surrogate_params(owner, self)


def check_surrogate_params(owner: str, params: Any) -> None:
    """Fail up front on an unknown surrogate architecture or a backbone that is not a safetensors file."""
    check_surrogate(owner, params.surrogate)
    if params.backbone:
        path = Path(params.backbone).expanduser()
        if path.suffix != ".safetensors" or not path.is_file():
            raise BenchError(f"{owner}: backbone '{params.backbone}' must be an existing .safetensors file "
                             f"written by `bench pretrain`")


def load_surrogate(path: Path, num_classes: int, in_channels: int, device: torch.device,
                   owner: str = "poison") -> tuple[nn.Module, dict[str, Any]]:
    """A surrogate from a ``bench pretrain`` safetensors file (or a cached one), checked."""
    state, meta, _indices = read_backbone(path)
    if not str(meta.get("format", "")).startswith(FORMAT_FAMILY):
        raise BenchError(f"{owner}: backbone {path} was not written by `bench pretrain` (no '{FORMAT}' metadata)")
    if meta.get("num_classes") != num_classes or meta.get("in_channels") != in_channels:
        raise BenchError(f"{owner}: backbone {path} is for {meta.get('num_classes')} classes / "
                         f"{meta.get('in_channels')} channels; this data set has {num_classes} / {in_channels}")
    model = build_surrogate(MODELS.canonical(meta["model"]), num_classes, in_channels, 0, device)
    model.load_state_dict(state)
    return model, meta


class CleanSurrogate:
    """Mixin of a poison (``self.name``, ``self.params`` with the surrogate fields) that attacks a fixed
    surrogate trained on the clean images it is given."""

    name: str
    params: Any

    def surrogate_tag(self) -> str:
        """The name a surrogate is cached and seeded under: the poison's, unless poisons share one."""
        return self.name

    def surrogate_key(self, ctx: PoisonContext) -> int:
        """The key that seeds the surrogate (its init and batch order): the poison key by default."""
        return ctx.key

    def surrogate_protocol(self) -> Any:
        p = self.params
        over: dict[str, Any] = dict(model=p.surrogate, epochs=p.surrogate_epochs, batch_size=p.surrogate_batch_size,
                                    lr=p.surrogate_lr, momentum=0.9, nesterov=True, weight_decay=5e-4, grad_clip=0.0,
                                    augment=True, train_subset=0, test_subset=0, schedule=p.surrogate_schedule,
                                    amp="off", tf32=False, memory_format="auto")  # the official fp32 numerics
        if p.surrogate_schedule == "multistep":  # forest's / TAP's get_optimizers milestones
            epochs = sorted({max(1, int(p.surrogate_epochs // d)) for d in (2.667, 1.6, 1.142)})  # float //, as official
            over.update(lr_milestones=",".join(map(str, epochs)), lr_gamma=0.1, warmup=0.0)
        if p.surrogate_schedule == "step":
            over.update(lr_step=max(1, round(p.surrogate_epochs / 2.667)), lr_gamma=0.1, warmup=0.0)
        return resolve_protocol("cpu" if p.surrogate_schedule == "onecycle" else "paper", over)

    def surrogate_id(self, train: ImageSet, key: int) -> str:
        payload = {"images": images_digest(train), "protocol": protocol_dict(self.surrogate_protocol()),
                   "num_classes": train.num_classes, "key_fingerprint": key_fingerprint(key)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    @staticmethod
    def surrogate_cache(ctx: PoisonContext) -> Path | None:
        """``<cache>/surrogates`` when the generation runs under the benchmark's poison cache
        (``<cache>/poison-work/<artifact>``), else None (no cross-generation caching)."""
        if ctx.workdir is None or Path(ctx.workdir).parent.name != "poison-work":
            return None
        return Path(ctx.workdir).parent.parent / "surrogates"

    def timed_surrogate(self, train: ImageSet, ctx: PoisonContext) -> tuple[ImageSet, nn.Module, dict[str, Any]]:
        """The training set on the device, the surrogate for it and its manifest facts with the seconds this
        session spent getting it (loaded or trained): how a crafting run begins."""
        t0 = time.perf_counter()
        train_dev = train.to(ctx.device)
        model, info = self.get_surrogate(train_dev, ctx, self.num_classes_of(train, ctx))
        return train_dev, model, dict(info, seconds_this_session=round(time.perf_counter() - t0, 3))

    def get_surrogate(self, train: ImageSet, ctx: PoisonContext, num_classes: int) -> tuple[nn.Module, dict[str, Any]]:
        """The fixed surrogate (eval mode) and facts about it for the manifest."""
        p = self.params
        c = int(train.x.shape[1])
        owner = f"poison {self.name}"
        if p.backbone:
            model, meta = load_surrogate(Path(p.backbone).expanduser(), num_classes, c, ctx.device, owner)
            return model.eval(), {"source": "backbone", "path": p.backbone, "model": meta.get("model"),
                                  "split": meta.get("split"), "train_images": meta.get("train_images"),
                                  "cached": True}
        sid = self.surrogate_id(train, self.surrogate_key(ctx))
        home = self.surrogate_cache(ctx) or (Path(ctx.workdir) if ctx.workdir is not None else None)
        if home is None:  # nowhere to keep it: trained for this generation only
            model, meta = self.train_surrogate(train, ctx, num_classes, None)
            return model, self.surrogate_facts(sid, meta, cached=False)
        path = home / f"{self.surrogate_tag()}-{sid}.safetensors"

        def load() -> tuple[nn.Module, dict[str, Any]] | None:
            if not path.is_file():
                return None
            model, meta = load_surrogate(path, num_classes, c, ctx.device, owner)
            return model.eval(), self.surrogate_facts(sid, meta, cached=True)

        def make() -> tuple[nn.Module, dict[str, Any]]:
            checkpoint = home / f"{self.surrogate_tag()}-{sid}-training.pt"  # used only under the lock: a next holder resumes it
            model, meta = self.train_surrogate(train, ctx, num_classes, checkpoint)
            save_backbone(path, {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, meta)
            checkpoint.unlink(missing_ok=True)
            return model, self.surrogate_facts(sid, meta, cached=False)

        # one trainer per surrogate across processes: artifacts of other crafting params share it
        return load_or_make(path, f"{self.name} surrogate {path.stem}", load, make)

    @staticmethod
    def surrogate_facts(sid: str, meta: dict[str, Any], cached: bool) -> dict[str, Any]:
        """What the manifest says about a trained surrogate."""
        return {"source": "trained", "id": sid, "cached": cached, "model": meta["model"], "epochs": meta["epochs"],
                "probe_acc": meta["clean_test_acc"], "train_seconds": meta.get("train_seconds")}

    def train_surrogate(self, train: ImageSet, ctx: PoisonContext, num_classes: int,
                        checkpoint: Path | None) -> tuple[nn.Module, dict[str, Any]]:
        """A clean surrogate from the benchmark's trainer, evaluated each epoch on a 1000-image
        stratified probe of its own training images (the attacker has no other labelled data)."""
        proto = self.surrogate_protocol()
        n, c, h, w = train.x.shape
        seed = derived_seed(self.surrogate_key(ctx), self.surrogate_tag(), "surrogate") % (2**31)
        model = build_surrogate(proto.model, num_classes, c, seed, ctx.device)
        probe = train.subset(stratified_subset(train.y.cpu(), min(1000, n), seed).to(train.y.device))
        tctx = TrainContext(device=ctx.device, num_classes=num_classes, in_channels=c, image_size=(h, w),
                            protocol=proto, seed=seed, generator=torch.Generator().manual_seed(seed))
        with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
            torch.manual_seed(seed)
            result = train_model(model, train, probe, proto, build_defense("none"), tctx, checkpoint)
        model.eval()
        meta = {"format": FORMAT, "model": MODELS.canonical(proto.model), "num_classes": num_classes,
                "in_channels": c, "dataset": "the poisoned set's clean images", "split": "train",
                "train_images": n, "epochs": proto.epochs, "seed": seed, "clean_test_acc": round(result.test_acc, 3),
                "probe": "stratified 1000-image probe of the training images", "protocol": protocol_dict(proto),
                "train_seconds": round(result.train_seconds + result.eval_seconds, 3)}
        return model, meta
