"""Registries: lookup, did-you-mean errors, listing, and third-party plugins via entry points."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli
from plugin_package import bench, install_plugin

from benchmark.errors import BenchError
from benchmark.registry import DATASETS, DEFENSES, MODELS, POISONS


def test_builtin_entries_and_aliases() -> None:
    assert "cuda" in POISONS.names() and "none" in POISONS.names()
    assert POISONS.canonical("clean") == "none"
    assert "none" in DEFENSES.names()
    assert {"small-cnn", "resnet18", "vgg16-bn", "wrn-34-10", "densenet121", "mobilenetv2"} <= set(MODELS.names())
    assert MODELS.canonical("timm:resnet10t") == "timm:"
    assert {"cifar10", "cifar100", "svhn", "fashion-mnist"} <= set(DATASETS.names())


def test_every_plugin_describes_itself_in_a_whole_sentence() -> None:
    """`bench list` shows the docstring's first paragraph, joined: a summary wrapped over two lines is
    not cut mid-sentence."""
    for registry in (POISONS, DEFENSES):
        for name in registry.names():
            text = registry.get(name).describe()
            assert text.endswith(".") and "\n" not in text and "  " not in text, (name, text)
    assert DEFENSES.get("early-stop").describe().endswith("on a held-out clean validation split.")


def test_unknown_name_suggests_closest() -> None:
    with pytest.raises(BenchError, match="did you mean 'cuda'"):
        POISONS.get("cudaa")
    with pytest.raises(BenchError, match="unknown model 'resnet19'.*resnet18"):
        MODELS.get("resnet19")


def test_cli_list_shows_params(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmark import cli

    monkeypatch.setattr(cli.console, "width", 200)  # wide enough that no parameter is wrapped
    code, out, _ = run_cli(["list", "poisons"], capsys)
    assert code == 0
    assert "cuda" in out and "pb=0.3" in out and "k=3" in out
    flat = " ".join(out.split())  # rich wraps long cells
    # budgets print as users type them, and a poison's generation presets show what they replace
    assert "rho_u=8/255" in flat and "eps=0.0313" not in flat
    assert "cpu preset: surrogate='small-cnn'" in flat
    lines = out.splitlines()

    def under(name: str) -> str:  # the line below a plugin's name: its kind
        return lines[lines.index(next(line for line in lines if line.startswith(f"│ {name} "))) + 1]

    assert "budget unbounded" in under("cuda") and "budget l0" in under("ops") and "budget linf" in under("em")
    code, out, _ = run_cli(["list", "defenses"], capsys)
    lines = out.splitlines()
    assert "model-selection · extra-clean-data" in under("early-stop")
    assert "augmentation · poisoned-only" in under("mixup")


def test_cli_list_one_entry_shows_meaning_range_and_presets(capsys: pytest.CaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmark import cli

    monkeypatch.setattr(cli.console, "width", 250)
    code, out, _ = run_cli(["list", "poisons", "cuda"], capsys)
    assert code == 0
    row = next(line for line in out.splitlines() if "│ pb " in line)
    assert "0.3" in row and ">= 0, <= 10" in row and "blur parameter" in row
    code, out, _ = run_cli(["list", "defenses", "adaptive"], capsys)  # aliases resolve
    assert code == 0 and "defense dat" in out and "class | batch | eval" in out
    assert "family: adaptive · tier by default: poisoned-only" in out
    code, out, _ = run_cli(["list", "defenses", "finetune"], capsys)
    assert "tier by default: extra-clean-data" in out
    code, out, _ = run_cli(["list", "poisons", "rem"], capsys)
    header = next(line for line in out.splitlines() if "parameter" in line)
    assert "cpu preset" in header and "paper preset" not in header  # the paper preset changes nothing
    assert "600" in next(line for line in out.splitlines() if "│ surrogate_steps " in line)
    code, _, err = run_cli(["list", "models", "resnet18"], capsys)
    assert code == 2 and "NAME works with: poisons, defenses" in err


def test_format_value_writes_linf_budgets_as_k_over_255() -> None:
    from benchmark.params import format_value

    assert format_value("eps", 8 / 255) == "8/255"
    assert format_value("pgd_step_size", 0.8 / 255) == "0.8/255"
    assert format_value("eps", 0.5) == "0.5"  # an L2 radius, not 127.5/255
    assert format_value("pb", 0.3) == "0.3"  # not a budget
    assert format_value("lr", 0.1) == "0.1" and format_value("surrogate", "small-cnn") == "'small-cnn'"


PLUGIN_SOURCE = '''\
"""A third-party poison and model, found only through entry points."""
import torch
from attacks.base import Poison, PoisonedSet

class InvertPoison(Poison, uses_key=False, budget_type="unbounded"):
    """Inverts every image (test plugin)."""
    def generate(self, train, ctx):
        return PoisonedSet(255 - train.x, train.y.clone(), torch.arange(len(train)))

def tiny_linear(num_classes, in_channels=3):
    """Linear classifier on pooled pixels (test plugin)."""
    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                               torch.nn.Linear(in_channels * 16, num_classes))
'''


def test_entry_point_plugin_runs_without_editing_repo(tmp_path: Path, bench_env: dict) -> None:
    env = install_plugin(tmp_path, "bench-test-plugin", PLUGIN_SOURCE,
                         {"bench.poisons": {"invert": "InvertPoison"}, "bench.models": {"tiny-linear": "tiny_linear"}})
    listing = bench(env, "list", "poisons")
    assert listing.returncode == 0 and "invert" in listing.stdout
    run = bench(env, "run", "--poison", "invert", "--model", "tiny-linear", "--preset", "smoke", "--no-baseline")
    assert run.returncode == 0, run.stderr
    records = list(bench_env["results"].glob("*.json"))
    assert len(records) == 1 and "invert" in records[0].name and "tiny-linear" in records[0].name


def test_plugin_declaration_is_the_class_line() -> None:
    """``Base[XParams]`` declares the parameters and class keywords set what the base declares; a
    keyword the base does not declare fails at class creation, not at run time."""
    from dataclasses import dataclass

    import pytest

    from attacks.base import Poison
    from benchmark.params import NoParams, param
    from defenses.base import Defense, ImageDefense

    @dataclass(frozen=True)
    class SizeParams:
        size: int = param(3, "size", ge=1)

    class Filter(ImageDefense[SizeParams], family="filtering", notes=("a caveat",)):
        """A test filter."""

    assert Filter.Params is SizeParams and Filter.family == "filtering" and Filter.notes == ("a caveat",)
    assert Filter().params == SizeParams() and Filter(SizeParams(5)).params.size == 5
    assert Defense.family == "other" and Defense.Params is NoParams  # the base is untouched

    class Bounded(Poison[SizeParams], budget_type="l2"):
        """A test poison."""

    assert Bounded.Params is SizeParams and Bounded.budget_type == "l2" and Poison.budget_type == "linf"
    with pytest.raises(TypeError, match="unknown plugin declaration familly="):
        class Typo(Defense, familly="filtering"):  # noqa: F841
            """Misspelt keyword."""
    with pytest.raises(TypeError, match="unknown plugin declaration generate="):
        class Shadow(Poison, generate=None):  # noqa: F841
            """A method is not a declaration."""


def test_a_defense_preset_fills_in_only_what_params_leave_unset(tmp_path: Path) -> None:
    """Smoothing's smoke preset shrinks its evaluation (a seconds-long check), an explicit parameter wins,
    other presets keep the defaults (so cpu run ids never move), and the report labels a smoke run by its
    preset's defaults, not as a variant."""
    from report_records import make_record, write_all

    from benchmark.report import load_frame
    from defenses.base import build_defense

    smoke = build_defense("smoothing", preset="smoke").record()["params"]
    assert (smoke["n_samples"], smoke["certify_n"], smoke["certify_subset"]) == (32, 200, 100)
    assert build_defense("smoothing", {"n_samples": "8"}, preset="smoke").record()["params"]["n_samples"] == 8
    assert build_defense("smoothing", preset="cpu").record() == build_defense("smoothing").record()
    both = build_defense("smoothing+mixup", preset="smoke").record()["params"]
    assert both["smoothing"]["certify_n0"] == 32 and both["mixup"] == build_defense("mixup").record()["params"]
    frame = load_frame(write_all(tmp_path / "runs", [make_record("cuda", "smoothing", 20.0, preset="smoke"),
                                                     make_record("none", "smoothing", 30.0, preset="smoke")]))
    assert set(frame["defense_label"]) == {"smoothing"}
    assert '"n_samples":32' in frame["defense_params"].iloc[0]
