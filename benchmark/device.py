"""The training device, the default preset it implies, and seeding: needed by runs, pretraining and
plugins alike, so it depends on nothing else in the spine."""

from __future__ import annotations

import os
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


def deterministic_kernels() -> bool:
    """Whether runs ask cuDNN for deterministic kernels: yes unless ``BENCH_DETERMINISTIC=0``, which lets
    ``cudnn.benchmark`` autotune convolutions (faster on GPUs; a re-run may then differ in the last digits).
    The CPU kernels used here are deterministic either way. Recorded in every run's environment."""
    return os.environ.get("BENCH_DETERMINISTIC", "1").strip().lower() not in ("0", "false", "no", "off")


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch and set cuDNN's kernel choice (:func:`deterministic_kernels`); the run's generator."""
    exact = deterministic_kernels()
    torch.backends.cudnn.deterministic = exact
    torch.backends.cudnn.benchmark = not exact
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed * 7919 + 1)
