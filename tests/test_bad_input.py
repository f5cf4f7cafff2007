"""Bad input: exit code 2, one line on stderr, no traceback, nothing half-written."""

from __future__ import annotations

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
