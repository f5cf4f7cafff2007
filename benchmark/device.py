"""The training device, the default preset it implies, and seeding: needed by runs, pretraining and
plugins alike, so it depends on nothing else in the spine."""

from __future__ import annotations

import re

import torch

from benchmark.errors import BenchError

#: the devices runs can train on (torch knows more types, such as mps or meta, that the trainer does not support)
DEVICE_NAMES = re.compile(r"auto|cpu|cuda(:\d+)?")


def resolve_device(name: str = "auto") -> torch.device:
    if not DEVICE_NAMES.fullmatch(name):
        raise BenchError(f"unknown device '{name}'; valid: auto, cpu, cuda, cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"device '{name}' requested but no CUDA GPU is available; use --device cpu")
    return dev


def default_preset(device: torch.device) -> str:
    return "paper" if device.type == "cuda" else "cpu"


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch and pick deterministic cuDNN kernels (no autotuning), so a GPU run repeats too; on
    the CPU every kernel used here is deterministic already."""
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed * 7919 + 1)
