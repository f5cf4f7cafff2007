"""``bench pretrain``: a clean backbone for the ``finetune`` defense, trained by the benchmark itself.

The offline alternative to downloaded checkpoints (RobustBench, ImageNet): train a model of the
victim's architecture on clean data with the benchmark's own trainer and save it as safetensors, with
metadata that says exactly what it saw, so a fine-tuning record can state its backbone's provenance.

``split``: ``holdout`` (default) = the training images *not* in the preset's fixed train subset (the
cpu preset trains victims on 20k of CIFAR-10's 50k images, so 30k clean images remain that the
victim never sees: a realistic "clean data from the same distribution" defender); ``train`` = the
preset's own subset, clean (optimistic: the defender has the clean version of the poisoned set, as
RobustBench backbones trained on clean CIFAR-10 do); ``all`` = the whole training split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from benchmark import paths
from benchmark.data import ImageSet, load_dataset, stratified_subset
from benchmark.errors import BenchError
from benchmark.io import atomic_write
from benchmark.models import build_model, check_model
from benchmark.protocol import protocol_dict, resolve_protocol
from benchmark.registry import MODELS
from benchmark.runner import resolve_device, seed_everything
from benchmark.train import train_model
from defenses.base import TrainContext, build_defense

SPLITS = ("holdout", "train", "all")


@dataclass
class PretrainResult:
    path: Path
    metadata: dict[str, Any]


def pretrain_images(train: ImageSet, split: str, train_subset: int, subset_seed: int) -> ImageSet:
    """The clean images a backbone is pretrained on (see the module docstring)."""
    if split not in SPLITS:
        raise BenchError(f"unknown --split '{split}'; valid: {', '.join(SPLITS)}")
    if split == "all" or (split == "train" and not train_subset):
        return train
    inside = stratified_subset(train.y, train_subset, subset_seed) if train_subset else torch.arange(len(train))
    if split == "train":
        return train.subset(inside)
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[inside] = False
    if not bool(keep.any()):
        raise BenchError("--split holdout is empty: this preset trains victims on the whole training set; "
                         "pretrain on another dataset (e.g. --dataset cifar100) or use --split train")
    return train.subset(torch.nonzero(keep).flatten())


def pretrain(dataset: str, model: str, out: str, preset: str | None = None, split: str = "holdout",
             seed: int = 0, overrides: dict[str, Any] | None = None, data_root: str | None = None,
             cache_dir: str | None = None, download: bool = False, device: str = "auto",
             on_epoch: Any = None, max_images: int = 0) -> PretrainResult:
    """Train ``model`` on clean ``dataset`` images and write ``out`` (.safetensors) atomically."""
    if not str(out).endswith(".safetensors"):
        raise BenchError(f"--out must end in .safetensors, got '{out}'")
    check_model(model)
    dev = resolve_device(device)
    preset = preset or ("paper" if dev.type == "cuda" else "cpu")
    victim = resolve_protocol(preset)  # the subset victims of this preset train on
    proto = resolve_protocol(preset, dict(overrides or {}, model=model, train_subset=0))
    cache = paths.cache_dir(cache_dir)
    data = load_dataset(dataset, paths.data_root(data_root), cache, download)
    train = pretrain_images(data.train, split, victim.train_subset, victim.subset_seed)
    if max_images < 0:
        raise BenchError(f"--max-images must be >= 0, got {max_images}")
    if 0 < max_images < len(train):
        train = train.subset(stratified_subset(train.y, max_images, seed))
    test = data.test
    if proto.test_subset:
        test = test.subset(stratified_subset(test.y, proto.test_subset, proto.subset_seed))
    c, h, w = data.shape
    gen = seed_everything(seed)
    net = build_model(model, data.num_classes, c).to(dev)
    if dev.type == "cpu":
        net = net.to(memory_format=torch.channels_last)
    ctx = TrainContext(device=dev, num_classes=data.num_classes, in_channels=c, image_size=(h, w),
                       protocol=proto, seed=seed, generator=gen, cache_dir=cache)
    result = train_model(net, train.to(dev), test.to(dev), proto, build_defense("none"), ctx, on_epoch=on_epoch)
    metadata = {
        "format": "unlearnable-bench backbone v1",
        "model": MODELS.canonical(model), "num_classes": data.num_classes, "in_channels": c,
        "dataset": data.name, "dataset_source": data.source, "split": split, "train_images": len(train),
        "victim_train_subset": victim.train_subset, "preset": preset, "epochs": proto.epochs, "seed": seed,
        "clean_test_acc": round(result.test_acc, 3), "protocol": protocol_dict(proto),
    }
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    atomic_write(Path(out), lambda p: save_file(state, str(p), metadata={"bench": json.dumps(metadata)}))
    return PretrainResult(Path(out), metadata)
