"""bench perf train: the trainer's throughput side by side with bare forward/backward and a DataLoader +
PIL pipeline. Checks that the command runs and reports every row; no timing assertions."""

from __future__ import annotations

import pytest
import torch
from conftest import run_cli

from benchmark.perf import measure_train


def test_bench_perf_train_prints_every_pipeline(capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_cli(["perf", "train", "--device", "cpu", "--batch-size", "4", "--steps", "2",
                              "--warmup", "1", "--rounds", "2", "--workers", "0", "--threads", "1"], capsys)
    assert code == 0, err
    flat = " ".join(out.split())
    for row in ("trainer (defense none)", "bare, NCHW model + input", "bare, channels_last model *",
                "bare, channels_last + input", "DataLoader + PIL, 0 workers", "trainer / bare *",
                "trainer / DataLoader + PIL", "channels_last / NCHW (bare)", "small-cnn, batch 4",
                "1 threads", "forward 17.3 M", "Best of 2 rounds of 2 steps"):
        assert row in flat, row


def test_measure_train_counts_the_model_flops_per_image() -> None:
    """FLOPs per image are the small CNN's conv + linear multiply-adds x 2 (forward), independent of the
    batch; every pipeline reports a positive rate; the thread setting is restored."""
    threads = torch.get_num_threads()
    perf = measure_train("small-cnn", "cpu", batch_size=2, steps=1, warmup=0, workers=0, threads=1, rounds=1)
    macs = sum(cout * cin * 9 * side * side for cin, cout, side in ((3, 24, 32), (24, 48, 16), (48, 96, 8), (96, 192, 4)))
    assert perf.forward_flops == 2 * (macs + 192 * 10)
    assert perf.train_flops > 2 * perf.forward_flops  # backward: input and weight gradients
    assert len(perf.rows) == 5 and all(r.images_per_second > 0 for r in perf.rows)
    assert perf.threads == 1 and torch.get_num_threads() == threads


@pytest.mark.parametrize("args", [["--batch-size", "1"], ["--steps", "0"], ["--rounds", "0"], ["--threads", "0"], ["--model", "nope"],
                                  ["--device", "nodevice"]])
def test_bench_perf_train_rejects_bad_input(args: list[str], capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli(["perf", "train", *args], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
