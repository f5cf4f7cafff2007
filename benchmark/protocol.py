"""Protocol presets: the frozen training recipe a record is measured under.

``smoke`` is for tests (seconds), ``cpu`` is the default without a GPU (small CNN on a fixed 20k
CIFAR-10 subset, minutes on two cores), ``paper`` is the CUDA victim protocol (Sadasivan
et al., CVPR 2023; official code vinusankars/Convolution-based-Unlearnability, cifar10_train.py:
ResNet-18, 100 epochs, batch 512, SGD 0.1/0.9/5e-4, StepLR 40 x0.1, grad clip 5).
Every field can be overridden; records store the resolved values.

Numerics are protocol fields too (``amp``, ``tf32``, ``memory_format``), so runs of other numerics never
share a record id or a table. Deviation (named here and in ``bench list presets``): the ``paper`` preset
trains with bf16 autocast, TF32 and channels-last tensors, a speed choice for a GPU (about twice the
throughput of fp32); the official code trains in fp32 (with PyTorch's default TF32 convolutions on
Ampere and later GPUs). ``--protocol-param amp=off`` gives the official numerics as a protocol variant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from benchmark.errors import BenchError, did_you_mean
from benchmark.params import build_params, check_field, convert_value, param


@dataclass(frozen=True)
class Protocol:
    preset: str = param("cpu", "preset this protocol came from")
    model: str = param("small-cnn", "victim architecture (bench list models)")
    epochs: int = param(15, "training epochs", ge=1)
    batch_size: int = param(256, "training batch size", ge=1)
    lr: float = param(0.1, "peak learning rate (SGD)", gt=0.0)
    momentum: float = param(0.9, "SGD momentum", ge=0.0, lt=1.0)
    nesterov: bool = param(False, "Nesterov momentum")
    weight_decay: float = param(5e-4, "L2 weight decay", ge=0.0)
    schedule: str = param("onecycle", "learning-rate schedule",
                          choices=("onecycle", "step", "multistep", "cosine", "constant"))
    lr_step: int = param(40, "step schedule: decay every this many epochs", ge=1)
    lr_milestones: str = param("", "multistep schedule: comma-separated epochs at which the lr decays (MultiStepLR)")
    lr_gamma: float = param(0.1, "step and multistep schedules: decay factor", gt=0.0, le=1.0)
    warmup: float = param(0.25, "onecycle: fraction of steps spent warming up", ge=0.0, lt=1.0)
    grad_clip: float = param(0.0, "global gradient-norm clip (0 = off)", ge=0.0)
    label_smoothing: float = param(0.0, "label smoothing of the training targets", ge=0.0, lt=1.0)
    augment: bool = param(True, "random crop (pad 4) + horizontal flip, batched on the device")
    train_subset: int = param(0, "train on a fixed stratified subset of this many images (0 = all)", ge=0)
    test_subset: int = param(0, "evaluate on a fixed stratified subset of the test set (0 = all)", ge=0)
    subset_seed: int = param(0, "seed of the fixed subsets (part of the protocol, not the run seed)", ge=0)
    eval_batch_size: int = param(1000, "evaluation batch size", ge=1)
    amp: str = param("off", "bf16: training forward passes under bf16 autocast (GPUs; ~8x slower on "
                     "AVX2 CPUs); evaluation stays fp32", choices=("off", "bf16"))
    tf32: bool = param(False, "let fp32 convolutions and matmuls use TF32 tensor cores (GPUs from Ampere on; "
                       "no effect on a CPU); off = strict fp32")
    memory_format: str = param("auto", "tensor layout of the model and its training batches: channels_last, "
                               "contiguous (NCHW), or auto (the model channels_last on a CPU, ~2x faster "
                               "convolutions there; NCHW on a GPU)",
                               choices=("auto", "channels_last", "contiguous"))


#: fields added after records existed, left out of a record's protocol (so of its run id) while they hold
#: this value: old records keep their ids, and a record that sets one differs from them
ID_NEUTRAL_DEFAULTS: dict[str, Any] = {"amp": "off", "tf32": False, "memory_format": "auto", "lr_milestones": ""}


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(preset="smoke", model="small-cnn", epochs=3, batch_size=64, lr=0.05, schedule="onecycle",
                  train_subset=512, test_subset=500),
    "cpu": dict(preset="cpu", model="small-cnn", epochs=15, batch_size=256, lr=0.2, nesterov=True,
                schedule="onecycle", weight_decay=5e-4, train_subset=20000),
    "paper": dict(preset="paper", model="resnet18", epochs=100, batch_size=512, lr=0.1, momentum=0.9,
                  weight_decay=5e-4, schedule="step", lr_step=40, lr_gamma=0.1, grad_clip=5.0, warmup=0.0,
                  amp="bf16", tf32=True, memory_format="channels_last"),
}

PRESET_HELP = {
    "smoke": "tests: 512 train / 500 test images, 3 epochs, seconds",
    "cpu": "default without a GPU: small-cnn, fixed 20k CIFAR-10 subset, 15 epochs one-cycle, minutes on 2 cores",
    "paper": "default with a GPU: CUDA official protocol, ResNet-18, full data, 100 epochs, bs 512, StepLR 40; "
             "numerics bf16 autocast + TF32 + channels_last (the official code: fp32)",
}


def resolve_protocol(preset: str, overrides: Mapping[str, Any] | None = None) -> Protocol:
    """Preset values plus validated overrides (``None`` values are ignored)."""
    if preset not in PRESETS:
        raise BenchError(f"unknown preset '{preset}': {did_you_mean(preset, sorted(PRESETS))}")
    values = dict(PRESETS[preset])
    fields = {f.name: f for f in dataclasses.fields(Protocol)}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in fields:
            raise BenchError(f"unknown protocol option '{key}'; valid: {', '.join(fields)}")
        values[key] = convert_value("protocol", key, value, fields[key].default)  # "4000" -> 4000
    proto = Protocol(**values)
    for name, f in fields.items():
        check_field("protocol", f, getattr(proto, name))
    if proto.schedule == "multistep":
        milestones(proto)
    return proto


def milestones(proto: Protocol) -> tuple[int, ...]:
    """The multistep schedule's decay epochs (``lr_milestones``), increasing; one-line error otherwise."""
    try:
        epochs = tuple(int(e) for e in proto.lr_milestones.split(",") if e.strip())
    except ValueError:
        epochs = ()
    if not epochs or any(e < 1 for e in epochs) or list(epochs) != sorted(set(epochs)):
        raise BenchError(f"protocol: schedule multistep needs lr_milestones, increasing epochs >= 1 separated by "
                         f"commas (e.g. 14,25,35), got '{proto.lr_milestones}'")
    return epochs


def resolve_overrides(raw: Mapping[str, Any], owner: str = "protocol") -> dict[str, Any]:
    """Protocol overrides converted to their fields' types and checked (CLI values arrive as strings),
    without a preset: a sweep validates them before it knows which preset its cells use."""
    typed = build_params(Protocol, raw, owner=owner)
    return {k: getattr(typed, k) for k in raw}


def check_subset_sizes(overrides: Mapping[str, Any], train_size: int, test_size: int) -> None:
    """A subset asked for must fit the dataset (a preset's own subset takes all of a smaller set, but
    ``--train-subset 100000`` on 50,000 images would record a subset that was never drawn)."""
    for key, size, split in (("train_subset", train_size, "training"), ("test_subset", test_size, "test")):
        asked = overrides.get(key)
        if asked is not None and int(asked) > size:
            raise BenchError(f"--{key.replace('_', '-')} {asked} is larger than the {split} set ({size} images)")


def protocol_dict(proto: Protocol) -> dict[str, Any]:
    """The protocol as a record stores it (see ``ID_NEUTRAL_DEFAULTS``)."""
    out = dataclasses.asdict(proto)
    for key, neutral in ID_NEUTRAL_DEFAULTS.items():
        if out.get(key) == neutral:
            del out[key]
    return out


def full_protocol(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A record's stored protocol with the id-neutral fields it leaves out filled in."""
    return {**ID_NEUTRAL_DEFAULTS, **stored}
