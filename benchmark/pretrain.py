"""``bench pretrain``: a clean backbone for the ``finetune`` defense, trained by the benchmark itself.

The offline alternative to downloaded checkpoints (RobustBench, ImageNet): train a model of the
victim's architecture on clean data with the benchmark's own trainer and save it as safetensors, with
metadata that identifies exactly which images it saw (dataset, content digest, the indices into the
training split and their digest), so ``finetune`` can refuse a backbone that saw the clean versions of
the victim's poisoned images and a record can state its backbone's threat model.

``split``: ``holdout`` (default) = the training images *not* in the preset's victim subset (the cpu
preset trains victims on 20k of CIFAR-10's 50k images, so 30k clean images remain that the victim
never sees: a defender with extra clean data from the same distribution); ``train`` = the victim
subset itself, clean (it overlaps the poisoned set: an upper bound, not a defense); ``all``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from benchmark import paths
from benchmark.data import Dataset, load_dataset, stratified_subset, victim_indices
from benchmark.device import default_preset, resolve_device, seed_everything
from benchmark.errors import BenchError
from benchmark.io import atomic_write
from benchmark.models import build_model, check_model
from benchmark.protocol import Protocol, protocol_dict, resolve_protocol
from benchmark.registry import MODELS

SPLITS = ("holdout", "train", "all")
FORMAT = "unlearnable-bench backbone v2"
INDICES_KEY = "bench.train_indices"  # tensor in the safetensors file: the training-split indices it saw


@dataclass
class PretrainResult:
    path: Path
    metadata: dict[str, Any]


def indices_digest(indices: torch.Tensor) -> str:
    return hashlib.sha256(indices.to(torch.int64).sort().values.numpy().tobytes()).hexdigest()[:16]


def pretrain_indices(n_train: int, victim: torch.Tensor, split: str) -> torch.Tensor:
    """Indices, into the training split, that a backbone of ``split`` trains on (module docstring)."""
    if split not in SPLITS:
        raise BenchError(f"unknown --split '{split}'; valid: {', '.join(SPLITS)}")
    if split == "all":
        return torch.arange(n_train)
    if split == "train":
        return victim
    keep = torch.ones(n_train, dtype=torch.bool)
    keep[victim] = False
    return torch.nonzero(keep).flatten()


def train_backbone(data: Dataset, indices: torch.Tensor, model: str, proto: Protocol, seed: int,
                   dev: torch.device, split: str, victim_subset: int, on_epoch: Any = None,
                   checkpoint: Path | None = None) -> tuple[dict, dict]:
    """Train ``model`` on ``data.train[indices]`` (clean); (state dict, metadata). ``checkpoint``: the
    per-epoch checkpoint an interrupted training resumes from (to the same weights)."""
    # imported here: the trainer imports the defenses, and the finetune defense imports this module
    from benchmark.train import prepare_model, train_model
    from defenses.base import TrainContext, build_defense

    train = data.train.subset(indices)
    test = data.test
    if proto.test_subset:
        test = test.subset(stratified_subset(test.y, proto.test_subset, proto.subset_seed))
    c, h, w = data.shape
    gen = seed_everything(seed)
    net = prepare_model(build_model(model, data.num_classes, c), proto, dev)
    ctx = TrainContext(device=dev, num_classes=data.num_classes, in_channels=c, image_size=(h, w),
                       protocol=proto, seed=seed, generator=gen)
    result = train_model(net, train.to(dev), test.to(dev), proto, build_defense("none"), ctx, checkpoint,
                         on_epoch=on_epoch)
    metadata = {
        "format": FORMAT,
        "model": MODELS.canonical(model), "num_classes": data.num_classes, "in_channels": c,
        "dataset": data.name, "dataset_source": data.source, "dataset_digest": data.digest,
        "split": split, "train_images": len(train), "train_indices_sha256": indices_digest(indices),
        "victim_train_subset": victim_subset, "subset_seed": proto.subset_seed, "preset": proto.preset,
        "epochs": proto.epochs, "seed": seed, "clean_test_acc": round(result.test_acc, 3),
        "protocol": protocol_dict(proto),
    }
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    state[INDICES_KEY] = indices.to(torch.int64).contiguous()
    return state, metadata


def save_backbone(out: Path, state: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    atomic_write(out, lambda p: save_file(state, str(p), metadata={"bench": json.dumps(metadata)}))


def read_backbone(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], torch.Tensor | None]:
    """(weights, metadata, training-split indices it saw or None) of a ``bench pretrain`` file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {}).get("bench", "{}"))
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except Exception as exc:
        raise BenchError(f"cannot read backbone {path} as safetensors: {type(exc).__name__}: {exc}") from None
    return state, info, state.pop(INDICES_KEY, None)


def pretrain(dataset: str, model: str, out: str, preset: str | None = None, split: str = "holdout",
             seed: int = 0, overrides: dict[str, Any] | None = None, data_root: str | None = None,
             cache_dir: str | None = None, download: bool = False, device: str = "auto",
             on_epoch: Any = None, max_images: int = 0) -> PretrainResult:
    """Train ``model`` on clean ``dataset`` images and write ``out`` (.safetensors) atomically."""
    if not str(out).endswith(".safetensors"):
        raise BenchError(f"--out must end in .safetensors, got '{out}'")
    if max_images < 0:
        raise BenchError(f"--max-images must be >= 0, got {max_images}")
    if split not in SPLITS:
        raise BenchError(f"unknown --split '{split}'; valid: {', '.join(SPLITS)}")
    check_model(model)
    dev = resolve_device(device)
    preset = preset or default_preset(dev)
    subset = {k: v for k, v in (overrides or {}).items() if k in ("train_subset", "subset_seed")}
    victim = resolve_protocol(preset, subset)  # the subset victims of this preset (and these overrides) train on
    proto = resolve_protocol(preset, dict(overrides or {}, model=model, train_subset=0))
    data = load_dataset(dataset, paths.data_root(data_root), paths.cache_dir(cache_dir), download)
    indices = pretrain_indices(len(data.train), victim_indices(data.train, victim), split)
    if len(indices) == 0:
        raise BenchError(f"--split {split} is empty: preset {preset} trains victims on the whole training set; "
                         "pretrain on another dataset (e.g. --dataset cifar100) or use --split all")
    if max_images > len(indices):
        raise BenchError(f"--max-images {max_images} is larger than the {split} split ({len(indices)} images)")
    if 0 < max_images < len(indices):
        indices = indices[stratified_subset(data.train.y[indices], max_images, seed)]
    state, metadata = train_backbone(data, indices, model, proto, seed, dev, split, victim.train_subset, on_epoch)
    save_backbone(Path(out), state, metadata)
    return PretrainResult(Path(out), metadata)
