"""What a number may be used for: the stability rules on hand-made curves (rising, collapsing, swinging,
flat), still learning vs underfits, σ by random source on hand-made records, budget-class ranking, Holm,
the Pareto front, and the same labels in ``bench results`` and ``bench run``'s page status."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import run_cli
from report_records import make_record, write, write_all

from attacks.base import key_fingerprint
from benchmark import verdicts as v
from benchmark.records import REPEATS, run_id
from benchmark.report import aggregate as agg
from benchmark.report import load_frame
from benchmark.report import noise as noise_mod
from benchmark.report.status import record_status

FLAT = [30.0, 50.0, 60.0, 64.0, 65.0, 65.5, 65.2, 65.4]


def test_stability_rule_on_hand_made_curves() -> None:
    t = v.settle_threshold(1.0)  # 5 + 2·1·√2
    assert t == pytest.approx(5 + 2 * math.sqrt(2))
    assert v.curve_stability(FLAT, t) == ("", "")
    rising = [10.0, 20.0, 30.0, 40.0, 41.0, 42.0, 43.0, 55.0]  # 12 above each of the 3 before
    label, why = v.curve_stability(rising, t)
    assert label == v.STILL_RISING and "12.0 points above each of the 3 before it" in why
    # median-filter × ar: 59.0 at epoch 10 of 15, ends at 20.1 (the last 3 before it are low too)
    collapse = [10.0] * 8 + [22.2, 59.0, 12.4, 28.2, 22.1, 21.3, 20.1]
    label, why = v.curve_stability(collapse, t)
    assert label == v.COLLAPSED and "peak 59.0 at epoch 10" in why
    swing = [30.0, 40.0, 50.0, 60.0, 45.0, 60.0, 58.0]  # down 15, up 15 in the last 4 epochs, ends near the top
    assert v.curve_stability(swing, t)[0] == v.UNSTABLE
    # a dip early in the tail then a steady climb is learning, not a swing
    assert v.curve_stability([40.0, 55.0, 41.0, 60.0, 70.0, 72.0, 73.0, 74.0], t) == ("", "")
    # scaled by the noise: a 6-point last-epoch rise is flagged with no σ (T = 5) but not at σ = 1 (T = 7.8)
    small = [60.0, 60.0, 60.0, 60.0, 66.0]
    assert v.curve_stability(small, v.settle_threshold(None))[0] == v.STILL_RISING
    assert v.curve_stability(small, t)[0] == ""
    # both directions are flagged by the same margin: 6 down is no collapse at σ = 1, 9 down is
    assert v.curve_stability([60.0, 60.0, 60.0, 60.0, 54.0], t)[0] == ""
    assert v.curve_stability([60.0, 60.0, 60.0, 60.0, 51.0], t)[0] == v.COLLAPSED


def test_still_learning_vs_underfits() -> None:
    t = v.settle_threshold(1.0)
    assert v.fit_status(80.0, 85.0, FLAT, t) == ("", "")  # fits like plain training
    flat_low = [20.0, 30.0, 40.0, 48.0, 49.5, 50.5, 50.1]  # DAT at 40 epochs: flat end, train 52 %
    label, why = v.fit_status(52.2, 93.3, flat_low, t)
    assert label == v.UNDERFITS and "flat end" in why and v.is_verdict(label)
    moving = [20.0, 30.0, 32.0, 34.0, 37.0, 42.6]  # DAT at 15 epochs: +8.6 over its last 3 epochs
    label, why = v.fit_status(44.1, 85.0, moving, t)
    assert label == v.STILL_LEARNING and not v.is_verdict(label) and "span 8.6 points" in why
    # a diverged or still-learning run outranks an unstable curve as the reason
    assert v.run_status(moving, 44.1, 85.0, True, 1.0)[0] == v.DIVERGED


def dat_records(curve_cuda: list[float], curve_clean: list[float]) -> list[dict]:
    return [make_record("none", "none", 80.0, train_acc=90.0), make_record("cuda", "none", 20.0),
            make_record("none", "dat", curve_clean[-1], train_acc=45.0, curve=curve_clean),
            make_record("cuda", "dat", curve_cuda[-1], train_acc=44.0, curve=curve_cuda)]


def test_a_flat_underfitting_cell_is_a_verdict_with_a_caveat(tmp_path: Path) -> None:
    frame = load_frame(write_all(tmp_path / "runs", dat_records([28.0, 30.5, 31.0], [48.0, 50.0, 50.1])))
    c = agg.cells(frame)
    cell = c.loc[("cuda", "dat")]
    assert cell["converged"] and cell["stability"] == v.UNDERFITS and "train accuracy 44.0 % vs 90.0 %" in cell["caveat"]
    assert c.loc[("clean", "dat"), "converged"]
    ranking = agg.defense_ranking(c, "poisoned-only", None)
    dat = next(e for e in ranking["entries"] if e["defense"] == "dat")
    assert dat["status"] == "ranked" and dat["worst"]["mean"] == 31.0
    still = agg.cells(load_frame(write_all(tmp_path / "b", dat_records([20.0, 26.0, 31.0], [30.0, 40.0, 50.1]))))
    assert still.loc[("cuda", "dat"), "stability"] == v.STILL_LEARNING and not still.loc[("cuda", "dat"), "converged"]


def with_key(rec: dict, key: int | None = None, digest: str | None = None) -> dict:
    if key is not None:
        rec["config"]["poison"]["key_fingerprint"] = key_fingerprint(key)
        rec["run_id"] = run_id(rec["config"])
    if digest is not None:
        rec["poison"]["digest"] = digest
    return rec


def test_noise_pooled_by_source_and_the_larger_measured_one_used(tmp_path: Path) -> None:
    """Victim cells (one poisoned set, seeds 0/1) spread by 1 point; poison-instance cells (another key per
    seed, or other bytes) by 4; machine pairs by 2. Verdicts use the largest source with 3+ cells."""
    def victim(poison: str, defense: str, base: float) -> list[dict]:
        return [with_key(make_record(poison, defense, base, seed=0), key=0),  # one poisoned set (--key 0)
                with_key(make_record(poison, defense, base + math.sqrt(2), seed=1), key=0)]

    def instance(defense: str, base: float, by_digest: bool = False) -> list[dict]:
        if by_digest:
            return [with_key(make_record("em", defense, base, seed=0), digest="a" * 16),
                    with_key(make_record("em", defense, base + 4 * math.sqrt(2), seed=1), digest="b" * 16)]
        return [with_key(make_record("em", defense, base, seed=0), key=0),
                with_key(make_record("em", defense, base + 4 * math.sqrt(2), seed=1), key=1)]

    recs = victim("none", "none", 80.0) + victim("cuda", "none", 20.0) + victim("cuda", "mixup", 30.0)
    recs += instance("none", 15.0) + instance("mixup", 25.0, by_digest=True)
    results = write_all(tmp_path / "runs", recs)
    frame = load_frame(results)
    spreads = noise_mod.cell_spreads(frame)
    assert dict(zip(spreads["poison"] + "/" + spreads["defense"], spreads["source"], strict=True)) == {
        "clean/none": "victim", "cuda/none": "victim", "cuda/mixup": "victim", "em/none": "poison instance",
        "em/mixup": "poison instance"}
    (noise,) = noise_mod.group_noises(frame).values()
    assert noise["sources"]["victim"]["sigma"] == pytest.approx(1.0) and noise["sources"]["victim"]["cells"] == 3
    assert noise["sources"]["poison instance"]["sigma"] == pytest.approx(4.0)
    # poison instances measured on 2 cells only: not enough, the victim σ is used, with a caveat
    assert (noise["sigma"], noise["source"]) == (pytest.approx(1.0), "victim") and "poison instance" in noise["caveat"]
    assert noise["curve_sigma"] == pytest.approx(1.0)
    # a third poison-instance cell makes it count: the larger σ is used in every margin
    write_all(results, instance("cutout", 35.0))
    (noise,) = noise_mod.group_noises(load_frame(results)).values()
    assert (noise["sigma"], noise["source"]) == (pytest.approx(4.0), "poison instance")
    assert noise["curve_sigma"] == pytest.approx(1.0)  # the curve rules stay on the victim's σ
    # machine pairs: the same config and seed on another machine, 2·√2 points apart: σ = 2.0 over 3 pairs
    frame = load_frame(results)
    repeats = []
    for path in sorted(frame.loc[frame["seed"] == 0, "record"])[:3]:
        old = json.loads(Path(path).read_text())
        old["environment"]["cpu"] = "Another CPU"
        old["metrics"]["test_acc"] -= 2 * math.sqrt(2)
        repeats.append((Path(path), old))
    assert noise_mod.machine_spreads(frame, repeats)[frame["group"].iloc[0]]["sigma"] == pytest.approx(2.0)
    (noise,) = noise_mod.group_noises(frame, repeats).values()
    assert noise["source"] == "poison instance" and noise["sources"]["machine"]["cells"] == 3


def test_poisons_are_ranked_within_budget_classes_and_unstable_cells_are_never_a_worst_case(tmp_path: Path) -> None:
    """CUDA (unbounded) would rank first against the L-inf poisons; within classes it ranks alone. The
    collapsed cell (70 at its last-but-one epoch, 20 at the end... of em × cutout) is never em's worst case."""
    recs = [make_record("none", "none", 80.0), make_record("none", "mixup", 78.0), make_record("none", "cutout", 77.0),
            make_record("cuda", "none", 20.0), make_record("cuda", "mixup", 30.0), make_record("cuda", "cutout", 28.0),
            make_record("em", "none", 15.0), make_record("em", "mixup", 50.0),
            make_record("em", "cutout", 60.0, curve=[50.0, 60.0, 70.0, 75.0, 60.0]),  # collapsed: 15 below its peak
            make_record("tap", "none", 25.0), make_record("tap", "mixup", 40.0), make_record("tap", "cutout", 45.0),
            make_record("ops", "none", 22.0), make_record("ops", "mixup", 35.0), make_record("ops", "cutout", 33.0)]
    results = write_all(tmp_path / "runs", recs)
    frame = load_frame(results)
    c = agg.cells(frame)
    assert c.loc[("em", "cutout"), "stability"] == v.COLLAPSED
    std = agg.defense_ranking(c, "poisoned-only", None)
    assert next(e for e in std["entries"] if e["defense"] == "cutout")["not_converged"] == ["em"]
    classes = {"cuda": agg.budget_class("unbounded", 231), "em": agg.budget_class("linf", 8),
               "tap": agg.budget_class("linf", 8), "ops": agg.budget_class("l0", 255)}
    assert agg.budget_class("linf", 16) == "L∞ > 8/255"
    ranking = agg.poison_ranking(c, None, std, classes)
    by = {e["poison"]: e for e in ranking["entries"]}
    assert by["em"]["worst"]["mean"] == 50.0 and by["em"]["best_defense"] == "mixup"  # not the collapsed 60
    assert [(e["poison"], e["class"], e["rank"]) for e in ranking["entries"]] == [
        ("tap", "L∞ ≤ 8/255", 1), ("em", "L∞ ≤ 8/255", 2), ("ops", "L0", 1), ("cuda", "unbounded / perceptual", 1)]
    # the page shows each poison's budget beside its rank, class by class
    out = tmp_path / "lb.md"
    from benchmark.report import write_leaderboard

    write_leaderboard(results, out, tmp_path / "plots", samples=False)
    text = out.read_text()
    assert "| *budget class: unbounded / perceptual* |" in text and "L∞ 128/255" in text
    assert "collapsed" in text and (tmp_path / "plots" / f"{frame['group'].iloc[0]}-pareto.png").is_file()


def test_holm_and_pareto() -> None:
    assert agg.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert agg.pair_pvalue(2 * math.sqrt(2), 1.0, 1, 1) == pytest.approx(0.0455, abs=1e-3)  # the 2σ rule
    par = agg.pareto({"a": (60.0, 49.0), "b": (73.0, 22.0), "c": (74.7, 23.4), "d": (67.0, 21.0)})
    assert par["front"] == ["a", "c"] and par["dominated"] == {"b": ["c"], "d": ["b", "c"]}


def test_bench_results_and_run_status_carry_the_page_label(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = write_all(tmp_path / "runs", dat_records([20.0, 26.0, 31.0], [48.0, 50.0, 50.1]))
    code, out, err = run_cli(["results", "--results", str(results), "--format", "json"], capsys)
    assert code == 0, err
    rows = {(r["poison"], r["defense"]): r for r in json.loads(out)}
    assert rows[("cuda", "dat")]["stability"] == "still learning" and "train accuracy 44.0 %" in rows[("cuda", "dat")]["stability_reason"]
    assert rows[("none", "dat")]["stability"] == "underfits" and rows[("none", "none")]["stability"] == ""
    path = next(p for p in results.glob("*.json") if "cuda" in p.name and "dat" in p.name)
    st = record_status(results, path)
    assert (st["tier"], st["label"], st["cell_label"]) == ("poisoned-only", "still learning", "still learning")
    from benchmark.ui import console, show_page_status

    with console.capture() as cap:
        show_page_status(console, results, str(path))
    assert "still learning: not a verdict on the leaderboard (train accuracy 44.0 %" in " ".join(cap.get().split())
    # a record kept as a repeat is no run of the folder: nothing to say
    write(results / REPEATS, make_record("cuda", "mixup", 30.0))
    assert record_status(results, results / REPEATS / "x.json") is None


def test_a_real_bench_run_prints_the_label_the_page_and_bench_results_give(bench_env: dict, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    """End to end on the smoke preset: the run summary's page status is the label `bench results` and
    `leaderboard.json` give the same run and cell."""
    code, out, err = run_cli(["run", "--poison", "cuda", "--defense", "none", "--preset", "smoke"], capsys)
    assert code == 0, err
    text = " ".join(out.split())
    assert "leaderboard: tier poisoned-only; this run: " in text
    code, rows_text, err = run_cli(["results", "--format", "json"], capsys)
    assert code == 0, err
    (row,) = [r for r in json.loads(rows_text) if r["poison"] == "cuda"]
    expected = "stable: a verdict on the leaderboard" if not row["stability"] else f"{row['stability']}: "
    assert f"this run: {expected}" in text
    from benchmark.report import write_leaderboard

    summary = write_leaderboard(bench_env["results"], tmp_path / "lb.md", tmp_path / "plots", samples=False)
    (g,) = json.loads(summary.json.read_text())["groups"]
    cell = next(e for e in g["entries"] if e["poison"] == "cuda")
    assert (cell["stability"] or "") == row["stability"] and cell["converged"] == v.is_verdict(row["stability"])
