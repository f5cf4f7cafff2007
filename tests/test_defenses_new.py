"""UEraser, orthogonal projection, DP-InstaHide, poison-aware AT, RSK+FF:
the behaviour that defines each one, on tiny data."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import make_images, run_cli
from scipy.fft import dctn, idctn

from benchmark.data import ImageSet
from benchmark.errors import BenchError
from benchmark.protocol import resolve_protocol
from benchmark.train import augmented_batch
from defenses.base import TrainContext, build_defense, soft_cross_entropy
from defenses.dp_instahide import laplace
from defenses.ortho_proj import fit_linear, linear_accuracy, orthonormal_basis, project
from defenses.poison_aware_at import PoisonAwareATParams, craft_poisons, fake_labels
from defenses.rsk_ff import dct_matrix, lowpass, sharpen, sharpening_kernels


def make_ctx(seed: int = 0, num_classes: int = 10, epochs: int | None = None, size: int = 32,
             channels: int = 3) -> TrainContext:
    proto = resolve_protocol("smoke", {"epochs": epochs}) if epochs else None
    return TrainContext(device=torch.device("cpu"), num_classes=num_classes, in_channels=channels,
                        image_size=(size, size), protocol=proto, seed=seed,
                        generator=torch.Generator().manual_seed(seed))


def tiny_cnn(num_classes: int = 4, channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, num_classes))


def onehot_batch(n: int = 16, classes: int = 4, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    imgs = make_images(n, classes, size, seed=seed)
    return imgs.x.float() / 255, F.one_hot(imgs.y, classes).float()


# ---------------------------------------------------------------------------------------- UEraser

def test_ueraser_trains_on_each_images_max_loss_view() -> None:
    pytest.importorskip("kornia")
    x, y = onehot_batch()
    model = tiny_cnn()
    outputs: list[torch.Tensor] = []

    def keep(module: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        if out.requires_grad:
            out.retain_grad()
        outputs.append(out)

    model.register_forward_hook(keep)
    ueraser = build_defense("ueraser", {"adv_fraction": "1"}).components[0]
    global_state = torch.get_rng_state()
    loss, logits = ueraser.loss(model, x, y, make_ctx(3, 4, epochs=4))
    assert torch.equal(torch.get_rng_state(), global_state)  # kornia ran on a forked, seeded generator
    loss.backward()
    views = ueraser.views(x, 5, make_ctx(3, 4, epochs=4))  # the same draws: seeded by the run's generator
    assert views.shape == (5 * 16, 3, 16, 16)
    assert not torch.equal(views[:16], views[16:32])  # K independent augmentations
    all_logits = outputs[0]
    assert all_logits.shape == (80, 4)  # all K*B views in one forward (one set of BatchNorm statistics)
    with torch.no_grad():
        assert torch.equal(model(views), all_logits)  # the loss saw exactly these views
    per_view = (-(y.repeat(5, 1) * F.log_softmax(all_logits.detach(), 1)).sum(1)).view(5, 16)
    worst = per_view.max(0)
    assert torch.allclose(loss, worst.values.mean(), atol=1e-6)
    assert float(worst.values.mean()) > float(per_view.mean()) + 1e-3  # the max view, not the average
    picked = worst.indices * 16 + torch.arange(16)
    assert torch.equal(logits, all_logits[picked])
    # the gradient flows through each image's worst view only
    grad = all_logits.grad
    is_worst = torch.zeros(80, dtype=torch.bool)
    is_worst[picked] = True
    assert float(grad[~is_worst].abs().max()) == 0 and bool((grad[is_worst].abs().sum(1) > 0).all())


def test_ueraser_schedule_lite_standard_max() -> None:
    pytest.importorskip("kornia")
    x, y = onehot_batch(8)
    seen: list[int] = []
    model = tiny_cnn()
    model.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    for params, per_epoch in [({}, {0: 5, 1: 5, 2: 1}),  # standard: the first ceil(0.25 * 5) = 2 epochs
                              ({"adv_fraction": "1"}, {0: 5, 4: 5}),  # Max
                              ({"repeats": "1"}, {0: 1})]:  # Lite
        ueraser = build_defense("ueraser", params).components[0]
        seen.clear()
        ctx = make_ctx(0, 4, epochs=5)
        for epoch in per_epoch:
            ctx.epoch = epoch
            ueraser.loss(model, x, y, ctx)
        assert seen == [8 * k for k in per_epoch.values()]
    assert build_defense("ueraser", {"repeats": "1"}).variant() == "ueraser (lite)"
    assert build_defense("ueraser", {"adv_fraction": "1"}).variant() == "ueraser (max)"


def test_ueraser_paper_preset_is_the_official_recipe_and_cpu_scales() -> None:
    """paper: the official LSP script's optimisation (200 epochs, batch 128, SGD 0.01 momentum 0.9 without
    Nesterov, wd 5e-4, lr /10 at epoch 100 and /100 at 150) and its adversarial phase, the first 50 epochs;
    cpu: the run's protocol, K views in the first ceil(0.25 * 15) = 4 epochs, and its records unchanged."""
    pytest.importorskip("kornia")
    from benchmark.train import lr_at

    paper = build_defense("ueraser", preset="paper")
    assert paper.components[0].params.recipe == "official" and paper.record()["params"]["recipe"] == "official"
    proto = paper.adjust_protocol(resolve_protocol("paper"))
    assert (proto.epochs, proto.batch_size, proto.lr, proto.momentum, proto.nesterov, proto.weight_decay,
            proto.grad_clip) == (200, 128, 0.01, 0.9, False, 5e-4, 0.0)
    lrs = [lr_at(proto, e * 390 + 7, 390) for e in (0, 99, 100, 149, 150, 199)]
    assert lrs == pytest.approx([0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4])
    ctx = make_ctx(0, 10)
    ctx.protocol = resolve_protocol("paper")  # the run's protocol (100 epochs); the recipe trains 200
    assert paper.components[0].adversarial_epochs(ctx) == 50
    cpu = build_defense("ueraser", preset="cpu")
    assert "recipe" not in cpu.record()["params"]  # the earlier records' params: run ids unchanged
    cpu_proto = resolve_protocol("cpu")
    assert cpu.adjust_protocol(cpu_proto) == cpu_proto
    ctx.protocol = cpu_proto
    assert cpu.components[0].adversarial_epochs(ctx) == 4


def test_ueraser_without_kornia_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, bench_env: dict,
                                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "kornia", None)  # import kornia now raises ImportError
    monkeypatch.setitem(sys.modules, "kornia.augmentation", None)
    with pytest.raises(BenchError, match=r"pip install '\.\[kornia\]'"):
        build_defense("ueraser")
    code, _, err = run_cli(["run", "--preset", "smoke", "--poison", "cuda", "--defense", "ueraser"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "kornia" in err
    assert not list(bench_env["results"].glob("*.json"))  # failed before any work


# ------------------------------------------------------------------------------ orthogonal projection

def classwise_poison(n: int = 400, classes: int = 4, size: int = 8, seed: int = 0) -> tuple[ImageSet, torch.Tensor]:
    """Random images whose only class signal is an additive class-wise +-24 grey-level pattern
    (returned too)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    base = torch.randint(64, 192, (n, 3, size, size), generator=gen)
    pattern = (torch.randint(0, 2, (classes, 3, size, size), generator=gen) * 2 - 1) * 24
    images = ImageSet((base + pattern[y]).clamp(0, 255).to(torch.uint8), y, [f"c{i}" for i in range(classes)])
    return images, pattern


@pytest.mark.parametrize("center", [False, True])
def test_ortho_proj_removes_the_linear_models_class_directions(center: bool) -> None:
    train, pattern = classwise_poison()
    # batch 16: about as many SGD steps on 400 images as the official batch 1024 takes on CIFAR-10
    ortho = build_defense("ortho-proj", {"batch_size": "16", "center": str(center)}).components[0]
    ctx = make_ctx(0, 4, size=8)
    projected = ortho.prepare(train, ctx)
    stats = ortho.evaluate(nn.Identity(), train, ctx)
    assert projected.x.dtype == torch.uint8 and projected.x.shape == train.x.shape
    assert torch.equal(projected.y, train.y)
    assert stats["linear_train_acc"] == 100  # the class-wise pattern is linearly separable
    # the fitted model is at chance afterwards (4 classes; +-2.2 % binomial noise on 400 images)
    assert stats["linear_acc_projected"] <= 25 + 5
    q = ortho.basis
    assert stats["clipped_fraction"] < 0.01  # stored as x - QQ^T (x - m): pixels stay near [0, 255]
    x01 = train.x.flatten(1).float() / 255
    seen = ortho.before_crop(projected.x, ctx)  # what the crop/flip and the model get
    if center:  # x' = x - QQ^T (x - m): every image keeps the mean image's component along Q
        assert torch.equal(seen, projected.x)
        seen01, want = seen.flatten(1).float() / 255, (x01.mean(0) @ q).expand(len(train), -1)
    else:  # the official x' = x - QQ^T x, as floats: no component along Q is left (up to uint8 rounding)
        assert seen.dtype == torch.float32
        seen01, want = seen.flatten(1), torch.zeros(len(train), q.shape[1])
        exact = x01 - (x01 @ q) @ q.T
        assert float((seen01 - exact).abs().max()) <= 0.5 / 255 + 1e-5  # the uint8 rounding of the stored image
    unclipped = ((projected.x > 0) & (projected.x < 255)).flatten(1).all(1)
    assert torch.allclose(seen01[unclipped] @ q, want[unclipped], atol=0.5 / 255 * float(q.abs().sum(0).max()))
    # the projection removes most of each class pattern (beyond a shift shared by all images) ...
    shift = (projected.x.float() - train.x.float()).flatten(1)
    shift = shift - shift.mean(0)
    removed = pattern.flatten(1).float() - pattern.flatten(1).float().mean(0)
    kept = torch.stack([(removed[c] + shift[train.y == c].mean(0)).norm() / removed[c].norm() for c in range(4)])
    assert float(kept.max()) < 0.35, kept
    # ... so a fresh linear model fitted on half of the projected set (same recipe) is near chance on
    # the other half (4 classes; on the unprojected images the fit above is perfect)
    half = len(train) // 2
    w, _ = fit_linear(projected.x[:half], train.y[:half], 4, ortho.params, make_ctx(1, 4, size=8))
    held_out = linear_accuracy(projected.x[half:], train.y[half:], w, torch.device("cpu"))
    assert held_out < 50, held_out


def test_ortho_proj_official_projection_is_sequential_subtraction() -> None:
    """center=false is utils_projection.project_data(use_q_matrix=True): subtract each q in turn."""
    train, _ = classwise_poison(64, size=4)
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 48, generator=gen)
    q = orthonormal_basis(weight)
    assert torch.allclose(q.T @ q, torch.eye(4), atol=1e-5)
    data = train.x.flatten(1).double().numpy() / 255
    qs = np.linalg.qr((weight / weight.norm(dim=1, keepdim=True)).double().numpy().T)[0].T
    for vec in qs:  # the official loop
        data = data - (data @ vec).reshape(-1, 1) * vec.reshape(1, -1)
    want = torch.from_numpy(np.clip(np.round(data * 255), 0, 255)).view_as(train.x)
    got, clipped = project(train.x, q, None)
    assert (got.int() - want.int()).abs().max() <= 1  # float32 vs float64 rounding at .5
    assert clipped == int(((data * 255 < -0.5) | (data * 255 > 255.5)).sum())
    # and the removed subspace really is gone before rounding: W x' = 0
    assert np.abs(data @ weight.double().numpy().T).max() < 1e-6


# ------------------------------------------------------------------------------------ DP-InstaHide

@pytest.mark.parametrize("weights", ["dirichlet", "uniform"])
def test_dp_instahide_mixes_k_sources_and_adds_laplace_noise(weights: str) -> None:
    n, k, scale = 256, 4, 16 / 255
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.eye(n)  # image i has its own class: the soft labels show each output's sources and weights
    dp = build_defense("dp-instahide", {"weights": weights, "clip": "false", "noise_clamp": "false"})
    xm, ym = dp.batch(x, y, make_ctx(0, n))
    assert torch.allclose(ym.sum(1), torch.ones(n), atol=1e-6)
    sources = (ym > 0).sum(1)
    assert int(sources.max()) == k and float((sources == k).float().mean()) > 0.9  # k permutations (rare collisions)
    if weights == "uniform":
        assert torch.allclose(ym[ym > 0] * k, (ym[ym > 0] * k).round(), atol=1e-5)  # multiples of 1/k
    noise = (xm - (ym @ x.flatten(1)).view_as(x)).flatten()
    # Laplace(0, b): E|n| = b (the MLE of b), variance 2 b^2, excess kurtosis 3 (a Gaussian has 0)
    assert abs(float(noise.abs().mean()) / scale - 1) < 0.01
    assert abs(float(noise.var()) / (2 * scale**2) - 1) < 0.03
    kurt = float(((noise - noise.mean()) ** 4).mean() / noise.var() ** 2) - 3
    assert 2.6 < kurt < 3.4
    assert abs(float(noise.mean())) < 0.01 * scale
    # seeded: the same run generator gives the same batch, another seed another
    again = dp.batch(x, y, make_ctx(0, n))[0]
    assert torch.equal(xm, again) and not torch.equal(xm, dp.batch(x, y, make_ctx(1, n))[0])


def test_dp_instahide_clamp_clip_and_epsilon() -> None:
    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.eye(64)
    # the default clamps each noise value to +-b, as forest's _init_perturbation does
    xm, ym = build_defense("dp-instahide", {"clip": "false"}).batch(x, y, make_ctx(0, 64))
    noise = xm - (ym @ x.flatten(1)).view_as(x)
    assert float(noise.abs().max()) <= 16 / 255 + 1e-6
    assert float((noise.abs() > 16 / 255 - 1e-6).float().mean()) == pytest.approx(np.exp(-1), abs=0.02)  # P(|n| > b)
    xu, yu = build_defense("dp-instahide", {"noise_clamp": "false", "clip": "false"}).batch(x, y, make_ctx(0, 64))
    assert float((xu - (yu @ x.flatten(1)).view_as(x)).abs().max()) > 3 * 16 / 255  # unbounded tails
    xc, _ = build_defense("dp-instahide").batch(x, y, make_ctx(0, 64))
    assert float(xc.min()) >= 0 and float(xc.max()) <= 1
    ctx = make_ctx(0, 10, size=32)
    d = 3 * 32 * 32
    uniform = build_defense("dp-instahide", {"weights": "uniform", "ways": "4", "scale": "8/255", "noise_clamp": "false"})
    assert uniform.evaluate(nn.Identity(), None, ctx)["dp_epsilon_own_bound"] == pytest.approx(d / 4 / (8 / 255), abs=0.1)
    unclamped = build_defense("dp-instahide", {"noise_clamp": "false"})
    assert unclamped.evaluate(nn.Identity(), None, ctx)["dp_epsilon_own_bound"] == \
        pytest.approx(d / (16 / 255), abs=0.1)  # a Dirichlet weight can approach 1: no k-fold gain
    assert build_defense("dp-instahide").evaluate(nn.Identity(), None, ctx) == {"dp_epsilon_own_bound": None}
    big = laplace(torch.Size([200_000]), 0.5, make_ctx(5))
    assert torch.isfinite(big).all()


# ------------------------------------------------------------------------------ poison-aware AT

def pretrained_tiny(seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    x, y = onehot_batch(64, 4, 16, seed=seed)
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(5):
        loss = soft_cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x, y


@pytest.mark.parametrize("seed", [0, 1])
def test_poison_aware_at_poisons_raise_the_alignment_within_budget(seed: int) -> None:
    model, x, y = pretrained_tiny(seed)
    p = PoisonAwareATParams()
    x_p, y_p, x_t = x[:32], y[:32], x[32:]
    y_fake = fake_labels(y_p, 32, 4)
    assert (y_fake.argmax(1) == torch.bincount(y_p.argmax(1)).argmax()).all()
    before = [q.detach().clone() for q in model.parameters()]
    delta, trace = craft_poisons(model, x_p, y_p, x_t, y_fake, p, torch.Generator().manual_seed(seed),
                                 final_objective=True)
    assert len(trace) == p.steps + 1
    assert all(b < a for a, b in zip(trace, trace[1:], strict=False))  # the attack objective falls every step
    assert trace[-1] < trace[0] - 0.01
    assert float(delta.abs().max()) <= p.eps + 1e-6 and float(delta.abs().max()) > 0.5 * p.eps
    assert float((x_p + delta).min()) >= 0 and float((x_p + delta).max()) <= 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_poison_aware_at_loss_hook_keeps_order_and_module_modes() -> None:
    model, x, y = pretrained_tiny(0)
    model.train()
    model[1].eval()  # e.g. a frozen BatchNorm: must stay frozen
    defense = build_defense("poison-aware-at", {"steps": "2", "fraction": "0.25"})
    loss, logits = defense.loss(model, x, y, make_ctx(0, 4))
    assert model.training and not model[1].training
    assert logits.shape == (64, 4)
    with torch.no_grad():
        model.eval()
        clean_targets = model(x[16:])
        model.train()
        model[1].eval()
    # the last 48 images (the targets) are trained on unperturbed, the first 16 are perturbed
    model.eval()
    assert torch.allclose(model(x[16:]), clean_targets)
    assert torch.isfinite(loss) and loss.requires_grad


# -------------------------------------------------------------------------------------------- RSK+FF

def test_dct_lowpass_matches_scipy_and_separates_frequencies() -> None:
    d = dct_matrix(30, dtype=torch.float64)
    assert torch.allclose(d @ d.T, torch.eye(30, dtype=torch.float64), atol=1e-12)
    img = torch.rand(2, 3, 30, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    coeff = dctn(img.numpy(), axes=(-2, -1), norm="ortho")
    assert np.allclose((d @ img @ d.T).numpy(), coeff)
    masked = np.zeros_like(coeff)
    masked[..., :9, :9] = coeff[..., :9, :9]  # int(30 * 30 / 100) = 9 rows and columns
    want = np.clip(idctn(masked, axes=(-2, -1), norm="ortho"), 0, 1)
    assert np.allclose(lowpass(img, 30).numpy(), want)
    i = torch.arange(30, dtype=torch.float32)

    def basis(k: int) -> torch.Tensor:  # 0.5 + 0.3 * (the 2-D DCT basis image of frequency (k, k))
        row = torch.cos(torch.pi * (2 * i + 1) * k / 60)
        return (0.5 + 0.3 * row[:, None] * row[None, :]).expand(1, 3, 30, 30)

    assert torch.allclose(lowpass(basis(8), 30), basis(8), atol=1e-5)  # frequency 8 < 9: kept
    assert float((lowpass(basis(9), 30) - 0.5).abs().max()) < 1e-5  # frequency 9: removed
    assert float((lowpass(basis(25), 30) - 0.5).abs().max()) < 1e-5


def test_rsk_kernels_are_per_image_and_sharpen_like_the_official_conv() -> None:
    k = sharpening_kernels(20000, 2.5, True, torch.Generator().manual_seed(0))
    assert abs(float(k[:, 0].mean()) - 2.5) < 0.005 and abs(float(k[:, 0].std()) - 0.1) < 0.005
    resid = k[:, 1:] - (k[:, :1] - 1) / 4
    assert abs(float(resid.mean())) < 0.005 and abs(float(resid.std()) - 0.1) < 0.005
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    kern = sharpening_kernels(6, 2.5, True, torch.Generator().manual_seed(2))
    out = sharpen(x, kern)
    assert out.shape == (6, 3, 30, 30)
    for i in range(6):  # official: conv2d(im, [[0,-n1,0],[-n2,c,-n3],[0,-n4,0]] per channel, groups=3).clamp(0,1)
        c, n1, n2, n3, n4 = kern[i].tolist()
        weight = torch.tensor([[0, -n1, 0], [-n2, c, -n3], [0, -n4, 0]]).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
        assert torch.allclose(out[i], F.conv2d(x[i:i + 1], weight, groups=3)[0].clamp(0, 1), atol=1e-6)
    assert len({tuple(r) for r in kern.tolist()}) == 6  # a kernel per image
    fixed = sharpening_kernels(3, 2.5, False, None)
    assert torch.equal(fixed, torch.tensor([[2.5, 0.375, 0.375, 0.375, 0.375]] * 3))


def test_rsk_ff_crop_filter_order_batch_hook_output() -> None:
    """order=crop-filter (the earlier order): the batch hook filters the cropped batch and zero-pads back."""
    x, y = onehot_batch(8, 4, 32)
    old = build_defense("rsk-ff", {"order": "crop-filter"})
    assert torch.equal(old.before_crop(x, make_ctx(0, 4)), x)
    out, y2 = old.batch(x, y, make_ctx(0, 4))
    assert out.shape == x.shape and torch.equal(y, y2)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert float(out[..., border].abs().max()) == 0  # the 30x30 result, zero-padded by one pixel
    inner = out[..., 1:-1, 1:-1].double()
    d = dct_matrix(30, dtype=torch.float64)
    coeff = d @ inner @ d.T
    high = coeff.clone()
    high[..., :9, :9] = 0
    assert float(high.pow(2).sum() / coeff.pow(2).sum()) < 0.01  # low-passed (up to the final clamp)
    again, _ = old.batch(x, y, make_ctx(0, 4))
    assert torch.equal(out, again)
    assert build_defense("rsk-ff", {"kernel": "fixed"}).variant() == "rsk-ff (ssk+ff)"
    assert build_defense("rsk-ff", {"ff_percentage": "100"}).variant() == "rsk-ff (rsk)"


def test_rsk_ff_filters_the_full_image_then_crops() -> None:
    """The official order, through the trainer's batch path: a constant grey image is sharpened and
    low-passed at 32 x 32 (still one grey per image, 30 x 30), then cropped with padding 4 and flipped,
    so every pixel is exactly the crop's zero padding or that grey, in one box of the 30 x 30 result
    shifted by up to 3 px (offsets 0..6 of the padded 38 x 38). Cropping first (order=crop-filter)
    sharpens and low-passes the black crop border: values between 0 and the grey appear."""
    x = torch.full((64, 3, 32, 32), 128, dtype=torch.uint8)
    ctx = make_ctx(0, 4, epochs=1)
    assert ctx.protocol.augment
    rsk = build_defense("rsk-ff")
    filtered = rsk.before_crop(x, ctx)
    assert filtered.shape == (64, 3, 30, 30) and filtered.dtype == torch.float32
    out = augmented_batch(x, rsk, make_ctx(0, 4, epochs=1), True)
    assert out.shape == (64, 3, 32, 32)
    grey = out.flatten(1).amax(1).view(-1, 1, 1, 1)
    assert float(grey.min()) > 0.3
    inside = out > 0
    assert torch.allclose(out[inside], grey.expand_as(out)[inside], atol=1e-4)  # zero or the grey, nothing between
    rows, cols = inside[:, 0].any(2), inside[:, 0].any(1)
    assert torch.equal(inside[:, 0], rows.unsqueeze(2) & cols.unsqueeze(1))  # one box per image
    assert int(rows.sum(1).min()) >= 27 and int(rows.sum(1).max()) == 30  # 30 rows, up to 3 cut off
    assert len({tuple(r.nonzero().flatten()[[0, -1]].tolist()) for r in rows}) >= 5  # shifted per image
    old = build_defense("rsk-ff", {"order": "crop-filter"})
    ctx_old = make_ctx(0, 4, epochs=1)
    out_old, _ = old.batch(augmented_batch(x, old, ctx_old, True), torch.zeros(64, 4), ctx_old)
    grey_old = out_old.flatten(1).amax(1).view(-1, 1, 1, 1)
    between = (out_old > 0.01) & (out_old < grey_old - 0.01)
    assert float(between.float().mean()) > 0.01


def test_rsk_ff_order_param_keeps_old_records_readable() -> None:
    """order was added after records existed: at its legacy value it is left out of the recorded params
    (old run ids stay), and reading a record without it gives the order those records ran."""
    from benchmark.params import complete_params
    from defenses.rsk_ff import RSKFFParams

    assert "order" not in build_defense("rsk-ff", {"order": "crop-filter"}).record()["params"]
    assert build_defense("rsk-ff").record()["params"]["order"] == "filter-crop"
    old = {"center": 2.5, "kernel": "random", "ff_percentage": 30}
    assert complete_params(RSKFFParams, old)["order"] == "crop-filter"
    assert complete_params(RSKFFParams, {**old, "order": "filter-crop"})["order"] == "filter-crop"
