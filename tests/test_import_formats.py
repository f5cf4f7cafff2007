"""`import` reads the formats poisons are published in (AR / TAP / APBench PNG folders, TAP's numpy export,
EM and REM noise, index files), trains on them, and refuses every malformed file before any training.

The clean set is a tiny generated image folder (96 train / 32 test images, 4 classes): a file of its
whole training split is cut to the 64 images the run trains on, as a published 50k file is for a preset.
Its JPEG twin (the same images saved at quality 75) stands in for the CIFAR-10 JPEG copy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

from benchmark.data import ImageSet, load_dataset
from benchmark.io import write_npz
from benchmark.poisoning import get_poisoned
from benchmark.runner import RunSpec, prepare_run

SMOKE = ["--preset", "smoke", "--train-subset", "64", "--test-subset", "32", "--epochs", "1"]
OVERRIDES = {"train_subset": 64, "test_subset": 32, "epochs": 1}


def write_folder(root: Path, x: torch.Tensor, y: torch.Tensor, fmt: str) -> None:
    for i in range(len(x)):
        folder = root / f"c{int(y[i])}"
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(x[i].permute(1, 2, 0).numpy())
        image.save(folder / f"{i:04d}.{fmt}", **({"quality": 75} if fmt == "jpg" else {}))


def smooth_images(n: int, seed: int) -> ImageSet:
    """Tiny 32 x 32 images with the spectrum of photos (low-frequency colour fields, faint grain; the
    class shifts the colour): JPEG changes them by a few grey levels, as it does CIFAR-10 (it changes
    images of i.i.d. noise by far more)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    low = torch.rand((n, 3, 4, 4), generator=gen) * 160 + 20 + torch.linspace(0, 60, 4)[y].view(n, 1, 1, 1)
    x = torch.nn.functional.interpolate(low, size=32, mode="bicubic", align_corners=False)
    x = (x + torch.randn(x.shape, generator=gen) * 4).clamp(0, 255).to(torch.uint8)
    return ImageSet(x, y, [f"c{i}" for i in range(4)])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Lossless and JPEG copies of one tiny data set, and its training split as loaded (rows in order)."""
    base = tmp_path_factory.mktemp("tiny")
    train, test = smooth_images(96, seed=1), smooth_images(32, seed=2)
    for name, fmt in (("lossless", "png"), ("jpeg", "jpg")):
        write_folder(base / name / "train", train.x, train.y, fmt)
        write_folder(base / name / "test", test.x, test.y, fmt)
    out = {"lossless": f"imagefolder:{base / 'lossless'}", "jpeg": f"imagefolder:{base / 'jpeg'}"}
    for key in ("lossless", "jpeg"):
        out[f"{key}_train"] = load_dataset(out[key], base, base / "cache").train
    return out


def pattern(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A made-up poison: a +/-3 grey-level pattern on ``rows``."""
    out = x.clone()
    delta = (torch.arange(x[0].numel()).view_as(x[0]) % 3 - 1) * 3
    out[rows] = (out[rows].to(torch.int16) + delta).clamp(0, 255).to(torch.uint8)
    return out


def imported(env: dict, dataset: str, params: dict) -> tuple[torch.Tensor, torch.Tensor, dict, torch.Tensor]:
    """The poisoned set the run trains on: images, poisoned positions, manifest, the run's rows in the split."""
    spec = RunSpec(dataset=dataset, poison="import", poison_params=params, preset="smoke", overrides=OVERRIDES,
                   data_root=str(env["data_root"]), cache_dir=str(env["cache"]), results=str(env["results"]))
    prep = prepare_run(spec)
    poisoned, manifest = get_poisoned(prep.train, prep.dataset_id, prep.poison, prep.cache, prep.device,
                                      split_rows=prep.split_rows)
    return poisoned.x, poisoned.poisoned_indices, manifest, prep.train_indices


def trains(env: dict, dataset: str, params: dict, capsys) -> dict:
    """``bench run`` on the import (smoke preset, one epoch); the finished record."""
    args = ["run", "--dataset", dataset, "--poison", "import", *SMOKE, "--no-baseline"]
    for k, v in params.items():
        args += ["--poison-param", f"{k}={v}"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    records = list(env["results"].glob("*import*.json"))
    assert len(records) == 1
    rec = json.loads(records[0].read_text())
    assert rec["status"] == "finished" and rec["training"]["steps"] >= 1
    return rec


def refused(env: dict, dataset: str, params: dict, capsys) -> str:
    """``bench run`` WITH its clean baseline fails with exit 2 and one line before anything trains: no
    record (not even the baseline's), no checkpoint, no poison artifact."""
    args = ["run", "--dataset", dataset, "--poison", "import", *SMOKE]
    for k, v in params.items():
        args += ["--poison-param", f"{k}={v}"]
    code, out, err = run_cli(args, capsys)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench: error: poison import: "), err
    assert not list(env["results"].rglob("*.json")) if env["results"].exists() else True
    cache = env["cache"]
    assert not [p for p in cache.rglob("*") if p.is_file() and "datasets" not in p.parts], "work was done"
    return lines[0]


# ------------------------------------------------------------------------------------ one test per format

def test_flat_png_folder_of_ar_tap_and_apbench(bench_env: dict, tiny: dict, capsys, tmp_path: Path) -> None:
    """AR's release zips, TAP's --save poison_dataset and APBench write <root>/data/<index>.png for every
    image of the split, labels from the clean set."""
    clean = tiny["lossless_train"]
    poison = pattern(clean.x, torch.arange(0, 96, 2))
    (tmp_path / "ar" / "data").mkdir(parents=True)
    for i in range(96):
        Image.fromarray(poison[i].permute(1, 2, 0).numpy()).save(tmp_path / "ar" / "data" / f"{i}.png")
    x, idx, manifest, rows = imported(bench_env, tiny["lossless"], {"path": str(tmp_path / "ar")})
    assert torch.equal(x, poison[rows])
    assert torch.equal(rows[idx], rows[rows % 2 == 0])
    assert manifest["info"]["format"] == "png-flat" and manifest["info"]["file_images"] == 96
    assert manifest["budget"]["linf_255"] == 3
    rec = trains(bench_env, tiny["lossless"], {"path": str(tmp_path / "ar" / "data")}, capsys)  # the data folder too
    assert rec["poison"]["num_poisoned"] == int((rows % 2 == 0).sum())


def test_tap_partial_poison_dataset_folder(bench_env: dict, tiny: dict, capsys, tmp_path: Path) -> None:
    """TAP's --save poison_dataset with a budget below 1 writes only the poisoned images: the rows
    without a file are clean."""
    clean = tiny["lossless_train"]
    poisoned_rows = torch.arange(0, 96, 5)
    poison = pattern(clean.x, poisoned_rows)
    (tmp_path / "tap" / "data").mkdir(parents=True)
    for i in poisoned_rows.tolist():
        Image.fromarray(poison[i].permute(1, 2, 0).numpy()).save(tmp_path / "tap" / "data" / f"{i}.png")
    x, idx, manifest, rows = imported(bench_env, tiny["lossless"], {"path": str(tmp_path / "tap")})
    assert torch.equal(x, poison[rows])
    assert manifest["info"]["declared_poisoned"] == int((rows % 5 == 0).sum()) == len(idx)
    trains(bench_env, tiny["lossless"], {"path": str(tmp_path / "tap")}, capsys)


def test_tap_numpy_export(bench_env: dict, tiny: dict, capsys, tmp_path: Path) -> None:
    """TAP's --save numpy: float64 N x H x W x 3 whole grey levels and float64 labels."""
    clean = tiny["lossless_train"]
    poison = pattern(clean.x, torch.arange(96))
    folder = tmp_path / "tap-numpy"
    folder.mkdir()
    np.save(folder / "poisoned_training_data.npy", poison.permute(0, 2, 3, 1).numpy().astype(np.float64))
    np.save(folder / "poisoned_training_labels.npy", clean.y.numpy().astype(np.float64))
    x, idx, manifest, rows = imported(bench_env, tiny["lossless"], {"path": str(folder)})
    assert torch.equal(x, poison[rows]) and len(idx) == 64 and manifest["info"]["format"] == "tap-numpy"
    trains(bench_env, tiny["lossless"], {"path": str(folder / "poisoned_training_data.npy")}, capsys)


def official_em(x: np.ndarray, noise: np.ndarray, low: float) -> np.ndarray:
    """EM's PoisonCIFAR10 arithmetic, written out in NumPy from its dataset.py: noise * 255 clamped to
    [low, 255] (float32), added to the float32 NHWC images, clipped, cast to uint8."""
    n255 = np.clip(noise.astype(np.float32) * np.float32(255), low, 255).transpose(0, 2, 3, 1)
    return np.clip(x.transpose(0, 2, 3, 1).astype(np.float32) + n255, 0, 255).astype(np.uint8).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("fmt, low", [("em", 0.0), ("em-signed", -255.0)])
def test_em_perturbation_pt_samplewise_and_classwise(bench_env: dict, tiny: dict, capsys, tmp_path: Path,
                                                     fmt: str, low: float) -> None:
    """EM publishes perturbation.pt, float [-8/255, 8/255], sample-wise [N, C, H, W] or class-wise
    [classes, C, H, W]; it is added to the clean set in EM's arithmetic."""
    clean = tiny["lossless_train"]
    gen = torch.Generator().manual_seed(0)
    noise = (torch.rand((96, 3, 32, 32), generator=gen) * 2 - 1) * 8 / 255
    torch.save(noise, tmp_path / "perturbation.pt")
    x, idx, manifest, rows = imported(bench_env, tiny["lossless"], {"path": str(tmp_path / "perturbation.pt"),
                                                                    "noise": fmt})
    expected = official_em(clean.x.numpy(), noise.numpy(), low)
    assert np.array_equal(x.numpy(), expected[rows.numpy()])
    assert manifest["budget"]["linf_255"] in (7, 8) and manifest["info"]["noise"] == "sample-wise"  # truncation
    if fmt == "em":  # negative noise is dropped: no pixel goes down
        assert bool((x.to(torch.int16) >= clean.x[rows].to(torch.int16)).all())
    classwise = noise[:4].permute(0, 2, 3, 1).contiguous()  # one per class, stored N x H x W x C
    torch.save(classwise, tmp_path / "classwise.pt")
    x, _, manifest, rows = imported(bench_env, tiny["lossless"], {"path": str(tmp_path / "classwise.pt"), "noise": fmt})
    expected = official_em(clean.x.numpy(), noise[:4].numpy()[clean.y.numpy()], low)
    assert np.array_equal(x.numpy(), expected[rows.numpy()]) and manifest["info"]["noise"] == "class-wise"
    trains(bench_env, tiny["lossless"], {"path": str(tmp_path / "classwise.pt"), "noise": fmt}, capsys)


def test_rem_noise_with_its_index_file(bench_env: dict, tiny: dict, capsys, tmp_path: Path) -> None:
    """REM / SEM publish int8 levels [N, 3, H, W] and partial poisons' index files (pickles, converted to
    .npy): the noise is added in int16 at the indexed rows only."""
    clean = tiny["lossless_train"]
    gen = torch.Generator().manual_seed(1)
    noise = torch.randint(-8, 9, (96, 3, 32, 32), generator=gen, dtype=torch.int8)
    chosen = torch.randperm(96, generator=gen)[:40]
    np.save(tmp_path / "rem-fin-def-noise.npy", noise.numpy())
    np.save(tmp_path / "idx-40.npy", chosen.numpy())
    params = {"path": str(tmp_path / "rem-fin-def-noise.npy"), "noise": "rem", "indices": str(tmp_path / "idx-40.npy")}
    x, idx, manifest, rows = imported(bench_env, tiny["lossless"], params)
    expected = clean.x.clone()
    expected[chosen] = (clean.x[chosen].to(torch.int16) + noise[chosen]).clamp(0, 255).to(torch.uint8)
    assert torch.equal(x, expected[rows])
    assert set(rows[idx].tolist()) <= set(chosen.tolist())
    assert manifest["info"]["declared_poisoned"] == int(torch.isin(rows, chosen).sum())
    trains(bench_env, tiny["lossless"], params, capsys)


def test_pickles_are_never_loaded_but_the_message_says_how_to_convert(bench_env: dict, tiny: dict, capsys,
                                                                       tmp_path: Path) -> None:
    (tmp_path / "rem-fin-def-noise.pkl").write_bytes(b"\x80\x04not loaded")
    msg = refused(bench_env, tiny["lossless"], {"path": str(tmp_path / "rem-fin-def-noise.pkl"), "noise": "rem"},
                  capsys)
    assert "never loaded" in msg and "numpy.save" in msg


# ------------------------------------------------------------------------------------ malformed files

def test_wrong_label_outside_the_presets_subset_is_named_by_file_row(bench_env: dict, tiny: dict, capsys,
                                                                     tmp_path: Path) -> None:
    clean = tiny["lossless_train"]
    prep = prepare_run(RunSpec(dataset=tiny["lossless"], preset="smoke", overrides=OVERRIDES,
                               data_root=str(bench_env["data_root"]), cache_dir=str(bench_env["cache"])))
    outside = sorted(set(range(96)) - set(prep.train_indices.tolist()))[3]
    y = clean.y.clone()
    y[outside] = (y[outside] + 1) % 4
    write_npz(tmp_path / "p.npz", {"x_train": clean.x.permute(0, 2, 3, 1).numpy(), "y_train": y.numpy(),
                                   "poisoned_indices": np.arange(0)})
    msg = refused(bench_env, tiny["lossless"], {"path": str(tmp_path / "p.npz")}, capsys)
    assert f"labels differ from the clean training set's in 1 of 96 file rows (first: file row {outside}," in msg


@pytest.mark.parametrize("case", ["outside-indices", "nan-row", "index-range", "png-header", "noise-rows",
                                  "noise-range"])
def test_malformed_files_fail_before_any_training(bench_env: dict, tiny: dict, capsys, tmp_path: Path,
                                                  case: str) -> None:
    clean = tiny["lossless_train"]
    row = 77  # a row of the whole split
    if case == "outside-indices":  # a partial npz that also changed one image it does not declare
        poison = pattern(clean.x, torch.tensor([3, 5, row]))
        write_npz(tmp_path / "p.npz", {"x_train": poison.permute(0, 2, 3, 1).numpy(), "y_train": clean.y.numpy(),
                                       "poisoned_indices": np.array([3, 5])})
        params, expect = {"path": str(tmp_path / "p.npz")}, f"changes 1 image(s) outside its poisoned_indices (first: file row {row})"
    elif case == "nan-row":
        data = clean.x.permute(0, 2, 3, 1).numpy().astype(np.float64)
        data[row, 4, 4, 1] = np.nan
        np.save(tmp_path / "poisoned_training_data.npy", data)
        params, expect = {"path": str(tmp_path / "poisoned_training_data.npy")}, f"file row {row} holds NaN or inf"
    elif case == "index-range":
        torch.save(torch.zeros(96, 3, 32, 32, dtype=torch.int8), tmp_path / "noise.pt")
        np.savetxt(tmp_path / "idx.txt", np.array([1, 2, 96]), fmt="%d")
        params = {"path": str(tmp_path / "noise.pt"), "noise": "rem", "indices": str(tmp_path / "idx.txt")}
        expect = "index file entry 2 is 96, not a row of the file (0..95)"
    elif case == "png-header":
        (tmp_path / "ar" / "data").mkdir(parents=True)
        for i in range(96):
            Image.fromarray(clean.x[i].permute(1, 2, 0).numpy()).save(
                tmp_path / "ar" / "data" / f"{i}.png", format="JPEG" if i == row else "PNG")
        params, expect = {"path": str(tmp_path / "ar")}, f"data/{row}.png is a JPEG RGB 32x32 image"
    elif case == "noise-rows":
        torch.save(torch.zeros(95, 3, 32, 32), tmp_path / "perturbation.pt")
        params, expect = {"path": str(tmp_path / "perturbation.pt"), "noise": "em"}, "holds noise for 95 rows"
    else:
        torch.save(torch.full((96, 3, 32, 32), 8.0), tmp_path / "perturbation.pt")
        params, expect = {"path": str(tmp_path / "perturbation.pt"), "noise": "em"}, "noise=rem"
    assert expect in refused(bench_env, tiny["lossless"], params, capsys)


# ------------------------------------------------------------------------------------ another copy of the data

def test_a_file_made_from_the_lossless_originals_against_the_jpeg_copy(bench_env: dict, tiny: dict, capsys,
                                                                        tmp_path: Path) -> None:
    """A partial poison made from the original (lossless) images, imported where the clean set is the
    JPEG copy: every row declared clean differs by a few grey levels. Said in one line, with what to do;
    clean_reference=other trains on it with the budget marked as not measured."""
    original = tiny["lossless_train"]
    poison = pattern(original.x, torch.arange(0, 96, 4))
    npz = tmp_path / "em-from-originals.npz"
    write_npz(npz, {"x_train": poison.permute(0, 2, 3, 1).numpy(), "y_train": original.y.numpy(),
                    "poisoned_indices": np.arange(0, 96, 4)})
    msg = refused(bench_env, tiny["jpeg"], {"path": str(npz)}, capsys)
    assert "made from another copy of the data set" in msg and "--data-root" in msg
    assert "clean_reference=other" in msg and "file row 1)" in msg
    # the same file against the copy it was made from is fine
    trains(bench_env, tiny["lossless"], {"path": str(npz)}, capsys)
    for f in bench_env["results"].glob("*.json"):
        f.unlink()
    rec = trains(bench_env, tiny["jpeg"], {"path": str(npz), "clean_reference": "other"}, capsys)
    assert "not_measured" in rec["poison"]["budget"] and "linf_255" not in rec["poison"]["budget"]
    assert rec["poison"]["num_poisoned"] == rec["poison"]["info"]["declared_poisoned"]
