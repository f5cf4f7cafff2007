"""Bad input: exit code 2, one line on stderr, no traceback, nothing half-written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

BAD_RUNS = [
    (["--poison", "cudaa"], "unknown poison 'cudaa'"),
    (["--defense", "mixupp"], "unknown defense 'mixupp'"),
    (["--model", "resnet19"], "unknown model 'resnet19'"),
    (["--dataset", "cifar11"], "unknown dataset 'cifar11'"),
    (["--poison", "cuda", "--poison-param", "depth=3"], "unknown parameter 'depth'"),
    (["--poison", "cuda", "--poison-param", "pb=-0.1"], "'pb'=-0.1 is out of range"),
    (["--poison", "cuda", "--poison-param", "k=4"], "'k'=4 must be an odd integer"),
    (["--poison", "cuda", "--poison-param", "k=33"], "'k'=33 is out of range"),
    (["--poison", "cuda", "--poison-param", "pb=1/0"], "parameter 'pb' must be a float, got '1/0'"),
    (["--poison", "cuda", "--poison-param", "pb=inf"], "'pb'=inf is not a finite number"),
    (["--poison", "cuda", "--poison-param", "pb=nan"], "'pb'=nan is not a finite number"),
    (["--poison", "cuda", "--poison-param", "pb=1e39"], "'pb'=1e+39 is out of range"),
    (["--poison", "cuda", "--model", "timm:notamodel"], "unknown timm model 'notamodel'"),
    (["--poison", "cuda", "--poison-param", "pb"], "must look like name=value"),
    (["--poison", "cuda", "--ratio", "1.5"], "ratio must be in [0, 1]"),
    (["--poison", "cuda", "--ratio", "-0.1"], "ratio must be in [0, 1]"),
    (["--epochs", "0"], "'epochs'=0 is out of range"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--poison", "cuda", "--key", "-1"], "key must be an integer"),
    (["--device", "cuda:0"], "no CUDA GPU"),
    (["--epochs", "two"], "Invalid value for '--epochs'"),
    (["--protocol-param", "train_subset=many"], "parameter 'train_subset' must be a int"),
    (["--protocol-param", "epochs=0"], "'epochs'=0 is out of range"),
    (["--protocol-param", "epoch=3"], "unknown protocol option 'epoch'"),
    (["--defense", "at+"], "has an empty component"),
    (["--defense", "+mixup"], "has an empty component"),
    (["--poison", "cuda", "--match-epochs"], "--match-epochs goes with --clean-only"),
]


@pytest.mark.parametrize("args,message", BAD_RUNS, ids=[" ".join(a) for a, _ in BAD_RUNS])
def test_bad_run_input(args: list[str], message: str, bench_env: dict, capsys: pytest.CaptureFixture) -> None:
    if args == ["--device", "cuda:0"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    code, _out, err = run_cli(["run", "--preset", "smoke", *args], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0]
    assert "Traceback" not in err
    assert not bench_env["results"].exists() or not any(bench_env["results"].iterdir())
    # nothing was generated or cached before the error (not even the clean baseline's data)
    assert not [p for p in bench_env["cache"].iterdir() if p.name != "datasets"]


def test_unreadable_data_root(bench_env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    code, _, err = run_cli(["run", "--preset", "smoke", "--data-root", str(not_a_dir)], capsys)
    assert code == 2 and "is not a directory" in err and len(err.strip().splitlines()) == 1


def test_corrupt_cached_poison(bench_env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli(["poison", "--poison", "cuda", "--preset", "smoke", "--train-subset", "512",
                            "--out", str(tmp_path / "p.npz")], capsys)
    assert code == 0, err
    cached = list((bench_env["cache"] / "poisons").glob("*.npz"))
    assert len(cached) == 1
    cached[0].write_bytes(b"garbage, not a zip")
    code, _, err = run_cli(["run", "--poison", "cuda", "--preset", "smoke", "--no-baseline"], capsys)
    assert code == 2
    assert cached[0].name in err and "corrupt" in err and len(err.strip().splitlines()) == 1
    assert not bench_env["results"].exists() or not list(bench_env["results"].glob("*.json"))


def test_real_process_exit_code_and_single_line(bench_env: dict) -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmark.cli", "run", "--poison", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "unknown poison 'nope'" in proc.stderr and "valid:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_results_that_is_a_file_is_refused_before_training(bench_env: dict, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    a_file = tmp_path / "records.json"
    a_file.write_text("{}")
    for target in (a_file, a_file / "runs"):
        code, _, err = run_cli(["run", "--preset", "smoke", "--poison", "cuda", "--results", str(target)], capsys)
        assert code == 2 and "is a file, not a folder" in err and len(err.strip().splitlines()) == 1
    assert not [p for p in bench_env["cache"].iterdir() if p.name != "datasets"]  # nothing trained or cached


def test_single_class_image_folder_is_refused(bench_env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import numpy as np
    from PIL import Image

    (tmp_path / "one" / "cat").mkdir(parents=True)
    for i in range(6):
        Image.fromarray(np.full((8, 8, 3), 10 * i, dtype=np.uint8)).save(tmp_path / "one" / "cat" / f"{i}.png")
    code, _, err = run_cli(["run", "--preset", "smoke", "--dataset", f"imagefolder:{tmp_path / 'one'}"], capsys)
    assert code == 2 and "needs at least two class sub-folders" in err and len(err.strip().splitlines()) == 1


# Every command, malformed input -> the one line it must give (exit 2, nothing written). {tmp} is a
# fresh folder, {file} a file in it (where a folder is needed), {toml:NAME} a sweep file written below.
SWEEP_FILES = {
    "broken": "poisons = [cuda\n",
    "unknown-key": 'poisons = ["cuda"]\nseed = [0]\n',
    "jobs": 'poisons = ["cuda"]\njobs = "x"\n',
    "params": 'poisons = ["cuda"]\npoison_params = 3\n',
    "device": 'poisons = ["cuda"]\npreset = "smoke"\ndevice = "mps"\n',
    "results": 'poisons = ["cuda"]\npreset = "smoke"\nresults = "{file}"\n',
}
BAD_INPUTS = [
    ("run --poison cuda --ratio 1.5", "poison ratio must be in [0, 1], got 1.5"),
    ("run --epochs -1", "'epochs'=-1 is out of range"),
    ("run --batch-size 0", "'batch_size'=0 is out of range"),
    ("run --lr -0.1", "'lr'=-0.1 is out of range"),
    ("run --lr nan", "'lr'=nan is not a finite number"),
    ("run --protocol-param nonsense=1", "unknown protocol option 'nonsense'"),
    ("run --protocol-param epochs=abc", "parameter 'epochs' must be a int, got 'abc'"),
    ("run --poison cuda --poison-param pb=x", "parameter 'pb' must be a float, got 'x'"),
    ("run --defense at --defense-param eps=abc", "defense at: parameter 'eps' must be a float"),
    ("run --data-root {tmp}/nowhere", "CIFAR-10 not found under data root"),
    ("run --cache-dir {file}", "is a file, not a folder"),
    ("run --results {file}/runs", "is a file, not a folder"),
    ("run --device tpu", "unknown device 'tpu'"),
    ("run --device mps", "unknown device 'mps'"),
    ("run --device meta", "unknown device 'meta'"),
    ("run --dataset imagefolder:{tmp}/nowhere", "does not exist or is not a directory"),
    ("run --dataset imagefolder:", "needs a folder"),
    ("run --train-subset 100000", "--train-subset 100000 is larger than the training set (50000 images)"),
    ("run --test-subset 20000", "--test-subset 20000 is larger than the test set (10000 images)"),
    ("run --seed -1", "--seed must be >= 0"),
    ("run --schedule bogus", "'schedule'='bogus' is not valid"),
    ("run --key abc", "Invalid value for '--key'"),
    ("poison --poison cuda --out {tmp}/x.txt", "--out must end in .npz"),
    ("poison --poison cuda --out {tmp}/nowhere/x.npz", "output folder '{tmp}/nowhere' does not exist"),
    ("poison --poison nope --out {tmp}/x.npz", "unknown poison 'nope'"),
    ("poison --poison cuda --ratio 2 --out {tmp}/x.npz", "poison ratio must be in [0, 1], got 2.0"),
    ("poison --poison cuda --train-subset -5 --out {tmp}/x.npz", "'train_subset'=-5 is out of range"),
    ("poison --poison cuda --preset nope --out {tmp}/x.npz", "unknown preset 'nope'"),
    ("poison --poison cuda", "Missing option '--out'"),
    ("sweep --config {tmp}/missing.toml", "cannot read sweep file"),
    ("sweep --config {toml:broken}", "is not valid TOML"),
    ("sweep --config {toml:unknown-key}", "unknown key(s) seed"),
    ("sweep --config {toml:jobs}", "--jobs must be an integer, got 'x'"),
    ("sweep --config {toml:params}", "'poison_params' must be a table"),
    ("sweep --config {toml:device}", "unknown device 'mps'"),
    ("sweep --config {toml:results}", "is a file, not a folder"),
    ("sweep --poisons cuda --jobs 0", "--jobs must be >= 1, got 0"),
    ("sweep --poisons cuda --ratios abc", "--ratios: 'abc' is not a valid float"),
    ("sweep --poisons cuda --seeds -1", "--seeds must be >= 0, got -1"),
    ("sweep --poisons cuda --executor dask", "'dask' is not one of 'local', 'ray'"),
    ("sweep --poisons cuda --protocol-param train_subset=99999 --dry-run", "--train-subset 99999 is larger"),
    ("leaderboard --results {tmp}/nowhere --out {tmp}/lb.md --no-samples", "results folder '{tmp}/nowhere' does not exist"),
    ("leaderboard --results {tmp}/empty --out {tmp}/lb.md --no-samples", "no usable finished run records"),
    ("leaderboard --results {tmp}/corrupt --out {tmp}/lb.md --no-samples", "(skipping {tmp}/corrupt/x.json: unreadable JSON"),
    ("leaderboard --results {tmp}/corrupt --out {file}/lb.md", "--out {file}: {file} is a file, not a folder"),
    ("leaderboard --results {tmp}/corrupt --plots {file}", "--plots {file}: {file} is a file, not a folder"),
    ("leaderboard --format pdf", "'pdf' is not one of 'md', 'html', 'latex'"),
    ("results --results {tmp}/nowhere", "results folder '{tmp}/nowhere' does not exist"),
    ("claims --results {tmp}/empty", "no usable finished run records"),
    ("pretrain --split bad --out {tmp}/b.safetensors", "'bad' is not one of 'holdout', 'train', 'all'"),
    ("pretrain --out {tmp}/b.pt", "--out must end in .safetensors"),
    ("pretrain --max-images -1 --out {tmp}/b.safetensors", "--max-images must be >= 0"),
    ("pretrain --max-images 999999 --out {tmp}/b.safetensors", "is larger than the holdout split"),
    ("pretrain --model nope --out {tmp}/b.safetensors", "unknown model 'nope'"),
    ("pretrain --epochs 0 --out {tmp}/b.safetensors", "'epochs'=0 is out of range"),
    ("pretrain --out {file}/b.safetensors", "is a file, not a folder"),
    ("list foo", "'foo' is not one of 'poisons', 'defenses'"),
    ("list models resnet18", "'bench list models NAME' is not available"),
    ("list poisons nope", "unknown poison 'nope'"),
]


@pytest.mark.parametrize("line,message", BAD_INPUTS, ids=[line for line, _ in BAD_INPUTS])
def test_malformed_input_is_one_line_exit_2_and_writes_nothing(line: str, message: str, bench_env: dict,
                                                               tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    work = tmp_path / "work"
    (work / "empty").mkdir(parents=True)
    (work / "corrupt").mkdir()
    (work / "corrupt" / "x.json").write_text('{"schema_version": 1, "run_id": ')
    a_file = work / "a-file"
    a_file.write_text("not a folder")
    for name, text in SWEEP_FILES.items():
        (work / f"{name}.toml").write_text(text.replace("{file}", str(a_file)))
    before = sorted(p for p in tmp_path.rglob("*"))

    def fill(text: str) -> str:
        for name in SWEEP_FILES:
            text = text.replace(f"{{toml:{name}}}", str(work / f"{name}.toml"))
        return text.replace("{tmp}", str(work)).replace("{file}", str(a_file))

    command, *args = fill(line).split()
    preset = ["--preset", "smoke"] if command in ("run", "poison", "sweep", "pretrain") and "--preset" not in args else []
    code, _out, err = run_cli([command, *preset, *args], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error:" in lines[0] and fill(message) in lines[0]
    assert "Traceback" not in err
    # nothing written: no record, no poison, no output file (the datasets' decode cache is shared)
    after = sorted(p for p in tmp_path.rglob("*") if "datasets" not in p.relative_to(tmp_path).parts)
    assert after == [p for p in before if "datasets" not in p.relative_to(tmp_path).parts]


def test_unwritable_results_folder_is_refused(bench_env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    if os.geteuid() == 0:
        pytest.skip("root may write into any folder")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    code, _, err = run_cli(["run", "--preset", "smoke", "--results", str(locked / "runs")], capsys)
    assert code == 2 and f"{locked} is not writable" in err and len(err.strip().splitlines()) == 1
