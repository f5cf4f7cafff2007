"""AR, LSP and OPS: the property that defines each poison, on tiny generated images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import generate_poison, shifted_images

from attacks.ar import (
    OFFICIAL_CIFAR10,
    ARParams,
    ar_fill_,
    ar_noise,
    find_coefficients,
    matched_filters,
    realise,
)
from attacks.lsp import l2_radius
from attacks.ops import corner_colours
from benchmark.data import ImageSet
from benchmark.noise import derived_generator


def stored_l2(clean: ImageSet, x: torch.Tensor) -> torch.Tensor:
    """Exact integer L2 of the stored differences, in grey levels."""
    d = x.to(torch.int64) - clean.x.to(torch.int64)
    return d.pow(2).flatten(1).sum(1).double().sqrt()


# ------------------------------------------------------------------------------------------------ AR

def test_ar_fill_is_the_raster_recurrence():
    """The anti-diagonal sweep gives what the official row-by-row loop gives."""
    gen = torch.Generator().manual_seed(0)
    coef = torch.randn(3, 3, 3, generator=gen) * 0.3
    coef[:, 2, 2] = 0
    start = torch.randn(3, 9, 11, generator=gen, dtype=torch.float64)
    ref = start.clone()
    for i in range(9 - 2):
        for j in range(11 - 2):
            ref[:, i + 2, j + 2] = (ref[:, i:i + 3, j:j + 3] * coef.double()).sum(dim=(1, 2))
    ours = ar_fill_(start.permute(1, 2, 0).contiguous(), coef.double().permute(1, 2, 0).contiguous())
    assert torch.allclose(ours.permute(2, 0, 1), ref, rtol=1e-10, atol=1e-10)


def test_ar_processes_follow_the_official_sampler():
    coeffs, tried = find_coefficients(4, 3, derived_generator(5, "test"), 10.0)
    assert coeffs.shape == (4, 3, 3, 3) and tried >= 4
    assert torch.all(coeffs[:, :, 2, 2] == 0)
    assert torch.allclose(coeffs.sum(dim=(2, 3)), torch.ones(4, 3), atol=1e-5)  # each channel sums to 1
    assert torch.equal(coeffs, find_coefficients(4, 3, derived_generator(5, "test"), 10.0)[0])  # seeded


def test_ar_noise_satisfies_its_recurrence_and_norm():
    coeffs, _ = find_coefficients(3, 3, derived_generator(1, "test"), 10.0)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    delta = ar_noise(coeffs, y, (16, 16), crop=4, key=1, block=0, eps=1.0)
    assert delta.shape == (6, 3, 16, 16)
    assert torch.allclose(delta.flatten(1).norm(dim=1), torch.ones(6), atol=1e-5)
    filters = matched_filters(coeffs)  # (K, C, 3, 3): coefficients with -1 at [2, 2]
    for k in range(3):
        own = F.conv2d(delta[y == k], filters[k].unsqueeze(1), groups=3)  # depthwise, per channel
        assert own.abs().max() < 1e-5 * delta.abs().max()  # x[i+2, j+2] = sum_ab b[a,b] x[i+a, j+b]
        other = F.conv2d(delta[y == k], filters[(k + 1) % 3].unsqueeze(1), groups=3)
        assert other.abs().max() > 1e-2 * delta.abs().max()  # another class's process does not fit


def test_ar_budget_is_exact_after_quantisation():
    train = shifted_images(n=120, classes=4, size=16, low=50, high=206)
    poison, out = generate_poison("ar", train, key=7)
    assert poison.budget_type == "l2" and out.x.dtype == torch.uint8
    l2 = stored_l2(train, out.x)
    assert float(l2.max()) <= 255.0 * 1.0  # eps = 1.0: sum of squared grey levels <= 255^2, exactly
    assert float(l2.min()) >= 0.99 * 255.0  # and the noise is not shrunk more than rounding needs
    assert torch.equal(out.poisoned_indices, torch.arange(120))
    _, again = generate_poison("ar", train, key=7)
    _, other = generate_poison("ar", train, key=8)
    assert torch.equal(out.x, again.x) and not torch.equal(out.x, other.x)


def test_ar_partial_poisoning_leaves_the_rest_clean():
    train = shifted_images(n=80, classes=4, size=16)
    _, out = generate_poison("ar", train, ratio=0.25)
    assert out.poisoned_indices.numel() == 20
    clean = torch.ones(80, dtype=torch.bool)
    clean[out.poisoned_indices] = False
    assert torch.equal(out.x[clean], train.x[clean])
    assert (out.x[out.poisoned_indices] != train.x[out.poisoned_indices]).flatten(1).any(1).all()


def test_ar_official_coefficients_are_the_published_stable_processes():
    """coefficients=official: 10 classes x 3 channels of 3x3 windows, bottom-right entry 0, each channel
    summing to 1 up to the published 4 decimals (8 entries, 5e-5 each), and stable: realisations of the
    official size (36x36, crop 4) stay bounded (an unstable process grows geometrically: > 1e6 here)."""
    coeffs = torch.tensor(OFFICIAL_CIFAR10)
    assert coeffs.shape == (10, 3, 9)
    windows = coeffs.view(10, 3, 3, 3)
    assert torch.all(windows[:, :, 2, 2] == 0)
    assert float((windows.sum(dim=(2, 3)) - 1).abs().max()) <= 8 * 5e-5
    assert float((windows.sum(dim=(2, 3)) - 1).abs().max()) > 0  # as published, not renormalised
    assert len({tuple(w.flatten().tolist()) for w in windows}) == 10
    start = torch.randn(80, 3, 36, 36, generator=torch.Generator().manual_seed(0))
    norms = realise(windows.repeat(8, 1, 1, 1), start, 4).flatten(1).norm(dim=1)
    assert bool(torch.isfinite(norms).all()) and float(norms.max()) < 1000


def test_ar_official_is_the_default_and_each_class_follows_its_published_process():
    train = shifted_images(n=40, classes=4, size=16, low=50, high=206)
    poison, out = generate_poison("ar", train, key=7)
    assert poison.params.coefficients == "official" and out.info["coefficients"] == "official"
    delta = out.x.float() - train.x.float()  # the stored (rounded) noise still satisfies class k's recurrence
    filters = matched_filters(torch.tensor(OFFICIAL_CIFAR10[:4]).view(4, 3, 3, 3))
    for k in range(4):
        own = F.conv2d(delta[train.y == k], filters[k].unsqueeze(1), groups=3).abs().mean()
        others = [F.conv2d(delta[train.y == k], filters[j].unsqueeze(1), groups=3).abs().mean() for j in range(4) if j != k]
        assert float(own) < 0.5 * float(min(others))
    _, keyed = generate_poison("ar", train, {"coefficients": "key"}, key=7)
    assert keyed.info["coefficients"] == "key" and keyed.info["candidates_examined"] >= 4
    assert not torch.equal(keyed.x, out.x)


def test_ar_official_rejects_data_it_does_not_fit_and_old_records_read_as_key():
    from benchmark.errors import BenchError
    from benchmark.params import complete_params
    from benchmark.poisoning import build_poison

    gray = shifted_images(n=20, classes=4, size=16)
    gray = ImageSet(gray.x[:, :1].contiguous(), gray.y, gray.classes)
    with pytest.raises(BenchError, match="coefficients=key"):
        generate_poison("ar", gray, key=1)
    assert generate_poison("ar", gray, {"coefficients": "key"}, key=1)[1].x.shape == gray.x.shape
    # records of the key draw leave the parameter out (their run ids are unchanged); read back, they are the key draw
    assert "coefficients" not in build_poison("ar", {"coefficients": "key"}).record()["params"]
    assert build_poison("ar", {}).record()["params"]["coefficients"] == "official"
    assert complete_params(ARParams, {"eps": 1.0, "crop": 4, "min_response": -1.0})["coefficients"] == "key"


# ----------------------------------------------------------------------------------------------- LSP

def fit_linear(features: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.nn.Linear:
    """Multinomial logistic regression, full batch L-BFGS."""
    torch.manual_seed(0)
    model = torch.nn.Linear(features.shape[1], classes)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(features), labels) + 1e-4 * model.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model


def test_lsp_noise_alone_is_linearly_separable():
    """A linear classifier trained on half the noise (poisoned - clean) classifies the other half."""
    train = shifted_images(n=240, classes=4, size=16, low=40, high=216)
    _, out = generate_poison("lsp", train, {"patch": 4}, key=2)
    noise = (out.x.float() - train.x.float()).flatten(1) / 255.0
    y = train.y
    fit = (torch.arange(240) // 4) % 2 == 0  # every class on both sides
    held = ~fit
    model = fit_linear(noise[fit], y[fit], 4)
    with torch.no_grad():
        assert (model(noise[fit]).argmax(1) == y[fit]).float().mean() == 1.0
        assert (model(noise[held]).argmax(1) == y[held]).float().mean() >= 0.97
        # the clean images' own class signal is weak: the same recipe on them generalises far worse
        clean = train.x.float().flatten(1) / 255.0
        on_clean = fit_linear(clean[fit], y[fit], 4)
        assert (on_clean(clean[held]).argmax(1) == y[held]).float().mean() < 0.9


def test_lsp_patches_and_exact_budget():
    train = shifted_images(n=64, classes=4, size=16, low=40, high=216)
    poison, out = generate_poison("lsp", train, {"patch": 4}, key=3)
    radius = l2_radius(6 / 255, (3, 16, 16))
    assert poison.budget_type == "l2" and out.info["l2_radius"] == pytest.approx(radius, abs=1e-6)
    l2 = stored_l2(train, out.x)
    assert float(l2.max()) <= 255.0 * radius + 1e-9
    # a patch's values round together (one flip moves norm² by 16·(2|level|+1)): a bit more slack than AR
    assert float(l2.min()) >= 0.98 * 255.0 * radius
    d = (out.x.to(torch.int16) - train.x.to(torch.int16)).view(64, 3, 4, 4, 4, 4)  # (n, C, gy, py, gx, px)
    cells = d.permute(0, 1, 2, 4, 3, 5).reshape(64, 3, 4, 4, 16)
    assert torch.all(cells == cells[..., :1])  # one colour per 4x4 patch: a 4x4 grid upsampled


def test_lsp_official_truncation_casts_down():
    """official_truncation stores floor(x + 255·δ): below the float sum, by less than one level."""
    train = shifted_images(n=64, classes=4, size=16, low=40, high=216)
    _, trunc = generate_poison("lsp", train, {"patch": 4, "official_truncation": True}, key=3)
    _, exact = generate_poison("lsp", train, {"patch": 4}, key=3)
    diff_t = trunc.x.double() - train.x.double()
    diff_e = exact.x.double() - train.x.double()
    assert (diff_t.mean() < diff_e.mean() - 0.3)  # truncation biases every value down ~half a level
    assert (diff_e - diff_t).abs().max() <= 2  # same noise, different rounding
    assert trunc.info["l2_max"] > exact.info["l2_max"]


# ----------------------------------------------------------------------------------------------- OPS

def official_pixel_search(x_u8: np.ndarray, y: np.ndarray, classes: int) -> list[tuple[int, int]]:
    """The official objective by brute force: for every class, position and corner colour, the
    mean / std of |v - x| over the class's images and channels, skipping pairs already taken."""
    n, h, w, c = x_u8.shape
    taken: list[tuple[int, int]] = []
    for k in range(classes):
        imgs = x_u8[y == k] / 255.0
        scores = np.zeros((h * w, 2 ** c))
        for point in range(h * w):
            for value in range(2 ** c):
                colour = np.array([(value >> (c - 1 - ch)) & 1 for ch in range(c)], dtype=float)
                d = np.abs(colour - imgs[:, point // w, point % w, :])
                scores[point, value] = 0.0 if (point, value) in taken else d.mean() / d.std()
        best = np.unravel_index(np.argmax(scores), scores.shape)
        taken.append((int(best[0]), int(best[1])))
    return taken


def test_ops_matches_the_official_objective_by_brute_force():
    gen = torch.Generator().manual_seed(4)
    y = torch.arange(30) % 3
    x = torch.randint(20, 236, (30, 3, 5, 6), generator=gen)
    x[y == 1, 1] = (x[y == 1, 1] // 3).clamp_min(1)  # give classes different statistics
    x[y == 2, :, 2, :] = 230
    x = x.to(torch.uint8)
    x[y == 2, :, 2, 3] += torch.arange(10, dtype=torch.uint8).view(-1, 1)
    train = ImageSet(x, y, ["a", "b", "c"])
    _, out = generate_poison("ops", train)
    ours = [(p["row"] * 6 + p["col"], int(corner_index)) for p in out.info["pixels"]
            for corner_index in [int(sum((v // 255) << (2 - i) for i, v in enumerate(p["colour"])))]]
    assert ours == official_pixel_search(x.permute(0, 2, 3, 1).numpy(), y.numpy(), 3)


def test_ops_changes_exactly_one_pixel_per_image_at_its_class_position():
    train = shifted_images(n=90, classes=3, size=8, low=1, high=255)  # no pixel at 0 or 255: all change
    poison, out = generate_poison("ops", train)
    assert poison.budget_type == "l0"
    changed = (out.x != train.x).any(dim=1)  # (n, H, W): pixels with any channel changed
    assert torch.all(changed.flatten(1).sum(1) == 1)
    picks = {p["class"]: p for p in out.info["pixels"]}
    colours = (corner_colours(3) * 255).to(torch.uint8)
    for k in range(3):
        row, col = picks[k]["row"], picks[k]["col"]
        assert torch.all(changed[train.y == k, row, col])
        assert torch.all(out.x[train.y == k, :, row, col] == torch.tensor(picks[k]["colour"], dtype=torch.uint8))
        assert any(torch.equal(torch.tensor(picks[k]["colour"], dtype=torch.uint8), c) for c in colours)
    assert len({(p["row"], p["col"], tuple(p["colour"])) for p in picks.values()}) == 3


def test_ops_constant_pixel_is_an_infinite_shortcut():
    """A pixel constant within a class has std 0: any other corner colour there scores +inf."""
    train = shifted_images(n=40, classes=2, size=6, low=1, high=255)
    x = train.x.clone()
    x[train.y == 1, :, 4, 1] = 128
    _, out = generate_poison("ops", ImageSet(x, train.y, train.classes))
    pick = [p for p in out.info["pixels"] if p["class"] == 1][0]
    assert (pick["row"], pick["col"], pick["score"]) == (4, 1, None)  # +inf, written as null


def test_ops_partial_poisoning():
    train = shifted_images(n=60, classes=3, size=8, low=1, high=255)
    _, out = generate_poison("ops", train, ratio=0.5)
    changed = (out.x != train.x).flatten(1).any(1)
    assert torch.equal(torch.nonzero(changed).flatten(), out.poisoned_indices)
    assert out.poisoned_indices.numel() == 30
