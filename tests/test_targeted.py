"""The targeted track (Witches' Brew, MetaPoison): the seeded trial setup, crafting that touches only the
budgeted rows within the budget and lowers its objective, MetaPoison's unrolled objective against a hand
computation, the target check, exact resume, and a smoke trial end to end through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import run_cli, whole_and_resumed

from attacks.base import PoisonContext
from benchmark.data import ImageSet, load_dataset, stratified_subset
from benchmark.errors import BenchError
from benchmark.gradmatch import matching_mode
from benchmark.poisoning import build_poison
from benchmark.targeted_poison import Target
from benchmark.targets import choose_setup, poison_count, target_outcome

# a surrogate above chance on 256 16x16 images within seconds, 6 signAdam steps of a large step
RECIPE = {"steps": 6, "tau": 0.3, "surrogate_epochs": 8, "surrogate_batch_size": 32, "surrogate_lr": 0.05,
          "budget": 0.04}


def _small(images: ImageSet, n: int) -> ImageSet:
    sub = images.subset(stratified_subset(images.y, n, 0))
    return ImageSet(F.avg_pool2d(sub.x.float(), 2).round().to(torch.uint8), sub.y, sub.classes)


@pytest.fixture(scope="module")
def cifar(data_root: Path, dataset_cache: Path) -> tuple[ImageSet, ImageSet]:
    """256 training and 200 test images of CIFAR-10 at 16x16 (seconds on a shared CPU)."""
    data = load_dataset("cifar10", data_root, dataset_cache)
    return _small(data.train, 256), _small(data.test, 200)


def _generate(name: str, train: ImageSet, test: ImageSet, work: Path, params: dict | None = None, key: int = 3,
              progress=None):
    spec = build_poison(name, dict(RECIPE, **(params or {})), key=key, preset="smoke")
    ctx = PoisonContext(key=key, preset="smoke", workdir=work, progress=progress, num_classes=10, test=test)
    return spec.poison, spec.poison.generate(train, ctx)


def test_setup_is_seeded_single_class(cifar: tuple[ImageSet, ImageSet]) -> None:
    train, test = cifar
    a, b = choose_setup(5, train.y, test.y, 10, 0.04), choose_setup(5, train.y, test.y, 10, 0.04)
    assert a.facts() == b.facts() and torch.equal(a.poison_rows, b.poison_rows)  # the key decides everything
    setups = [choose_setup(k, train.y, test.y, 10, 0.04) for k in range(12)]
    assert len({(s.test_index, s.adversarial_class) for s in setups}) > 6  # keys draw different trials
    for s in setups:
        assert s.adversarial_class != s.true_class and int(test.y[s.test_index]) == s.true_class
        assert s.poison_class == s.adversarial_class  # forest's single-class threat model
        assert bool((train.y[s.poison_rows] == s.adversarial_class).all())  # clean-label poisons of that class
        assert s.poison_rows.numel() == poison_count(0.04, len(train)) == math.ceil(0.04 * 256)
        assert torch.equal(s.poison_rows, torch.sort(s.poison_rows).values) and s.poison_rows.unique().numel() == 11
    # a class with fewer images than the budget gives them all
    assert choose_setup(5, train.y, test.y, 10, 0.5).poison_rows.numel() == int((train.y == a.adversarial_class).sum())


def test_witches_brew_perturbs_only_its_rows_within_budget_and_aligns(cifar: tuple[ImageSet, ImageSet],
                                                                        tmp_path: Path) -> None:
    train, test = cifar
    poison, out = _generate("witches-brew", train, test, tmp_path / "poison-work" / "wb")
    info, setup = out.info, choose_setup(3, train.y, test.y, 10, RECIPE["budget"])
    assert poison.threat_model == "targeted" and poison.budget_255() == 16
    assert info["target"] == setup.facts()
    assert torch.equal(out.poisoned_indices, setup.poison_rows)
    diff = (out.x.to(torch.int16) - train.x.to(torch.int16)).abs()
    assert int(diff.max()) <= 16 and int(diff[setup.poison_rows].amax(dim=(1, 2, 3)).min()) > 0
    outside = torch.ones(len(train), dtype=torch.bool)
    outside[setup.poison_rows] = False
    assert int(diff[outside].max()) == 0 and torch.equal(out.y, train.y)  # other images and all labels untouched
    # the stored poisons' gradient is better aligned with the target's adversarial gradient than the clean rows'
    assert info["stored_matching_loss"] < info["clean_matching_loss"] - 0.05
    assert info["surrogate"]["probe_acc"] >= 25


def test_metapoison_objective_is_the_unrolled_adversarial_loss() -> None:
    """nadapt SGD steps of lr on the poisons, then the target's cross-entropy toward the adversarial class,
    against the same computed by hand on a copy of a linear model; and its gradient reaches the poisons."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.rand(5, 3, 2, 2), torch.tensor([1, 1, 1, 1, 1])
    target = Target(None, torch.rand(1, 3, 2, 2), torch.tensor([1]))
    spec = build_poison("metapoison", {"nadapt": 2, "unroll_lr": 0.5}, preset="smoke")
    run = SimpleNamespace(surrogate=model, y=y, target=target)
    with matching_mode(model) as params:
        value = spec.poison.batch_objective(run, torch.arange(5), params)(x)
    w, b = model[1].weight.detach().clone(), model[1].bias.detach().clone()
    for _ in range(2):
        w.requires_grad_(True), b.requires_grad_(True)
        gw, gb = torch.autograd.grad(F.cross_entropy(x.flatten(1) @ w.T + b, y), (w, b))
        w, b = (w - 0.5 * gw).detach(), (b - 0.5 * gb).detach()
    expected = F.cross_entropy(target.x.flatten(1) @ w.T + b, target.adversarial)
    assert float(value.detach()) == pytest.approx(float(expected), abs=1e-6)
    xg = x.clone().requires_grad_(True)
    with matching_mode(model) as params:
        (grad,) = torch.autograd.grad(spec.poison.batch_objective(run, torch.arange(5), params)(xg), xg)
    assert float(grad.abs().sum()) > 0  # differentiable to the poison images through the unrolled steps


def test_metapoison_lowers_its_objective_on_the_same_setup(cifar: tuple[ImageSet, ImageSet], tmp_path: Path) -> None:
    train, test = cifar
    _, wb = _generate("witches-brew", train, test, tmp_path / "poison-work" / "wb")
    _, mp = _generate("metapoison", train, test, tmp_path / "poison-work" / "mp", {"unroll_lr": 0.01})
    assert mp.info["target"] == wb.info["target"] and torch.equal(mp.poisoned_indices, wb.poisoned_indices)
    assert mp.info["surrogate"]["cached"] is True  # the one clean surrogate of the key, trained for Witches' Brew
    assert mp.info["stored_matching_loss"] < mp.info["clean_matching_loss"]  # the unrolled target loss fell
    assert not torch.equal(mp.x, wb.x)


def test_target_outcome_reads_the_prediction() -> None:
    test = ImageSet(torch.zeros(4, 3, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 2, 0]), ["a", "b", "c"])
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([0.0, 0.0, 5.0]))  # predicts class 2 for every image
    hit = target_outcome(model, test, {"test_index": 3, "true_class": 0, "adversarial_class": 2}, torch.device("cpu"))
    miss = target_outcome(model, test, {"test_index": 3, "true_class": 0, "adversarial_class": 1}, torch.device("cpu"))
    assert hit["success"] and hit["predicted_class"] == 2 and hit["adversarial_prob"] > 0.98
    assert not miss["success"] and miss["adversarial_prob"] < 0.01
    with pytest.raises(BenchError):
        target_outcome(model, test, {"test_index": 4, "true_class": 0, "adversarial_class": 1}, torch.device("cpu"))


def test_witches_brew_resumes_exactly(cifar: tuple[ImageSet, ImageSet], tmp_path: Path) -> None:
    recipe = {"steps": 2, "restarts": 3, "checkpoint_every": 1}  # one poison batch, a checkpoint after each restart
    whole, resumed, steps = whole_and_resumed(
        lambda work, progress: _generate("witches-brew", *cifar, work, recipe, progress=progress),
        tmp_path / "poison-work")
    assert steps == [3] and torch.equal(resumed.x, whole.x) and resumed.session.sessions == 2
    assert resumed.info["restart_losses"] == whole.info["restart_losses"]


def test_targeted_trial_smoke_end_to_end(bench_env: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_cli(["run", "--preset", "smoke", "--poison", "witches-brew", "--no-baseline",
                              "--epochs", "1", "--train-subset", "256", "--test-subset", "100"], capsys)
    assert code == 0, err
    (path,) = bench_env["results"].glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["status"] == "finished" and rec["threat_model"] == "targeted"
    target, setup = rec["metrics"]["target"], rec["poison"]["info"]["target"]
    assert {k: target[k] for k in ("test_index", "true_class", "adversarial_class")} == \
        {k: setup[k] for k in ("test_index", "true_class", "adversarial_class")}
    assert target["success"] == (target["predicted_class"] == target["adversarial_class"])
    assert 0 <= target["adversarial_prob"] <= 1 and 0 <= rec["metrics"]["test_acc"] <= 100
    assert rec["poison"]["num_poisoned"] == setup["num_poisons"] == math.ceil(0.05 * 256)
    assert "targeted trial" in out and ("success" in out or "failure" in out)


def test_targeted_poison_refuses_a_ratio(bench_env: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_cli(["run", "--preset", "smoke", "--poison", "witches-brew", "--ratio", "0.5"], capsys)
    assert code == 2 and "budget" in err and len(err.strip().splitlines()) == 1
    assert not list(bench_env["results"].glob("*.json"))


def test_list_shows_each_poisons_threat_model(capsys: pytest.CaptureFixture) -> None:
    code, out, _err = run_cli(["list", "poisons", "witches-brew"], capsys)
    assert code == 0 and "threat model: targeted" in out and "budget" in out
    code, out, _err = run_cli(["list", "poisons", "secure-release"], capsys)
    assert code == 0 and "threat model: availability" in out
