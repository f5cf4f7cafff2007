"""The trainer: bit-identical fast paths, and model selection on a clean validation split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_images

from benchmark.data import ImageSet
from benchmark.evaluate import evaluate, forward_in_slices
from benchmark.models import build_model
from benchmark.protocol import resolve_protocol
from benchmark.runner import RunSpec, execute, prepare_run
from benchmark.train import random_crop_flip, train_model
from defenses.base import TrainContext, build_defense


@pytest.mark.parametrize("name,n", [("small-cnn", 1000), ("small-cnn", 300), ("resnet18", 300)])
def test_sliced_eval_forward_gives_the_same_logits(name: str, n: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, 10, 3).to(memory_format=torch.channels_last).eval()
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(forward_in_slices(model, x), model(x))


def test_crop_flip_on_uint8_equals_the_index_formula_on_float() -> None:
    """Same draws, same pixels: the window gather on uint8 vs the explicit 4-D index formula on floats."""
    def index_formula(x: torch.Tensor, ctx: TrainContext, pad: int = 4) -> torch.Tensor:
        n, c, h, w = x.shape
        padded = F.pad(x, (pad, pad, pad, pad))
        oy, ox = ctx.randint(2 * pad + 1, (n,)), ctx.randint(2 * pad + 1, (n,))
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
        cols = torch.where((ctx.rand(n) < 0.5)[:, None, None, None], cols.flip(-1), cols)
        return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]

    def ctx() -> TrainContext:
        return TrainContext(torch.device("cpu"), 10, 3, (32, 32), generator=torch.Generator().manual_seed(0))

    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(random_crop_flip(x, ctx()).float().div_(255), index_formula(x.float().div_(255), ctx()))


def _train(val: ImageSet | None, test: ImageSet, patience: int = 0, epochs: int = 6, checkpoint: Path | None = None):
    proto = resolve_protocol("smoke", {"epochs": epochs, "batch_size": 16, "lr": 0.05, "augment": False})
    torch.manual_seed(0)
    model = build_model("small-cnn", 4, 3)
    ctx = TrainContext(torch.device("cpu"), 4, 3, (16, 16), protocol=proto, generator=torch.Generator().manual_seed(0))
    result = train_model(model, make_images(96, seed=1), test, proto, build_defense("none"), ctx,
                         checkpoint=checkpoint, val=val, patience=patience)
    return result, model


def test_model_selection_keeps_the_best_validation_epoch_and_never_reads_the_test_set() -> None:
    val, test = make_images(32, seed=2), make_images(48, seed=3)
    result, model = _train(val, test)
    vals = [e["val_acc"] for e in result.per_epoch]
    assert len(vals) == 6 and len(set(vals)) > 1  # the curve moves, so the choice is not trivial
    assert result.selected_epoch == vals.index(max(vals)) + 1  # the earliest best epoch
    chosen = result.per_epoch[result.selected_epoch - 1]
    assert result.test_acc == pytest.approx(chosen["test_acc"], abs=1e-3)
    assert evaluate(model, test, 4)[0] == pytest.approx(result.test_acc)  # the kept model is that epoch's
    # the same run against a test set with shuffled labels: same choice, same weights
    shuffled = ImageSet(test.x, test.y[torch.randperm(len(test), generator=torch.Generator().manual_seed(5))],
                        test.classes)
    other, other_model = _train(val, shuffled)
    assert other.selected_epoch == result.selected_epoch
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other_model.state_dict().values(),
                                                 strict=True))
    # without a validation split the last epoch's model is the result
    plain, _ = _train(None, test)
    assert plain.selected_epoch is None and plain.test_acc == pytest.approx(plain.per_epoch[-1]["test_acc"], abs=1e-3)


def test_patience_stops_training_and_a_resumed_run_stays_stopped(tmp_path: Path) -> None:
    val, test = make_images(32, seed=2), make_images(48, seed=3)
    full, _ = _train(val, test, epochs=12)
    vals = [e["val_acc"] for e in full.per_epoch]
    stopped, model = _train(val, test, patience=1, epochs=12, checkpoint=tmp_path / "ck.pt")
    first_drop = next(i for i in range(1, 12) if vals[i] <= max(vals[:i]))  # first epoch without a new best
    assert stopped.stopped_early and len(stopped.per_epoch) == first_drop + 1
    assert stopped.selected_epoch == vals.index(max(vals[:first_drop + 1])) + 1
    again, again_model = _train(val, test, patience=1, epochs=12, checkpoint=tmp_path / "ck.pt")
    assert again.stopped_early and len(again.per_epoch) == len(stopped.per_epoch)  # no further epochs
    assert again.selected_epoch == stopped.selected_epoch
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again_model.state_dict().values(),
                                                 strict=True))


def test_early_stop_run_holds_out_clean_images_and_records_the_choice(run_env: dict) -> None:
    spec = RunSpec(poison="cuda", defense="early-stop", defense_params={"val_size": 40}, preset="smoke",
                   overrides={"train_subset": 400, "test_subset": 200, "epochs": 3},
                   data_root=str(run_env["data_root"]), cache_dir=str(run_env["cache"]),
                   results=str(run_env["results"]))
    prep = prepare_run(spec)
    assert prep.val_positions is not None and len(prep.val_positions) == 40
    assert torch.bincount(prep.train.y[prep.val_positions], minlength=10).tolist() == [4] * 10  # stratified
    rec = execute(prep)
    m = rec["metrics"]
    assert rec["defense_info"]["tier"] == "extra-clean-data"
    assert rec["training"]["images"] == 360 and rec["training"]["validation_images"] == 40
    vals = [e["val_acc"] for e in m["per_epoch"]]
    assert m["selected_epoch"] == vals.index(max(vals)) + 1 and m["selected_val_acc"] == max(vals)
    assert m["test_acc"] == m["per_epoch"][m["selected_epoch"] - 1]["test_acc"]
    with pytest.raises(Exception, match="val_size"):
        prepare_run(RunSpec(**{**spec.__dict__, "defense_params": {"val_size": 300}}))


#: the Tensor methods that read a value back to the host (on a GPU each one waits for the device)
HOST_READS = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__")


def _host_reads(monkeypatch: pytest.MonkeyPatch, steps: int, proto_overrides: dict) -> int:
    """Host reads during a real 2-epoch CPU run of ``steps`` optimizer steps per epoch."""
    proto = resolve_protocol("smoke", {"epochs": 2, "batch_size": 8, "grad_clip": 5.0, **proto_overrides})
    torch.manual_seed(0)
    model = build_model("small-cnn", 4, 3)
    ctx = TrainContext(torch.device("cpu"), 4, 3, (16, 16), protocol=proto, generator=torch.Generator().manual_seed(0))
    train, test = make_images(8 * steps, seed=1), make_images(40, seed=3)
    count = {"n": 0}
    with monkeypatch.context() as patch:
        for name in HOST_READS:
            original = getattr(torch.Tensor, name)

            def counted(self, *args, _original=original, **kwargs):
                count["n"] += 1
                return _original(self, *args, **kwargs)

            patch.setattr(torch.Tensor, name, counted)
        result = train_model(model, train, test, proto, build_defense("none"), ctx)
    assert result.steps == 2 * steps and len(result.per_epoch) == 2
    return count["n"]


@pytest.mark.parametrize("overrides", [{}, {"memory_format": "channels_last", "tf32": True}],
                         ids=["smoke", "paper-numerics"])
def test_step_loop_never_reads_back_to_the_host(monkeypatch: pytest.MonkeyPatch, overrides: dict) -> None:
    """Loss and accuracy accumulate on the device; the host reads them once per epoch, so the number
    of host reads does not grow with the number of steps (each one would stall a GPU's queue)."""
    few, many = _host_reads(monkeypatch, 3, overrides), _host_reads(monkeypatch, 12, overrides)
    assert few > 0  # the counter sees the per-epoch reads (loss, accuracy, evaluation)
    assert many == few, f"{few} host reads with 3 steps per epoch, {many} with 12: the step loop syncs"


def test_multistep_schedule_decays_at_its_milestones_and_rejects_bad_ones() -> None:
    from benchmark.errors import BenchError
    from benchmark.protocol import protocol_dict, resolve_protocol
    from benchmark.train import lr_at

    proto = resolve_protocol("cpu", {"schedule": "multistep", "lr_milestones": "2,5", "lr": 1.0, "lr_gamma": 0.5})
    assert [lr_at(proto, e * 4 + 1, 4) for e in range(7)] == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    assert protocol_dict(proto)["lr_milestones"] == "2,5"
    assert "lr_milestones" not in protocol_dict(resolve_protocol("cpu"))  # old records keep their run ids
    for bad in ("", "5,2", "a,3", "0,4"):
        with pytest.raises(BenchError, match="lr_milestones"):
            resolve_protocol("cpu", {"schedule": "multistep", "lr_milestones": bad})
