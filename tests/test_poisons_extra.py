"""Surrogate poisons, second batch: REM/SEM noise really descends the surrogate's loss (and the Danskin
gradient is the gradient it claims to be), class-wise EM averages per class, the official clamp-bug
arithmetic, unchanged CPU random streams."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks.base import PoisonContext
from attacks.em import (
    add_levels,
    build_surrogate,
    derived_generator,
    derived_seed,
    official_clamp_bug_levels,
    uniform,
)
from attacks.rem import random_flip_crop
from benchmark.data import ImageSet
from benchmark.poisoning import build_poison

CPU = torch.device("cpu")


def _images(n: int = 48, classes: int = 4, size: int = 16, low: int = 0, high: int = 256, seed: int = 0) -> ImageSet:
    """Random images whose class is carried by a colour shift (learnable in a few steps)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randint(low, high, (n, 3, size, size), generator=gen)
    shift = (torch.linspace(-20, 20, classes)[y]).view(n, 1, 1, 1)
    x = (x + shift).clamp(low, high - 1).to(torch.uint8)
    return ImageSet(x, y.long(), [f"c{i}" for i in range(classes)])


def _generate(name: str, train: ImageSet, params: dict | None = None, key: int = 3, ratio: float = 1.0,
              workdir: Path | None = None, progress=None):
    spec = build_poison(name, params or {}, key=key, ratio=ratio, preset="smoke")
    ctx = PoisonContext(key=key, ratio=ratio, preset="smoke", workdir=workdir, progress=progress,
                        num_classes=train.num_classes)
    return spec.poison, spec.poison.generate(train, ctx)


def _fitted_surrogate(poison, train: ImageSet, steps: int = 40) -> nn.Module:
    """The poison's own (centered) small-cnn surrogate after a few real SGD steps on flipped + cropped
    batches (so its loss under the EOT augmentation is meaningful), frozen in eval mode."""
    model, _ = poison.build(train.num_classes, 3, key=0, device=CPU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    x, y, gen = train.x.float() / 255, train.y, torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = F.cross_entropy(model(random_flip_crop(x, gen, poison.params.crop_pad)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ----------------------------------------------------------------------- REM / SEM noise descends

REM_SEM_SMALL = {"u_steps": 6, "u_step_size": 2 / 255, "eot_samples": 2, "pgd_steps": 2, "pgd_step_size": 1 / 255}


@torch.no_grad()
def _eot_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, pad: int, samples: int = 8) -> float:
    """The surrogate's loss on x averaged over fixed random flips + crops (the EOT expectation)."""
    losses = [F.cross_entropy(model(random_flip_crop(x, torch.Generator().manual_seed(1000 + s), pad)), y)
              for s in range(samples)]
    return float(torch.stack(losses).mean())


@pytest.mark.parametrize("name", ["rem", "sem"])
def test_crafted_noise_lowers_the_surrogate_eot_loss(name: str) -> None:
    """craft_noise must *descend*: its stored (quantised) noise lowers the surrogate's EOT loss below the
    clean loss and below random noise of the same budget. A flipped sign climbs the loss and fails."""
    poison = build_poison(name, REM_SEM_SMALL, preset="smoke").poison
    train = _images(64, size=16, low=30, high=226)
    model = _fitted_surrogate(poison, train)
    x, y, pad = train.x.float() / 255, train.y, poison.params.crop_pad
    crafted = poison.quantize(poison.craft_noise(model, x, y, torch.Generator().manual_seed(7))).float() / 255
    rand = poison.quantize(uniform(x.shape, poison.params.rho_u, torch.Generator().manual_seed(8), CPU)).float() / 255
    assert float(crafted.abs().max()) <= poison.budget_255() / 255 + 1e-7
    clean_loss = _eot_loss(model, x, y, pad)
    crafted_loss = _eot_loss(model, (x + crafted).clamp(0, 1), y, pad)
    random_loss = _eot_loss(model, (x + rand).clamp(0, 1), y, pad)
    # measured: REM 1.1 -> 0.2, SEM 0.8 -> 0.3 (random noise: no change); a flipped sign climbs above clean
    assert crafted_loss < 0.6 * clean_loss, (crafted_loss, clean_loss)
    assert crafted_loss < 0.6 * random_loss, (crafted_loss, random_loss)


@pytest.mark.parametrize("name", ["rem", "sem"])
def test_eot_gradient_is_the_danskin_gradient(name: str) -> None:
    """eot_gradient = ∇δ CE(f(T(x+δ) + c)) with c = δa frozen at its value (Danskin), checked against
    autograd on that expression with the same T and c, and against finite differences (float64)."""
    poison = build_poison(name, REM_SEM_SMALL, preset="smoke").poison
    train = _images(8, size=8, low=60, high=196)  # far from 0/1: clamp(x + δ) stays inactive
    model = _fitted_surrogate(poison, train, steps=5).double()
    k, pad = poison.params.eot_samples, poison.params.crop_pad
    x, y = train.x.double() / 255, train.y
    x_rep, y_rep = x.repeat(k, 1, 1, 1), y.repeat(k)
    delta = uniform(x.shape, poison.params.rho_u, torch.Generator().manual_seed(3), CPU).double()
    grad = poison.eot_gradient(model, x_rep, y_rep, delta, torch.Generator().manual_seed(5))

    # the same draws: T's flip/crop come first in the stream, then the inner perturbation's
    gen = torch.Generator().manual_seed(5)
    x_def = random_flip_crop((x_rep + delta.repeat(k, 1, 1, 1)).clamp(0, 1), gen, pad)
    const = poison.inner_perturbation(model, x_def, y_rep, gen) - x_def
    if name == "rem":
        assert float(const.abs().max()) > 0  # PGD moved: the constant matters

    def objective(d: torch.Tensor) -> torch.Tensor:
        t = random_flip_crop((x_rep + d.repeat(k, 1, 1, 1)).clamp(0, 1), torch.Generator().manual_seed(5), pad)
        return F.cross_entropy(model(t + const), y_rep)

    d = delta.clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(objective(d), d)
    torch.testing.assert_close(grad, reference, rtol=1e-9, atol=1e-12)
    # ignoring δa (the loss at T(x+δ) alone) is a different gradient: the check can tell them apart
    if name == "rem":
        d2 = delta.clone().requires_grad_(True)
        t = random_flip_crop((x_rep + d2.repeat(k, 1, 1, 1)).clamp(0, 1), torch.Generator().manual_seed(5), pad)
        (plain,) = torch.autograd.grad(F.cross_entropy(model(t), y_rep), d2)
        assert not torch.allclose(plain, reference)
    flat = reference.flatten()
    for i in torch.argsort(flat.abs(), descending=True)[:5].tolist():
        h = 1e-6
        e = torch.zeros_like(flat)
        e[i] = h
        e = e.view_as(delta)
        with torch.no_grad():
            fd = (objective(delta + e) - objective(delta - e)) / (2 * h)
        assert abs(float(fd) - float(flat[i])) <= 1e-5 * max(1.0, abs(float(fd))) + 1e-9, (i, float(fd), float(flat[i]))


# ---------------------------------------------------------------------------- class-wise EM average

def test_classwise_em_class_noise_is_the_clipped_mean_of_per_sample_steps(tmp_path: Path) -> None:
    """One subset batch, one descent step from zero noise: each class's noise must equal the ±ε-clipped
    per-class *mean* of the per-sample δ = clip(x - α sign ∇CE - x, ±ε) (a sum would clip to ±ε)."""
    train = _images(48, low=30, high=226)
    params = {"max_iters": 1, "stop_error": 0.0, "subset_portion": 1.0, "batch_size": 64, "num_steps": 1,
              "step_size": 3 / 255, "eps": 8 / 255, "checkpoint_every": 1}
    poison, _ = _generate("em-classwise", train, params, key=4, workdir=tmp_path)
    state = torch.load(tmp_path / "state.pt", map_location="cpu", weights_only=True)
    assert int(state["step"]) == 1
    # the surrogate after the θ-steps (the δ-step does not change it), in eval mode as for the descent
    model = build_surrogate("small-cnn", 4, 3, derived_seed(4, "em-classwise", "init"), CPU)
    model.load_state_dict(state["model"])
    model.eval()
    x, y = (train.x.float() / 255).requires_grad_(True), train.y
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    alpha, eps = 3 / 255, 8 / 255
    per_sample = ((x.detach() - alpha * g.sign()) - x.detach()).clamp(-eps, eps)
    expected = torch.stack([per_sample[y == c].mean(0) for c in range(4)]).clamp(-eps, eps)
    torch.testing.assert_close(state["noise"], expected, rtol=0, atol=1e-6)
    assert float(expected.abs().max()) < eps  # the mean stays inside the ball: a clipped sum would not


# ------------------------------------------------------------------------------- EM clamp-bug flag

def _official_dataset(x_u8: torch.Tensor, noise: torch.Tensor) -> np.ndarray:
    """Spec §2.3, the official PoisonCIFAR10 arithmetic (NHWC numpy): perturb.mul(255).clamp_(0, 255);
    data.astype(float32) + noise; np.clip(0, 255); astype(uint8)."""
    perturb = noise.mul(255).clamp_(0, 255).permute(0, 2, 3, 1).numpy()
    data = x_u8.permute(0, 2, 3, 1).numpy().astype(np.float32)
    data = data + perturb
    data = np.clip(data, a_min=0, a_max=255)
    return data.astype(np.uint8)


def test_official_clamp_bug_levels_match_the_official_float32_arithmetic() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 8, 8), generator=gen).to(torch.uint8)
    eps = 8 / 255
    noise = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    # float32 noise whose 255·δ lies just below an integer k: the official float32 sum rounds it up to k
    k = torch.randint(1, 9, x.shape, generator=gen).float()
    below = torch.nextafter(k / 255, torch.zeros(()))
    noise = torch.where(torch.rand(x.shape, generator=gen) < 0.3, below, noise).clamp(-eps, eps)
    ours = add_levels(x, official_clamp_bug_levels(x, lambda sl: noise[sl], chunk=10))
    official = _official_dataset(x, noise)
    assert np.array_equal(ours.permute(0, 2, 3, 1).numpy(), official)
    floor = add_levels(x, torch.floor(noise * 255).clamp(0, 8).to(torch.int16))  # the previous arithmetic
    assert not np.array_equal(floor.permute(0, 2, 3, 1).numpy(), official)

    # the generation paths use it: sample-wise, and class-wise with the class noise indexed by label
    samplewise = build_poison("em", {"official_clamp_bug": True}).poison
    levels = samplewise._image_levels(x, lambda sl: noise[sl], noise)
    assert np.array_equal(add_levels(x, levels).permute(0, 2, 3, 1).numpy(), official)
    poison = build_poison("em-classwise", {"official_clamp_bug": True}).poison
    class_noise = noise[:4]
    y = torch.arange(64) % 4
    levels = poison._image_levels(x, lambda sl: class_noise[y[sl]], class_noise, y)
    assert np.array_equal(add_levels(x, levels).permute(0, 2, 3, 1).numpy(), _official_dataset(x, class_noise[y]))


def test_default_em_quantisation_unchanged_by_the_flag_fix() -> None:
    poison = build_poison("em", {}).poison
    noise = torch.tensor([[-0.02, 0.0101, 3.99 / 255, 8.2 / 255]]).view(1, 1, 2, 2)
    x = torch.full((1, 1, 2, 2), 100, dtype=torch.uint8)
    assert poison._image_levels(x, lambda sl: noise[sl], noise).flatten().tolist() == [-5, 3, 4, 8]


# ------------------------------------------------------------------------------ CPU streams fixed

# sha256 (first 16 hex) of the poisoned images of smoke generations on _images(32), key 3, computed
# with the CPU random streams before the device-generator change: committed CPU results stay valid
CPU_REFERENCE = {"rem": "36e9a363885fd7e3", "sem": "36c5067e0e21cfd0"}


@pytest.mark.parametrize("name", ["rem", "sem"])
def test_cpu_noise_unchanged_by_device_generators(name: str) -> None:
    _, out = _generate(name, _images(32))
    assert hashlib.sha256(out.x.numpy().tobytes()).hexdigest()[:16] == CPU_REFERENCE[name]


def test_cpu_draws_are_the_previous_stream() -> None:
    gen = derived_generator(3, "rem", "step", 0)
    assert gen.device.type == "cpu" and derived_generator(3, "x", device=CPU).device.type == "cpu"
    previous = (torch.rand((4, 5), generator=torch.Generator().manual_seed(derived_seed(3, "rem", "step", 0))) * 2 - 1) * 0.1
    assert torch.equal(uniform((4, 5), 0.1, gen, CPU), previous)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_step_generators_draw_on_the_device() -> None:
    dev = torch.device("cuda")
    gen = derived_generator(3, "rem", "step", 0, device=dev)
    assert gen.device.type == "cuda"
    assert uniform((4, 5), 0.1, gen, dev).device.type == "cuda"
    x = torch.rand(6, 3, 8, 8, device=dev)
    assert random_flip_crop(x, gen).device.type == "cuda"
    train = _images(32)
    spec = build_poison("sem", {}, key=3, ratio=1.0, preset="smoke")
    out = spec.poison.generate(train.to(dev), PoisonContext(key=3, device=dev, preset="smoke", num_classes=4))
    assert out.x.device.type == "cuda" and int((out.x.int() - train.x.to(dev).int()).abs().max()) <= 8
