"""Data-level defenses: ISS squeezing (JPEG, grayscale, bit depth) and blur / median filters
outputs against PIL / torchvision / scipy references, caching, composition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_images, smoke_run
from imagerefs import pil_jpeg, pil_luma

import defenses.jpeg as jpeg_module
from benchmark.data import ImageSet
from benchmark.errors import BenchError
from defenses.base import TrainContext, build_defense


def make_ctx(cache_dir: Path | None = None, seed: int = 0) -> TrainContext:
    return TrainContext(device=torch.device("cpu"), num_classes=4, in_channels=3, image_size=(32, 32), seed=seed,
                        generator=torch.Generator().manual_seed(seed), cache_dir=cache_dir)


@pytest.fixture(scope="module")
def images() -> ImageSet:
    return make_images(n=24, num_classes=4, size=32, seed=1)


def test_grayscale_is_pil_luma_on_three_equal_channels(images: ImageSet) -> None:
    before = images.x.clone()
    out = build_defense("grayscale").prepare(images, make_ctx())
    assert torch.equal(images.x, before)  # input untouched
    assert out.x.shape == images.x.shape and out.x.dtype == torch.uint8 and torch.equal(out.y, images.y)
    assert torch.equal(out.x[:, 0], out.x[:, 1]) and torch.equal(out.x[:, 0], out.x[:, 2])
    for i in range(4):
        want = pil_luma(images.x[i])
        assert np.array_equal(out.x[i, 0].numpy(), want)
    gray = ImageSet(images.x[:, :1].contiguous(), images.y, images.classes)
    assert build_defense("grayscale").prepare(gray, make_ctx()) is gray  # 1-channel data: nothing to do


@torch.no_grad()
def test_grayscale_test_set_variant_sees_grayscale_test_images(images: ImageSet) -> None:
    plain, both = build_defense("grayscale"), build_defense("grayscale", {"test": "true"})
    assert plain.record()["params"] == {}  # the default is left out: records made before the param keep their run ids
    assert both.record()["params"] == {"test": True}
    assert "grayscale test images" in both.info()["headline"] and "grayscale" not in plain.info()["headline"]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    x = images.x.float() / 255
    gray = plain.prepare(images, make_ctx()).x.float() / 255  # the training images' exact grayscale bytes
    assert torch.equal(both.predict(model, x), model(gray))
    assert torch.equal(plain.predict(model, x), model(x)) and not torch.equal(model(x), model(gray))


def test_grayscale_test_set_variant_runs_and_is_listed(run_env: dict, capsys: pytest.CaptureFixture) -> None:
    from conftest import run_cli

    train_only = smoke_run(run_env, "grayscale")
    rec = smoke_run(run_env, "grayscale", {"test": "true"})
    assert rec["config"]["defense"]["params"] == {"test": True} and rec["run_id"] != train_only["run_id"]
    assert "grayscale test images" in rec["defense_info"]["headline"]
    # the same training (same seed and data), evaluated on other test images
    assert [e["train_loss"] for e in rec["metrics"]["per_epoch"]] == [e["train_loss"] for e in train_only["metrics"]["per_epoch"]]
    code, out, _err = run_cli(["list", "defenses"], capsys)
    assert code == 0 and "test=False" in next(line for line in out.splitlines() if "grayscale (greyscale)" in line)


@pytest.mark.parametrize("bits", [1, 2, 5])
def test_bit_depth_keeps_top_bits(images: ImageSet, bits: int) -> None:
    from torchvision.transforms.v2.functional import posterize

    out = build_defense("bit-depth", {"bits": str(bits)}).prepare(images, make_ctx())
    assert out.x.dtype == torch.uint8 and out.x.shape == images.x.shape
    assert len(torch.unique(out.x)) <= 2 ** bits
    assert torch.equal(out.x, posterize(images.x, bits))
    assert (out.x <= images.x).all() and (images.x - out.x < 2 ** (8 - bits)).all()


def test_bit_depth_and_jpeg_bad_params() -> None:
    with pytest.raises(BenchError, match="bits"):
        build_defense("bit-depth", {"bits": "9"})
    with pytest.raises(BenchError, match="quality"):
        build_defense("jpeg", {"quality": "0"})
    with pytest.raises(BenchError, match="odd"):
        build_defense("median-filter", {"kernel": "4"})


def test_jpeg_matches_pil_and_is_cached(images: ImageSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = images.x.clone()
    out = build_defense("jpeg").prepare(images, make_ctx(tmp_path))
    assert torch.equal(images.x, before)
    assert out.x.shape == images.x.shape and out.x.dtype == torch.uint8 and torch.equal(out.y, images.y)
    assert not torch.equal(out.x, images.x)
    for i in range(4):
        assert torch.equal(out.x[i], pil_jpeg(images.x[i], 10))
    cached = list((tmp_path / "squeezed").glob("jpeg-q10-*.npz"))
    assert len(cached) == 1

    def boom(*args, **kwargs):
        raise AssertionError("recomputed instead of reading the cache")

    monkeypatch.setattr(jpeg_module, "jpeg_uint8", boom)
    again = build_defense("jpeg").prepare(images, make_ctx(tmp_path))
    assert torch.equal(again.x, out.x)
    with pytest.raises(AssertionError):  # other quality -> other cache entry
        build_defense("jpeg", {"quality": "50"}).prepare(images, make_ctx(tmp_path))
    monkeypatch.undo()
    cached[0].write_bytes(b"not an npz")  # a corrupt cache file is recomputed
    assert torch.equal(build_defense("jpeg").prepare(images, make_ctx(tmp_path)).x, out.x)
    gray = ImageSet(images.x[:, :1].contiguous(), images.y, images.classes)
    gray_out = build_defense("jpeg").prepare(gray, make_ctx()).x
    assert gray_out.shape == gray.x.shape and not torch.equal(gray_out, gray.x)
    monkeypatch.setattr(jpeg_module, "_torchvision_jpeg", lambda x, q: None)  # PIL fallback: same bytes
    assert torch.equal(build_defense("jpeg").prepare(images, make_ctx()).x, out.x)
    assert torch.equal(build_defense("jpeg").prepare(gray, make_ctx()).x, gray_out)
    monkeypatch.undo()
    q90 = build_defense("jpeg", {"quality": "90"}).prepare(images, make_ctx())
    assert (q90.x.int() - images.x.int()).abs().float().mean() < (out.x.int() - images.x.int()).abs().float().mean()


def test_gaussian_blur_matches_torchvision(images: ImageSet) -> None:
    from torchvision.transforms.v2.functional import gaussian_blur

    out = build_defense("gaussian-blur", {"sigma": "0.8"}).prepare(images, make_ctx())
    diff = (out.x.int() - gaussian_blur(images.x, [3, 3], [0.8, 0.8]).int()).abs()
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 1e-3  # float sum order: rare .5 ties
    assert not torch.equal(out.x, images.x)
    default = build_defense("gaussian-blur").prepare(images, make_ctx())  # default = REM's sigma 0.8
    assert torch.equal(default.x, out.x)
    weak = build_defense("gaussian-blur", {"sigma": "0.1"}).prepare(images, make_ctx())  # ISS's sigma 0.1
    assert torch.equal(weak.x, gaussian_blur(images.x, [3, 3], [0.1, 0.1]))


def test_median_filter_matches_scipy(images: ImageSet) -> None:
    from scipy.ndimage import median_filter

    out = build_defense("median-filter").prepare(images, make_ctx())
    want = median_filter(images.x.numpy(), size=(1, 1, 3, 3), mode="nearest")
    assert np.array_equal(out.x.numpy(), want) and not torch.equal(out.x, images.x)
    out5 = build_defense("median-filter", {"kernel": "5"}).prepare(images, make_ctx())  # the sorting path
    assert np.array_equal(out5.x.numpy(), median_filter(images.x.numpy(), size=(1, 1, 5, 5), mode="nearest"))


def test_jpeg_plus_cutmix_composes(images: ImageSet) -> None:
    stack = build_defense("jpeg+cutmix", {"p": "1"})
    assert stack.record()["name"] == "jpeg+cutmix"
    assert stack.record()["params"] == {"jpeg": {"quality": 10}, "cutmix": {"beta": 1.0, "p": 1.0}}
    ctx = make_ctx()
    train = stack.prepare(images, ctx)
    assert torch.equal(train.x, build_defense("jpeg").prepare(images, ctx).x)
    x = train.x.float() / 255
    y = torch.nn.functional.one_hot(train.y, 4).float()
    xm, ym = stack.batch(x, y, ctx)
    assert torch.allclose(ym.sum(1), torch.ones(len(ym))) and not torch.equal(xm, x)


@pytest.mark.parametrize("defense", ["jpeg", "grayscale", "bit-depth", "gaussian-blur", "median-filter", "jpeg+cutmix"])
def test_smoke_run_end_to_end(run_env: dict, defense: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = jpeg_module.jpeg_uint8
    monkeypatch.setattr(jpeg_module, "jpeg_uint8", lambda x, q: seen.append(len(x)) or real(x, q))
    smoke_run(run_env, defense)
    if defense == "jpeg":  # only the 128 training images are compressed; the test set is untouched
        assert seen == [128]
    if defense == "jpeg+cutmix":  # same poisoned train set as the jpeg run: read from the disk cache
        assert seen == []
