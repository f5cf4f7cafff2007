"""bench audit: the suites (standard = the registry, quick = a set cover computed from hand-made records),
a bad input refused before any work, real smoke-preset audits that reuse finished records and resume,
and the audit.json schema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli
from report_records import make_record, write_all

from benchmark.audit.quick import recompute_quick, select
from benchmark.audit.suites import NOT_SUITE_DEFENSES, NOT_SUITE_POISONS, load_suite, min_cover
from benchmark.registry import DEFENSES, POISONS
from benchmark.report.frame import load_frame

TINY = ["--preset", "smoke", "--protocol-param", "epochs=1", "--protocol-param", "train_subset=128",
        "--protocol-param", "test_subset=100"]


def _suite(tmp_path: Path, defenses: list[str], poisons: list[str] = ("random-noise",), name: str = "mini") -> Path:
    lines = ["version = 7", 'description = "test suite"']
    lines += [f'[[defense]]\nname = "{d}"\ntier = "poisoned-only"' for d in defenses]
    lines += [f'[[poison]]\nname = "{p}"' for p in poisons]
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------------------ suites

def test_standard_suite_is_every_registered_plugin() -> None:
    suite = load_suite("standard")
    assert {(e.name, e.tier) for e in suite.defenses} == {
        (n, DEFENSES.get(n).default_tier) for n in DEFENSES.names() if n not in NOT_SUITE_DEFENSES}
    assert {e.name for e in suite.poisons} == {n for n in POISONS.names() if n not in NOT_SUITE_POISONS
                                               and POISONS.get(n).threat_model == "availability"}  # targeted: own track
    assert all(not e.params for e in suite.defenses + suite.poisons)  # default parameters
    assert {e.tier for e in suite.defenses} == {"poisoned-only", "extra-clean-data"}


def _leaderboard(tmp_path: Path) -> Path:
    """Single-seed cells except plain training on clean data (seeds 0, 1: 80 and 81), so sigma = 0.707
    and two single runs are within noise closer than 2 * 0.707 * sqrt(2) = 2.0 points."""
    acc = {  # poison -> defense -> final accuracy
        "clean": {"none": 80.0, "cutout": 79.0, "grayscale": 78.0, "jpeg": 77.0, "mixup": 79.5},
        "cuda": {"none": 20.0, "cutout": 25.0, "grayscale": 60.0, "jpeg": 30.0, "mixup": 22.0},
        "ar": {"none": 15.0, "cutout": 18.0, "grayscale": 54.0, "jpeg": 55.0, "mixup": 17.0},
        "lsp": {"none": 14.0, "cutout": 50.0, "grayscale": 20.0, "jpeg": 48.9, "mixup": 19.0},
    }
    recs = [make_record(p if p != "clean" else "none", d, a) for p, row in acc.items() for d, a in row.items()]
    recs.append(make_record("none", "none", 81.0, seed=1))
    return write_all(tmp_path / "lb", recs)


def test_quick_suite_covers_every_poisons_best_defense_with_the_fewest(tmp_path: Path) -> None:
    chosen = select(load_frame(_leaderboard(tmp_path)), "smoke")
    assert chosen["sigma"] == pytest.approx(0.7071, abs=1e-3)
    names = [e.name for e in chosen["defenses"]]
    # best defenses: cuda -> grayscale (60); ar -> jpeg (55), grayscale (54) within noise; lsp -> cutout (50),
    # jpeg (48.9) within noise. No one defense covers all three; of the two-defense covers,
    # {grayscale, cutout} is closest to each poison's best (60 + 54 + 50 vs 60 + 55 + 48.9)
    assert sorted(names) == ["cutout", "grayscale"]
    covers = {e.name: set(e.covers) for e in chosen["defenses"]}
    assert covers["grayscale"] >= {"cuda", "ar"} and covers["cutout"] == {"lsp"}
    assert all(e.tier == "poisoned-only" and e.params == {} for e in chosen["defenses"])
    # poisons for defense audits: every defense's worst poison or one within noise of it
    worst = {"cutout": {"ar"}, "grayscale": {"lsp"}, "jpeg": {"cuda"}, "mixup": {"ar"}, "none": {"lsp", "ar"}}
    picked = {e.name for e in chosen["poisons"]}
    assert all(picked & w for w in worst.values()) and picked == {"ar", "lsp", "cuda"}


def test_min_cover_is_exact_and_deterministic() -> None:
    needs = {"p1": {"a", "b"}, "p2": {"b", "c"}, "p3": {"c", "d"}, "p4": {"d"}}
    assert min_cover(needs, ["a", "b", "c", "d"], {}) == ["b", "d"]  # the only cover of size 2
    ties = {"p1": {"a", "b"}, "p2": {"c"}}
    assert min_cover(ties, ["a", "b", "c"], {}) == ["a", "c"]  # equal scores: the first in order
    assert min_cover(ties, ["a", "b", "c"], {("p1", "b"): 5.0}) == ["b", "c"]  # closer to p1's best
    assert min_cover({"p": set()}, ["a"], {}) == []  # nothing covers it: left out, not an error


def test_recompute_quick_writes_a_new_version_only_when_the_selection_changes(tmp_path: Path) -> None:
    path = tmp_path / "quick.toml"
    shutil.copy(load_suite("quick").path, path)
    before = load_suite(str(path)).version
    frame = load_frame(_leaderboard(tmp_path))
    suite, written = recompute_quick(frame, "smoke", path)
    assert written and suite.version == before + 1
    again = load_suite(str(path))
    assert again.version == before + 1 and sorted(e.name for e in again.defenses) == ["cutout", "grayscale"]
    assert again.computed_from["preset"] == "smoke"
    _suite2, written = recompute_quick(frame, "smoke", path)
    assert not written and load_suite(str(path)).version == before + 1


# --------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("args, message", [
    (["--defense", "jpegg"], "unknown defense 'jpegg'"),
    (["--poison", "cuda", "--poison-param", "nosuch=1"], "nosuch"),
    (["--defense", "jpeg", "--defense-param", "quality=0"], "quality"),
    (["--poison", "cuda", "--defense", "jpeg"], "exactly one of --poison NAME or --defense NAME"),
    (["--poison", "cuda", "--suite", "nosuch"], "unknown suite 'nosuch'"),
    (["--poison", "import", "--poison-param", "path=/no/such/file.npz"], "does not exist"),
    (["--poison", "import", "--poison-param", "path=SHORT"], "the clean training set is 128 x 3 x 32 x 32"),
])
def test_bad_input_is_one_line_before_any_work(bench_env: dict, tmp_path: Path, capsys: pytest.CaptureFixture,
                                               args: list[str], message: str) -> None:
    import numpy as np

    short = tmp_path / "short.npz"  # 5 images for a training set of 128: refused against the clean set
    np.savez(short, x_train=np.zeros((5, 32, 32, 3), np.uint8), y_train=np.zeros(5, np.int64),
             poisoned_indices=np.arange(5))
    args = [a.replace("SHORT", str(short)) for a in args]
    out = tmp_path / "audit-out"
    suite = _suite(tmp_path, ["cutout"])  # --dry-run and a one-defense suite: a check that let it through costs little
    args = args if "--suite" in args else [*args, "--suite", str(suite)]
    code, stdout, err = run_cli(["audit", *args, *TINY, "--out", str(out), "--dry-run"], capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("bench: error:") and message in err, err
    assert "Traceback" not in err and "audit plan" not in stdout  # refused before the plan
    assert not bench_env["results"].exists() and not out.exists()
    assert not list((bench_env["cache"] / "poisons").glob("*.npz")) if (bench_env["cache"] / "poisons").exists() else True


# ------------------------------------------------------------------------------ real smoke audits

def _records(results: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")}


def test_audit_resumes_then_reuses_everything_without_training(bench_env: dict, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    results, out = bench_env["results"], tmp_path / "out"
    base = ["audit", "--poison", "cuda", *TINY, "--out", str(out)]
    # an audit stopped after its first defense: the cells of cutout (and plain training) are recorded
    code, stdout, err = run_cli([*base, "--suite", str(_suite(tmp_path, ["cutout"], name="first"))], capsys)
    assert code == 0, err
    first = _records(results)
    assert len(first) == 4  # clean and cuda, each under none and cutout
    assert "4 of 4 cells to run" in stdout
    # the full audit runs only what is missing
    full = _suite(tmp_path, ["cutout", "grayscale"], name="full")
    code, stdout, err = run_cli([*base, "--suite", str(full)], capsys)
    assert code == 0, err
    assert "2 of 6 cells to run, 4 reused" in stdout and "2 trained" in stdout
    second = _records(results)
    assert len(second) == 6 and all(second[k] == v for k, v in first.items())  # not rewritten
    # again: nothing left, and nothing trains (a training call would fail the run)
    import benchmark.runner

    def no_training(*a: object, **k: object) -> None:
        raise AssertionError("an audit with every record finished trained a model")

    monkeypatch.setattr(benchmark.runner, "train_model", no_training)
    code, stdout, err = run_cli([*base, "--suite", str(full)], capsys)
    assert code == 0, err
    assert "0 of 6 cells to run, 6 reused" in stdout and "0 trained" in stdout
    assert _records(results) == second
    data = json.loads((out / "audit.json").read_text())
    assert data["run"] == {**data["run"], "cells": 6, "reused": 6, "trained": 0, "failed": 0}
    assert [(c["poison"], c["defense"]) for c in data["cells"]] == [("cuda", "none"), ("cuda", "cutout"),
                                                                     ("cuda", "grayscale")]
    assert data["suite"]["version"] == 7 and data["suite"]["name"] == "full"
    # the worst case is the report's: the highest converged accuracy over the usable defenses
    worst = data["worst_case"]["poisoned-only"]
    usable = [c for c in data["cells"] if c["acc"] and c["acc"]["converged"] and "neither ranks" not in c["reason"]]
    assert worst["acc"]["mean"] == max(c["acc"]["mean"] for c in usable)
    assert (worst["cell"]["poison"], worst["cell"]["defense"]) in {(c["poison"], c["defense"]) for c in usable
                                                                  if c["acc"]["mean"] == worst["acc"]["mean"]}
    md = (out / "audit.md").read_text()
    assert "## Worst case" in md and "suite **full** version 7".lower() in md.lower()
    # a worst case on one seed says so, with the sweep that settles it into the same results folder
    assert data["settle"] and "--seeds 0,1,2" in data["settle"][0]["command"]
    assert f"--results {results}" in data["settle"][0]["command"]
    # another results folder, with these records as the leaderboard: every cell is reused from there (still
    # no training) and copied, so the new folder alone holds the records behind its audit
    mine = tmp_path / "mine"
    code, stdout, err = run_cli([*base, "--suite", str(full), "--results", str(mine), "--leaderboard", str(results)],
                                capsys)
    assert code == 0, err
    assert "0 of 6 cells to run, 6 reused from finished records (6 from the leaderboard's" in stdout
    assert {p.name: p.read_text() for p in mine.glob("*.json")} == {p.name: p.read_text() for p in results.glob("*.json")}
    again = json.loads((out / "audit.json").read_text())
    assert [(c["verdict"], c["acc"]) for c in again["cells"]] == [(c["verdict"], c["acc"]) for c in data["cells"]]
    assert again["leaderboard"] == [str(results)]


def test_audit_json_schema(bench_env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    out = tmp_path / "out"
    suite = _suite(tmp_path, ["cutout"], poisons=["random-noise"])
    code, stdout, err = run_cli(["audit", "--defense", "grayscale", "--suite", str(suite), *TINY, "--out", str(out)],
                                capsys)
    assert code == 0, err
    data = json.loads((out / "audit.json").read_text())
    schema = json.loads((Path(__file__).parents[1] / "benchmark" / "audit" / "audit.schema.json").read_text())
    jsonschema.validate(data, schema)
    assert data["kind"] == "defense" and data["subject"]["label"] == "grayscale"
    # a defense audit: the defense and plain training on every suite poison
    assert {(c["poison"], c["defense"]) for c in data["cells"]} == {("random-noise", "grayscale"),
                                                                    ("random-noise", "none")}
    assert set(data["worst_case"]) == {"poisoned-only"} and "standard tier: worst case" in stdout
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**data, "cells": [{**data["cells"][0], "verdict": "fine"}]}, schema)


def test_cell_verdicts_follow_the_claims_check_against_the_same_defense_on_clean(tmp_path: Path) -> None:
    """threshold = the defense's clean accuracy - 5; sigma 0.707 from plain training's two seeds, so two
    single runs are within noise closer than 2.0 points to it."""
    from benchmark.audit.report import VERDICTS, verdict
    from benchmark.report import aggregate as agg

    acc = {"none": (80.0, 20.0), "grayscale": (78.0, 60.0), "jpeg": (77.0, 75.0), "cutout": (79.0, 73.0),
           "mixup": (79.0, 70.0), "at": (70.0, None)}
    recs = [make_record("none", "none", 81.0, seed=1)]
    for d, (clean, cuda) in acc.items():
        recs.append(make_record("none", d, clean))
        if cuda is not None:  # mixup's cuda run fits its training set at 20 % (plain training: 90): not converged
            recs.append(make_record("cuda", d, cuda, train_acc=20.0 if d == "mixup" else 90.0))
    frame = load_frame(write_all(tmp_path / "r", recs))
    c = agg.cells(frame)
    sigma = agg.group_noises(frame)[str(frame["group"].iloc[0])]["sigma"]
    got = {d: VERDICTS[verdict(c, ("cuda", d), ("clean", d), sigma)["verdict"]] for d in acc if d != "at"}
    assert got == {"none": "survives", "grayscale": "survives", "jpeg": "neutralised", "cutout": "within noise",
                   "mixup": "unstable"}
    assert VERDICTS[verdict(c, None, ("clean", "at"), sigma)["verdict"]] == "not run"
    assert "train accuracy 20.0" in verdict(c, ("cuda", "mixup"), ("clean", "mixup"), sigma)["reason"]
