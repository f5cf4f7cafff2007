"""Batch-level defenses: mixup, CutMix, cutout, randomized smoothing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import smoke_run

from benchmark.data import ImageSet
from benchmark.errors import BenchError
from benchmark.evaluate import predictions
from benchmark.mixing import sample_dirichlet
from defenses.base import TrainContext, build_defense, soft_cross_entropy
from defenses.cutmix import cutmix_box
from defenses.smoothing import certify, predict, vote_scores


def make_ctx(seed: int = 0, num_classes: int = 10) -> TrainContext:
    return TrainContext(device=torch.device("cpu"), num_classes=num_classes, in_channels=3, image_size=(32, 32),
                        seed=seed, generator=torch.Generator().manual_seed(seed))


def one_batch(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random [0,1] images with identity soft labels (image i has its own class i)."""
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 100))
    return x, torch.eye(n)


# ------------------------------------------------------------------------------------------ mixup

@pytest.mark.parametrize("ways", [2, 4])
def test_mixup_mixes_images_and_labels_with_the_same_weights(ways: int) -> None:
    x, y = one_batch()
    mixup = build_defense("mixup", {"ways": str(ways)})
    xm, ym = mixup.batch(x, y, make_ctx())
    assert xm.shape == x.shape and ym.shape == y.shape
    assert torch.allclose(ym.sum(1), torch.ones(len(y)), atol=1e-6)  # soft labels sum to 1
    assert torch.allclose(xm.flatten(1), ym @ x.flatten(1), atol=1e-5)  # x~ = sum_j w_ij x_j
    # one weight vector per batch: every row holds the same multiset of weights (up to merged equal perms)
    assert int((ym > 0).sum(1).max()) <= ways
    w_first = ym.diagonal()  # the identity component's weight is the first Dirichlet weight
    rows_without_collision = (ym > 0).sum(1) == ways
    assert rows_without_collision.any()
    assert torch.allclose(w_first[rows_without_collision], w_first[rows_without_collision][0].expand(
        int(rows_without_collision.sum())))
    if ways == 2:  # mixed image = lam*x + (1-lam)*x[perm]
        lam = float(w_first[rows_without_collision][0])
        perm = torch.where(rows_without_collision, (ym - torch.diag(ym.diagonal())).argmax(1), torch.arange(len(y)))
        assert torch.allclose(xm, lam * x + (1 - lam) * x[perm], atol=1e-5)


def test_mixup_seeded_and_beta_distribution() -> None:
    x, y = one_batch()
    a = build_defense("mixup").batch(x, y, make_ctx(3))
    b = build_defense("mixup").batch(x, y, make_ctx(3))
    c = build_defense("mixup").batch(x, y, make_ctx(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    ctx = make_ctx(0)
    for alpha, var in [(1.0, 1 / 12), (0.2, 1 / (4 * 1.4))]:  # Var Beta(a, a) = 1 / (4 (2a + 1))
        lams = torch.tensor([sample_dirichlet(ctx.generator, alpha, 2)[0] for _ in range(600)])
        assert abs(float(lams.mean()) - 0.5) < 0.05
        assert abs(float(lams.var()) - var) < 0.02


def test_mixup_bad_params_rejected() -> None:
    with pytest.raises(BenchError, match="alpha"):
        build_defense("mixup", {"alpha": "0"})
    with pytest.raises(BenchError, match="ways"):
        build_defense("mixup", {"ways": "1"})


# ----------------------------------------------------------------------------------------- CutMix

def test_cutmix_box_matches_reference_rand_bbox() -> None:
    assert cutmix_box(0.75, 32, 32, 16, 16) == (8, 24, 8, 24)  # side int(32 * sqrt(.25)) = 16
    assert cutmix_box(0.75, 32, 32, 0, 31) == (0, 8, 23, 32)  # clipped at the borders
    assert cutmix_box(1.0, 32, 32, 5, 5) == (5, 5, 5, 5)  # lam = 1: empty box


def test_cutmix_label_weight_is_one_minus_box_area() -> None:
    n = 16
    x = torch.arange(1, n + 1, dtype=torch.float32).div(n + 1).view(n, 1, 1, 1).expand(n, 3, 32, 32).contiguous()
    y = torch.eye(n)
    cutmix = build_defense("cutmix", {"p": "1"})
    ctx = make_ctx(1)
    areas = []
    for _ in range(10):
        xm, ym = cutmix.batch(x, y, ctx)
        assert torch.allclose(ym.sum(1), torch.ones(n), atol=1e-6)
        moved = (xm != x).any(1)  # (N, H, W): pixels pasted from another image
        box = moved.any(0)
        if not box.any():
            continue  # empty box (lam ~ 1)
        rows, cols = box.any(1), box.any(0)
        assert torch.equal(box, rows[:, None] & cols[None, :])  # one rectangle, the same for all images
        area = float(box.float().mean())
        areas.append(area)
        for i in range(n):
            if not moved[i].any():  # paired with itself
                assert float(ym[i, i]) == pytest.approx(1.0)
                continue
            assert torch.equal(moved[i], box)
            src = int(round(float(xm[i, 0][box][0]) * (n + 1))) - 1  # which image the box came from
            assert float(ym[i, i]) == pytest.approx(1 - area, abs=1e-6)
            assert float(ym[i, src]) == pytest.approx(area, abs=1e-6)
            assert torch.equal(xm[i][:, box], x[src][:, box]) and torch.equal(xm[i][:, ~box], x[i][:, ~box])
    assert len(set(areas)) > 3  # boxes of several sizes


def test_cutmix_probability() -> None:
    x, y = one_batch()
    cutmix = build_defense("cutmix")  # p = 0.5
    ctx = make_ctx(2)
    changed = sum(not torch.equal(cutmix.batch(x, y, ctx)[1], y) for _ in range(60))
    assert 15 <= changed <= 45
    never = build_defense("cutmix", {"p": "0"})
    assert all(torch.equal(never.batch(x, y, ctx)[0], x) for _ in range(5))
    with pytest.raises(BenchError, match="'p'"):
        build_defense("cutmix", {"p": "1.5"})


# ----------------------------------------------------------------------------------------- cutout

def test_cutout_zeroes_one_clipped_square_per_image() -> None:
    n = 64
    x = torch.rand(n, 3, 32, 32).add_(0.1)  # no zeros before cutout
    y = torch.eye(n)
    xo, yo = build_defense("cutout").batch(x, y, make_ctx(5))
    assert torch.equal(yo, y)
    zero = (xo == 0).all(1)  # (N, H, W)
    assert torch.equal((xo == 0).any(1), zero)  # all channels zeroed together
    assert torch.equal(xo[~zero[:, None].expand_as(xo)], x[~zero[:, None].expand_as(x)])
    sides = []
    for i in range(n):
        rows, cols = zero[i].any(1), zero[i].any(0)
        assert torch.equal(zero[i], rows[:, None] & cols[None, :])  # one rectangle
        h, w = int(rows.sum()), int(cols.sum())
        assert 8 <= h <= 16 and 8 <= w <= 16  # 16 px, clipped at the borders
        sides.append((h, w, int(rows.float().argmax()), int(cols.float().argmax())))
    assert sum(s[:2] == (16, 16) for s in sides) >= 5  # interior centres give the full patch
    assert len({s[2:] for s in sides}) > 20  # centres differ per image


# -------------------------------------------------------------------------------------- smoothing

def test_smoothing_noise_statistics_and_seeding() -> None:
    x, y = one_batch(64)
    rs = build_defense("smoothing")
    xn, yn = rs.batch(x, y, make_ctx(7))
    noise = xn - x
    assert torch.equal(yn, y)
    assert abs(float(noise.mean())) < 0.01 and abs(float(noise.std()) - 0.5) < 0.01
    assert torch.equal(rs.batch(x, y, make_ctx(7))[0], xn) and not torch.equal(rs.batch(x, y, make_ctx(8))[0], xn)
    xs = build_defense("smoothing", {"sigma": "0.25"}).batch(x, y, make_ctx(7))[0]
    assert abs(float((xs - x).std()) - 0.25) < 0.005


class BrightnessModel(nn.Module):
    """Class 1 if the image mean is above 0.5: noise averages out except for images at exactly 0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1) - 0.5
        return torch.stack([-m, m], dim=1) * 100 + self.dummy


class FirstPixelModel(nn.Module):
    """Class 1 if the first pixel is above 0.5: on a 0.75 pixel with sigma-0.5 noise a single noisy copy
    is right with probability Phi(0.5) = 69 %, a majority vote of 100 copies almost surely."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[:, 0, 0, 0] - 0.5
        return torch.stack([-m, m], dim=1) * 100 + self.dummy


def _levels(values: list[float], size: int = 16) -> torch.Tensor:
    v = torch.tensor(values)
    return (v * 255).round().to(torch.uint8).view(-1, 1, 1, 1).expand(len(values), 3, size, size).contiguous()


def test_smoothing_headline_is_the_majority_vote() -> None:
    """The vote beats its own base model on noisy inputs, the defining property of g; seeded and repeatable."""
    test = ImageSet(_levels([0.75] * 40 + [0.25] * 40), torch.tensor([1] * 40 + [0] * 40), ["lo", "hi"])
    ctx = make_ctx(0, num_classes=2)
    rs = build_defense("smoothing")
    vote = rs.predictor(ctx, final=True)
    pred = predictions(FirstPixelModel(), test, vote, batch_size=1000, device=torch.device("cpu"))
    assert torch.equal(pred, test.y)  # a 69 %-per-copy base classifier, voted over 100 copies: all right
    extra = rs.evaluate(FirstPixelModel(), test, ctx)
    assert 64 < extra["base_noisy_acc"] < 74  # Phi(0.5) = 69.1 %: the base model alone on noisy copies
    assert extra["base_clean_acc"] == 100.0
    cheap = rs.predictor(ctx, final=False)
    assert cheap.n_samples == 4 and vote.n_samples == 100
    again = predictions(FirstPixelModel(), test, build_defense("smoothing").predictor(ctx, final=True), 1000,
                        torch.device("cpu"))
    assert torch.equal(again, pred)
    one = build_defense("smoothing", {"n_samples": "1"}).predictor(ctx, final=True)
    single = predictions(FirstPixelModel(), test, one, 1000, torch.device("cpu"))
    assert 0.5 < float((single == test.y).float().mean()) < 0.9  # one copy is only the base model


def test_vote_ties_go_to_the_highest_class_as_cohens_predict() -> None:
    import numpy as np

    counts = torch.tensor([[3, 3, 0], [0, 2, 2], [5, 1, 1], [1, 1, 1]])
    got = vote_scores(counts).argmax(1)
    want = [int(row.argsort(kind="stable")[::-1][0]) for row in counts.numpy()]  # Smooth.predict's choice
    assert got.tolist() == want == [1, 2, 0, 2]
    assert np.all(np.asarray(want) >= 0)


def test_certify_matches_cohen_radius_and_abstains() -> None:
    from scipy.stats import beta, norm

    counts0 = torch.tensor([[0, 100], [40, 60], [100, 0]])
    counts = torch.tensor([[0, 1000], [470, 530], [700, 300]])
    pred, radius = certify(counts0, counts, sigma=0.5, alpha=0.001)
    assert pred.tolist() == [1, 1, 0]
    p0 = beta.ppf(0.001, 1000, 1)  # all 1000 votes for the class: pA_lower = alpha ** (1/n)
    assert radius[0].item() == pytest.approx(0.5 * norm.ppf(p0), rel=1e-6)
    assert radius[1].item() == -1.0  # 530/1000: the lower bound is below 1/2, abstain
    assert radius[2].item() == pytest.approx(0.5 * norm.ppf(beta.ppf(0.001, 700, 301)), rel=1e-6)


def test_predict_abstains_as_cohens_binomial_test() -> None:
    """PREDICT abstains when the top two counts are not significantly apart (scipy's two-sided binomtest of
    n_A in n_A + n_B against 1/2, above alpha): a tie-ish 55/45 vote abstains, 70/30 does not, a tie always
    abstains; the class is the vote's."""
    from scipy.stats import binomtest

    counts = torch.tensor([[55, 45, 0], [70, 30, 0], [0, 50, 50], [0, 0, 100], [40, 35, 25], [62, 38, 0]])
    pred, abstained = predict(counts, alpha=0.001)
    assert pred.tolist() == vote_scores(counts).argmax(1).tolist() == [0, 0, 2, 2, 0, 0]
    want = []
    for row in counts.tolist():
        n_a, n_b = sorted(row, reverse=True)[:2]
        want.append(binomtest(n_a, n_a + n_b, 0.5).pvalue > 0.001)  # Smooth.predict's test
    assert abstained.tolist() == want == [True, False, True, False, True, True]
    assert predict(counts, alpha=0.05)[1].tolist() == [True, False, True, False, True, False]


def test_smoothing_records_predict_beside_the_vote() -> None:
    """On a 79 %-per-copy base classifier (pixel 0.9) PREDICT (n = 100) almost never abstains; on a
    52 %-per-copy one (pixel 0.525) the vote is still right on more than half of the images, but PREDICT
    abstains on nearly all: the two readings of one smoothed model differ."""
    ctx = make_ctx(0, num_classes=2)
    for level, low, high in ((0.9, 0.0, 5.0), (0.525, 90.0, 100.0)):
        test = ImageSet(_levels([level] * 60), torch.tensor([1] * 60), ["lo", "hi"])
        rs = build_defense("smoothing", {"certify_subset": "4"})
        predictions(FirstPixelModel(), test, rs.predictor(ctx, final=True), 1000, torch.device("cpu"))
        out = rs.evaluate(FirstPixelModel(), test, ctx)
        assert low <= out["predict_abstain_rate"] <= high, out
        assert out["predict_acc"] == pytest.approx(100.0 - out["predict_abstain_rate"], abs=5)


def test_certified_accuracy_on_a_known_model() -> None:
    test = ImageSet(_levels([0.9] * 10 + [0.1] * 10 + [0.75] * 10), torch.tensor([1] * 10 + [0] * 10 + [1] * 10),
                    ["lo", "hi"])
    out = build_defense("smoothing", {"certify_subset": "0"}).evaluate(FirstPixelModel(), test, make_ctx(0, num_classes=2))
    assert out["certify_images"] == 30
    # 0.9/0.1 pixels: pA = Phi(0.8) = 0.79 -> radius ~0.33 ; 0.75: Phi(0.5) = 0.69 -> radius ~0.19
    assert out["certified_acc@0"] == 100.0 and out["certify_abstain_rate"] == 0.0
    assert out["certified_acc@0.25"] == pytest.approx(200 / 3, abs=0.01)
    assert out["certified_acc@0.5"] == 0.0


# ------------------------------------------------------------------------------------ composition

def test_mixup_plus_cutmix_chain_and_train_a_step() -> None:
    x, y = one_batch(16)
    stack = build_defense("mixup+cutmix", {"cutmix.p": "1"})
    assert stack.record()["name"] == "mixup+cutmix"
    xm, ym = stack.batch(x, y, make_ctx(0))
    assert torch.allclose(ym.sum(1), torch.ones(16), atol=1e-6) and not torch.equal(xm, x)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16))
    loss, logits = stack.loss(model, xm, ym, make_ctx(0))
    assert math.isfinite(float(loss.detach())) and torch.allclose(loss, soft_cross_entropy(model(xm), ym))
    loss.backward()
    assert model[1].weight.grad is not None
    assert F.softmax(logits, 1).shape == (16, 16)


# ------------------------------------------------------------------------------- end to end (smoke)

@pytest.mark.parametrize("defense, params", [
    ("mixup", {}), ("cutmix", {}), ("cutout", {}),
    ("smoothing", {"n_samples": "4", "epoch_samples": "2", "certify_subset": "20", "certify_n": "50"}),
])
def test_smoke_run_end_to_end(run_env: dict, defense: str, params: dict) -> None:
    rec = smoke_run(run_env, defense, params)
    if defense == "smoothing":
        extra = rec["metrics"]["defense"]
        assert extra["certify_images"] == 20 and 0 <= extra["certified_acc@0.5"] <= extra["certified_acc@0"] <= 100
        assert rec["metrics"]["per_epoch_eval"]["n_samples"] == 2
        assert rec["config"]["defense"]["params"]["sigma"] == 0.5
