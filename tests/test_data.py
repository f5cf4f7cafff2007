"""Dataset loading: offline CIFAR-10 JPEG copy, Fashion-MNIST IDX, generated image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.data import CIFAR10_CLASSES, load_dataset, stratified_subset
from benchmark.errors import BenchError


def test_cifar10_offline_copy(data_root: Path, cache_dir: Path) -> None:
    ds = load_dataset("cifar10", data_root, cache_dir)
    assert ds.source == "cifar10-jpeg"
    assert ds.train.x.shape == (50000, 3, 32, 32) and ds.train.x.dtype == torch.uint8
    assert ds.test.x.shape == (10000, 3, 32, 32)
    assert ds.train.classes == CIFAR10_CLASSES  # alphabetical folder order = standard label order
    assert torch.bincount(ds.train.y).tolist() == [5000] * 10
    assert torch.bincount(ds.test.y).tolist() == [1000] * 10
    assert any((cache_dir / "datasets").glob("cifar10-jpeg-*.npz"))  # decoded once, cached
    again = load_dataset("cifar10", data_root, cache_dir)
    assert torch.equal(again.train.x[:100], ds.train.x[:100])


def test_fashion_mnist_offline(data_root: Path, cache_dir: Path) -> None:
    ds = load_dataset("fashion-mnist", data_root, cache_dir)
    assert ds.train.x.shape == (60000, 1, 28, 28)
    assert ds.test.x.shape == (10000, 1, 28, 28)
    assert ds.num_classes == 10 and ds.source == "fashion-mnist-idx"


def _write_folder(root: Path, classes: dict[str, int], size: int = 8, mode: str = "RGB") -> None:
    rng = np.random.default_rng(0)
    for cls, count in classes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / cls / f"{i}.png")


def test_imagefolder_with_train_test(tmp_path: Path, cache_dir: Path) -> None:
    _write_folder(tmp_path / "d" / "train", {"b_cat": 4, "a_dog": 3})
    _write_folder(tmp_path / "d" / "test", {"b_cat": 2, "a_dog": 1})
    ds = load_dataset(f"imagefolder:{tmp_path / 'd'}", tmp_path, cache_dir)
    assert ds.train.classes == ["a_dog", "b_cat"]  # sorted names = labels
    assert ds.train.y.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert ds.test.x.shape == (3, 3, 8, 8)
    # pixel values round-trip exactly (PNG is lossless)
    first = np.asarray(Image.open(tmp_path / "d" / "train" / "a_dog" / "0.png")).transpose(2, 0, 1)
    assert np.array_equal(ds.train.x[0].numpy(), first)


def test_imagefolder_flat_is_split_by_seeded_holdout(tmp_path: Path, cache_dir: Path) -> None:
    _write_folder(tmp_path / "flat", {"x": 10, "y": 10}, mode="L")
    ds = load_dataset(f"imagefolder:{tmp_path / 'flat'}", tmp_path, cache_dir)
    assert len(ds.train) == 16 and len(ds.test) == 4
    assert ds.train.x.shape[1] == 1  # grey stays one channel
    again = load_dataset(f"imagefolder:{tmp_path / 'flat'}", tmp_path, cache_dir / "other")
    assert torch.equal(again.test.x, ds.test.x)  # same split every time


def test_imagefolder_unreadable_image_names_file(tmp_path: Path, cache_dir: Path) -> None:
    _write_folder(tmp_path / "bad", {"a": 3, "b": 3})
    broken = tmp_path / "bad" / "b" / "1.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(BenchError, match=r"1\.png"):
        load_dataset(f"imagefolder:{tmp_path / 'bad'}", tmp_path, cache_dir)


def test_missing_dataset_says_how_to_get_it(tmp_path: Path, cache_dir: Path) -> None:
    with pytest.raises(BenchError, match="--download"):
        load_dataset("cifar10", tmp_path, cache_dir)
    with pytest.raises(BenchError, match="unknown dataset"):
        load_dataset("cifar11", tmp_path, cache_dir)


def test_stratified_subset_is_fixed_and_balanced() -> None:
    y = torch.arange(1000) % 10
    a = stratified_subset(y, 200, seed=0)
    b = stratified_subset(y, 200, seed=0)
    assert torch.equal(a, b) and len(a) == 200
    assert torch.bincount(y[a]).tolist() == [20] * 10
    assert not torch.equal(a, stratified_subset(y, 200, seed=1))


def test_edited_image_folder_gets_a_new_digest_and_poison_cache_id(tmp_path: Path, cache_dir: Path) -> None:
    """A poison artifact is cached by the content of the training set, not only its name and size."""
    import os

    from benchmark.data import poison_dataset_id
    from benchmark.poisoning import artifact_paths, build_poison

    _write_folder(tmp_path / "d" / "train", {"a": 3, "b": 3})
    _write_folder(tmp_path / "d" / "test", {"a": 1, "b": 1})
    spec, name = build_poison("cuda"), f"imagefolder:{tmp_path / 'd'}"
    first = load_dataset(name, tmp_path, cache_dir)
    assert len(first.digest) == 16 and load_dataset(name, tmp_path, cache_dir).digest == first.digest
    path1 = artifact_paths(cache_dir, poison_dataset_id(first, first.train, 0, 0), spec)[0]
    edited = tmp_path / "d" / "train" / "a" / "0.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(edited)
    os.utime(edited, (1, 1))  # a different mtime, as an edit would give
    second = load_dataset(name, tmp_path, cache_dir)
    assert second.digest != first.digest and len(second.train) == len(first.train)
    assert artifact_paths(cache_dir, poison_dataset_id(second, second.train, 0, 0), spec)[0] != path1
