"""Sweeps on real CIFAR-10 (smoke preset, 1 epoch on 128 images): the grid, poisons generated once,
parallel and Ray executors, resume after a crash, failed cells, dry runs, config files."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from benchmark.errors import BenchError
from benchmark.records import validate_record
from benchmark.sweep import SweepSpec, load_config, plan_sweep, run_sweep

TINY = ["--preset", "smoke", "--protocol-param", "epochs=1", "--protocol-param", "train_subset=128",
        "--protocol-param", "test_subset=100"]
GRID = ["--poisons", "cuda,random-noise", "--defenses", "none,cutout", "--seeds", "0,1"]


def _sweep(env: dict, **kw) -> SweepSpec:
    base = dict(poisons=["cuda", "random-noise"], defenses=["none", "cutout"], seeds=[0, 1], preset="smoke",
                overrides={"epochs": 1, "train_subset": 128, "test_subset": 100},
                data_root=str(env["data_root"]), cache_dir=str(env["cache"]), results=str(env["results"]))
    base.update(kw)
    return SweepSpec(**base)


def _records(results: Path) -> dict[str, dict]:
    recs = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    return {r["run_id"]: r for r in recs}


def _check_grid(results: Path, expected_ids: set[str]) -> None:
    recs = _records(results)
    assert set(recs) == expected_ids
    assert all(validate_record(r) is None and r["status"] == "finished" for r in recs.values())
    combos = {(r["config"]["poison"]["name"], r["config"]["defense"]["name"], r["config"]["seed"]) for r in recs.values()}
    assert combos == set(itertools.product(["none", "cuda", "random-noise"], ["none", "cutout"], [0, 1]))
    assert {r["config"]["protocol"]["epochs"] for r in recs.values()} == {1}
    assert {r["config"]["train_size"] for r in recs.values()} == {128}
    # every poison was generated before its cells, which all reused the cached artifact
    assert all(r["timings"]["poison_cached"] for r in recs.values())


def test_local_parallel_sweep_generates_each_poison_once(bench_env: dict, capsys: pytest.CaptureFixture) -> None:
    expected = {c.run_id for c in plan_sweep(_sweep(bench_env)).cells}
    assert len(expected) == 12  # (clean + 2 poisons) x 2 defenses x 2 seeds
    code, out, err = run_cli(["sweep", *GRID, *TINY, "--executor", "local", "--jobs", "2"], capsys)
    assert code == 0, err
    _check_grid(bench_env["results"], expected)
    artifacts = sorted(p.name.split("-")[1] for p in (bench_env["cache"] / "poisons").glob("*.npz"))
    # one artifact per poison and seed (each seed draws its own key), shared by that seed's 2 cells; one clean set
    assert artifacts == ["cuda", "cuda", "none", "random", "random"]
    assert "12 done, 0 skipped, 0 failed" in out
    # idempotent: nothing left to do
    code, out, err = run_cli(["sweep", *GRID, *TINY, "--jobs", "2"], capsys)
    assert code == 0, err
    assert "0 done, 12 skipped, 0 failed" in out


def test_ray_sweep_gives_the_same_runs(bench_env: dict, capsys: pytest.CaptureFixture) -> None:
    ray = pytest.importorskip("ray")
    expected = {c.run_id for c in plan_sweep(_sweep(bench_env)).cells}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        code, out, err = run_cli(["sweep", *GRID, *TINY, "--executor", "ray"], capsys)
    finally:
        ray.shutdown()
    assert code == 0, err
    _check_grid(bench_env["results"], expected)
    assert "12 done, 0 skipped, 0 failed" in out


def test_interrupted_sweep_resumes_only_missing_cells(bench_env: dict, capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmark.sweep.cells as sweep_mod

    grid = ["--poisons", "cuda", "--defenses", "none", "--seeds", "0,1,2"]
    code, out, _ = run_cli(["sweep", *grid, *TINY, "--dry-run"], capsys)
    assert code == 0
    assert "6 of 6 cells to run; estimated cost: unknown" in out
    assert not bench_env["results"].exists()  # a dry run runs nothing

    real_execute = sweep_mod.execute
    calls = []

    def crash_on_fourth(prep, on_event=None):
        calls.append(prep.run_id)
        if len(calls) == 4:
            raise KeyboardInterrupt  # the user pressed Ctrl-C (or the machine went down) mid-sweep
        return real_execute(prep, on_event)

    monkeypatch.setattr(sweep_mod, "execute", crash_on_fourth)
    code, _out, err = run_cli(["sweep", *grid, *TINY], capsys)
    assert code == 130, err  # Ctrl-C: exit 130, no traceback
    assert len(_records(bench_env["results"])) == 3

    code, out, _ = run_cli(["sweep", *grid, *TINY, "--dry-run"], capsys)
    assert code == 0
    assert "3 of 6 cells to run; estimated cost:" in out and "unknown" not in out.split("cells to run")[1]

    monkeypatch.setattr(sweep_mod, "execute", real_execute)
    summary = run_sweep(_sweep(bench_env, poisons=["cuda"], defenses=["none"], seeds=[0, 1, 2]))
    assert (summary.skipped, summary.done, summary.failed) == (3, 3, 0)
    assert len(_records(bench_env["results"])) == 6


def test_failed_cell_and_failed_poison_do_not_stop_the_sweep(bench_env: dict, capsys: pytest.CaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmark.sweep.cells as sweep_mod

    real_execute, real_generate = sweep_mod.execute, sweep_mod.generate_poison

    def fail_one_cell(prep, on_event=None):
        if prep.spec.poison == "none" and prep.spec.seed == 1:
            raise RuntimeError("simulated out of memory")
        return real_execute(prep, on_event)

    def fail_random_noise(spec):
        if spec.poison == "random-noise":
            raise ValueError("simulated generator crash")
        return real_generate(spec)

    monkeypatch.setattr(sweep_mod, "execute", fail_one_cell)
    monkeypatch.setattr(sweep_mod, "generate_poison", fail_random_noise)
    sweep = _sweep(bench_env, defenses=["none"])
    summary = run_sweep(sweep)
    assert (summary.done, summary.failed, summary.skipped) == (3, 3, 0)  # 6 cells: none, cuda, random-noise x 2 seeds
    recs = _records(bench_env["results"])
    failed = {(r["config"]["poison"]["name"], r["config"]["seed"]): r for r in recs.values() if r["status"] == "failed"}
    assert set(failed) == {("none", 1), ("random-noise", 0), ("random-noise", 1)}
    assert "simulated out of memory" in failed[("none", 1)]["error"]
    assert "poison generation failed" in failed[("random-noise", 0)]["error"]
    assert all(validate_record(r) is None for r in recs.values())

    # the CLI exits 1 when a cell failed; a re-run retries only the failed cells
    monkeypatch.setattr(sweep_mod, "generate_poison", real_generate)
    code, out, _ = run_cli(["sweep", "--poisons", "cuda,random-noise", "--seeds", "0,1", *TINY], capsys)
    assert code == 1 and "2 done, 3 skipped, 1 failed" in out
    monkeypatch.setattr(sweep_mod, "execute", real_execute)
    summary = run_sweep(sweep)
    assert (summary.done, summary.failed, summary.skipped) == (1, 0, 5)
    assert all(r["status"] == "finished" for r in _records(bench_env["results"]).values())


def test_partial_ratios_add_clean_only_baselines_and_params_are_routed(bench_env: dict) -> None:
    plan = plan_sweep(_sweep(bench_env, ratios=[0.5, 1.0], seeds=[0], defenses=["none"],
                             poison_params={"eps": "4/255", "cuda.pb": 0.2}))
    cells = {(c.spec.poison, c.spec.ratio, c.spec.clean_only): c for c in plan.cells}
    assert set(cells) == {("none", 1.0, False), ("cuda", 0.5, False), ("cuda", 0.5, True), ("cuda", 1.0, False),
                          ("random-noise", 0.5, False), ("random-noise", 0.5, True), ("random-noise", 1.0, False)}
    # the clean-only baseline trains on the same artifact as its mixed cell (generated once)
    assert cells[("cuda", 0.5, False)].artifact == cells[("cuda", 0.5, True)].artifact
    assert len({c.artifact for c in plan.cells}) == 5
    assert cells[("cuda", 1.0, False)].spec.poison_params == {"pb": 0.2}
    assert cells[("random-noise", 1.0, False)].spec.poison_params == {"eps": "4/255"}
    assert cells[("none", 1.0, False)].spec.poison_params == {}
    no_baseline = plan_sweep(_sweep(bench_env, ratios=[0.5], seeds=[0], defenses=["none"], clean_only_baseline=False))
    assert not any(c.spec.clean_only for c in no_baseline.cells)


BAD_SWEEPS = [
    (["--poisons", "cuda,nope"], "unknown poison 'nope'"),
    (["--poisons", "cuda", "--defenses", "none,mixupp"], "unknown defense 'mixupp'"),
    (["--poisons", "cuda", "--poison-param", "cuda.pb=-1"], "'pb'=-1.0 is out of range"),
    (["--poisons", "cuda", "--poison-param", "depth=3"], "no poison of the sweep"),
    (["--poisons", "cuda", "--poison-param", "em.eps=0.1"], "not in the sweep"),
    (["--poisons", "cuda", "--defense-param", "alpha=2"], "no defense of the sweep"),
    (["--poisons", "cuda", "--seeds", "0,x"], "'x' is not a valid int"),
    (["--poisons", "cuda", "--ratios", "1.5"], "ratio must be in [0, 1]"),
    (["--poisons", "cuda", "--protocol-param", "epochs=0"], "'epochs'=0 is out of range"),
    (["--poisons", "cuda", "--jobs", "0"], "--jobs must be >= 1"),
    (["--poisons", "cuda", "--address", "auto"], "--address only applies to --executor ray"),
    (["--defenses", "none"], "a sweep needs --poisons"),
]


@pytest.mark.parametrize("args,message", BAD_SWEEPS, ids=[" ".join(a) for a, _ in BAD_SWEEPS])
def test_bad_sweep_fails_up_front(args: list[str], message: str, bench_env: dict, capsys: pytest.CaptureFixture) -> None:
    code, _out, err = run_cli(["sweep", "--preset", "smoke", *args], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not bench_env["results"].exists()


def test_example_config_file(bench_env: dict, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    config = load_config(REPO / "sweeps" / "cpu-cifar10.toml")
    sweep = SweepSpec(poisons=config["poisons"], defenses=config["defenses"], seeds=config["seeds"],
                      poison_params=config["poison_params"], defense_params=config["defense_params"])
    from benchmark.sweep import expand_grid

    specs = expand_grid(sweep, config["preset"], "cpu")  # every name and routed param exists
    assert len(specs) == (len(config["poisons"]) + 1) * len(config["defenses"]) * len(config["seeds"])
    # flags override the file
    code, out, err = run_cli(["sweep", "--config", str(REPO / "sweeps" / "cpu-cifar10.toml"), "--poisons", "cuda",
                              "--defenses", "none", "--seeds", "0", "--dry-run"], capsys)
    assert code == 0, err
    assert "2 of 2 cells to run" in out and "preset cpu" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('poisons = ["cuda"]\nseed = [0]\n')
    with pytest.raises(BenchError, match="unknown key"):
        load_config(bad)


def test_clean_row_can_be_left_out(bench_env: dict) -> None:
    with_row = plan_sweep(_sweep(bench_env))
    without = plan_sweep(_sweep(bench_env, clean_row=False))
    assert len(with_row.cells) == 12 and len(without.cells) == 8
    assert {c.spec.poison for c in without.cells} == {"cuda", "random-noise"}
    # asking for 'none' explicitly keeps it
    assert len(plan_sweep(_sweep(bench_env, poisons=["none", "cuda"], clean_row=False)).cells) == 8


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find worker processes")
def test_sigterm_stops_a_parallel_sweep_and_its_workers(bench_env: dict) -> None:
    """`kill` of a sweep acts like Ctrl-C: exit 130 with the resume hint, and no worker process is left
    running a cell (it would write a record after the sweep has gone, maybe from edited code)."""
    import signal
    import subprocess
    import sys
    import time

    long_cells = ["--preset", "smoke", "--protocol-param", "epochs=200", "--protocol-param", "test_subset=100"]
    proc = subprocess.Popen([sys.executable, "-m", "benchmark.cli", "sweep", "--poisons", "cuda", "--defenses", "none",
                             "--seeds", "0,1", "--jobs", "2", *long_cells], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while time.monotonic() < deadline and len(workers) < 2:
            time.sleep(0.5)
            workers = [k for k in _children(proc.pid) if "--multiprocessing-fork" in
                       Path(f"/proc/{k}/cmdline").read_bytes().decode(errors="replace")]
        assert len(workers) == 2, "the sweep did not start its 2 workers"
        time.sleep(5)  # let them import torch and start training cells
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers)
    assert not list(bench_env["results"].glob("*.json")) if bench_env["results"].exists() else True


def test_corrupt_record_is_rerun_not_fatal(bench_env: dict, capsys: pytest.CaptureFixture) -> None:
    """One unreadable record (a crash while copying results) neither stops the sweep nor its dry run:
    it is named in one warning, its cell runs again, and the record is rewritten."""
    sweep = _sweep(bench_env, poisons=["cuda"], defenses=["none"], seeds=[0], clean_row=False)
    (cell,) = plan_sweep(sweep).cells
    run_sweep(sweep)
    assert _records(bench_env["results"])[cell.run_id]["status"] == "finished"
    cell.record_path.write_text('{"schema_version": 1, "run_id": ')  # truncated
    warnings: list[str] = []
    (again,) = plan_sweep(sweep, warn=warnings.append).cells
    assert not again.finished and again.record_path == cell.record_path
    assert len(warnings) == 1 and str(cell.record_path) in warnings[0] and "runs again" in warnings[0]

    grid = ["--poisons", "cuda", "--defenses", "none", "--no-clean-row"]
    code, out, err = run_cli(["sweep", *grid, *TINY, "--dry-run"], capsys)
    assert code == 0, err
    assert "1 of 1 cells to run" in out
    (line,) = [line for line in err.splitlines() if line]
    assert line.startswith(f"bench sweep: warning: ignoring unreadable record {cell.record_path} (Expecting value")
    assert line.endswith("its cell runs again and rewrites it")
    code, out, err = run_cli(["sweep", *grid, *TINY], capsys)
    assert code == 0 and "1 done, 0 skipped, 0 failed" in out, err
    rec = json.loads(cell.record_path.read_text())
    assert rec["status"] == "finished" and validate_record(rec) is None
    assert len(list(bench_env["results"].glob("*.json"))) == 1  # rewritten in place, no second file


def test_cells_finished_on_another_poisoned_set_are_flagged_and_rerun_on_request(
        bench_env: dict, capsys: pytest.CaptureFixture) -> None:
    """A finished record whose poisoned set differs from the cached artifact of the same poison, params and
    key (regenerated on another CPU, or by changed code) is named in one warning, skipped by default and
    trained again on the cached set with --rerun-stale; a record on the cached set is never flagged."""
    grid = ["--poisons", "cuda", "--defenses", "none", "--no-clean-row", *TINY]
    code, out, err = run_cli(["sweep", *grid], capsys)
    assert code == 0 and "1 done" in out, err
    (path,) = bench_env["results"].glob("*.json")
    (manifest,) = (bench_env["cache"] / "poisons").glob("*cuda*.json")
    cached = json.loads(manifest.read_text())["digest"]
    assert json.loads(path.read_text())["poison"]["digest"] == cached
    code, out, err = run_cli(["sweep", *grid], capsys)
    assert code == 0 and "0 done, 1 skipped" in out and "another poisoned set" not in err

    rec = json.loads(path.read_text())
    rec["poison"]["digest"] = "0" * 16  # trained on other bytes than the cached artifact
    path.write_text(json.dumps(rec))
    code, out, err = run_cli(["sweep", *grid], capsys)
    assert code == 0 and "0 done, 1 skipped" in out, err
    assert "1 finished cell(s) trained on another poisoned set" in err and "--rerun-stale" in err
    code, out, err = run_cli(["sweep", *grid, "--dry-run"], capsys)
    assert code == 0 and "stale" in out, err
    code, out, err = run_cli(["sweep", *grid, "--rerun-stale"], capsys)
    assert code == 0 and "1 done, 0 skipped" in out, err
    assert json.loads(path.read_text())["poison"]["digest"] == cached

    rec = json.loads(path.read_text())  # a record from before digests: its measured budget tells
    del rec["poison"]["digest"]
    path.write_text(json.dumps(rec))
    assert not plan_sweep(_sweep(bench_env, poisons=["cuda"], defenses=["none"], seeds=[0], clean_row=False)).cells[0].stale
    rec["poison"]["budget"]["l2_mean"] += 0.01
    path.write_text(json.dumps(rec))
    assert plan_sweep(_sweep(bench_env, poisons=["cuda"], defenses=["none"], seeds=[0], clean_row=False)).cells[0].stale


def test_ray_driver_replaces_a_stale_failed_record(tmp_path: Path) -> None:
    """Without a shared results folder the driver writes what a Ray task returns: a failed record of an
    earlier sweep at the same path is replaced by the new result; a finished one is never replaced by
    a failure; an identical file is left alone."""
    from test_report import make_record

    from benchmark.sweep import store_returned_record

    path = tmp_path / "runs" / "cell.json"
    failed = make_record("cuda", "none", 20.0, status="failed")
    finished = make_record("cuda", "none", 20.0)
    assert store_returned_record(path, failed)
    assert store_returned_record(path, finished)  # the stale failure from before is replaced
    assert json.loads(path.read_text())["status"] == "finished"
    assert not store_returned_record(path, finished)  # same record: nothing to write
    assert not store_returned_record(path, failed)  # a result is never replaced by a failure
    assert json.loads(path.read_text())["status"] == "finished"
    path.write_text("{corrupt")
    assert store_returned_record(path, failed) and json.loads(path.read_text())["status"] == "failed"


def _die_in_worker(spec) -> None:
    """Stands in for run_cell in a spawned worker: the process dies as if killed (out of memory)."""
    os._exit(3)


def _poison_ready(spec) -> dict:
    return {"artifact": "unused.npz", "cached": True, "generation_seconds": 0.0}


def test_dead_worker_leaves_a_failed_record(bench_env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker process that dies mid-cell breaks the process pool: the cell is counted as failed and,
    since the worker could not write it, the driver writes its failed record."""
    import benchmark.sweep.cells as sweep_mod

    monkeypatch.setattr(sweep_mod, "generate_poison", _poison_ready)
    monkeypatch.setattr(sweep_mod, "run_cell", _die_in_worker)
    sweep = _sweep(bench_env, poisons=["cuda"], defenses=["none"], seeds=[0], clean_row=False)
    summary = run_sweep(sweep, jobs=2)
    assert (summary.done, summary.failed) == (0, 1)
    (rec,) = _records(bench_env["results"]).values()
    assert rec["status"] == "failed" and validate_record(rec) is None
    assert "BrokenProcessPool" in rec["error"] and rec["config"]["poison"]["name"] == "cuda"


def test_clean_row_in_a_config_file(bench_env: dict, tmp_path: Path) -> None:
    from benchmark.sweep import sweep_from_options

    config = tmp_path / "sweep.toml"
    config.write_text('poisons = ["cuda"]\nclean_row = false\npreset = "smoke"\n')
    assert load_config(config)["clean_row"] is False
    sweep, _ = sweep_from_options({"config": str(config)}, explicit=set())
    assert sweep.clean_row is False
    sweep, _ = sweep_from_options({"config": str(config), "clean_row": True}, explicit={"clean_row"})
    assert sweep.clean_row is True  # the flag wins over the file
    config.write_text('poisons = ["cuda"]\nclean_row = "no"\n')
    with pytest.raises(BenchError, match="'clean_row' must be true or false"):
        load_config(config)


def test_jobs_with_ray_is_noted_not_silently_ignored(bench_env: dict, capsys: pytest.CaptureFixture) -> None:
    code, _out, err = run_cli(["sweep", "--poisons", "cuda", *TINY, "--executor", "ray", "--jobs", "2",
                               "--dry-run"], capsys)
    assert code == 0, err
    assert "note: --jobs 2 is ignored with --executor ray" in err and len(err.strip().splitlines()) == 1
    _code, _out, err = run_cli(["sweep", "--poisons", "cuda", *TINY, "--executor", "ray", "--dry-run"], capsys)
    assert "--jobs" not in err
    # the example file's `jobs = 1` is no request for a pool: no note when a flag switches it to ray
    _code, _out, err = run_cli(["sweep", "--config", str(REPO / "sweeps" / "cpu-cifar10.toml"), "--poisons", "cuda",
                                "--defenses", "none", "--seeds", "0", "--executor", "ray", "--dry-run"], capsys)
    assert "--jobs" not in err


def test_dry_run_shows_where_an_interrupted_cell_resumes(bench_env: dict) -> None:
    """A cell killed after epoch 2 of 4 is listed at that epoch, and its estimate is the half still to
    train (the run resumes from its checkpoint), scaled from a finished record of the same protocol."""
    from benchmark.runner import prepare_run
    from benchmark.sweep import estimate
    from benchmark.sweep.cells import execute

    sweep = _sweep(bench_env, poisons=["cuda"], defenses=["none"], seeds=[0, 1],
                   overrides={"epochs": 4, "train_subset": 128, "test_subset": 100}, clean_row=False)
    plan = plan_sweep(sweep)
    first, second = plan.cells
    execute(prepare_run(first.spec))  # a finished record: the cost the estimate scales

    def stop_after_two(kind: str, data: dict) -> None:
        if kind == "epoch" and data["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        execute(prepare_run(second.spec), stop_after_two)
    plan = plan_sweep(sweep)
    est = estimate(plan)
    assert [c.finished for c in plan.cells] == [True, False]
    assert est.started == {second.run_id: 2} and plan.cells[1].epochs == 4
    t = _records(bench_env["results"])[first.run_id]["timings"]
    assert est.cell_seconds[second.run_id] == pytest.approx((t["training"] + t["evaluation"]) / 2)  # 2 of 4 epochs left


def test_estimate_scales_past_cells_by_epochs(bench_env: dict) -> None:
    """A longer protocol of the same preset/model/defense is estimated from the shorter one's cost per
    epoch (DAT's 40-epoch cells from its 15-epoch records)."""
    from benchmark.runner import prepare_run
    from benchmark.sweep import estimate
    from benchmark.sweep.cells import execute

    short = _sweep(bench_env, poisons=["cuda"], defenses=["none"], seeds=[0], clean_row=False,
                   overrides={"epochs": 2, "train_subset": 128, "test_subset": 100})
    execute(prepare_run(plan_sweep(short).cells[0].spec))
    rec = next(iter(_records(bench_env["results"]).values()))
    longer = _sweep(bench_env, poisons=["cuda"], defenses=["none"], seeds=[0], clean_row=False,
                    overrides={"epochs": 6, "train_subset": 128, "test_subset": 100})
    est = estimate(plan_sweep(longer))
    (seconds,) = est.cell_seconds.values()
    t = rec["timings"]
    assert seconds == pytest.approx((t["training"] + t["evaluation"]) * 3) and est.unknown == 0  # 6 vs 2 epochs
