"""Every defense changes training the way its paper says, observed in real training steps.

Each case trains a tiny CNN for two real steps (``benchmark.train.train_model``, no crop/flip) on
tiny generated images under one defense and checks what the training step saw: the images and
labels the loss hook got, every forward pass of the model, the loss it returned. Each check also
runs against a no-op stand-in of the same defense (a subclass whose hook returns its input: plain
ERM for a loss owner) and must fail there, so no check passes for a defense that does nothing.

Most cases train on ``distinct_images``: one image per class, so a (mixed) soft label names the
images a training input was made of and their weights.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from imagerefs import pil_jpeg, pil_luma

from benchmark.data import ImageSet
from benchmark.protocol import resolve_protocol
from benchmark.train import train_model
from defenses.base import (
    Defense,
    DefenseStack,
    ImageDefense,
    TrainContext,
    build_defense,
    soft_cross_entropy,
)
from defenses.ortho_proj import fit_linear, orthonormal_basis
from defenses.rsk_ff import dct_matrix

SIZE = 32


def distinct_images(n: int = 8, size: int = SIZE, seed: int = 0) -> ImageSet:
    """``n`` random colour images, image i of class i; pixel values 1..254 (no exact 0 or 1 after /255)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 255, (n, 3, size, size), generator=gen).to(torch.uint8)
    return ImageSet(x, torch.arange(n), [f"c{i}" for i in range(n)])


def classwise_images(n: int = 64, classes: int = 4, size: int = 8, seed: int = 0) -> ImageSet:
    """Random images whose class is carried only by an additive class-wise +-24 grey-level pattern."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    base = torch.randint(64, 192, (n, 3, size, size), generator=gen)
    pattern = (torch.randint(0, 2, (classes, 3, size, size), generator=gen) * 2 - 1) * 24
    return ImageSet((base + pattern[y]).clamp(0, 255).to(torch.uint8), y, [f"c{i}" for i in range(classes)])


class Recorder(nn.Module):
    """A tiny CNN with BatchNorm that records every forward pass (input, train mode, output)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                                 nn.Flatten(), nn.Linear(128, num_classes))
        self.calls: list[tuple[torch.Tensor, bool, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        self.calls.append((x.detach().clone(), self.training, out.detach().clone()))
        return out


@dataclass
class Step:
    """One training step: the batch before and after the batch hooks, and inside the loss hook."""

    x_in: torch.Tensor
    y_in: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    model: nn.Module | None = None  # the model as the step found it (before the loss hook)
    calls: list[tuple[torch.Tensor, bool, torch.Tensor]] = field(default_factory=list)
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None

    def bank(self) -> torch.Tensor:
        """The batch's input images in class order (distinct_images: image j is class j's)."""
        return self.x_in[self.y_in.argmax(1).argsort()]

    def training_input(self) -> torch.Tensor:
        """The input of the last train-mode forward: the batch the optimizer step trains on."""
        return [x for x, training, _ in self.calls if training][-1]


class Spy(DefenseStack):
    """The one-component stack the trainer runs, recording each step."""

    def __init__(self, component: Defense) -> None:
        super().__init__([component])
        self.steps: list[Step] = []

    def batch(self, x, y, ctx):
        x_out, y_out = super().batch(x, y, ctx)
        self.steps.append(Step(x.clone(), y.clone(), x_out.detach().clone(), y_out.detach().clone()))
        return x_out, y_out

    def loss(self, model, x, y, ctx):
        step = self.steps[-1]
        step.model = copy.deepcopy(model)
        model.calls.clear()
        loss, logits = super().loss(model, x, y, ctx)
        step.calls, step.loss, step.logits = list(model.calls), loss.detach(), logits.detach()
        return loss, logits


@dataclass
class Trained:
    train: ImageSet  # the images before the defense
    prepared: ImageSet  # after its data-level hook
    steps: list[Step]
    ctx: TrainContext


def train_two_steps(defense: Defense, train: ImageSet, batch_size: int = 8, seed: int = 0) -> Trained:
    """Prepare ``train`` and train on it for two real steps (two epochs when it is one batch)."""
    epochs = max(1, 2 * batch_size // len(train))
    proto = resolve_protocol("smoke", {"epochs": epochs, "batch_size": batch_size, "augment": False})
    k = len(train.classes)
    ctx = TrainContext(device=torch.device("cpu"), num_classes=k, in_channels=3, image_size=tuple(train.x.shape[-2:]),
                       protocol=proto, seed=seed, generator=torch.Generator().manual_seed(seed))
    spy = Spy(defense)
    prepared = spy.prepare(train, ctx)
    torch.manual_seed(seed)
    train_model(Recorder(k), prepared, prepared, proto, spy, ctx, total_steps=2)
    assert len(spy.steps) == 2
    return Trained(train, prepared, spy.steps, ctx)


def originals(t: Trained, step: Step) -> torch.Tensor:
    """The untransformed uint8 images behind a step's batch rows (distinct_images: by label)."""
    return t.train.x[step.y_in.argmax(1)]


def as_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().to(torch.uint8)


def ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(soft_cross_entropy(model(x), y))


# --------------------------------------------------------------------------------- data level

def check_jpeg(t: Trained) -> None:
    """Training images are the PIL JPEG round trip (quality 10) of the originals."""
    for s in t.steps:
        seen = as_uint8(s.x)
        for i, img in enumerate(originals(t, s)):
            assert torch.equal(seen[i], pil_jpeg(img, 10))


def check_grayscale(t: Trained) -> None:
    """Three equal channels holding PIL's luma of the original."""
    for s in t.steps:
        seen = as_uint8(s.x)
        assert torch.equal(seen[:, 0], seen[:, 1]) and torch.equal(seen[:, 0], seen[:, 2])
        for i, img in enumerate(originals(t, s)):
            want = pil_luma(img)
            assert np.array_equal(seen[i, 0].numpy(), want)


def check_bit_depth(t: Trained) -> None:
    """Only the top 2 bits of each pixel survive: 4 levels, the original rounded down to a multiple of 64."""
    for s in t.steps:
        seen = as_uint8(s.x)
        assert len(torch.unique(seen)) <= 4
        assert torch.equal(seen, originals(t, s) & 0xC0)


def check_gaussian_blur(t: Trained) -> None:
    """torchvision's 3x3 Gaussian blur (sigma 0.8) of the original, within one grey level (float sum order)."""
    from torchvision.transforms.v2.functional import gaussian_blur

    for s in t.steps:
        want = gaussian_blur(originals(t, s), [3, 3], [0.8, 0.8])
        assert int((as_uint8(s.x).int() - want.int()).abs().max()) <= 1


def check_median_filter(t: Trained) -> None:
    """scipy's 3x3 median filter (replicated borders, as cv2.medianBlur) of the original."""
    from scipy.ndimage import median_filter

    for s in t.steps:
        want = median_filter(originals(t, s).numpy(), size=(1, 1, 3, 3), mode="nearest")
        assert np.array_equal(as_uint8(s.x).numpy(), want)


def check_ortho_proj(t: Trained) -> None:
    """The training images have no component, beyond uint8 rounding, along the fitted linear model's class
    directions: the official projection x - QQ^T x, as unclamped floats."""
    refit = TrainContext(device=torch.device("cpu"), num_classes=4, in_channels=3, image_size=(8, 8), seed=0,
                         generator=torch.Generator().manual_seed(0))
    weight, _ = fit_linear(t.train.x, t.train.y, 4, build_defense("ortho-proj").components[0].params, refit)
    q = orthonormal_basis(weight)
    rounding = 0.5 / 255 * q.shape[0] ** 0.5  # the norm of a worst-case rounding error
    for s in t.steps:
        component = s.x.flatten(1) @ q
        assert float(component.norm(dim=1).max()) <= rounding


# -------------------------------------------------------------------------------- batch level

def check_mixup(t: Trained) -> None:
    """Each training image is lam * x_i + (1 - lam) * x_j with the soft label lam * y_i + (1 - lam) * y_j:
    at most two sources, one weight per batch, and most labels soft."""
    for s in t.steps:
        assert torch.allclose(s.y.sum(1), torch.ones(len(s.y)))
        assert int((s.y > 0).sum(1).max()) <= 2
        weights = torch.unique(s.y[s.y > 0].round(decimals=5))
        assert len(weights) <= 3  # lam, 1 - lam and 1 (an image mixed with itself)
        assert float((s.y.max(1).values < 1 - 1e-6).float().mean()) >= 0.5
        mixed = (s.y @ s.bank().flatten(1)).view_as(s.x)
        assert torch.allclose(s.x, mixed, atol=1e-5)


def check_cutmix(t: Trained) -> None:
    """One box per batch pasted from another image; the label weight of the pasted image is the box's
    area share; the rest of each image is unchanged. At least one batch has a non-empty box."""
    h, w = t.steps[0].x.shape[-2:]
    boxes = 0
    for s in t.steps:
        own = s.y_in.argmax(1)
        changed = (s.x != s.x_in).any(1).any(0)  # (H, W) pixels that changed in any image
        rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
        if len(rows) == 0:
            assert torch.equal(s.y, s.y_in)
            continue
        y1, y2, x1, x2 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        area = (y2 - y1) * (x2 - x1) / (h * w)
        boxes += 1
        for i in range(len(s.x)):
            other = s.y[i].clone()
            other[own[i]] = 0
            src = int(other.argmax()) if float(other.sum()) > 0 else int(own[i])
            assert float(s.y[i, own[i]]) == pytest.approx(1 - area if src != own[i] else 1.0, abs=1e-6)
            pasted = s.x_in[i].clone()
            pasted[:, y1:y2, x1:x2] = s.bank()[src][:, y1:y2, x1:x2]
            assert torch.equal(s.x[i], pasted)
    assert boxes > 0


def check_cutout(t: Trained) -> None:
    """Each image has one zeroed square (16 px, clipped at the borders), all channels; the rest unchanged."""
    for s in t.steps:
        zero = (s.x == 0).all(1)
        for i in range(len(s.x)):
            rows, cols = zero[i].any(1).nonzero(), zero[i].any(0).nonzero()
            assert len(rows) > 0
            y1, y2, x1, x2 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
            assert bool(zero[i, y1:y2, x1:x2].all()) and int(zero[i].sum()) == (y2 - y1) * (x2 - x1)
            assert y2 - y1 <= 16 and x2 - x1 <= 16
            assert (y2 - y1 == 16 or y1 == 0 or y2 == SIZE) and (x2 - x1 == 16 or x1 == 0 or x2 == SIZE)
            assert torch.equal(s.x[i][:, ~zero[i]], s.x_in[i][:, ~zero[i]])


def shifted_copies(x: torch.Tensor, k: int) -> torch.Tensor:
    """(C*H*W, k*k) matrix: the zero-padded image shifted by each offset of a k x k window."""
    pad = k // 2
    padded = F.pad(x, (pad, pad, pad, pad))
    h, w = x.shape[-2:]
    return torch.stack([padded[:, i:i + h, j:j + w].flatten() for i in range(k) for j in range(k)], dim=1)


def check_random_blur(t: Trained) -> None:
    """Each image is its own CUDA-like 3x3 filter (one entry 1, the others in [0, 0.3)) applied to all
    channels, divided by the image's max: recovered by least squares from the image before and after."""
    for s in t.steps:
        assert torch.allclose(s.x.flatten(1).amax(1), torch.ones(len(s.x)))
        for i in range(len(s.x)):
            a = shifted_copies(s.x_in[i].double(), 3)
            f = torch.linalg.lstsq(a, s.x[i].double().flatten().unsqueeze(1)).solution.squeeze(1)
            assert torch.allclose(a @ f, s.x[i].double().flatten(), atol=1e-5)
            g = (f / f.max()).sort().values
            assert float(g[-1]) == pytest.approx(1.0) and float(g[0]) > -1e-4 and float(g[-2]) < 0.3 + 1e-4
            assert float(g[:-1].sum()) > 0.05  # not the identity filter


def check_rsk_ff(t: Trained) -> None:
    """Sharpened then low-passed: the 30 x 30 result's DCT energy sits in the lowest 9 rows and columns
    (the clamp to [0, 1] leaks a little), zero-padded back to 32 x 32 (these steps have no crop/flip)."""
    d = dct_matrix(SIZE - 2, dtype=torch.float64)
    for s in t.steps:
        assert float(s.x[..., 0, :].abs().max()) == 0 and float(s.x[..., :, -1].abs().max()) == 0
        coeff = d @ s.x[..., 1:-1, 1:-1].double() @ d.T
        high = coeff[..., 9:, :].pow(2).sum() + coeff[..., :9, 9:].pow(2).sum()
        assert float(high) < 0.01 * float(coeff.pow(2).sum())


def check_dp_instahide(t: Trained) -> None:
    """4-way mixup (one Dirichlet weight vector per batch, labels mixed alike) plus Laplace(0, 16/255)
    noise clamped to +-b (forest): |r| <= b, a share e^-1 of the residuals sits at +-b, and below b the
    residual is Laplace: mean |r| = b (1 - e^-1) and E[r^2] = b^2 (2 - 4 e^-1)."""
    b = 16 / 255
    tail = math.exp(-1)
    for s in t.steps:
        assert torch.allclose(s.y.sum(1), torch.ones(len(s.y)))
        assert int((s.y > 0).sum(1).max()) <= 4 and float(((s.y > 0).sum(1) >= 2).float().mean()) >= 0.5
        mixture = (s.y @ s.bank().flatten(1)).view_as(s.x)
        r = (s.x - mixture)[(mixture > 0.35) & (mixture < 0.65)]  # pixels the clip to [0, 1] all but never reaches
        assert float(r.abs().max()) <= b + 1e-6
        assert float((r.abs() > b - 1e-6).float().mean()) == pytest.approx(tail, rel=0.1)
        assert float(r.abs().mean()) == pytest.approx(b * (1 - tail), rel=0.05)
        assert float(r.pow(2).mean()) == pytest.approx(b**2 * (2 - 4 * tail), rel=0.1)


# --------------------------------------------------------------------------------- loss level

def check_at(t: Trained) -> None:
    """The optimizer step trains on images within the L-inf ball of radius 8/255 around the batch that
    raise the model's loss (eval mode, the model as the step found it), and the loss is theirs."""
    eps = 8 / 255
    for s in t.steps:
        x_adv = s.training_input()
        delta = x_adv - s.x
        assert float(delta.abs().max()) <= eps + 1e-6 and float(delta.abs().max()) > eps / 2
        assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
        s.model.eval()
        assert ce(s.model, x_adv, s.y) > ce(s.model, s.x, s.y)
        assert torch.allclose(s.loss, soft_cross_entropy(s.logits, s.y))


def check_dat(t: Trained) -> None:
    """The optimizer step trains on deconvolved images only: each a 7x7 linear filter of its batch image
    (same on every channel, plus a constant), min-max rescaled to [0, 1], and far from the image."""
    for s in t.steps:
        x_def = s.training_input()
        assert x_def.shape == s.x.shape
        assert torch.allclose(x_def.flatten(1).amin(1), torch.zeros(len(x_def)), atol=1e-6)
        assert torch.allclose(x_def.flatten(1).amax(1), torch.ones(len(x_def)), atol=1e-6)
        assert float((x_def - s.x).abs().mean()) > 0.05
        for i in range(len(x_def)):
            a = torch.cat([shifted_copies(s.x[i].double(), 7), torch.ones(x_def[i].numel(), 1, dtype=torch.double)], 1)
            target = x_def[i].double().flatten()
            fit = a @ torch.linalg.lstsq(a, target.unsqueeze(1)).solution.squeeze(1)
            assert float((fit - target).abs().max()) < 1e-4
        assert torch.allclose(s.loss, soft_cross_entropy(s.logits, s.y))


def param_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.cat([g.flatten() for g in torch.autograd.grad(soft_cross_entropy(model(x), y), params)])


def check_poison_aware_at(t: Trained) -> None:
    """The first half of the batch is perturbed within 16/255 (the rest unchanged), and the perturbation
    raises the cosine between its training gradient and the other half's gradient towards the poisons'
    most frequent label (eval mode, the model as the step found it): Witches' Brew poisons."""
    eps = 16 / 255
    for s in t.steps:
        trained = s.training_input()
        n_p = len(s.x) // 2
        delta = trained[:n_p] - s.x[:n_p]
        assert torch.equal(trained[n_p:], s.x[n_p:])
        assert float(delta.abs().max()) <= eps + 1e-6 and float(delta.abs().max()) > eps / 4
        s.model.eval()
        y_p = s.y[:n_p]
        mode = torch.bincount(y_p.argmax(1), minlength=s.y.shape[1]).argmax()
        fake = F.one_hot(mode.expand(len(s.x) - n_p), s.y.shape[1]).float()
        target = param_grad(s.model, s.x[n_p:], fake)
        before = F.cosine_similarity(param_grad(s.model, s.x[:n_p], y_p), target, dim=0)
        after = F.cosine_similarity(param_grad(s.model, trained[:n_p], y_p), target, dim=0)
        assert float(after) > float(before) + 0.01


def check_ueraser(t: Trained) -> None:
    """In the adversarial epoch the model sees K = 5 augmented views of each image in one forward pass and
    the loss is the mean over images of the largest per-view loss; afterwards one view."""
    for s, k in zip(t.steps, (5, 1), strict=True):
        ((views, training, out),) = s.calls
        n = len(s.x)
        assert training and views.shape[0] == k * n
        assert float((views.view(k, n, -1) - s.x.view(1, n, -1)).abs().mean()) > 0.01  # augmented
        per = -(s.y.repeat(k, 1) * F.log_softmax(out, 1)).sum(1).view(k, n)
        assert torch.allclose(s.loss, per.max(0).values.mean(), atol=1e-6)
        assert torch.equal(s.logits, out.view(k, n, -1)[per.argmax(0), torch.arange(n)])


CHECKS = [check_jpeg, check_grayscale, check_bit_depth, check_gaussian_blur, check_median_filter, check_ortho_proj,
          check_mixup, check_cutmix, check_cutout, check_random_blur, check_rsk_ff, check_dp_instahide, check_at,
          check_dat, check_poison_aware_at, check_ueraser]
CASES = {fn.__name__.removeprefix("check_").replace("_", "-"): fn for fn in CHECKS}
PARAMS = {"cutmix": {"p": "1"}, "ueraser": {"adv_fraction": "0.5"}}  # every batch cut-mixed; one adversarial epoch
DATA = {"ortho-proj": classwise_images}  # a linear shortcut for the fit to find


def no_op(defense: Defense) -> Defense:
    """The same defense with its hook returning its input (plain ERM for the training step)."""
    cls = type(defense)
    if isinstance(defense, ImageDefense):
        hooks: dict[str, object] = {"transform_images": lambda self, x: x}
    elif cls.owns("loss"):
        hooks = {"loss": Defense.loss}
    else:
        hooks = {"batch": Defense.batch, "before_crop": Defense.before_crop}
    stand_in = type(f"NoOp{cls.__name__}", (cls,), hooks)(defense.params)
    stand_in.name = defense.name
    return stand_in


@pytest.mark.parametrize("stand_in", ["real", "no-op"])
@pytest.mark.parametrize("name", list(CASES))
def test_defense_changes_training_as_specified(name: str, stand_in: str) -> None:
    if name == "ueraser":
        pytest.importorskip("kornia")
    defense = build_defense(name, PARAMS.get(name, {})).components[0]
    trained = train_two_steps(defense if stand_in == "real" else no_op(defense), DATA.get(name, distinct_images)())
    if stand_in == "real":
        CASES[name](trained)
    else:
        with pytest.raises(AssertionError):
            CASES[name](trained)
