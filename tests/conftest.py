"""Shared fixtures: the offline data root, a persistent decode cache, tiny generated image sets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmark.data import ImageSet
from benchmark.records import validate_record
from benchmark.runner import RunSpec, execute, prepare_run

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
#: the dataset id of the tiny generated training sets the poison-cache tests store artifacts under
TINY_DATASET_ID = {"name": "tiny", "source": "generated", "train_size": 40, "train_subset": 0, "subset_seed": 0}


def _find_data_root() -> Path | None:
    env = os.environ.get("BENCH_DATA_ROOT")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data", REPO / "data"]:
        if (cand / "cifar10-jpeg" / "cifar10-jpeg.tar.gz").is_file():
            return cand.resolve()
    return None


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The offline copies (CIFAR-10 JPEG, Fashion-MNIST): ../shared/data or $BENCH_DATA_ROOT."""
    root = _find_data_root()
    if root is None:
        pytest.skip("offline data sets not found: set BENCH_DATA_ROOT to the shared/data folder")
    return root


@pytest.fixture(scope="session")
def dataset_cache() -> Path:
    """Decoded-dataset cache kept across test sessions (decoding CIFAR-10 once takes ~10 s)."""
    path = Path(os.environ.get("BENCH_TEST_CACHE", REPO / ".bench-cache" / "tests"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def cache_dir(tmp_path: Path, dataset_cache: Path) -> Path:
    """A fresh cache dir per test whose datasets/ sub-folder links to the shared decode cache."""
    cache = tmp_path / "cache"
    cache.mkdir()
    shared = dataset_cache / "datasets"
    shared.mkdir(parents=True, exist_ok=True)
    (cache / "datasets").symlink_to(shared, target_is_directory=True)
    return cache


@pytest.fixture
def bench_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data_root: Path, cache_dir: Path) -> dict[str, Path]:
    """Environment for CLI runs: data root, per-test cache and results folder."""
    results = tmp_path / "results"
    monkeypatch.setenv("BENCH_DATA_ROOT", str(data_root))
    monkeypatch.setenv("BENCH_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("BENCH_RESULTS", str(results))
    return {"data_root": data_root, "cache": cache_dir, "results": results}


@pytest.fixture(scope="module")
def run_env(tmp_path_factory: pytest.TempPathFactory, data_root: Path, dataset_cache: Path) -> dict[str, Path]:
    """Data root, cache (sharing the decode cache) and results folder for the end-to-end runs of one
    test module."""
    base = tmp_path_factory.mktemp("runs")
    cache = base / "cache"
    cache.mkdir()
    shared = dataset_cache / "datasets"
    shared.mkdir(parents=True, exist_ok=True)
    (cache / "datasets").symlink_to(shared, target_is_directory=True)
    return {"data_root": data_root, "cache": cache, "results": base / "results"}


#: a smoke-preset run short enough for the default test suite: one epoch on 128 poisoned images
SMOKE_OVERRIDES = {"epochs": 1, "train_subset": 128, "test_subset": 100}


def smoke_run(env: dict[str, Path], defense: str, params: dict[str, str] | None = None,
              overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A real end-to-end run (smoke preset, CUDA poison) of ``defense``; returns its record after
    checking that it is a valid finished record of that defense."""
    spec = RunSpec(preset="smoke", poison="cuda", defense=defense, defense_params=params or {},
                   overrides={**SMOKE_OVERRIDES, **(overrides or {})}, data_root=str(env["data_root"]),
                   cache_dir=str(env["cache"]), results=str(env["results"]))
    rec = execute(prepare_run(spec))
    assert validate_record(rec) is None and rec["status"] == "finished"
    assert rec["config"]["defense"]["name"] == defense
    assert isinstance(rec["metrics"]["test_acc"], float) and 0 <= rec["metrics"]["test_acc"] <= 100
    return rec


def make_images(n: int = 64, num_classes: int = 4, size: int = 16, channels: int = 3, seed: int = 0) -> ImageSet:
    """Tiny, learnable images: each class has its own mean colour plus noise."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    base = torch.linspace(40, 215, num_classes)[y].view(n, 1, 1, 1)
    noise = torch.randn(n, channels, size, size, generator=gen) * 25
    x = (base + noise).clamp(0, 255).to(torch.uint8)
    return ImageSet(x, y.long(), [f"c{i}" for i in range(num_classes)])


@pytest.fixture
def tiny_images() -> ImageSet:
    return make_images()


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run ``bench`` in-process: (exit code, stdout, stderr)."""
    from benchmark.cli import main

    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def shifted_images(n: int = 48, classes: int = 4, size: int = 16, low: int = 0, high: int = 256, seed: int = 0) -> ImageSet:
    """Tiny random images whose class is carried by a colour shift (learnable in a few steps)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randint(low, high, (n, 3, size, size), generator=gen)
    shift = (torch.linspace(-20, 20, classes)[y]).view(n, 1, 1, 1)
    x = (x + shift).clamp(low, high - 1).to(torch.uint8)
    return ImageSet(x, y.long(), [f"c{i}" for i in range(classes)])


def generate_poison(name: str, train: ImageSet, params: dict | None = None, key: int = 3, ratio: float = 1.0,
                    workdir: Path | None = None, progress=None):
    """Run poison ``name`` with its smoke recipe on ``train``; returns (poison, PoisonedSet)."""
    from attacks.base import PoisonContext
    from benchmark.poisoning import build_poison

    spec = build_poison(name, params or {}, key=key, ratio=ratio, preset="smoke")
    ctx = PoisonContext(key=key, ratio=ratio, preset="smoke", workdir=workdir, progress=progress,
                        num_classes=train.num_classes)
    return spec.poison, spec.poison.generate(train, ctx)


def mapped_files(t: torch.Tensor) -> list[str]:
    """The files whose memory mapping holds the tensor's first byte (from /proc/self/maps)."""
    ptr, names = t.data_ptr(), []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        lo, hi = (int(v, 16) for v in parts[0].split("-"))
        if lo <= ptr < hi and len(parts) >= 6:
            names.append(parts[5])
    return names


def interrupt_at(stop: int):
    """A generation progress callback that interrupts the generation after step ``stop`` (resume tests)."""

    def progress(step: int, total: int, info: dict) -> None:
        if step == stop:
            raise KeyboardInterrupt

    return progress


def whole_and_resumed(generate, root: Path) -> tuple[Any, Any, list[int]]:
    """One generation run through, and one interrupted after step 2 then resumed in its work folder.

    ``generate(workdir, progress)`` makes the poison; returns both poisons and the steps the resumed
    session reported (a resume continues from the checkpoint, it does not start over).
    """
    _, whole = generate(root / "whole", None)
    work = root / "resumed"
    with pytest.raises(KeyboardInterrupt):
        generate(work, interrupt_at(2))
    assert (work / "state.pt").exists()
    steps: list[int] = []
    _, resumed = generate(work, lambda step, total, info: steps.append(step))
    return whole, resumed, steps
