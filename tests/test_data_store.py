"""The memory-mapped dataset store (benchmark/store.py) against the in-memory npz path: same digest,
same bytes, same batches, same training numbers; corrupt stores are rebuilt; the cache file is never
written through the tensors."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import mapped_files
from PIL import Image

from attacks.base import PoisonContext
from benchmark import store
from benchmark.data import Dataset, load_dataset
from benchmark.errors import BenchError
from benchmark.poisoning import build_poison
from benchmark.runner import RunSpec, execute, prepare_run
from benchmark.train import batch_bounds

PER_CLASS = 12


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three class folders of 16x16 JPEGs, each class a mean colour plus noise (learnable)."""
    root = tmp_path_factory.mktemp("store") / "imgs"
    rng = np.random.default_rng(0)
    for c, mean in enumerate((60, 128, 196)):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(PER_CLASS):
            img = np.clip(mean + rng.normal(0, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"c{c}" / f"{i:02d}.jpg", quality=90)
    return root


def _load(folder: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, threshold: int | None) -> Dataset:
    if threshold is None:
        monkeypatch.delenv(store.MMAP_ENV, raising=False)
    else:
        monkeypatch.setenv(store.MMAP_ENV, str(threshold))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's warning about a non-writable NumPy array
        return load_dataset(f"imagefolder:{folder}", folder, cache)



def test_digest_in_chunks_equals_the_whole_array_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(1).integers(0, 256, (37, 3, 5, 7), dtype=np.uint8)
    y = np.arange(37) % 4
    whole = hashlib.sha256(x.tobytes() + y.astype(np.int64).tobytes()).hexdigest()[:16]
    monkeypatch.setattr(store, "CHUNK_BYTES", 3 * 5 * 7 * 4)  # 4 images per chunk: 10 chunks
    assert bytes(store.train_digest(x, y)).decode() == whole
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r", allow_pickle=False)
    assert bytes(store.train_digest(mapped, y)).decode() == whole
    assert bytes(store.train_digest(x, y[::-1].copy())).decode() != whole  # labels count too


def test_store_has_the_in_memory_bytes_digest_and_batches(folder: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    mem = _load(folder, tmp_path / "mem", monkeypatch, None)
    assert list((tmp_path / "mem" / "datasets").glob("*.npz")) and not list((tmp_path / "mem" / "datasets").glob("*.mmap"))
    monkeypatch.setattr(store, "CHUNK_BYTES", 16 * 16 * 3 * 5)  # decoded, written and hashed 5 images at a time
    mapped = _load(folder, tmp_path / "mm", monkeypatch, 0)
    (folder_store,) = (tmp_path / "mm" / "datasets").glob("*.mmap")
    assert not list((tmp_path / "mm" / "datasets").glob("*.npz"))
    assert str(folder_store / "x_train.npy") in mapped_files(mapped.train.x)  # the tensor is the file's pages
    assert str(folder_store / "x_test.npy") in mapped_files(mapped.test.x)
    assert mem.digest == mapped.digest and len(mem.digest) == 16
    assert mem.train.classes == mapped.train.classes == ["c0", "c1", "c2"]
    for a, b in ((mem.train, mapped.train), (mem.test, mapped.test)):
        assert a.x.shape == b.x.shape and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    again = _load(folder, tmp_path / "mm", monkeypatch, None)  # an existing store is used whatever the threshold
    assert again.digest == mem.digest and str(folder_store / "x_train.npy") in mapped_files(again.train.x)
    idx = torch.tensor([3, 0, 17, 9])
    sub = mapped.train.subset(idx)
    assert torch.equal(sub.x, mem.train.subset(idx).x) and str(folder_store / "x_train.npy") not in mapped_files(sub.x)
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    perm_a, perm_b = torch.randperm(len(mem.train), generator=gen_a), torch.randperm(len(mapped.train), generator=gen_b)
    for lo, hi in batch_bounds(len(mem.train), 8):  # the trainer's gather: train.x[perm[lo:hi]]
        assert torch.equal(mem.train.x[perm_a[lo:hi]], mapped.train.x[perm_b[lo:hi]])


def test_writes_through_the_tensor_never_reach_the_store(folder: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    first = _load(folder, tmp_path / "c", monkeypatch, 0)
    before = first.train.x[0].clone()
    first.train.x[0] += 1  # copy-on-write: this process's private page, not the cache file
    assert not torch.equal(first.train.x[0], before)
    assert torch.equal(_load(folder, tmp_path / "c", monkeypatch, 0).train.x[0], before)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no-arrays"])
def test_a_corrupt_or_incomplete_store_is_rebuilt(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  damage: str) -> None:
    good = _load(folder, tmp_path / "c", monkeypatch, 0)
    # damaging a file in place changes a live map (the store itself only ever replaces files by rename)
    digest, expected = good.digest, good.train.x.clone()
    del good
    (folder_store,) = (tmp_path / "c" / "datasets").glob("*.mmap")
    x_file = folder_store / "x_train.npy"
    if damage == "truncate":
        x_file.write_bytes(x_file.read_bytes()[:-100])
    elif damage == "garbage":
        x_file.write_bytes(b"not an npy file at all")
    else:
        (folder_store / "arrays.npz").unlink()  # a build killed before its last file
    rebuilt = _load(folder, tmp_path / "c", monkeypatch, 0)
    assert rebuilt.digest == digest and torch.equal(rebuilt.train.x, expected)
    assert x_file.stat().st_size == np.load(x_file, mmap_mode="r").offset + expected.numel()


def test_a_bad_threshold_is_a_one_line_error(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(store.MMAP_ENV, "2GB")
    with pytest.raises(BenchError, match=r"BENCH_MMAP_BYTES must be a whole number of bytes"):
        load_dataset(f"imagefolder:{folder}", folder, tmp_path)
    assert not (tmp_path / "datasets").exists()  # refused before any decoding


def test_poisons_read_the_store_and_return_new_tensors(folder: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    mem = _load(folder, tmp_path / "mem", monkeypatch, None)
    mapped = _load(folder, tmp_path / "mm", monkeypatch, 0)
    clean = mapped.train.x.clone()
    outputs = []
    for data in (mem, mapped):
        poison = build_poison("cuda", key=3, preset="smoke").poison
        outputs.append(poison.generate(data.train, PoisonContext(key=3, ratio=1.0, preset="smoke",
                                                                 num_classes=data.num_classes)).x)
    assert torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[1], clean)
    assert not any(f.endswith("x_train.npy") for f in mapped_files(outputs[1]))
    assert torch.equal(mapped.train.x, clean)  # the clean set is untouched


def test_training_on_the_store_gives_the_in_memory_numbers(folder: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A real run (1 epoch of the smoke protocol on the full folder, no poison) trains on the
    memory-mapped set and records the same numbers as on the in-memory one."""
    recs = {}
    for label, threshold in (("mem", None), ("mm", 0)):
        if threshold is None:
            monkeypatch.delenv(store.MMAP_ENV, raising=False)
        else:
            monkeypatch.setenv(store.MMAP_ENV, str(threshold))
        spec = RunSpec(dataset=f"imagefolder:{folder}", poison="none", preset="smoke", device="cpu",
                       overrides={"epochs": 1, "batch_size": 8, "train_subset": 0, "test_subset": 0},
                       cache_dir=str(tmp_path / label / "cache"), results=str(tmp_path / label / "results"))
        prep = prepare_run(spec)
        assert any(f.endswith("x_train.npy") for f in mapped_files(prep.train.x)) == (threshold == 0)
        execute(prep)
        recs[label] = json.loads(prep.record_path.read_text())
    a, b = recs["mem"], recs["mm"]
    assert a["run_id"] == b["run_id"] and a["status"] == b["status"] == "finished"
    assert [{k: v for k, v in e.items() if k != "seconds"} for e in a["metrics"]["per_epoch"]] == \
        [{k: v for k, v in e.items() if k != "seconds"} for e in b["metrics"]["per_epoch"]]
    assert a["metrics"]["test_acc"] == b["metrics"]["test_acc"] and a["metrics"]["train_acc"] == b["metrics"]["train_acc"]
    assert a["training"]["images"] == b["training"]["images"] == len(load_dataset(f"imagefolder:{folder}", folder,
                                                                                   tmp_path / "mm" / "cache").train)
