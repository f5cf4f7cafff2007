"""`import`: a poisoned set made elsewhere round-trips bit-exactly and every malformed file is refused."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_images, run_cli

from attacks.base import PoisonContext, SplitRows
from benchmark.data import Dataset, ImageSet
from benchmark.errors import BenchError
from benchmark.io import read_npz, write_npz
from benchmark.poisoning import artifact_id, build_poison, get_poisoned
from benchmark.runner import RunSpec, prepare_run


def poisoned_copy(clean: ImageSet, every: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A made-up poison: every ``every``-th image gets a +/-3 pattern; returns (images, changed indices)."""
    x = clean.x.clone()
    idx = torch.arange(0, len(clean), every)
    pattern = (torch.arange(x[0].numel()).view_as(x[0]) % 3 - 1) * 3
    x[idx] = (x[idx].to(torch.int16) + pattern).clamp(0, 255).to(torch.uint8)
    return x, idx


def export_npz(path: Path, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> Path:
    write_npz(path, {"x_train": x.permute(0, 2, 3, 1).contiguous().numpy(), "y_train": y.numpy().astype(np.int64),
                     "poisoned_indices": idx.numpy().astype(np.int64)})
    return path


def run_import(path: Path, clean: ImageSet, ratio: float = 1.0, **params):
    spec = build_poison("import", {"path": str(path), **params}, ratio=ratio)
    return spec, spec.poison.generate(clean, PoisonContext(ratio=ratio, num_classes=clean.num_classes))


def refused(path: Path, clean: ImageSet | None = None) -> str:
    """The one-line error for ``path`` (at build time, or when checked against ``clean``)."""
    with pytest.raises(BenchError) as info:
        run_import(path, clean if clean is not None else make_images(n=24, num_classes=4, size=8))
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and msg.startswith("poison import: ")
    return msg


def test_import_roundtrips_a_bench_poison_export_bit_exactly(bench_env: dict, capsys, tmp_path: Path) -> None:
    out = tmp_path / "ops.npz"
    code, _, err = run_cli(["poison", "--poison", "ops", "--preset", "smoke", "--train-subset", "512",
                            "--out", str(out)], capsys)
    assert code == 0, err
    exported = read_npz(out)
    spec = RunSpec(poison="import", poison_params={"path": str(out), "name": "ops-export"}, preset="smoke",
                   data_root=str(bench_env["data_root"]), cache_dir=str(bench_env["cache"]),
                   results=str(bench_env["results"]))
    prep = prepare_run(spec)
    poisoned, manifest = get_poisoned(prep.train, prep.dataset_id, prep.poison, prep.cache, prep.device)
    assert np.array_equal(poisoned.x.permute(0, 2, 3, 1).numpy(), exported["x_train"])
    assert np.array_equal(poisoned.poisoned_indices.numpy(), exported["poisoned_indices"])
    assert manifest["info"]["l0_max"] == 1 and manifest["info"]["source_name"] == "ops-export"
    assert manifest["budget"]["num_poisoned"] == 512
    sha = prep.config["poison"]["identity"]["sha256"]
    assert sha == manifest["info"]["sha256"] and len(sha) == 64
    # the same path with other bytes is another poison: new run id, new artifact, no stale cache hit
    arrays = dict(exported)
    arrays["x_train"] = arrays["x_train"].copy()
    arrays["x_train"][0, 0, 0, 0] ^= 1
    write_npz(out, arrays)
    prep2 = prepare_run(spec)
    assert prep2.run_id != prep.run_id
    assert artifact_id(prep2.dataset_id, prep2.poison) != artifact_id(prep.dataset_id, prep.poison)
    again, manifest2 = get_poisoned(prep2.train, prep2.dataset_id, prep2.poison, prep2.cache, prep2.device)
    assert manifest2["cached"] is False and int(again.x[0, 0, 0, 0]) == int(arrays["x_train"][0, 0, 0, 0])
    # and bench run takes it end to end, recording the declared source and the file's sha256
    code, _, err = run_cli(["run", "--poison", "import", "--poison-param", f"path={out}", "--poison-param",
                            "name=ops-export", "--preset", "smoke", "--no-baseline"], capsys)
    assert code == 0, err
    rec = json.loads(next(bench_env["results"].glob("*-import-*.json")).read_text())
    assert rec["config"]["poison"]["params"]["name"] == "ops-export"
    assert rec["config"]["poison"]["identity"]["sha256"] == prep2.config["poison"]["identity"]["sha256"]
    assert rec["poison"]["info"]["sha256"] == rec["config"]["poison"]["identity"]["sha256"]


def test_a_whole_split_file_is_cut_to_the_presets_subset(bench_env: dict, capsys, tmp_path: Path) -> None:
    """Poisons are published for the whole training split (all 50k CIFAR-10 images); a preset that trains
    on a subset takes that file's rows of its images: the same bytes as an export of the subset."""
    whole, subset = tmp_path / "cuda-50k.npz", tmp_path / "cuda-512.npz"
    for out, extra in ((whole, []), (subset, ["--train-subset", "512"])):
        code, _, err = run_cli(["poison", "--poison", "cuda", "--preset", "smoke", "--out", str(out), *extra], capsys)
        assert code == 0, err
    assert read_npz(whole)["x_train"].shape[0] == 50000
    expected = read_npz(subset)
    spec = RunSpec(poison="import", poison_params={"path": str(whole)}, preset="smoke",
                   data_root=str(bench_env["data_root"]), cache_dir=str(bench_env["cache"]),
                   results=str(bench_env["results"]))
    prep = prepare_run(spec)
    poisoned, manifest = get_poisoned(prep.train, prep.dataset_id, prep.poison, prep.cache, prep.device,
                                      split_rows=prep.split_rows)
    assert np.array_equal(poisoned.x.permute(0, 2, 3, 1).numpy(), expected["x_train"])
    assert np.array_equal(poisoned.poisoned_indices.numpy(), expected["poisoned_indices"])
    assert manifest["info"]["file_images"] == 50000 and manifest["info"]["images"] == 512
    code, out, err = run_cli(["run", "--poison", "import", "--poison-param", f"path={whole}", "--preset", "smoke",
                              "--epochs", "1", "--no-baseline"], capsys)
    assert code == 0, err
    # without the split's positions (a file of neither size) the shape check says what would fit
    with pytest.raises(BenchError, match="or the whole training split"):
        get_poisoned(prep.train, prep.dataset_id, build_poison("import", {"path": str(whole)}), tmp_path / "c",
                     prep.device)


def truncated_png(image: torch.Tensor, path: Path) -> None:
    """A PNG whose header is valid but whose pixel data is cut short: it passes the header check and
    fails when decoded."""
    from PIL import Image

    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 20])


def test_whole_split_png_folder_and_tensor_are_cut_and_only_the_subsets_files_decoded(tmp_path: Path) -> None:
    from PIL import Image

    split = make_images(n=24, num_classes=4, size=8)
    x, idx = poisoned_copy(split, every=3)
    rows = SplitRows(torch.tensor([2, 3, 9, 10, 15, 16, 21, 23]), len(split), Dataset("tiny", "generated", split, split))
    clean = split.subset(rows.indices)
    root = tmp_path / "pngs"
    for i in range(len(split)):
        folder = root / "train" / split.classes[int(split.y[i])]
        folder.mkdir(parents=True, exist_ok=True)
        if i in rows.indices.tolist():
            Image.fromarray(x[i].permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
        else:  # every file's header is checked, only the subset's files are decoded
            truncated_png(x[i], folder / f"{i}.png")
    pt = tmp_path / "poison.pt"
    torch.save({"x_train": x, "y_train": split.y}, pt)
    npz = export_npz(tmp_path / "poison.npz", x, split.y, idx)
    ctx = PoisonContext(num_classes=4, split_rows=rows)
    for path in (root, pt, npz):
        out = build_poison("import", {"path": str(path)}).poison.generate(clean, ctx)
        assert torch.equal(out.x, x[rows.indices]), path
        assert out.poisoned_indices.tolist() == [i for i, j in enumerate(rows.indices.tolist()) if j % 3 == 0]
        assert out.info["file_images"] == 24 and out.info["images"] == 8
    # labels are checked over the whole file, rows outside the subset included, and named by file row
    for row in (int(rows.indices[1]), 5):
        wrong = split.y.clone()
        wrong[row] = (wrong[row] + 1) % 4
        torch.save({"x_train": x, "y_train": wrong}, pt)
        with pytest.raises(BenchError, match=f"labels differ from the clean training set's in 1 of 24 file rows "
                                             f"\\(first: file row {row},"):
            build_poison("import", {"path": str(pt)}).poison.validate(clean, rows)
    moved = root / "train" / split.classes[(int(split.y[5]) + 1) % 4] / "5.png"  # row 5: outside the subset
    (root / "train" / split.classes[int(split.y[5])] / "5.png").rename(moved)
    with pytest.raises(BenchError, match="in 1 of 24 file rows \\(first: file row 5,"):
        build_poison("import", {"path": str(root)}).poison.validate(clean, rows)
    moved.rename(root / "train" / split.classes[int(split.y[5])] / "5.png")
    (root / "train" / "c0" / "0.png").write_bytes(b"not a png")
    with pytest.raises(BenchError, match="train/c0/0.png is not a readable image"):
        build_poison("import", {"path": str(root)}).poison.validate(clean, rows)


def test_import_png_folder_and_tensor_files(tmp_path: Path) -> None:
    from PIL import Image

    clean = make_images(n=24, num_classes=4, size=8)
    x, idx = poisoned_copy(clean, every=3)
    root = tmp_path / "pngs"
    for i in range(len(clean)):
        folder = root / "train" / (clean.classes[int(clean.y[i])] if i % 2 else str(int(clean.y[i])))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i].permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    spec, out = run_import(root, clean)
    assert torch.equal(out.x, x) and torch.equal(out.poisoned_indices, idx)
    assert out.info["format"] == "png" and out.info["source_name"] == "pngs"
    # .pt: float NCHW in [0, 1] (rounded back to the same grey levels), uint8 NHWC with labels
    torch.save(x.float() / 255, tmp_path / "float.pt")
    _, out = run_import(tmp_path / "float.pt", clean)
    assert torch.equal(out.x, x)
    torch.save({"x_train": x.permute(0, 2, 3, 1).contiguous(), "y_train": clean.y}, tmp_path / "dict.pt")
    _, out = run_import(tmp_path / "dict.pt", clean, name="my-poison")
    assert torch.equal(out.x, x) and out.info["source_name"] == "my-poison"
    assert out.info["l0_max"] == 64 and out.info["images_changed"] == len(idx)
    # ratio < 1: the file's images on the seeded subset only
    _, half = run_import(tmp_path / "dict.pt", clean, ratio=0.5)
    assert set(half.poisoned_indices.tolist()) <= set(idx.tolist())
    rest = torch.ones(len(clean), dtype=torch.bool)
    rest[half.poisoned_indices] = False
    assert torch.equal(half.x[rest], clean.x[rest])


def test_an_npz_of_x_train_and_y_train_alone_is_read_as_a_whole_poison(tmp_path: Path) -> None:
    """The layout a researcher's own script writes (no poisoned_indices): the changed rows are the poison."""
    clean = make_images(n=24, num_classes=4, size=8)
    x, idx = poisoned_copy(clean, every=3)
    path = tmp_path / "mine.npz"
    write_npz(path, {"x_train": x.permute(0, 2, 3, 1).contiguous().numpy(), "y_train": clean.y.numpy()})
    _, out = run_import(path, clean, name="mine")
    assert torch.equal(out.x, x) and torch.equal(out.poisoned_indices, idx)
    assert out.info["images_changed"] == len(idx)
    wrong = clean.y.clone()
    wrong[5] = (wrong[5] + 1) % 4
    write_npz(path, {"x_train": x.permute(0, 2, 3, 1).contiguous().numpy(), "y_train": wrong.numpy()})
    assert "row 5" in refused(path, clean)


def test_import_refuses_malformed_files(tmp_path: Path) -> None:
    clean = make_images(n=24, num_classes=4, size=8)
    x, idx = poisoned_copy(clean)
    assert "does not exist" in refused(tmp_path / "missing.npz")
    assert "needs --poison-param path" in str(pytest.raises(BenchError, build_poison, "import", {}).value)
    # wrong shape: one image short, then the wrong image size
    assert "shape" in refused(export_npz(tmp_path / "short.npz", x[:-1], clean.y[:-1], idx[:-1]), clean)
    small = make_images(n=24, num_classes=4, size=6)
    assert "shape" in refused(export_npz(tmp_path / "size.npz", small.x, clean.y, idx), clean)
    # dtype: float images in an npz, integer tensors in a .pt
    write_npz(tmp_path / "float.npz", {"x_train": x.permute(0, 2, 3, 1).numpy().astype(np.float32),
                                       "y_train": clean.y.numpy(), "poisoned_indices": idx.numpy()})
    assert "float32" in refused(tmp_path / "float.npz", clean)
    torch.save(x.to(torch.int64), tmp_path / "int.pt")
    assert "torch.int64" in refused(tmp_path / "int.pt", clean)
    # value range: float images lie in [0, 1] or hold whole grey levels 0..255 (TAP's numpy export)
    torch.save(x.float() + 0.5, tmp_path / "range.pt")
    assert "[0, 1] or hold whole grey levels" in refused(tmp_path / "range.pt", clean)
    torch.save(x.float() - 1, tmp_path / "negative.pt")
    assert "found values in [-1, " in refused(tmp_path / "negative.pt", clean)
    # label order: a shuffled set with its labels
    perm = torch.randperm(len(clean), generator=torch.Generator().manual_seed(0))
    msg = refused(export_npz(tmp_path / "order.npz", x[perm], clean.y[perm], idx), clean)
    assert "labels differ" in msg and "dataset's order" in msg
    # images changed outside the declared poisoned_indices
    assert "outside its poisoned_indices" in refused(export_npz(tmp_path / "idx.npz", x, clean.y, idx[:-1]), clean)
    # a PNG folder with a missing image or an unknown class
    root = tmp_path / "pngs"
    (root / "train" / "c0").mkdir(parents=True)
    from PIL import Image
    Image.fromarray(x[0].permute(1, 2, 0).numpy()).save(root / "train" / "c0" / "0.png")
    assert "first missing index 1" in refused(root, clean)
    (root / "train" / "zebra").mkdir()
    Image.fromarray(x[1].permute(1, 2, 0).numpy()).save(root / "train" / "zebra" / "1.png")
    assert "not a class" in refused(root, clean)


class Payload:
    """Unpickling this would create a marker file: proof that the loader never runs pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_import_never_unpickles_a_pt_file(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    with open(tmp_path / "evil.pt", "wb") as fh:
        torch.save({"x": torch.zeros(24, 3, 8, 8, dtype=torch.uint8), "extra": Payload(marker)}, fh)
    assert "not a plain tensor file" in refused(tmp_path / "evil.pt")
    assert not marker.exists()
    with open(tmp_path / "plain.pkl.pt", "wb") as fh:  # a bare pickle, not even a torch file
        pickle.dump(Payload(marker), fh)
    assert "not a plain tensor file" in refused(tmp_path / "plain.pkl.pt")
    assert not marker.exists()
