"""End-to-end runs on real CIFAR-10 (smoke preset): records, resume, repeatability, key secrecy."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from benchmark.records import load_records, validate_record
from benchmark.runner import RunSpec, execute, prepare_run


def _spec(env: dict, **kw) -> RunSpec:
    base = dict(poison="cuda", preset="smoke", data_root=str(env["data_root"]), cache_dir=str(env["cache"]),
                results=str(env["results"]))
    base.update(kw)
    return RunSpec(**base)


def _curve(rec: dict) -> list[tuple]:
    return [(e["epoch"], e["train_loss"], e["train_acc"], e["test_acc"]) for e in rec["metrics"]["per_epoch"]]


def test_bench_run_writes_valid_record_with_baseline(bench_env: dict, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_cli(["run", "--poison", "cuda", "--defense", "none", "--preset", "smoke"], capsys)
    assert code == 0, err
    records = sorted(bench_env["results"].glob("*.json"))
    assert len(records) == 2  # the clean baseline ran first, then the poisoned run
    recs = {json.loads(p.read_text())["config"]["poison"]["name"]: json.loads(p.read_text()) for p in records}
    assert set(recs) == {"none", "cuda"}
    rec = recs["cuda"]
    assert validate_record(rec) is None
    assert rec["status"] == "finished" and rec["schema_version"] == 1
    cfg = rec["config"]
    assert cfg["dataset"] == "cifar10" and cfg["dataset_source"] == "cifar10-jpeg"
    assert cfg["preset"] == "smoke" and cfg["model"] == "small-cnn" and cfg["seed"] == 0
    assert cfg["poison"]["params"] == {"pb": 0.3, "k": 3, "universal": False}
    assert cfg["poison"]["ratio"] == 1.0 and len(cfg["poison"]["key_fingerprint"]) == 16
    assert cfg["defense"]["name"] == "none"
    m = rec["metrics"]
    assert 0 <= m["test_acc"] <= 100 and len(m["per_epoch"]) == cfg["protocol"]["epochs"]
    assert m["peak_test_acc"] == max(e["test_acc"] for e in m["per_epoch"])
    assert len(m["per_class_test_acc"]) == 10
    budget = rec["poison"]["budget"]
    assert budget["num_poisoned"] == cfg["train_size"] and 0 < budget["ssim"] < 1 and budget["psnr"] > 5
    assert rec["timings"]["training"] > 0
    assert "clean baseline test acc" in out and "drop vs clean" in out
    assert re.search(rf"poisoned set digest\W+{rec['poison']['digest']}", out)
    # a finished run is not repeated
    code, out, _ = run_cli(["run", "--poison", "cuda", "--preset", "smoke"], capsys)
    assert code == 0 and "finished record exists" in out
    assert len(list(bench_env["results"].glob("*.json"))) == 2


def test_same_seed_same_numbers_other_seed_differs(bench_env: dict) -> None:
    a = execute(prepare_run(_spec(bench_env, seed=3)))
    b = execute(prepare_run(_spec(bench_env, seed=3, force=True)))
    assert _curve(a) == _curve(b) and a["metrics"]["test_acc"] == b["metrics"]["test_acc"]
    c = execute(prepare_run(_spec(bench_env, seed=4)))
    assert _curve(c) != _curve(a)


@pytest.mark.parametrize("train_subset", [512, 449])  # 449 = 7 x 64 + 1: each epoch drops a 1-image batch
def test_interrupted_run_resumes_to_identical_numbers(bench_env: dict, tmp_path: Path, train_subset: int) -> None:
    overrides = {"train_subset": train_subset}
    full = execute(prepare_run(_spec(bench_env, results=str(tmp_path / "full"), overrides=overrides)))

    def stop_after_two(kind: str, data: dict) -> None:
        if kind == "epoch" and data["epoch"] == 2:
            raise KeyboardInterrupt

    spec = _spec(bench_env, results=str(tmp_path / "resumed"), overrides=overrides)
    with pytest.raises(KeyboardInterrupt):
        execute(prepare_run(spec), stop_after_two)
    assert not list((tmp_path / "resumed").glob("*.json"))  # no partial record
    assert list((bench_env["cache"] / "checkpoints").glob("*.pt"))
    resumed = execute(prepare_run(spec))
    assert resumed["metrics"]["resumed_from_epoch"] == 2
    assert _curve(resumed) == _curve(full)
    assert [e["lr"] for e in resumed["metrics"]["per_epoch"]] == [e["lr"] for e in full["metrics"]["per_epoch"]]
    assert resumed["metrics"]["test_acc"] == full["metrics"]["test_acc"]
    assert not list((bench_env["cache"] / "checkpoints").glob("*.pt"))  # removed when done


def test_key_appears_in_no_output(bench_env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    key = "987654321"
    out_file = tmp_path / "export" / "p.npz"
    out_file.parent.mkdir()
    code, out1, err1 = run_cli(["poison", "--poison", "cuda", "--key", key, "--preset", "smoke", "--train-subset", "512",
                                "--out", str(out_file)], capsys)
    assert code == 0, err1
    code, out2, err2 = run_cli(["run", "--poison", "cuda", "--key", key, "--preset", "smoke"], capsys)
    assert code == 0, err2
    assert key not in out1 + err1 + out2 + err2
    scanned = 0
    for root in (bench_env["results"], bench_env["cache"], out_file.parent):
        for path in root.rglob("*"):
            if path.is_file() and "datasets" not in path.parts:
                assert key not in path.name
                assert key.encode() not in path.read_bytes(), f"key leaked into {path}"
                scanned += 1
    assert scanned >= 5
    recs = {r["config"]["poison"]["name"]: r for r in
            (json.loads(p.read_text()) for p in bench_env["results"].glob("*.json"))}
    assert set(recs) == {"cuda", "none"}  # the run and its clean baseline
    assert len(recs["cuda"]["config"]["poison"]["key_fingerprint"]) == 16
    assert recs["none"]["config"]["poison"]["key_fingerprint"] is None  # clean data has no key


def test_bench_poison_exports_npz_and_sidecar(bench_env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cuda.npz"
    # --train-subset 512 = the smoke preset's victim subset, so `bench run --preset smoke` could reuse it
    code, text, err = run_cli(["poison", "--poison", "cuda", "--ratio", "0.5", "--preset", "smoke",
                               "--train-subset", "512", "--out", str(out)], capsys)
    assert code == 0, err
    with np.load(out, allow_pickle=False) as data:
        assert data["x_train"].shape == (512, 32, 32, 3) and data["x_train"].dtype == np.uint8
        assert data["y_train"].dtype == np.int64 and data["poisoned_indices"].dtype == np.int64
        n_poisoned = len(data["poisoned_indices"])
    assert 150 < n_poisoned < 360  # Bernoulli(0.5) over 512 images
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["poison"]["name"] == "cuda" and side["poison"]["ratio"] == 0.5
    assert side["generation_seconds"] >= 0 and side["budget"]["num_poisoned"] == n_poisoned
    assert {"linf", "l2_mean", "psnr", "ssim"} <= set(side["budget"])
    assert "key" not in side["poison"] and len(side["poison"]["key_fingerprint"]) == 16
    # second call reuses the cached artifact
    code, text, _ = run_cli(["poison", "--poison", "cuda", "--ratio", "0.5", "--preset", "smoke",
                             "--train-subset", "512", "--out", str(out)], capsys)
    assert code == 0 and "reused from cache" in text
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # a normal file's mode, not mkstemp's 0600


def test_protocol_params_from_the_command_line_are_typed(bench_env: dict, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli(["run", "--preset", "smoke", "--no-baseline", "--protocol-param", "epochs=1",
                            "--protocol-param", "train_subset=200", "--protocol-param", "nesterov=true"], capsys)
    assert code == 0, err
    (path,) = bench_env["results"].glob("*.json")
    proto = json.loads(path.read_text())["config"]["protocol"]
    assert (proto["epochs"], proto["train_subset"], proto["nesterov"]) == (1, 200, True)


def test_diverged_run_still_writes_a_valid_record(bench_env: dict, capsys: pytest.CaptureFixture) -> None:
    """A loss that becomes NaN must not lose the run: the record is written (NaN as null, JSON has no
    NaN), flagged as diverged, and the summary says so."""
    code, out, err = run_cli(["run", "--poison", "none", "--preset", "smoke", "--epochs", "1", "--lr", "1e6"], capsys)
    assert code == 0, err
    rec = json.loads(next(bench_env["results"].glob("*.json")).read_text())
    assert validate_record(rec) is None and rec["status"] == "finished"
    assert rec["metrics"]["diverged"] is True and rec["metrics"]["per_epoch"][0]["train_loss"] is None
    assert "training diverged" in out
    assert not list((bench_env["cache"] / "checkpoints").glob("*.pt"))


def test_json_safe_records_missing_classes_as_null() -> None:
    import torch

    from benchmark.evaluate import accuracy
    from benchmark.records import json_safe

    overall, per_class = accuracy(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), num_classes=3)
    assert overall == pytest.approx(200 / 3) and per_class[:2] == [50.0, 100.0]
    assert json_safe({"per_class": per_class, "x": (float("inf"), 1.5)}) == {"per_class": [50.0, 100.0, None],
                                                                             "x": [None, 1.5]}


def test_unreadable_record_is_run_again_with_a_warning(bench_env: dict, capsys: pytest.CaptureFixture) -> None:
    args = ["run", "--poison", "cuda", "--preset", "smoke", "--epochs", "1", "--no-baseline"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    (path,) = bench_env["results"].glob("*.json")
    path.write_text('{"schema_version": 1, "run_id": ')  # truncated by a crash while copying results
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "ignoring unreadable record" in " ".join(out.split()) and "finished record exists" not in out
    assert validate_record(json.loads(path.read_text())) is None


def test_a_rerun_on_another_machine_keeps_the_old_record_as_a_repeat(bench_env: dict, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """`--force` on another machine replaces the record but keeps the old one in results/runs/repeats (a
    measurement is never lost), and the leaderboard reports how far the cell moved between machines; a
    re-run on the same machine (bit-identical) just replaces it."""
    args = ["run", "--poison", "cuda", "--preset", "smoke", "--epochs", "1", "--no-baseline"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    (path,) = bench_env["results"].glob("*.json")
    elsewhere = json.loads(path.read_text())
    elsewhere["environment"].update(cpu="Another CPU", cpu_capability="AVX2")
    elsewhere["metrics"]["test_acc"] = round(elsewhere["metrics"]["test_acc"] - 1.5, 3)
    path.write_text(json.dumps(elsewhere))  # as if made on another machine
    code, _, err = run_cli(args + ["--force"], capsys)
    assert code == 0, err
    (kept,) = (bench_env["results"] / "repeats").glob("*.json")
    assert json.loads(kept.read_text()) == elsewhere
    here = json.loads(path.read_text())
    assert here["environment"]["cpu"] != "Another CPU" and here["run_id"] == elsewhere["run_id"]
    code, _, err = run_cli(args + ["--force"], capsys)  # same machine again: replaced, nothing more kept
    assert code == 0, err
    assert len(list((bench_env["results"] / "repeats").glob("*.json"))) == 1
    assert [p for p, _ in load_records(bench_env["results"])] == [path]
    code, _, err = run_cli(["leaderboard", "--results", str(bench_env["results"]), "--out", str(tmp_path / "lb.md"),
                            "--plots", str(tmp_path / "plots"), "--no-samples"], capsys)
    assert code == 0, err
    line = next(x for x in (tmp_path / "lb.md").read_text().splitlines() if "Machine-to-machine" in x)
    assert "measured on 1 cell run on two machines" in line and "Another CPU AVX2" in line
    assert here["environment"]["cpu"] in line and "(cuda × none, " in line
    assert f"max {abs(here['metrics']['test_acc'] - elsewhere['metrics']['test_acc']):.2f} points" in line
    assert "1 of 1 trained on byte-identical poisoned sets" in line  # CUDA's bytes match across CPUs


def test_batches_merge_a_tiny_last_batch_only() -> None:
    from benchmark.train import batch_bounds

    assert batch_bounds(20000, 256)[-1] == (19968, 20000)  # the cpu preset's 32-image last batch is kept
    assert len(batch_bounds(20000, 256)) == 79
    bounds = batch_bounds(7942, 256)  # 7942 = 31 x 256 + 6: the 6 images join the batch before them
    assert len(bounds) == 31 and bounds[-1] == (7680, 7942)
    assert batch_bounds(449, 64)[-1] == (384, 449)
    sizes = [b - a for a, b in batch_bounds(1000, 64)]
    assert sum(sizes) == 1000 and min(sizes) >= 2


def test_clean_only_baseline_takes_as_many_steps_as_the_full_run(bench_env: dict) -> None:
    over = {"epochs": 2, "train_subset": 256, "test_subset": 100, "batch_size": 32}
    full = execute(prepare_run(_spec(bench_env, ratio=0.5, overrides=over)))
    matched = execute(prepare_run(_spec(bench_env, ratio=0.5, clean_only=True, overrides=over)))
    by_epochs = execute(prepare_run(_spec(bench_env, ratio=0.5, clean_only=True, match_steps=False, overrides=over)))
    assert full["training"]["steps"] == 16 and full["training"]["images"] == 256
    from benchmark.train import batch_bounds

    n = 256 - full["poison"]["num_poisoned"]  # CUDA's partial subset is a per-image Bernoulli draw
    per_epoch = len(batch_bounds(n, 32))
    assert matched["training"]["images"] == n and matched["training"]["step_matched"]
    assert matched["training"]["steps"] == 16 and len(matched["metrics"]["per_epoch"]) == -(-16 // per_epoch)
    assert by_epochs["training"]["steps"] == 2 * per_epoch < 16 and not by_epochs["training"]["step_matched"]
    assert matched["run_id"] != by_epochs["run_id"] and matched["config"]["poison"]["match_steps"]
