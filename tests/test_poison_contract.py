"""The poison contract (attacks.base.Poison): every optional capability a poison declares is honoured
by benchmark.poisoning / the report, with real tiny generations: the L-inf budget (checked when
generated and when loaded), ratio-independent noise (partial poisons derived from the full-ratio
one), generation sessions (returned in the result, added up in the manifest) and cheap previews."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import CPU, shifted_images
from conftest import TINY_DATASET_ID as DATASET_ID
from report_records import make_record

from attacks.base import GenerationSession, Poison, PoisonContext, PoisonedSet, exact_subset
from attacks.random_noise import RandomNoise
from benchmark.data import ImageSet
from benchmark.errors import BenchError
from benchmark.poisoning import (
    PoisonSpec,
    artifact_paths,
    build_poison,
    get_poisoned,
    save_artifact,
)
from benchmark.registry import POISONS


class OverBudget(Poison):
    """Declares a 2/255 L-inf budget but adds 3 grey levels to every image."""

    name = "over-budget"

    def budget_255(self) -> int:
        return 2

    def generate(self, train: ImageSet, ctx: PoisonContext) -> PoisonedSet:
        x = (train.x.to(torch.int16) + 3).clamp(0, 255).to(torch.uint8)
        return PoisonedSet(x, train.y.clone(), torch.arange(len(train)))


class SharedRandomNoise(RandomNoise):
    """Random noise (same name, so the same random stream) declaring what is true of it: its per-image
    noise does not depend on the ratio."""

    shares_full_noise = True


def _spec(poison: Poison, ratio: float, key: int = 3) -> PoisonSpec:
    return PoisonSpec(poison.name, poison, key, ratio)


def test_declared_budget_is_checked_when_generated_and_when_loaded(tmp_path: Path) -> None:
    train = shifted_images(40, low=30, high=226)
    with pytest.raises(RuntimeError, match=r"broke its budget: 3/255 > 2/255"):
        get_poisoned(train, DATASET_ID, _spec(OverBudget(None), 1.0), tmp_path, CPU)

    spec = build_poison("random-noise", {"eps": 4 / 255}, key=1, ratio=1.0)
    assert spec.poison.budget_255() == 4
    poisoned, manifest = get_poisoned(train, DATASET_ID, spec, tmp_path, CPU)
    assert manifest["budget"]["linf_255"] == 4
    npz = Path(manifest["artifact"])
    over = poisoned.x.clone()
    over[0] = (train.x[0].int() + 5).clamp(0, 255).to(torch.uint8)  # image 0 is poisoned (ratio 1)
    save_artifact(npz, npz.with_suffix(".json"), PoisonedSet(over, poisoned.y, poisoned.poisoned_indices), manifest)
    with pytest.raises(BenchError, match=r"exceeds its L-inf budget: 5/255 > 4/255"):
        get_poisoned(train, DATASET_ID, spec, tmp_path, CPU)

    # a poison that declares no L-inf budget (CUDA: unbounded convolutions) is not held to one
    cuda = build_poison("cuda", {}, key=1, ratio=1.0)
    assert cuda.poison.budget_255() is None
    poisoned, manifest = get_poisoned(train, DATASET_ID, cuda, tmp_path, CPU)
    npz = Path(manifest["artifact"])
    over = poisoned.x.clone()
    over[0] = (train.x[0].int() + 60).clamp(0, 255).to(torch.uint8)
    save_artifact(npz, npz.with_suffix(".json"), PoisonedSet(over, poisoned.y, poisoned.poisoned_indices), manifest)
    again, again_manifest = get_poisoned(train, DATASET_ID, cuda, tmp_path, CPU)
    assert again_manifest["cached"] is True and torch.equal(again.x, over)


def test_shares_full_noise_derives_partial_ratios_from_the_full_noise(tmp_path: Path) -> None:
    """The same random noise with and without the declaration: declared, a ratio-0.5 request generates
    the ratio-1.0 artifact (the only generation) and derives the partial set from it, with Poison's
    default ``derive``; undeclared, it generates ratio 0.5 directly. Both give the same bytes."""
    train = shifted_images(40, low=30, high=226)
    calls: list[float] = []

    def counted(poison: Poison) -> Poison:
        generate = poison.generate

        def run(data: ImageSet, ctx: PoisonContext) -> PoisonedSet:  # a spy around the real generation
            calls.append(ctx.ratio)
            return generate(data, ctx)

        poison.generate = run  # type: ignore[method-assign]
        return poison

    params = build_poison("random-noise", {}).poison.params
    shared = _spec(counted(SharedRandomNoise(params)), 0.5)
    derived, manifest = get_poisoned(train, DATASET_ID, shared, tmp_path / "a", CPU)
    assert calls == [1.0] and "derived_from" in manifest
    assert artifact_paths(tmp_path, DATASET_ID, shared) == artifact_paths(tmp_path, DATASET_ID, _spec(shared.poison, 1.0))
    assert derived.poisoned_indices.tolist() == exact_subset(40, 0.5, 3).tolist()

    calls.clear()
    direct_spec = _spec(counted(RandomNoise(params)), 0.5)
    direct, direct_manifest = get_poisoned(train, DATASET_ID, direct_spec, tmp_path / "b", CPU)
    assert calls == [0.5] and "derived_from" not in direct_manifest
    assert torch.equal(direct.x, derived.x) and torch.equal(direct.poisoned_indices, derived.poisoned_indices)
    assert not torch.equal(direct.x, train.x)


def test_generation_sessions_come_back_in_the_result_and_the_manifest(tmp_path: Path) -> None:
    """SEM checkpoints its generation: an interrupted run resumed through the cache reports two
    sessions in the manifest (not in ``info``); a poison without checkpoints reports none."""
    train = shifted_images(40)
    spec = build_poison("sem", {"checkpoint_every": 1}, key=2, ratio=1.0, preset="smoke")
    fresh = spec.poison.generate(train, PoisonContext(key=2, ratio=1.0, preset="smoke", num_classes=4))
    assert fresh.session == GenerationSession(1, 0.0) and "session" not in fresh.info

    def interrupt(step: int, total: int, info: dict) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        get_poisoned(train, DATASET_ID, spec, tmp_path, CPU, "smoke", progress=interrupt)
    resumed, manifest = get_poisoned(train, DATASET_ID, spec, tmp_path, CPU, "smoke")
    assert manifest["generation_sessions"] == 2 and manifest["resumed"] is True and "session" not in manifest["info"]
    assert torch.equal(resumed.x, fresh.x)

    noise = build_poison("random-noise", {}, key=2, ratio=1.0)
    assert noise.poison.generate(train, PoisonContext(key=2, num_classes=4)).session is None
    _, manifest = get_poisoned(train, DATASET_ID, noise, tmp_path, CPU)
    assert "generation_sessions" not in manifest and "resumed" not in manifest


def test_preview_is_cheap_decides_whether_the_report_recreates_a_poison(data_root: Path, cache_dir: Path) -> None:
    """The report re-creates a preview only for poisons whose preview is cheap: the default (no
    surrogate presets) for random noise, not EM (presets), not OPS (declared: needs all images)."""
    from benchmark.report.samples import SampleSource

    assert POISONS.get("random-noise").preview_is_cheap()
    assert not POISONS.get("em").preview_is_cheap() and POISONS.get("em").preset_params
    assert not POISONS.get("ops").preview_is_cheap() and not POISONS.get("ops").preset_params
    warnings: list[str] = []
    images = SampleSource(data_root, cache_dir, warnings.append).images(make_record("random-noise"), "random-noise")
    assert images is not None and not warnings
    clean, poisoned = images[0], images[1]
    assert 0 < int((poisoned.int() - clean.int()).abs().max()) <= 8
    for name in ("em", "ops"):
        assert SampleSource(data_root, cache_dir, warnings.append).images(make_record(name), name) is None
        assert "needs surrogate training" in warnings[-1]
