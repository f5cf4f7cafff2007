"""Training-step defenses: PGD adversarial training, DAT (the adaptive deconvolution attack on CUDA)
and random-blur: mechanics, composition, smoke runs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import run_cli

from benchmark.models import SmallCNN
from benchmark.registry import DEFENSES
from defenses.at import pgd
from defenses.base import TrainContext, build_defense
from defenses.dat import class_ce, deconvolve, init_filters, minmax
from defenses.random_blur import blur, random_cuda_filters


def make_ctx(seed: int = 0, num_classes: int = 4) -> TrainContext:
    return TrainContext(device=torch.device("cpu"), num_classes=num_classes, in_channels=3, image_size=(16, 16),
                        seed=seed, generator=torch.Generator().manual_seed(seed))


def trained_model(num_classes: int = 4, steps: int = 30) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A narrow SmallCNN (with BatchNorm) trained a few steps on colour-coded random images, so
    gradients are meaningful; narrow so the file stays fast on two cores."""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(64) % num_classes
    x = (torch.rand(64, 3, 16, 16, generator=gen) * 0.6 + (y.float() / num_classes * 0.4).view(-1, 1, 1, 1))
    torch.manual_seed(0)
    model = SmallCNN(num_classes, 3, widths=(8, 16, 16, 16))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


# --------------------------------------------------------------------------------------------- AT

@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_pgd_stays_in_the_ball_and_in_range_and_raises_the_loss(norm: str, eps: float) -> None:
    model, x, y = trained_model()
    x_adv = pgd(model, x, y, norm, eps, steps=10, step_size=2.5 * eps / 10, gen=torch.Generator().manual_seed(1))
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    with torch.no_grad():
        clean, adv = F.cross_entropy(model(x), y), F.cross_entropy(model(x_adv), y)
    assert float(adv) > float(clean) + 0.05
    # random start: a zero-step attack is already a point of the ball, not x itself
    x0 = pgd(model, x, y, norm, eps, steps=0, step_size=0.0, gen=torch.Generator().manual_seed(1))
    assert not torch.equal(x0, x)


def test_at_loss_attacks_in_eval_mode_and_restores_train_mode() -> None:
    model, x, y = trained_model()
    modes: list[bool] = []
    model.register_forward_pre_hook(lambda m, _inp: modes.append(m.training))
    model.train()
    at = build_defense("at", {"eps": "8/255", "steps": "3"})
    before = [p.detach().clone() for p in model.parameters()]
    loss, logits = at.loss(model, x, F.one_hot(y, 4).float(), make_ctx())
    assert modes == [False, False, False, True]  # 3 attack forwards in eval mode, then the training forward
    assert model.training and torch.isfinite(loss) and logits.shape == (64, 4)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # hook doesn't step
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_at_default_step_size_follows_the_cuda_protocol() -> None:
    from defenses.at import attack_step_size

    at = build_defense("at", {"eps": "4/255"})
    assert attack_step_size(at.components[0].params, 10) == pytest.approx(1.5 * (4 / 255) / 10)


# -------------------------------------------------------------------------------------------- DAT

def test_dat_filters_are_class_wise_clamped_and_output_is_min_max_scaled() -> None:
    model, x, y = trained_model()
    dat = build_defense("adaptive", {"lr": "1000", "bound": "0.05", "steps": "3", "bn_mode": "eval"}).components[0]
    assert dat.name == "dat"
    weight, bias = dat.adversarial_filters(model, x, y, make_ctx())
    assert weight.shape == (4, 7, 7) and bias.shape == (4,)
    # official order: clamp to the box, then step; so the result is the clamped previous filter plus one
    # unclamped step (reproduced by hand here), and the huge step leaves the box
    w, b = init_filters(4, 7, make_ctx().generator, x.device)
    for _ in range(3):
        w, b = w.clamp(-0.05, 0.05).requires_grad_(True), b.clamp(-0.05, 0.05).requires_grad_(True)
        gw, gb = torch.autograd.grad(class_ce(model, deconvolve(x, y, w, b), y, False), (w, b))
        w, b = (w + 1000 * gw).detach(), (b + 1000 * gb).detach()
    assert torch.allclose(weight, w, atol=1e-4) and torch.allclose(bias, b, atol=1e-4)
    assert float(weight.abs().max()) > 0.05
    out = minmax(deconvolve(x, y, weight, bias))
    flat = out.flatten(1)
    assert torch.allclose(flat.min(1).values, torch.zeros(64), atol=1e-6)
    assert torch.allclose(flat.max(1).values, torch.ones(64), atol=1e-6)
    # class-wise: two images of one class filtered alone equal their rows of the batched result
    same = (y == 2).nonzero().flatten()[:2]
    alone = deconvolve(x[same], y[same], weight, bias)
    assert torch.allclose(alone, deconvolve(x, y, weight, bias)[same], atol=1e-6)
    # against a reference per-image transposed convolution
    i = int(same[0])
    ref = F.conv_transpose2d(x[i].unsqueeze(1), weight[2].view(1, 1, 7, 7), padding=3).squeeze(1) + bias[2]
    assert torch.allclose(alone[0], ref, atol=1e-5)


def test_dat_ascent_raises_the_loss() -> None:
    model, x, y = trained_model()
    ctx = make_ctx()
    dat = build_defense("dat", {"steps": "0", "bn_mode": "eval"}).components[0]
    w0, b0 = dat.adversarial_filters(model, x, y, make_ctx())
    dat10 = build_defense("dat", {"steps": "10", "bn_mode": "eval"}).components[0]
    w1, b1 = dat10.adversarial_filters(model, x, y, ctx)
    with torch.no_grad():
        l0 = F.cross_entropy(model(deconvolve(x, y, w0, b0)), y)
        l1 = F.cross_entropy(model(deconvolve(x, y, w1, b1)), y)
    assert float(l1) > float(l0)


@pytest.mark.parametrize("official", [False, True])
@pytest.mark.parametrize("bn_mode,forwards", [("class", [16, 16, 16, 16]), ("batch", [64]), ("eval", [64])])
def test_dat_batchnorm_mode_during_the_ascent(bn_mode: str, forwards: list[int], official: bool) -> None:
    model, x, y = trained_model()
    calls: list[tuple[bool, int]] = []
    model.register_forward_pre_hook(lambda m, inp: calls.append((m.training, inp[0].shape[0])))
    model.train()
    bn = model.features[0][1]
    stats = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    dat = build_defense("dat", {"steps": "2", "bn_mode": bn_mode, "official_bn_update": str(official)}).components[0]
    dat.adversarial_filters(model, x, y, make_ctx())
    train = bn_mode != "eval"
    assert calls == [(train, n) for n in forwards] * 2  # 'class': one forward per class, as the official loop
    after = (bn.running_mean, bn.running_var, bn.num_batches_tracked)
    # by default the attack forwards leave BN's running statistics as they were; the official code's
    # train-mode forwards overwrite them
    assert all(torch.equal(a, b) for a, b in zip(stats, after, strict=True)) != (train and official)
    assert model.training and all(q.requires_grad for q in model.parameters())


@pytest.mark.parametrize("official", [False, True])
def test_dat_ascent_numbers_are_those_of_the_plain_per_class_loop(official: bool) -> None:
    """The class-sorted gather in class_ce keeps DAT's numbers bit for bit: default params (s=7, 10 steps,
    per-class BN) against the plain loop that masks each class out of the batch in every step, as the
    official code does; with the official BN update the running statistics match too."""
    import copy

    model, x, y = trained_model()
    model.train()
    y = y[torch.randperm(64, generator=torch.Generator().manual_seed(4))]  # classes interleaved, uneven runs
    y[:5] = 1
    ref_model = copy.deepcopy(model)
    for q in ref_model.parameters():
        q.requires_grad_(False)
    dat = build_defense("dat", {"official_bn_update": str(official)}).components[0]
    weight, bias = dat.adversarial_filters(model, x, y, make_ctx())
    w, b = init_filters(4, 7, make_ctx().generator, x.device)
    for _ in range(10):
        w, b = w.clamp(-5, 5).requires_grad_(True), b.clamp(-5, 5).requires_grad_(True)
        xd = deconvolve(x, y, w, b)
        loss = sum(F.cross_entropy(ref_model(xd[y == c]), y[y == c]) for c in y.unique().tolist())
        gw, gb = torch.autograd.grad(loss, (w, b))
        w, b = (w + 0.1 * gw).detach(), (b + 0.1 * gb).detach()
    assert torch.equal(weight, w) and torch.equal(bias, b)
    if official:
        assert all(torch.equal(u, v) for u, v in zip(model.buffers(), ref_model.buffers(), strict=True))


def test_dat_ascent_keeps_a_frozen_backbone_frozen() -> None:
    """finetune(mode=linear)+dat: BN layers the defense put in eval mode stay in eval mode during and after
    the ascent, and their statistics do not move (even with the official update)."""
    model, x, y = trained_model()
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    stats = [m.running_mean.clone() for m in bns]
    seen: list[bool] = []
    bns[0].register_forward_pre_hook(lambda m, inp: seen.append(m.training))
    dat = build_defense("dat", {"steps": "2", "official_bn_update": "true"}).components[0]
    dat.adversarial_filters(model, x, y, make_ctx())
    assert seen and not any(seen) and not any(m.training for m in bns) and model.training
    assert all(torch.equal(a, m.running_mean) for a, m in zip(stats, bns, strict=True))


def test_dat_loss_hook_trains_on_the_deconvolved_batch() -> None:
    model, x, y = trained_model()
    model.train()
    dat = build_defense("deconvolution", {"steps": "2"})
    loss, logits = dat.loss(model, x, F.one_hot(y, 4).float(), make_ctx())
    assert model.training and torch.isfinite(loss) and logits.shape == (64, 4)
    before = [q.detach().clone() for q in model.parameters()]
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # the training forward saw the min-max scaled deconvolved images, not the clean batch
    with torch.no_grad():
        model.eval()
        assert not torch.allclose(model(x), logits, atol=1e-3)


# ------------------------------------------------------------------------------------ random blur

def test_random_blur_filters_and_output() -> None:
    f = random_cuda_filters(500, 3, 0.1, torch.Generator().manual_seed(0))
    assert f.shape == (500, 3, 3) and torch.all((f == 1.0).sum((1, 2)) >= 1)
    assert float(f[f < 1].max()) < 0.1
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    y = torch.eye(8)
    rb = build_defense("random-blur", {"pb": "0.3"})
    xb, yb = rb.batch(x, y, make_ctx())
    assert xb.shape == x.shape and torch.equal(yb, y)
    assert float(xb.min()) >= 0 and torch.allclose(xb.flatten(1).amax(1), torch.ones(8))
    assert not torch.allclose(xb, x)
    # per image: image 0 blurred alone with its filter gives the same result
    ident = torch.zeros(1, 3, 3)
    ident[0, 1, 1] = 1.0
    assert torch.allclose(blur(x[:1], ident), x[:1] / x[:1].max())


@pytest.mark.parametrize("per", ["image", "batch", "class"])
def test_random_blur_filter_assignment(per: str) -> None:
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3)).expand(8, -1, -1, -1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    xb, _ = build_defense("random-blur", {"per": per}).batch(x, F.one_hot(labels, 4).float(), make_ctx())
    same_class = torch.allclose(xb[0], xb[1]) and torch.allclose(xb[2], xb[3])
    across = torch.allclose(xb[0], xb[2])
    assert (same_class, across) == {"image": (False, False), "batch": (True, True), "class": (True, False)}[per]


# ----------------------------------------------------------------------------- composition / runs

def test_aliases_and_ownership_conflict(bench_env: dict, capsys: pytest.CaptureFixture) -> None:
    assert DEFENSES.canonical("adaptive") == "dat" and DEFENSES.canonical("deconvolution") == "dat"
    stack = build_defense("at+mixup")
    assert [c.name for c in stack.components] == ["at", "mixup"]
    code, _, err = run_cli(["run", "--preset", "smoke", "--poison", "cuda", "--defense", "at+dat"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "'at' and 'dat' both own the training step" in err


@pytest.mark.parametrize("defense,params", [("adaptive", ["steps=2"]), ("at", ["steps=2", "eval_samples=100"]),
                                            ("at+mixup", ["steps=1", "eval_samples=50"]), ("random-blur", [])])
def test_smoke_run_of_each_adaptive_defense(defense: str, params: list[str], bench_env: dict,
                                            capsys: pytest.CaptureFixture) -> None:
    args = ["run", "--preset", "smoke", "--poison", "cuda", "--defense", defense, "--no-baseline",
            "--protocol-param", "epochs=1", "--protocol-param", "train_subset=256"]
    for p in params:
        args += ["--defense-param", p]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    (path,) = bench_env["results"].glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["status"] == "finished" and rec["config"]["defense"]["name"] == build_defense(defense).spec_name
    if defense.startswith("at"):
        assert 0 <= rec["metrics"]["defense"]["robust_acc"] <= 100
        assert "PGD-20 linf" in rec["metrics"]["defense"]["robust_eval"]


def test_at_step_gives_every_module_its_own_mode_back() -> None:
    """A frozen backbone's BatchNorm (fine-tuning's linear probe) stays in eval mode through AT's attack."""
    torch.manual_seed(0)
    model = SmallCNN(4, 3).train()
    frozen_bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)][0]
    frozen_bn.eval()
    ctx = TrainContext(torch.device("cpu"), 4, 3, (16, 16), generator=torch.Generator().manual_seed(0))
    x, y = torch.rand(8, 3, 16, 16), F.one_hot(torch.arange(8) % 4, 4).float()
    build_defense("at", {"steps": 2}).loss(model, x, y, ctx)
    assert not frozen_bn.training
    assert all(m.training for m in model.modules() if m is not frozen_bn)
