"""Targeted poisoning in the report: the success rate's interval, the cells built from trial records, the
page's own section, and the rule that a targeted record changes no availability output."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli
from report_records import make_record, make_targeted_record, write, write_all

from benchmark.report import (
    claims_report,
    collect_runs,
    load_frame,
    write_leaderboard,
    write_results,
)
from benchmark.report.collect import collect_all, split_runs
from benchmark.report.status import record_status
from benchmark.report.targeted import build_targeted, clopper_pearson

SUCCESSES = [True, True, False, True, False]  # witches-brew without defense: 3 of 5 trials
VICTIM = [60.0, 62.0, 64.0, 66.0, 68.0]  # its victims' clean accuracy: mean 64, sd sqrt(10)


def trials() -> list[dict]:
    """witches-brew × none: 5 trials (3 successes), × mixup: 3 trials (none), one record without a target
    outcome; clean data: plain training 80 and 82 (two seeds), mixup 78 (the availability standard set's)."""
    recs = [make_targeted_record(defense="none", acc=a, seed=s, success=ok)
            for s, (a, ok) in enumerate(zip(VICTIM, SUCCESSES, strict=True))]
    recs += [make_targeted_record(defense="mixup", acc=70.0 + s, seed=s, success=False) for s in range(3)]
    recs.append(make_targeted_record(defense="none", acc=61.0, seed=9, target=False))
    return recs


def availability() -> list[dict]:
    return [make_record("none", "none", 80.0, seed=0, peak=85.0), make_record("none", "none", 82.0, seed=1, peak=86.0),
            make_record("cuda", "none", 20.0, seed=0, peak=30.0), make_record("cuda", "none", 24.0, seed=1, peak=31.0),
            make_record("cuda", "mixup", 50.0), make_record("none", "mixup", 78.0), make_record("em", "none", 15.0)]


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    return write_all(tmp_path / "plain", availability())


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    return write_all(tmp_path / "mixed", availability() + trials())


def test_clopper_pearson_known_values() -> None:
    # published exact intervals (e.g. Clopper & Pearson 1934 tables; the (0, 1-(α/2)^(1/n)) closed forms)
    low, high = clopper_pearson(0, 10)
    assert low == 0.0 and high == pytest.approx(0.3085, abs=1e-4) and high == pytest.approx(1 - 0.025 ** 0.1)
    low, high = clopper_pearson(5, 10)
    assert (low, high) == (pytest.approx(0.1871, abs=1e-4), pytest.approx(0.8129, abs=1e-4))
    low, high = clopper_pearson(10, 10)
    assert low == pytest.approx(0.6915, abs=1e-4) and high == 1.0
    assert clopper_pearson(1, 10) == (pytest.approx(0.0025, abs=1e-4), pytest.approx(0.4450, abs=1e-4))
    # symmetric in successes and failures, narrower with more trials, a wider interval at a higher level
    low, high = clopper_pearson(3, 20)
    assert clopper_pearson(17, 20) == (pytest.approx(1 - high), pytest.approx(1 - low))
    assert clopper_pearson(300, 2000)[1] - clopper_pearson(300, 2000)[0] < high - low
    assert clopper_pearson(3, 20, 0.99)[0] < low
    with pytest.raises(ValueError):
        clopper_pearson(3, 2)


def test_cells_from_trial_records(mixed: Path) -> None:
    by_model = split_runs(collect_all(mixed, lambda msg: None))
    clean = [(p, r) for p, r in by_model["availability"] if r["config"]["poison"]["name"] == "none"]
    data = build_targeted(by_model["targeted"], clean, {}, "runs")
    (g,) = data["groups"]
    assert g["trials"] == 8 and g["runs"] == 9 and g["preset"] == "smoke"
    plain_cell, mixup = g["cells"]  # plain training first
    assert (plain_cell["poison"], plain_cell["defense"], mixup["defense"]) == ("witches-brew", "none", "mixup")
    assert (plain_cell["trials"], plain_cell["successes"], plain_cell["rate"]) == (5, 3, 0.6)
    assert plain_cell["ci"] == [pytest.approx(v, abs=1e-4) for v in clopper_pearson(3, 5)]
    assert plain_cell["test_acc"]["mean"] == 64.0 and plain_cell["test_acc"]["std"] == pytest.approx(10 ** 0.5, abs=1e-4)
    # the same defense on clean data (availability records), and the drop from it
    assert plain_cell["clean"] == {"mean": 81.0, "std": pytest.approx(2 ** 0.5, abs=1e-4), "n": 2}
    assert plain_cell["drop"] == 17.0 and mixup["clean"]["mean"] == 78.0 and mixup["drop"] == 7.0
    assert (mixup["trials"], mixup["successes"], mixup["ci"][0]) == (3, 0, 0.0)
    # median adversarial probability: 3 of 5 trials at 0.8, 2 at 0.1; all 3 failures at 0.1
    assert plain_cell["median_adversarial_prob"] == 0.8 and mixup["median_adversarial_prob"] == 0.1
    # the trial without a target outcome is no trial; seeds, budget and each trial's target are kept
    assert plain_cell["seeds"] == [0, 1, 2, 3, 4] and len(plain_cell["without_target"]) == 1
    assert plain_cell["budget"]["fraction"] == 0.01 and plain_cell["budget"]["eps_255"] == 16.0
    assert [t["success"] for t in plain_cell["trials_detail"]] == SUCCESSES
    assert all(t["predicted_class"] == t["adversarial_class"] for t in plain_cell["trials_detail"] if t["success"])


def _availability_json(path: Path, folder: Path) -> dict:
    """leaderboard.json without its targeted part, the records' folder written as RUNS."""
    data = json.loads(path.read_text().replace(str(folder), "RUNS"))
    data.pop("targeted")
    return data


def test_a_targeted_record_changes_no_availability_output(plain: Path, mixed: Path, tmp_path: Path) -> None:
    without = write_leaderboard(plain, tmp_path / "a" / "leaderboard.md", tmp_path / "a" / "plots", samples=False)
    with_ = write_leaderboard(mixed, tmp_path / "b" / "leaderboard.md", tmp_path / "b" / "plots", samples=False)
    assert _availability_json(without.json, plain) == _availability_json(with_.json, mixed)
    # the plots of the availability tables are the same bytes
    plots_a = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in without.plots}
    plots_b = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in with_.plots}
    assert plots_a and plots_a == plots_b
    # the page: every availability section is the same text; the targeted trials only add their pointer and section
    text_a, text_b = without.out.read_text(), with_.out.read_text()
    pointer = next(line for line in text_b.splitlines() if "their own section" in line)
    head_a = text_a.replace(str(plain), str(mixed)).split("## Targeted poisoning")[0]
    assert head_a == text_b.replace(pointer + "\n\n", "").split("## Targeted poisoning")[0]
    # every other reader of the records: frame, collect, claims, stability of a run, bench results' rows
    assert len(load_frame(mixed)) == len(load_frame(plain)) == 7 and len(collect_runs(mixed, lambda m: None)) == 7
    claims_a, claims_b = (json.dumps(claims_report(f), sort_keys=True, default=str).replace(str(f), "RUNS")
                          for f in (plain, mixed))
    assert claims_a == claims_b
    rec = next(p for p in sorted(mixed.glob("*.json")) if "-cuda-" in p.name)
    assert record_status(mixed, rec) == record_status(plain, plain / rec.name)
    target = next(p for p in sorted(mixed.glob("*.json")) if "witches-brew" in p.name)
    assert record_status(mixed, target) is None
    rows_a = pd.read_csv(io.StringIO(write_results(plain, "csv", None)[0]))
    rows_b = pd.read_csv(io.StringIO(write_results(mixed, "csv", None)[0]))
    avail_b = rows_b[rows_b["threat_model"] == "availability"][list(rows_a.columns)].drop(columns="record")
    pd.testing.assert_frame_equal(rows_a.drop(columns="record").reset_index(drop=True), avail_b.reset_index(drop=True),
                                  check_dtype=False)


def test_leaderboard_section_shows_trials_successes_and_interval(mixed: Path, tmp_path: Path) -> None:
    out = tmp_path / "site" / "leaderboard.md"
    write_leaderboard(mixed, out, tmp_path / "plots", samples=False)
    text = out.read_text()
    section = text.split("## Targeted poisoning (a different threat model)")[1]
    assert "## Paper vs ours" in text.split("## Targeted poisoning")[0]  # after every availability table
    assert "[their own section](#targeted)" in text and "Clopper-Pearson" in section
    low, high = clopper_pearson(3, 5)
    row = next(line for line in section.splitlines() if line.startswith("| witches-brew |") and "| none |" in line)
    assert f"| 3/5 = 60.0 % [{100 * low:.1f}, {100 * high:.1f}] |" in row
    assert "| 64.0 ± 3.2 | 81.0 ± 1.4 (n=2) | 17.0 | 0–4 |" in row and "1 % (" in row and "ε 16/255" in row
    mixup_high = clopper_pearson(0, 3)[1]
    assert any(f"| 0/3 = 0.0 % [0.0, {100 * mixup_high:.1f}] |" in line and "| mixup |" in line for line in section.splitlines())
    assert "1 record without a target outcome (not counted as trials)" in section
    assert max(len(line) for line in text.splitlines() if line.startswith("|")) <= 200
    # the html page links each success rate to its trials' records
    html = tmp_path / "site" / "index.html"
    write_leaderboard(mixed, html, tmp_path / "plots", fmt="html", samples=False)
    page = html.read_text().split('id="targeted"')[1]
    hrefs = re.findall(r'<a href="([^"#]+\.json)" title="seed \d">3/5', page)
    assert hrefs and (html.parent / hrefs[0]).resolve().is_file() and "witches-brew" in hrefs[0]


def test_without_targeted_records_the_section_is_one_line(plain: Path, tmp_path: Path) -> None:
    out = tmp_path / "lb.md"
    summary = write_leaderboard(plain, out, tmp_path / "plots", samples=False)
    section = out.read_text().split("## Targeted poisoning (a different threat model)")[1].strip()
    assert len(section.splitlines()) == 1 and section.startswith("No records of targeted poisoning")
    assert json.loads(summary.json.read_text())["targeted"]["groups"] == []
    assert "their own section" not in out.read_text()


def test_a_folder_of_targeted_trials_only(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = write_all(tmp_path / "runs", trials())
    code, stdout, err = run_cli(["leaderboard", "--results", str(runs), "--out", str(tmp_path / "lb.md"), "--plots",
                                 str(tmp_path / "plots"), "--no-samples"], capsys)
    assert code == 0, err
    text = (tmp_path / "lb.md").read_text()
    assert "| witches-brew |" in text and "| – | – | 0–4 |" in text  # no clean data of this protocol: no drop
    code, out, err = run_cli(["claims", "--results", str(runs)], capsys)
    assert code == 0, err


def test_results_command_lists_trials_with_their_threat_model(mixed: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_cli(["results", "--results", str(mixed), "--format", "json"], capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert [r["threat_model"] for r in rows] == ["availability"] * 7 + ["targeted"] * 9
    targeted = [r for r in rows if r["threat_model"] == "targeted"]
    assert sum(r["target_success"] is True for r in targeted) == 3
    assert sum(r["target_success"] is None for r in targeted) == 1
    assert all(r["poison"] == "witches-brew" and r["budget_fraction"] == 0.01 for r in targeted)
    assert all(r["target_success"] is None for r in rows if r["threat_model"] == "availability")


def test_audit_rejects_a_targeted_poison_up_front(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmark.registry import POISONS

    monkeypatch.setattr(POISONS.get("cuda"), "threat_model", "targeted", raising=False)
    out = tmp_path / "audit"
    code, _, err = run_cli(["audit", "--poison", "cuda", "--preset", "smoke", "--results", str(tmp_path / "runs"),
                            "--out", str(out)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "targeted poison" in err and "bench sweep --poisons cuda" in err and "bench leaderboard" in err
    assert not out.exists() and not (tmp_path / "runs").exists()
    monkeypatch.undo()
    from benchmark.audit.command import reject_targeted

    reject_targeted("cuda")  # an availability poison, and a name the plan reports, pass
    reject_targeted("no-such-poison")


def test_a_trial_record_in_the_folder_is_never_an_availability_cell(mixed: Path) -> None:
    """A targeted record whose poison and defense are those of an availability cell stays out of it."""
    rec = make_targeted_record(poison="cuda", defense="none", acc=99.0, seed=5)
    write(mixed, rec)
    frame = load_frame(mixed)
    assert 99.0 not in set(frame["test_acc"]) and (frame["threat_model"] == "availability").all()


def test_a_victim_that_did_not_converge_is_marked_and_still_counted(mixed: Path, tmp_path: Path) -> None:
    write(mixed, make_targeted_record(defense="cutout", acc=60.0, seed=0, success=True,
                                      curve=[20.0, 30.0, 31.0, 32.0, 60.0]))
    out = tmp_path / "lb.md"
    summary = write_leaderboard(mixed, out, tmp_path / "plots", samples=False)
    section = out.read_text().split("## Targeted poisoning")[1]
    row = next(line for line in section.splitlines() if "| cutout |" in line)
    assert "| 1/1 = 100.0 % [" in row and "| 60.0 † | – | – | 0 |" in row
    assert "- † witches-brew × cutout: seed 0: still rising: final epoch 60.0" in section
    (g,) = json.loads(summary.json.read_text())["targeted"]["groups"]
    cell = next(c for c in g["cells"] if c["defense"] == "cutout")
    assert cell["trials_detail"][0]["stability"] == "still rising"
    assert all(c["not_converged"] is None for c in g["cells"] if c["defense"] != "cutout")


def test_a_trial_run_summary_reads_its_outcome_and_cell(mixed: Path) -> None:
    from rich.console import Console

    from benchmark.report.targeted import trial_status
    from benchmark.ui import show_page_status

    failed = next(p for p in sorted(mixed.glob("*witches-brew-none-s2-*.json")))
    st = trial_status(mixed, failed)
    assert st["trial"]["success"] is False and (st["cell"]["trials"], st["cell"]["successes"]) == (5, 3)
    assert trial_status(mixed, next(mixed.glob("*-cuda-none-s0-*.json"))) is None
    out = io.StringIO()
    show_page_status(Console(file=out, width=300), mixed, str(failed))
    text = out.getvalue()
    assert "this trial: target test image 7" in text and ": failure" in text
    assert "targeted cell witches-brew × none: success 3/5 = 60.0 % [" in text and "tier" not in text
