"""``bench perf defenses``: every defense timed side by side with plain training, on real steps."""

from __future__ import annotations

import pytest
from conftest import run_cli

from benchmark.perf_defenses import measure_defenses


def test_costs_reflect_what_each_defense_adds() -> None:
    """AT's 10-step PGD makes a step several times plain training's; a data-level defense pays once
    in prepare; only the defense that owns prediction (smoothing's vote) has a predict cost."""
    costs = {c.defense: c for c in measure_defenses(["at", "bit-depth", "smoothing"], batch_size=32, steps=1,
                                                     rounds=3, shape=(3, 16, 16))}  # best of 3: no one-off spike
    assert list(costs)[0] == "none"
    plain = costs["none"].step_ms[0]
    assert costs["at"].step_ms[0] > 3 * plain and costs["at"].step_ms[1] > 3 * plain
    assert costs["bit-depth"].prepare_s_per_1k is not None and costs["none"].prepare_s_per_1k is None
    assert costs["smoothing"].predict_ratio is not None and costs["smoothing"].predict_ratio > 10
    assert costs["at"].predict_ratio is None and costs["none"].predict_ratio is None


@pytest.mark.parametrize("args, message", [
    (["--defenses", "nope"], "unknown defense"),
    (["--defenses", "mixup,"], "no empty entries"),
    (["--defenses", "finetune"], "needs a pretrained backbone"),
    (["--steps", "0"], "--steps"),
])
def test_bad_input_is_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    code, _out, err = run_cli(["perf", "defenses", *args], capsys)
    assert code == 2 and message in err and "Traceback" not in err
