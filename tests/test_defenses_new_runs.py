"""Short real training runs (smoke preset, CUDA poison, a few steps) of UEraser, orthogonal projection,
DP-InstaHide, poison-aware AT and RSK+FF: each finishes, records its facts, and changes training the
way it should (observed by wrapping the real hooks, which still run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import run_cli, smoke_run

import defenses.poison_aware_at as poison_aware_at
from defenses.dp_instahide import DPInstaHide
from defenses.rsk_ff import RSKFF, dct_matrix


@pytest.fixture(scope="module")
def plain(run_env: dict[str, Path]) -> dict[str, Any]:
    return smoke_run(run_env, "none")


def changed_training(rec: dict[str, Any], plain: dict[str, Any]) -> bool:
    """Different training loss from plain training with the same seed (the first step always differs)."""
    return rec["metrics"]["per_epoch"][0]["train_loss"] != plain["metrics"]["per_epoch"][0]["train_loss"]


def test_ueraser_run_uses_k_views_then_one(run_env: dict, plain: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("kornia")
    from defenses.ueraser import UEraser

    ks: list[int] = []
    original = UEraser.views

    def views(self: UEraser, x: torch.Tensor, k: int, ctx: Any) -> torch.Tensor:
        ks.append(k)
        return original(self, x, k, ctx)

    monkeypatch.setattr(UEraser, "views", views)
    rec = smoke_run(run_env, "ueraser", {"adv_fraction": "0.5"}, {"epochs": 2, "train_subset": 64})
    assert ks == [5, 1]  # one step per epoch; the first of 2 epochs adversarial
    assert rec["defense_info"]["family"] == "augmentation"
    assert changed_training(rec, plain)


def test_ortho_proj_run_projects_out_the_linear_shortcut(run_env: dict, plain: dict) -> None:
    rec = smoke_run(run_env, "ortho-proj")
    extra = rec["metrics"]["defense"]
    # near chance (10 %): the projected logits W x' are zero up to the stored images' uint8 rounding and
    # clipping (1-2 % of values), whose residue decides the argmax and is not independent of the class
    assert extra["linear_acc_projected"] <= 30
    assert extra["linear_train_acc"] > extra["linear_acc_projected"] + 15  # (20 SGD steps on 128 images)
    assert 0 <= extra["clipped_fraction"] < 0.05 and extra["fit_seconds"] > 0
    assert rec["defense_info"]["family"] == "filtering"
    assert changed_training(rec, plain)


def test_dp_instahide_run_trains_on_noisy_mixtures(run_env: dict, plain: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = DPInstaHide.batch

    def batch(self: DPInstaHide, x: torch.Tensor, y: torch.Tensor, ctx: Any) -> tuple[torch.Tensor, torch.Tensor]:
        out = original(self, x, y, ctx)
        seen.append(out)
        return out

    monkeypatch.setattr(DPInstaHide, "batch", batch)
    rec = smoke_run(run_env, "dp-instahide")
    assert len(seen) == 2
    for x, y in seen:
        assert torch.allclose(y.sum(1), torch.ones(len(y)))
        assert float((y.max(1).values < 1).float().mean()) > 0.8  # mixed labels, not one-hot
        assert float(x.min()) == 0 and float(x.max()) == 1  # Laplace tails clipped to the image range
    assert rec["metrics"]["defense"] == {"dp_epsilon_own_bound": None}  # clamped noise (forest): no DP bound
    assert changed_training(rec, plain)


def test_poison_aware_at_run_crafts_aligned_poisons(run_env: dict, plain: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    traces: list[list[float]] = []
    budgets: list[float] = []
    original = poison_aware_at.craft_poisons

    def craft(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, list[float]]:
        delta, trace = original(*args, **{**kwargs, "final_objective": True})  # measure the crafted result
        traces.append(trace)
        budgets.append(float(delta.abs().max()))
        return delta, trace

    monkeypatch.setattr(poison_aware_at, "craft_poisons", craft)
    rec = smoke_run(run_env, "poison-aware-at", {"steps": "2"}, {"train_subset": 64})
    assert len(traces) == 1 and all(len(t) == 3 for t in traces)
    assert all(t[-1] < t[0] for t in traces)  # the gradient alignment grew in every batch
    assert max(budgets) <= 16 / 255 + 1e-6
    assert rec["defense_info"]["family"] == "adversarial-training"
    assert changed_training(rec, plain)


def test_rsk_ff_run_trains_on_sharpened_low_passed_images(run_env: dict, plain: dict,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.Tensor] = []
    original = RSKFF.before_crop

    def before_crop(self: RSKFF, x: torch.Tensor, ctx: Any) -> torch.Tensor:
        out = original(self, x, ctx)
        seen.append(out)
        return out

    monkeypatch.setattr(RSKFF, "before_crop", before_crop)
    rec = smoke_run(run_env, "rsk-ff")
    assert len(seen) == 2
    d = dct_matrix(30, dtype=torch.float64)
    for x in seen:  # filtered at full size (32 -> 30), before the protocol's crop/flip
        assert x.shape[-2:] == (30, 30)
        coeff = d @ x.double() @ d.T
        assert float(coeff[..., 9:, :].pow(2).sum() + coeff[..., :9, 9:].pow(2).sum()) < 0.01 * float(coeff.pow(2).sum())
    assert rec["config"]["defense"]["params"]["order"] == "filter-crop"
    assert rec["defense_info"]["family"] == "adaptive"
    assert changed_training(rec, plain)


@pytest.mark.parametrize("defense, bad, word", [
    ("ueraser", "repeats=0", "repeats"), ("ortho-proj", "epochs=0", "epochs"),
    ("dp-instahide", "weights=gauss", "weights"), ("poison-aware-at", "fraction=1", "fraction"),
    ("rsk-ff", "ff_percentage=0", "ff_percentage"),
])
def test_bad_parameters_are_one_line_errors(defense: str, bad: str, word: str, bench_env: dict,
                                            capsys: pytest.CaptureFixture) -> None:
    if defense == "ueraser":
        pytest.importorskip("kornia")
    code, _, err = run_cli(["run", "--preset", "smoke", "--poison", "cuda", "--defense", defense,
                            "--defense-param", bad], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and word in err
