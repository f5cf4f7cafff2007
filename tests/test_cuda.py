"""CUDA poison: key-compatibility with the official filters, ratio semantics, batched output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.base import PoisonContext
from attacks.cuda import CUDA, CUDAParams, apply_filters, cuda_filters
from benchmark.data import ImageSet
from benchmark.params import build_params

# official filters of vinusankars/Convolution-based-Unlearnability: seed 0, pb 0.3, k 3 — rows of each class filter and the "1" position
TEST_VECTOR = {
    0: ((0, 2), [[0.1646, 0.2146, 1.0], [0.1635, 0.1271, 0.1938], [0.1313, 0.2675, 0.2891]]),
    1: ((0, 0), [[1.0, 0.0794, 0.2323], [0.1368, 0.1705, 0.0056], [0.1853, 0.1836, 0.1851]]),
    2: ((0, 1), [[0.0760, 1.0, 0.0733], [0.0477, 0.0331, 0.1969], [0.0415, 0.0590, 0.1106]]),
    3: ((0, 2), [[0.1527, 0.2750, 1.0], [0.0249, 0.0833, 0.0028], [0.2527, 0.1942, 0.2524]]),
    4: ((2, 0), [[0.2441, 0.1190, 0.2643], [0.1744, 0.2645, 0.2078], [1.0, 0.1504, 0.2868]]),
    5: ((0, 2), [[0.1308, 0.2676, 1.0], [0.2112, 0.0301, 0.2758], [0.2143, 0.2997, 0.0448]]),
    6: ((2, 2), [[0.1563, 0.0163, 0.0600], [0.0056, 0.2381, 0.0672], [0.1036, 0.2784, 1.0]]),
    7: ((0, 0), [[1.0, 0.2643, 0.2929], [0.1853, 0.1627, 0.2564], [0.2232, 0.1436, 0.2031]]),
    8: ((1, 0), [[0.2842, 0.2193, 0.0762], [1.0, 0.1555, 0.0077], [0.0622, 0.1274, 0.1123]]),
    9: ((1, 1), [[0.1657, 0.1753, 0.2886], [0.0876, 1.0, 0.0301], [0.0049, 0.2789, 0.2010]]),
}


def test_key0_filters_match_official_test_vector() -> None:
    filters, rng = cuda_filters(0, 10, 3, 0.3)
    for c, (pos, rows) in TEST_VECTOR.items():
        np.testing.assert_allclose(filters[c], np.array(rows), atol=6e-5, err_msg=f"class {c}")
        assert filters[c][pos] == 1.0
        assert np.count_nonzero(filters[c] == 1.0) == 1
    assert round(rng.random_sample(), 4) == 0.8623  # first partial-poisoning draw (image 0)


def test_other_pb_scales_non_one_entries_linearly() -> None:
    f3, _ = cuda_filters(0, 10, 3, 0.3)
    f6, _ = cuda_filters(0, 10, 3, 0.06)
    mask = f3 != 1.0
    np.testing.assert_allclose(f6[mask], f3[mask] * 0.2, rtol=1e-9)


def _images(n: int = 40, classes: int = 10) -> ImageSet:
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (n, 3, 8, 8), generator=gen, dtype=torch.uint8)
    return ImageSet(x, torch.arange(n) % classes, [str(i) for i in range(classes)])


def test_generate_matches_reference_per_image_formula() -> None:
    train = _images()
    out = CUDA(CUDAParams()).generate(train, PoisonContext(key=0, ratio=1.0, num_classes=10))
    filters, _ = cuda_filters(0, 10, 3, 0.3)
    for i in (0, 7, 23):  # reference: one image at a time, float64, official steps
        img = train.x[i].double() / 255
        w = torch.from_numpy(filters[int(train.y[i])]).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
        y = torch.nn.functional.conv2d(img[None], w, padding=1, groups=3)[0]
        ref = (y / y.max() * 255).clamp(0, 255).floor().to(torch.uint8)
        assert (out.x[i].int() - ref.int()).abs().max() <= 1  # float32 vs float64 truncation
        assert int(out.x[i].max()) in (254, 255)  # brightest value rescaled to 1
    assert torch.equal(out.y, train.y)


def test_ratio_is_official_bernoulli_stream() -> None:
    train = _images(200)
    out = CUDA(CUDAParams()).generate(train, PoisonContext(key=5, ratio=0.3, num_classes=10))
    _, rng = cuda_filters(5, 10, 3, 0.3)
    expected = np.nonzero(rng.random_sample(200) < 0.3)[0]
    assert out.poisoned_indices.tolist() == expected.tolist()
    clean = torch.ones(200, dtype=torch.bool)
    clean[out.poisoned_indices] = False
    assert torch.equal(out.x[clean], train.x[clean])  # unpoisoned images untouched
    assert not torch.equal(out.x[out.poisoned_indices], train.x[out.poisoned_indices])
    none = CUDA(CUDAParams()).generate(train, PoisonContext(key=5, ratio=0.0, num_classes=10))
    assert none.poisoned_indices.numel() == 0 and torch.equal(none.x, train.x)


def test_different_keys_give_different_filters() -> None:
    a, _ = cuda_filters(0, 10, 3, 0.3)
    b, _ = cuda_filters(1, 10, 3, 0.3)
    assert not np.allclose(a, b)


def test_k9_imagenet_variant_keeps_size() -> None:
    x = torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8)
    filters, _ = cuda_filters(0, 2, 9, 0.06)
    out = apply_filters(x, torch.tensor([0, 1, 0, 1]), torch.from_numpy(filters))
    assert out.shape == x.shape and out.dtype == torch.uint8


def test_grey_images_work() -> None:
    train = ImageSet(torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8), torch.arange(10) % 10,
                     [str(i) for i in range(10)])
    out = CUDA(CUDAParams()).generate(train, PoisonContext(num_classes=10))
    assert out.x.shape == train.x.shape


@pytest.mark.parametrize("bad", [{"pb": "-0.1"}, {"k": "4"}, {"k": "0"}, {"nope": "1"}, {"pb": "abc"}])
def test_bad_params_rejected(bad: dict) -> None:
    from benchmark.errors import BenchError

    with pytest.raises(BenchError):
        build_params(CUDAParams, bad, owner="poison cuda")


# ------------------------------------------------------------------------------------ fast path

def _stepwise_reference(x: torch.Tensor, labels: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """The plain float32 formula, one rounding per step: p = u8/255 on a zero-padded batch; y = sum of
    p[shift]*w[tap] over the taps in row-major order, starting from 0; y / max(y) * 255 truncated."""
    k = filters.shape[-1]
    pad = k // 2
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x.float().div(255.0), (pad, pad, pad, pad))
    per_image = filters.float()[labels]
    y = torch.zeros(x.shape)
    for i in range(k):
        for j in range(k):
            y.addcmul_(padded[:, :, i:i + h, j:j + w], per_image[:, i, j].view(-1, 1, 1, 1))
    peak = y.flatten(1).amax(1).view(-1, 1, 1, 1)
    y = torch.where(peak > 0, y / peak.clamp_min(1e-12), y)
    return (y * 255.0).clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("shape,k,classes", [((70, 3, 32, 32), 3, 10), ((37, 1, 28, 28), 3, 4),
                                             ((9, 3, 11, 7), 5, 3), ((5, 3, 24, 24), 9, 2)])
def test_fast_apply_filters_is_bit_identical_to_the_stepwise_formula(shape: tuple, k: int, classes: int) -> None:
    """The chunked flat-buffer kernel keeps every byte of the plain formula (the committed CUDA
    artifacts were made with it): several chunk sizes, partial last chunks, grey images, k 3/5/9."""
    gen = torch.Generator().manual_seed(k)
    x = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    x[1] = 0  # an all-black image stays black
    x[2, :, 1:-1, 1:-1] = 0  # and one whose only bright pixels are on the border
    labels = torch.randint(0, classes, (shape[0],), generator=gen)
    filters = torch.from_numpy(cuda_filters(k, classes, k, 0.3)[0])
    ref = _stepwise_reference(x, labels, filters)
    for chunk in (None, 4, 32, shape[0]):
        assert torch.equal(apply_filters(x, labels, filters, chunk=chunk), ref), f"chunk {chunk}"
    assert int(ref[1].max()) == 0
    # only a subset: the rest is copied unchanged, the subset equals the full result
    idx = torch.tensor([0, 3, 4, shape[0] - 1])
    sub = apply_filters(x, labels, filters, index=idx, chunk=3)
    keep = torch.ones(shape[0], dtype=torch.bool)
    keep[idx] = False
    assert torch.equal(sub[idx], ref[idx]) and torch.equal(sub[keep], x[keep])


def test_vectorised_partial_draws_replay_the_official_one_at_a_time_stream() -> None:
    """The official script seeds NumPy's global RNG, draws each class's filter (uniform block, row, column),
    then calls np.random.random() once per image in dataset order; one random_sample(n) call must give
    the same decisions, bit for bit, and the same filters."""
    key, n, ratio, k, pb = 11, 500, 0.37, 3, 0.3
    state = np.random.get_state()
    try:
        np.random.seed(key)
        official = []
        for _ in range(10):
            w = np.random.uniform(low=0, high=pb, size=(3, 1, k, k))
            w[0, 0, np.random.randint(k), np.random.randint(k)] = 1.0
            official.append(w[0, 0])
        draws = [np.random.random() for _ in range(n)]
    finally:
        np.random.set_state(state)
    filters, rng = cuda_filters(key, 10, k, pb)
    assert np.array_equal(filters, np.stack(official))
    assert np.array_equal(rng.random_sample(n), np.array(draws))  # same doubles, not just close
    out = CUDA(CUDAParams()).generate(_images(n), PoisonContext(key=key, ratio=ratio, num_classes=10))
    assert out.poisoned_indices.tolist() == [i for i, d in enumerate(draws) if d < ratio]
