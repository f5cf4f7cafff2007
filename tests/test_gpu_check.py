"""``bench gpu-check`` on the CPU: it measures, plans into the budget, runs real cells through the runner,
stops in time, writes the summary beside the CUDA paper's cells, and a second call resumes without
training a finished cell again. The planner and the budget stop are checked on their own too."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import run_cli

from benchmark.gpucheck import CELLS, CellCost, plan, short_label, short_overrides, should_stop
from benchmark.gpucheck_report import reference
from benchmark.protocol import resolve_protocol
from benchmark.records import load_records
from benchmark.runner import RunSpec, execute, existing_record, prepare_run
from benchmark.train import StopTraining, checkpoint_epochs


def _cost(name: str, epoch_s: float, **kw) -> CellCost:
    return CellCost(name, 100, epoch_s, 10.0, **kw)


def test_plan_runs_what_fits_at_the_full_protocol_first_then_the_longest_shortened_schedule() -> None:
    cells = [_cost("clean", 2.0), _cost("cuda", 2.0), _cost("at", 20.0)]
    steps = {s.name: s for s in plan(cells, 480, {})}
    assert steps["clean"].action == steps["cuda"].action == "run" and steps["clean"].full
    assert steps["clean"].estimate_s == 210.0  # 10 s + 100 epochs x 2 s
    at = steps["at"]  # 480 - 420 = 60 s left: (60 - 10) / 20 -> 2 epochs of a shortened schedule
    assert (at.action, at.epochs, at.full) == ("run", 2, False)
    steps = {s.name: s for s in plan(cells, 300, {})}  # clean at the full protocol, cuda shortened, AT skipped
    assert (steps["clean"].action, steps["clean"].full) == ("run", True)
    assert (steps["cuda"].action, steps["cuda"].epochs, steps["cuda"].full) == ("run", 40, False)
    assert steps["at"].action == "skip" and "does not fit" in steps["at"].note


def test_plan_resumes_what_an_earlier_call_left() -> None:
    # clean finished at the full protocol; cuda's full run stopped with 90 of 100 epochs in its checkpoint
    cells = [_cost("clean", 3.0, finished=True), _cost("cuda", 3.0, done={100: 90}), _cost("at", 30.0)]
    steps = {s.name: s for s in plan(cells, 45, {})}
    assert steps["clean"].action == "reuse" and (steps["cuda"].action, steps["cuda"].full) == ("run", True)
    assert steps["cuda"].estimate_s == 40.0  # only its 10 missing epochs
    # a shortened run keeps its schedule where it still fits; a finished shortened record is kept
    cells = [_cost("clean", 3.0, finished=True), _cost("cuda", 3.0, short_epochs=30),
             _cost("at", 30.0, done={3: 1})]
    steps = {s.name: s for s in plan(cells, 100, {"cuda": 30, "at": 3})}
    assert (steps["cuda"].action, steps["cuda"].epochs) == ("reuse", 30)
    assert (steps["at"].action, steps["at"].epochs, steps["at"].estimate_s) == ("run", 3, 70.0)
    # a cell whose speed could not be measured yet is not planned
    steps = {s.name: s for s in plan([_cost("at", 1.0, unmeasured=True)], 1e6, {})}
    assert steps["at"].action == "skip"


def test_shortened_schedule_is_its_own_protocol_label() -> None:
    paper = resolve_protocol("paper")
    short = resolve_protocol("paper", short_overrides(paper, 10))
    assert short.preset == short_label("paper", 10) == "paper-short-10ep"
    assert (short.epochs, short.lr_step) == (10, 4)  # decays at 40 % and 80 % of training, as 40 of 100
    assert short.amp == paper.amp and short.model == paper.model


def test_budget_stop_keeps_the_checkpoint_and_the_next_call_resumes(run_env: dict) -> None:
    assert should_stop(now=90, deadline=100, epoch=1, epochs=3, epoch_s=8, final_s=5)
    assert not should_stop(now=90, deadline=100, epoch=3, epochs=3, epoch_s=8, final_s=5)  # only evaluation left
    assert not should_stop(now=50, deadline=100, epoch=1, epochs=3, epoch_s=8, final_s=5)
    spec = RunSpec(preset="smoke", overrides={"epochs": 2, "train_subset": 128, "test_subset": 100},
                   data_root=str(run_env["data_root"]), cache_dir=str(run_env["cache"]),
                   results=str(run_env["results"]))
    prep = prepare_run(spec)

    def stop_after_first(kind: str, data: dict) -> None:
        if kind == "epoch" and data["epoch"] == 1:
            raise StopTraining

    with pytest.raises(StopTraining):
        execute(prep, stop_after_first)
    assert existing_record(prep) is None and not prep.record_path.exists()  # no failed record either
    assert checkpoint_epochs(prep.checkpoint_path) == 1
    rec = execute(prepare_run(spec))
    assert rec["status"] == "finished" and rec["metrics"]["resumed_from_epoch"] == 1


def test_gpu_check_on_cpu_plans_runs_stops_in_time_and_resumes(bench_env: dict, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "check"
    args = ["gpu-check", "--device", "cpu", "--preset", "smoke", "--budget", "60", "--out", str(out)]
    t0 = time.perf_counter()
    code, stdout, stderr = run_cli(args, capsys)
    wall = time.perf_counter() - t0
    assert code == 0, stderr
    assert wall < 60, f"the check took {wall:.0f} s of a 60 s budget"
    state = json.loads((out / "gpu-check.json").read_text())
    assert {s["name"] for s in state["plan"]} == {c.name for c in CELLS}
    assert state["perf"]["train"]["rows"][0]["name"].startswith("trainer")
    runs = load_records(out / "runs")
    assert runs and all(r["status"] == "finished" for _, r in runs)
    presets = {r["config"]["preset"] for _, r in runs}
    assert presets <= {"smoke"} | {short_label("smoke", e) for e in (1, 2)}
    by_cell = {(r["config"]["poison"]["name"], r["config"]["defense"]["name"]) for _, r in runs}
    assert ("none", "none") in by_cell  # the cheapest cell always fits a minute
    summary = (out / "summary.md").read_text()
    for cell in CELLS:
        ref = reference(cell)
        assert ref is not None and cell.title in summary and f"{ref['value']:.2f}" in summary
    for _, rec in runs:
        assert f"`{rec['config']['preset']}`" in summary and f"{rec['metrics']['test_acc']:.2f}" in summary
    assert "trainer / DataLoader + PIL" in (out / "perf.md").read_text()
    code, csv, _ = run_cli(["results", "--results", str(out / "runs")], capsys)  # the normal record format
    assert code == 0 and len(csv.strip().splitlines()) == len(runs) + 1

    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p, _ in runs}
    code, stdout, stderr = run_cli(args[:-4] + ["--budget", "20", "--out", str(out)], capsys)  # a short second call
    assert code == 0, stderr
    assert "reusing the measurement" in stdout
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p, _ in load_records(out / "runs")}
    assert all(after[name] == before[name] for name in before)  # no finished cell trained again
    state = json.loads((out / "gpu-check.json").read_text())
    assert len(state["calls"]) == 2
    finished = {s["name"] for s in state["plan"] if s["action"] == "reuse"}
    assert "clean" in finished


def test_gpu_check_rejects_bad_input_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli(["gpu-check", "--out", str(tmp_path / "o"), "--budget", "0", "--device", "cpu"], capsys)
    assert code == 2 and "--budget must be a positive number" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    code, _, err = run_cli(["gpu-check", "--out", str(tmp_path / "o"), "--preset", "huge", "--device", "cpu"], capsys)
    assert code == 2 and "huge" in err


def test_shortened_records_get_their_own_table_and_are_never_compared(run_env: dict) -> None:
    from benchmark.report import build_frame, collect_runs
    from benchmark.report.references import differences

    base = dict(data_root=str(run_env["data_root"]), cache_dir=str(run_env["cache"]), results=str(run_env["results"]))
    small = {"train_subset": 128, "test_subset": 100}
    for overrides in ({"epochs": 2}, short_overrides(resolve_protocol("smoke"), 1)):
        execute(prepare_run(RunSpec(preset="smoke", overrides={**small, **overrides}, **base)))
    frame = build_frame(collect_runs(Path(run_env["results"]), warn=print))
    titles = {p: set(frame[frame["preset"] == p]["group_title"]) for p in frame["preset"].unique()}
    assert set(titles) >= {"smoke", "smoke-short-1ep"}
    assert not titles["smoke"] & titles["smoke-short-1ep"]  # never one table
    ref = reference(CELLS[0])
    group = {"dataset": "cifar10", "dataset_source": "torchvision", "model": "resnet18", "epochs": 100,
             "preset": short_label("paper", 100)}
    assert differences(ref, group) == ["preset paper-short-100ep vs paper"]
    assert differences(ref, dict(group, preset="paper")) == []
