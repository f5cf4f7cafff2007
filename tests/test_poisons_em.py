"""Error-minimizing poisons (EM sample/class-wise, REM, SEM) and the random-noise control: exact
budgets, class-wise structure, the EM clamp-bug flag, REM/SEM shared machinery, resumable
generation, and smoke runs end to end on the CIFAR-10 offline subset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import generate_poison as _generate
from conftest import run_cli
from conftest import shifted_images as _images

from attacks.base import exact_subset
from attacks.rem import RobustErrorMinimizing
from attacks.sem import StableErrorMinimizing
from benchmark.data import ImageSet
from benchmark.errors import BenchError
from benchmark.poisoning import build_poison
from benchmark.quantize import add_levels, budget_levels
from benchmark.robust_noise import RobustNoisePoison, random_flip_crop
from benchmark.runner import RunSpec, execute, prepare_run

NAMES = ("em", "em-classwise", "rem", "sem", "random-noise")


# ------------------------------------------------------------------------------------------ budget

@pytest.mark.parametrize("name,extra", [("em", {}), ("em-classwise", {}), ("rem", {"rho_u": 6.5 / 255}),
                                        ("sem", {"rho_u": 6.5 / 255}), ("random-noise", {}),
                                        ("random-noise", {"mode": "classwise"})])
def test_budget_exact_after_uint8_quantisation(name: str, extra: dict) -> None:
    train = _images()
    params = dict(extra) if "rho_u" in extra else dict(extra, eps=6.5 / 255)
    poison, out = _generate(name, train, params)
    assert poison.budget_255() == 6 == budget_levels(6.5 / 255)
    assert out.x.dtype == torch.uint8 and out.x.shape == train.x.shape and torch.equal(out.y, train.y)
    diff = (out.x.int() - train.x.int()).abs()
    assert int(diff.max()) <= 6
    assert int(diff.max()) >= 1  # the poison changed something
    assert out.poisoned_indices.tolist() == list(range(len(train)))


def test_budget_levels_tolerates_float_fractions() -> None:
    assert budget_levels(8 / 255) == 8 and budget_levels(0.0314) == 8 and budget_levels(0.0) == 0
    x = torch.tensor([0, 3, 250, 255], dtype=torch.uint8)
    assert add_levels(x, torch.tensor([-8, -2, 8, 8])).tolist() == [0, 1, 255, 255]


# -------------------------------------------------------------------------------------- class-wise

@pytest.mark.parametrize("name,params", [("em-classwise", {}), ("random-noise", {"mode": "classwise"})])
def test_classwise_noise_identical_within_class(name: str, params: dict) -> None:
    train = _images(low=30, high=226)  # far from 0/255: no clipping hides the noise
    _, out = _generate(name, train, params)
    noise = out.x.int() - train.x.int()
    per_class = []
    for c in range(4):
        members = noise[train.y == c]
        assert (members == members[0]).all(), f"class {c} noise differs between images"
        per_class.append(members[0])
    assert not torch.equal(per_class[0], per_class[1])


def test_samplewise_random_noise_differs_between_images_and_keys() -> None:
    train = _images(low=30, high=226)
    _, a = _generate("random-noise", train, key=1)
    _, b = _generate("random-noise", train, key=2)
    _, a2 = _generate("random-noise", train, key=1)
    noise = a.x.int() - train.x.int()
    assert not torch.equal(noise[0], noise[4])  # same class, different noise
    assert torch.equal(a.x, a2.x) and not torch.equal(a.x, b.x)


def test_partial_poisoning_uses_exact_seeded_subset() -> None:
    train = _images(40)
    _, out = _generate("random-noise", train, key=9, ratio=0.25)
    expected = exact_subset(40, 0.25, 9)
    assert out.poisoned_indices.tolist() == expected.tolist() and len(expected) == 10
    clean = torch.ones(40, dtype=torch.bool)
    clean[expected] = False
    assert torch.equal(out.x[clean], train.x[clean])
    assert not torch.equal(out.x[expected], train.x[expected])


# -------------------------------------------------------------------------------------- EM clamp bug

def test_em_official_clamp_bug_zeroes_negative_noise() -> None:
    train = _images(low=30, high=226)
    _, fixed = _generate("em", train, {"random_start": True})
    _, buggy = _generate("em", train, {"random_start": True, "official_clamp_bug": True})
    noise_fixed = fixed.x.int() - train.x.int()
    noise_buggy = buggy.x.int() - train.x.int()
    assert int(noise_fixed.min()) < 0 < int(noise_fixed.max())
    assert int(noise_buggy.min()) == 0  # no negative noise with the bug flag
    # same generation: negatives zeroed, positives truncated (official uint8 cast) instead of rounded
    assert torch.all(noise_buggy[noise_fixed <= 0] == 0)
    pos = noise_fixed > 0
    gap = noise_fixed[pos] - noise_buggy[pos]
    assert torch.all((gap == 0) | (gap == 1)) and bool((gap == 1).any()) and bool((gap == 0).any())
    assert buggy.info["official_clamp_bug"] and not fixed.info["official_clamp_bug"]


# ------------------------------------------------------------------------------- REM / SEM machinery

class _Counting(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x)


def test_sem_is_rem_with_random_inner_step() -> None:
    # SEM shares REM's generation through the spine base, not by subclassing the REM plugin
    assert not issubclass(StableErrorMinimizing, RobustErrorMinimizing)
    assert issubclass(StableErrorMinimizing, RobustNoisePoison) and issubclass(RobustErrorMinimizing, RobustNoisePoison)
    for method in ("generate", "craft", "craft_noise", "eot_gradient", "surrogate_update"):
        assert getattr(StableErrorMinimizing, method) is getattr(RobustErrorMinimizing, method)
    assert StableErrorMinimizing.inner_perturbation is not RobustErrorMinimizing.inner_perturbation
    rem = build_poison("rem", {}).poison
    sem = build_poison("sem", {}).poison
    # SEM paper (Liu et al., AAAI 2024) official CIFAR settings cost 10x5x(10+1)+11 = 561 vs 10x5x1+11 = 61 passes per step
    assert sum(rem.passes_per_step()) == 561 and sum(sem.passes_per_step()) == 61

    torch.manual_seed(0)
    train = _images(64, size=16)
    model, opt = rem.build(4, 3, key=0, device=torch.device("cpu"))
    x, y = train.x.float() / 255, train.y
    for _ in range(15):  # fit the surrogate a little so the loss landscape is meaningful
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    counted = _Counting(model)
    rho_a = rem.params.rho_a
    x_sem = sem.inner_perturbation(counted, x, y, torch.Generator().manual_seed(1))
    assert counted.calls == 0  # SEM: one random draw, no forward/backward
    x_rem = rem.inner_perturbation(counted, x, y, torch.Generator().manual_seed(1))
    assert counted.calls == rem.params.pgd_steps  # REM: PGD ascent
    for adv in (x_sem, x_rem):
        assert float((adv - x).abs().max()) <= rho_a + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        clean, l_sem, l_rem = (float(F.cross_entropy(model(t), y)) for t in (x, x_sem, x_rem))
    assert l_rem > l_sem and l_rem > clean + 1e-3


def test_surrogate_attack_runs_in_eval_mode_and_sem_zero_steps_is_clean() -> None:
    """Official REM/SEM: the surrogate's PGD runs in eval mode, so only the SGD step's own forward
    moves BatchNorm's statistics; SEM adds no perturbation when the attack has 0 steps."""
    rem = build_poison("rem", {"pgd_steps": 3}, preset="smoke").poison
    train = _images(32, size=16)
    model, opt = rem.build(4, 3, key=0, device=torch.device("cpu"))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns
    levels = torch.zeros(train.x.shape, dtype=torch.int8)
    rem.surrogate_update(model, opt, train.x.float() / 255, levels, train.y, torch.Generator().manual_seed(0))
    assert all(int(m.num_batches_tracked) == 1 for m in bns)  # 3 attack forwards + 1 step: one update
    assert model.training
    sem = build_poison("sem", {"pgd_steps": 0}, preset="smoke").poison
    x = train.x.float() / 255
    assert torch.equal(sem.inner_perturbation(model, x, train.y, torch.Generator().manual_seed(0)), x)


def test_algorithm_revision_is_part_of_run_id_and_artifact_only_above_one() -> None:
    from benchmark.poisoning import artifact_id

    dataset_id = {"name": "cifar10", "source": "x", "train_size": 10, "train_subset": 0, "subset_seed": 0}
    rem, cuda = build_poison("rem"), build_poison("cuda")
    assert rem.record()["revision"] == RobustErrorMinimizing.revision >= 2
    assert "revision" not in cuda.record()  # first revisions keep the run ids they always had
    before = artifact_id(dataset_id, rem)
    try:  # the revision belongs to the REM/SEM generation both share: bumping it changes both
        RobustNoisePoison.revision += 1
        assert artifact_id(dataset_id, rem) != before and build_poison("sem").record()["revision"] == rem.revision == 3
    finally:
        RobustNoisePoison.revision -= 1
    assert "revision" not in vars(RobustErrorMinimizing) and rem.revision == 2


def test_random_flip_crop_is_differentiable_and_seeded() -> None:
    x = torch.rand(6, 3, 8, 8, requires_grad=True)
    a = random_flip_crop(x, torch.Generator().manual_seed(0))
    b = random_flip_crop(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape
    a.sum().backward()
    assert x.grad is not None and float(x.grad.sum()) > 0


def test_rem_param_validation() -> None:
    with pytest.raises(BenchError, match="rho_a"):
        build_poison("rem", {"rho_a": "8/255", "rho_u": "8/255"})
    with pytest.raises(BenchError, match="surrogate"):
        build_poison("sem", {"surrogate": "resnet-nope"})
    with pytest.raises(BenchError):
        build_poison("em", {"num_steps": "0"})


# ------------------------------------------------------------------------------------------ resume

@pytest.mark.parametrize("name,params,stop_at", [
    ("em", {"max_iters": 3, "stop_error": 0.0, "checkpoint_every": 1}, 2),
    ("em-classwise", {"max_iters": 3, "stop_error": 0.0, "checkpoint_every": 1, "subset_portion": 1.0,
                      "batch_size": 16}, 2),
    ("rem", {"surrogate_steps": 3, "checkpoint_every": 2, "batch_size": 16}, 3),
])
def test_interrupted_generation_resumes_to_same_noise(tmp_path: Path, name: str, params: dict, stop_at: int) -> None:
    """Class-wise EM has its own loop (subset batches, class averages): it must resume exactly too."""
    train = _images(32)
    _, full = _generate(name, train, params, workdir=tmp_path / "full")

    def interrupt(step: int, total: int, info: dict) -> None:
        if step == stop_at:
            raise KeyboardInterrupt

    work = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        _generate(name, train, params, workdir=work, progress=interrupt)
    assert (work / "state.pt").exists()
    seen: list[int] = []
    _, resumed = _generate(name, train, params, workdir=work, progress=lambda s, t, i: seen.append(s))
    assert seen[0] > 1  # continued from the checkpoint, not from scratch
    assert torch.equal(resumed.x, full.x)
    assert resumed.session.sessions == 2 and resumed.session.seconds_before > 0 and full.session.sessions == 1
    assert resumed.info == full.info  # counters (fwd+bwd passes) restored from the checkpoint


def test_same_key_same_poison_other_key_differs() -> None:
    train = _images(32)
    _, a = _generate("sem", train, key=5)
    _, b = _generate("sem", train, key=5)
    _, c = _generate("sem", train, key=6)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)


# -------------------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("name", NAMES)
def test_smoke_run_end_to_end(bench_env: dict, name: str) -> None:
    spec = RunSpec(poison=name, preset="smoke", data_root=str(bench_env["data_root"]),
                   cache_dir=str(bench_env["cache"]), results=str(bench_env["results"]),
                   overrides={"epochs": 1}, device="cpu")
    rec = execute(prepare_run(spec))
    assert rec["status"] == "finished"
    budget = rec["poison"]["budget"]
    assert 1 <= budget["linf_255"] <= 8 and budget["num_poisoned"] == rec["config"]["train_size"]
    info = rec["poison"]["info"]
    if name != "random-noise":
        assert info["surrogate_forward_backward"] > 0 and info["surrogate_steps"] > 0
        assert 0.0 <= info["final_train_error"] <= 1.0
    assert rec["poison"]["generation_seconds"] > 0
    # the cached artifact is reused (and re-validated against its budget) by the next run
    again = execute(prepare_run(RunSpec(**{**spec.__dict__, "force": True})))
    assert again["timings"]["poison_cached"] is True


def test_bench_perf_command(capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_cli(["perf", "--preset", "smoke", "--batch-size", "4", "--steps", "1",
                              "--device", "cpu"], capsys)
    assert code == 0, err
    assert "rem" in out and "sem" in out and "REM / SEM" in out
    flat = " ".join(out.split())
    assert "surrogate timed: small-cnn" in flat and "paper preset's surrogate is resnet18" in flat
    code, _, err = run_cli(["perf", "--model", "nope"], capsys)
    assert code == 2 and "unknown model" in err


def test_em_surrogate_learns_on_a_class_sorted_training_set() -> None:
    """Datasets are stored sorted by class (the CIFAR-10 JPEG copy is): the surrogate's batches must
    be shuffled, or every batch holds one class and the min-min loop never gets a working surrogate."""
    data = _images(n=192, classes=4, seed=5)
    order = torch.argsort(data.y, stable=True)
    data = ImageSet(data.x[order], data.y[order], data.classes)
    _, out = _generate("em", data, {"train_step": 30, "num_steps": 1, "max_iters": 2, "batch_size": 64,
                                    "stop_error": 0.0})
    assert out.info["outer_iterations"] == 2
    assert out.info["final_train_error"] < 0.25  # chance is 0.75; fixed-order batches stay near 0.5
