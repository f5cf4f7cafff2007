"""The GPU-facing parts of the trainer, checked on the CPU: per-batch draws from the run's device
generator (checkpointed, so a resumed run repeats), opt-in bf16 autocast as a protocol field that
never shares a record id or a report table with fp32, and cuDNN's kernel choice recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_images

from benchmark.device import deterministic_kernels
from benchmark.models import build_model
from benchmark.protocol import protocol_dict, resolve_protocol
from benchmark.runner import RunSpec, execute, prepare_run
from benchmark.train import autocast, train_model
from defenses.base import TrainContext, build_defense


def _ctx(proto, device_seed: int | None = None) -> TrainContext:
    dev_gen = torch.Generator().manual_seed(device_seed) if device_seed is not None else None
    return TrainContext(torch.device("cpu"), 4, 3, (16, 16), protocol=proto,
                        generator=torch.Generator().manual_seed(0), device_generator=dev_gen)


class Interrupted(Exception):
    pass


def _stop_after(epoch: int):
    def on_epoch(entry: dict) -> None:
        if entry["epoch"] == epoch:
            raise Interrupted
    return on_epoch


def _train(checkpoint: Path | None, device_seed: int | None = 7, on_epoch=None):
    proto = resolve_protocol("smoke", {"epochs": 3, "batch_size": 16, "lr": 0.05})  # augment: crop/flip draws
    torch.manual_seed(0)
    model = build_model("small-cnn", 4, 3)
    ctx = _ctx(proto, device_seed)
    result = train_model(model, make_images(96, seed=1), make_images(48, seed=3), proto, build_defense("mixup"),
                         ctx, checkpoint=checkpoint, on_epoch=on_epoch)
    return result, model, ctx


def _numbers(result) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "seconds"} for e in result.per_epoch]


def test_cpu_context_draws_from_the_run_generator_as_before() -> None:
    ctx = _ctx(None)
    assert ctx.device_generator is ctx.generator  # on the CPU: one generator, the numbers of every record
    ref = torch.Generator().manual_seed(0)
    assert torch.equal(ctx.rand(5), torch.rand(5, generator=ref))
    assert torch.equal(ctx.randint(9, (4,)), torch.randint(9, (4,), generator=ref))


def test_per_batch_draws_use_the_device_generator_and_resume_to_the_same_numbers(tmp_path: Path) -> None:
    full, full_model, _ = _train(None)
    other, _, _ = _train(None, device_seed=8)
    assert _numbers(other) != _numbers(full)  # crop, flip and mixing draws come from the device generator
    with pytest.raises(Interrupted):  # killed after epoch 2: the checkpoint holds both generators' states
        _train(tmp_path / "ck.pt", on_epoch=_stop_after(2))
    state = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert "device_generator" in state and not torch.equal(state["device_generator"], state["generator"])
    resumed, model, _ = _train(tmp_path / "ck.pt")
    assert resumed.resumed_from_epoch == 2
    assert _numbers(resumed) == _numbers(full)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), full_model.state_dict().values(),
                                                 strict=True))


def test_bf16_autocast_is_opt_in_and_part_of_the_protocol() -> None:
    off, bf16 = resolve_protocol("smoke"), resolve_protocol("smoke", {"amp": "bf16"})
    layer = torch.nn.Linear(4, 2)
    with autocast(off, torch.device("cpu")):
        assert layer(torch.ones(1, 4)).dtype == torch.float32
    with autocast(bf16, torch.device("cpu")):
        assert layer(torch.ones(1, 4)).dtype == torch.bfloat16
    assert "amp" not in protocol_dict(off)  # the records made before the field existed keep their ids
    assert protocol_dict(bf16)["amp"] == "bf16"


def test_bf16_run_gets_its_own_record_and_report_table(run_env: dict) -> None:
    from benchmark.report import build_frame, collect_runs

    base = dict(poison="none", preset="smoke", data_root=str(run_env["data_root"]),
                cache_dir=str(run_env["cache"]), results=str(run_env["results"]))
    ids = []
    for amp in ("off", "bf16"):
        prep = prepare_run(RunSpec(**base, overrides={"epochs": 1, "train_subset": 128, "test_subset": 100,
                                                      "amp": amp}))
        ids.append(prep.run_id)
        execute(prep)
    assert ids[0] != ids[1]
    recs = [json.loads(p.read_text()) for p in sorted(Path(run_env["results"]).glob("*.json"))]
    assert sorted(r["config"]["protocol"].get("amp", "off") for r in recs) == ["bf16", "off"]
    assert all(r["environment"]["deterministic_kernels"] is True for r in recs)
    assert all(r["timings"]["training_cpu"] > 0 for r in recs)  # CPU seconds of training, beside the wall time
    losses = {r["config"]["protocol"].get("amp", "off"): r["metrics"]["per_epoch"][0]["train_loss"] for r in recs}
    assert losses["bf16"] != losses["off"]  # the forward passes really ran in bf16
    frame = build_frame(collect_runs(Path(run_env["results"]), warn=print))
    titles = sorted(frame["group_title"].unique())
    assert len(titles) == 2 and any("amp=bf16" in t for t in titles) and any("amp=off" in t for t in titles)


def test_cudnn_autotuning_only_when_determinism_is_not_requested(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmark.device import seed_everything

    assert deterministic_kernels()
    seed_everything(0)
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    monkeypatch.setenv("BENCH_DETERMINISTIC", "0")
    try:
        seed_everything(0)
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    finally:
        monkeypatch.delenv("BENCH_DETERMINISTIC")
        seed_everything(0)


def test_numerics_fields_keep_every_committed_run_id() -> None:
    """tf32 and memory_format are protocol fields left out of a record at their neutral defaults, so
    the cpu and smoke presets resolve to the protocols the committed records hold, under the same ids,
    while the paper preset states its numerics."""
    from benchmark.protocol import full_protocol
    from benchmark.records import load_records, run_id

    runs = load_records(Path(__file__).resolve().parents[1] / "results" / "runs")
    assert runs, "no committed records to check"
    for path, rec in runs:
        cfg = rec["config"]
        proto = resolve_protocol(cfg["preset"], cfg["protocol"])
        assert protocol_dict(proto) == cfg["protocol"], path
        assert run_id(dict(cfg, protocol=protocol_dict(proto))) == rec["run_id"], path
    for preset in ("cpu", "smoke"):
        assert not {"tf32", "memory_format", "amp"} & set(protocol_dict(resolve_protocol(preset)))
    paper = protocol_dict(resolve_protocol("paper"))
    assert (paper["amp"], paper["tf32"], paper["memory_format"]) == ("bf16", True, "channels_last")
    assert full_protocol(protocol_dict(resolve_protocol("cpu")))["memory_format"] == "auto"


def test_numerics_context_sets_and_restores_tf32() -> None:
    from benchmark.train import numerics

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    for tf32 in (True, False):
        with numerics(resolve_protocol("smoke", {"tf32": tf32})):
            assert torch.backends.cudnn.allow_tf32 is tf32 and torch.backends.cuda.matmul.allow_tf32 is tf32
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_channels_last_protocol_trains_model_and_batches_in_that_layout() -> None:
    from benchmark.train import prepare_model

    cpu = torch.device("cpu")
    for fmt, expect in (("auto", True), ("channels_last", True), ("contiguous", False)):
        model = prepare_model(build_model("small-cnn", 4, 3), resolve_protocol("smoke", {"memory_format": fmt}), cpu)
        weight = next(p for p in model.parameters() if p.dim() == 4)
        assert weight.is_contiguous(memory_format=torch.channels_last) is expect, fmt
    seen = []
    proto = resolve_protocol("smoke", {"epochs": 1, "batch_size": 16, "memory_format": "channels_last"})
    model = prepare_model(build_model("small-cnn", 4, 3), proto, cpu)
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    train_model(model, make_images(32, seed=1), make_images(16, seed=2), proto, build_defense("none"), _ctx(proto))
    assert seen and all(seen[:2])  # the two training batches; evaluation batches stay NCHW
