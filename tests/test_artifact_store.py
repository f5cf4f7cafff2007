"""Poison artifacts above the store threshold keep their images in a memory-mapped ``.npy`` (no second
copy when generated, written or loaded): same bytes and the same run numbers as the npz path, tampering still
caught, and ``bench poison --out`` still writes one self-contained npz."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_images, mapped_files

from benchmark.errors import BenchError
from benchmark.io import read_npz
from benchmark.poisoning import (
    build_poison,
    export_artifact,
    get_poisoned,
    images_path,
    poisoned_digest,
)
from benchmark.runner import RunSpec, execute, prepare_run

DATASET_ID = {"name": "tiny", "source": "generated", "digest": "0", "train_subset": 0, "subset_seed": 0}


def _poison(cache: Path, ratio: float = 1.0):
    train = make_images(96, num_classes=4, seed=1)
    spec = build_poison("cuda", ratio=ratio)
    return train, get_poisoned(train, DATASET_ID, spec, cache, torch.device("cpu"))


def test_mapped_artifact_has_the_npz_bytes_and_loads_as_a_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, (plain, manifest) = _poison(tmp_path / "npz")
    assert "x_train" in read_npz(Path(manifest["artifact"]))
    monkeypatch.setenv("BENCH_MMAP_BYTES", "0")
    _, (fresh, manifest) = _poison(tmp_path / "map")
    npz = Path(manifest["artifact"])
    assert images_path(npz).is_file() and "x_train" not in read_npz(npz)
    assert str(images_path(npz)) in mapped_files(fresh.x)  # CUDA wrote its output straight into the file
    assert not list(npz.parent.glob("*.part.npy"))
    _, (cached, again) = _poison(tmp_path / "map")
    assert again["cached"] and torch.equal(fresh.x, plain.x) and torch.equal(cached.x, plain.x)
    assert str(images_path(npz)) in mapped_files(cached.x)  # the loaded images are the file's pages



def test_tampering_with_a_mapped_artifact_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_MMAP_BYTES", "0")
    train, (poisoned, manifest) = _poison(tmp_path, ratio=0.5)
    clean_rows = sorted(set(range(len(train))) - set(poisoned.poisoned_indices.tolist()))
    path = images_path(Path(manifest["artifact"]))
    x = np.load(path, mmap_mode="r+")
    x[clean_rows[0], 0, 0, 0] ^= 0xFF  # an image the file says it did not poison
    x.flush()
    del x
    with pytest.raises(BenchError, match="changed 1 image"):
        _poison(tmp_path, ratio=0.5)


def test_the_digest_names_the_bytes_trained_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, (poisoned, manifest) = _poison(tmp_path)
    assert manifest["digest"] == poisoned_digest(poisoned)
    _, (_, again) = _poison(tmp_path)
    assert again["cached"] and again["digest"] == manifest["digest"]
    train = make_images(96, num_classes=4, seed=1)
    _, other_key = get_poisoned(train, DATASET_ID, build_poison("cuda", key=5), tmp_path, torch.device("cpu"))
    assert other_key["digest"] != manifest["digest"]
    monkeypatch.setenv("BENCH_MMAP_BYTES", "0")
    _, (mapped, _m) = _poison(tmp_path / "map")
    x = np.load(images_path(Path(_m["artifact"])), mmap_mode="r+")
    x[int(mapped.poisoned_indices[0]), 0, 0, 0] ^= 1  # one poisoned pixel, one grey level: still a valid file
    x.flush()
    del x
    _, (_, edited) = _poison(tmp_path / "map")
    assert edited["cached"] and edited["digest"] != manifest["digest"]


def test_export_of_a_mapped_artifact_is_one_npz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_MMAP_BYTES", "0")
    _, (poisoned, manifest) = _poison(tmp_path)
    out = export_artifact(Path(manifest["artifact"]), manifest, tmp_path / "out.npz")
    arrays = read_npz(tmp_path / "out.npz", required=("x_train", "y_train", "poisoned_indices"))
    assert np.array_equal(arrays["x_train"], poisoned.x.permute(0, 2, 3, 1).numpy())
    assert np.array_equal(arrays["y_train"], poisoned.y.numpy()) and json.loads(out.read_text())["poison"]["name"] == "cuda"


def test_a_run_on_a_mapped_artifact_gives_the_same_numbers(run_env: dict, monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    def run(cache: Path, results: Path) -> dict:
        spec = RunSpec(poison="cuda", preset="smoke", overrides={"epochs": 1, "train_subset": 128, "test_subset": 100},
                       data_root=str(run_env["data_root"]), cache_dir=str(cache), results=str(results))
        return execute(prepare_run(spec))

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "datasets").symlink_to(run_env["cache"] / "datasets", target_is_directory=True)
    default = run(tmp_path / "a", tmp_path / "ra")
    monkeypatch.setenv("BENCH_MMAP_BYTES", "0")
    generated = run(tmp_path / "b", tmp_path / "rb")  # writes the mapped artifact
    cached = run(tmp_path / "b", tmp_path / "rc")  # trains on the memory map
    assert cached["timings"]["poison_cached"] and list((tmp_path / "b" / "poisons").glob("*.x.npy"))
    for rec in (generated, cached):
        assert rec["run_id"] == default["run_id"]
        assert rec["metrics"]["per_epoch"][0]["train_loss"] == default["metrics"]["per_epoch"][0]["train_loss"]
        assert rec["metrics"]["test_acc"] == default["metrics"]["test_acc"]
        assert rec["poison"]["digest"] == default["poison"]["digest"]  # same bytes, whichever way they were stored
    assert len(default["poison"]["digest"]) == 16
