"""Claims checked on our cells (holds / fails / within noise / not run, and never on a cell that did not
converge), `bench claims` exit codes, and the paper-vs-ours join (comparable vs different protocol)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli
from report_records import make_record, write_all

from benchmark.report import aggregate as agg
from benchmark.report import build_data, build_frame, collect_runs, load_frame
from benchmark.report import document as doc
from benchmark.report.claims import (
    check_pair,
    claims_unrecorded,
    evaluate,
    load_claims,
    pair_text,
    unrecorded_text,
)
from benchmark.report.references import load_references

CLAIMS = """
version = 3

[[claim]]
id = "holds"
claim = "CUDA stays unlearnable under mixup"
source = "test"
poison = "cuda"
defenses = ["mixup"]
test = "acc <= baseline - 30"

[[claim]]
id = "fails"
claim = "mixup neutralises EM"
source = "test"
poison = "em"
defenses = ["mixup"]
test = "acc >= clean - 5"

[[claim]]
id = "noise"
claim = "mixup neutralises REM"
source = "test"
poison = "rem"
defenses = ["mixup"]
test = "acc >= clean - 5"

[[claim]]
id = "absent"
claim = "cutout neutralises SEM"
source = "test"
poison = "sem"
defenses = ["cutout"]
test = "acc >= clean - 5"

[[claim]]
id = "unconverged"
claim = "DAT does not break CUDA"
source = "test"
poison = "cuda"
defenses = ["dat"]
test = "acc <= baseline - 30"

[[claim]]
id = "other"
claim = "SEM is stronger than REM without defense"
source = "test"
poison = "sem"
defenses = ["none"]
test = "acc < other"
other = { poison = "rem" }

[[claim]]
id = "partial"
claim = "a half-poisoned set is as learnable as its clean half"
source = "test"
poison = "cuda"
ratios = [0.5]
defenses = ["none"]
test = "acc >= other - 5"
other = { poison = { name = "cuda", clean_only = true } }
"""


def claim_records() -> list[dict]:
    """Noise from clean/none (80, 82): sigma = sqrt(2); a verdict between two single runs needs a margin of
    2·sigma·sqrt(2) = 4.0, against the 2-seed clean reference 3.46."""
    return [make_record("none", "none", 80.0, seed=0), make_record("none", "none", 82.0, seed=1),
            make_record("none", "mixup", 78.0), make_record("cuda", "none", 20.0), make_record("cuda", "mixup", 22.0),
            make_record("em", "mixup", 30.0), make_record("rem", "mixup", 72.0), make_record("rem", "none", 40.0),
            make_record("sem", "none", 10.0), make_record("cuda", "dat", 35.0, train_acc=40.0),
            make_record("cuda", "none", 72.0, ratio=0.5), make_record("cuda", "none", 70.0, ratio=0.5, clean_only=True)]


@pytest.fixture
def claims_file(tmp_path: Path) -> Path:
    path = tmp_path / "claims.toml"
    path.write_text(CLAIMS)
    return path


def test_claim_verdicts(tmp_path: Path, claims_file: Path) -> None:
    frame = load_frame(write_all(tmp_path / "runs", claim_records()))
    version, rows = load_claims(claims_file)
    sigma = agg.noise(agg.cells(frame))["sigma"]
    assert version == 3 and sigma == pytest.approx(2 ** 0.5, abs=1e-3)
    got = {c["id"]: c for c in evaluate(rows, frame, agg.run_flags(frame), sigma)}
    assert {k: c["verdict"] for k, c in got.items()} == {
        "holds": "holds", "fails": "fails", "noise": "within noise", "absent": "not run", "unconverged": "not run",
        "other": "holds", "partial": "holds"}
    (pair,) = got["holds"]["pairs"]
    assert (pair["cell"]["mean"], pair["reference"]["mean"], pair["threshold"], pair["margin"]) == (22.0, 81.0, 51.0, -29.0)
    assert pair["reference"]["seeds"] == [0, 1] and pair["cell"]["seeds"] == [0]
    assert got["noise"]["pairs"][0]["margin"] == -1.0  # 72 vs 78 - 5: closer than the tolerance
    assert got["noise"]["pairs"][0]["tolerance"] == pytest.approx(4.0, abs=1e-3)  # two single runs
    assert pair["tolerance"] == pytest.approx(2 * 2 ** 0.5 * 1.5 ** 0.5, abs=1e-3)  # against 2 seeds
    assert got["unconverged"]["pairs"][0]["verdict"] == "not converged" and "not converged" in got["unconverged"]["note"]
    assert got["absent"]["pairs"][0]["cell"] is None
    assert got["partial"]["pairs"][0]["reference"]["clean_only"] and got["partial"]["pairs"][0]["margin"] == 7.0
    # the threshold is shown as reference + offset, so it never reads as a cell with the reference's seeds
    assert pair_text(pair) == "cuda × mixup 22.0 (seed 0) vs 51.0 = 81.0 − 30 (seeds 0, 1, ±3.5): holds"
    assert pair_text(got["other"]["pairs"][0]) == "sem × none 10.0 (seed 0) vs 40.0 (seed 0, ±4.0): holds"
    # a cell trained on another poisoned set than its column's no-defense cell says so, as the matrix does
    other_set = {**pair, "cell": {**pair["cell"], "poison_sets": [2]}}
    assert pair_text(other_set) == "cuda × mixup 22.0 (seed 0; poisoned set 2 ‡) vs 51.0 = 81.0 − 30 (seeds 0, 1, ±3.5): holds"


def test_more_seeds_narrow_the_margin_a_verdict_needs() -> None:
    """A cell 3 points above its threshold is within noise as one run against one run (2 standard errors of
    their difference: 2·sigma·sqrt(2) = 4.0 at sigma = sqrt(2)), and holds as 3 seeds against 3 (2.31)."""
    test = (">=", "clean", -5.0)

    def cell(mean: float, n: int) -> dict:
        return {"mean": mean, "n": n, "converged": True}

    single = check_pair(cell(76.0, 1), cell(78.0, 1), test, 2 ** 0.5)
    seeded = check_pair(cell(76.0, 3), cell(78.0, 3), test, 2 ** 0.5)
    assert (single["margin"], single["verdict"]) == (3.0, "within noise")
    assert seeded["verdict"] == "holds" and seeded["tolerance"] == pytest.approx(2 * 2 ** 0.5 * (2 / 3) ** 0.5, abs=1e-3)
    assert check_pair(cell(70.0, 3), cell(78.0, 3), test, 2 ** 0.5)["verdict"] == "fails"
    assert check_pair(cell(76.0, 1), cell(78.0, 1), test, None)["verdict"] == "holds"  # no noise measured


def test_bench_claims_exit_codes(tmp_path: Path, claims_file: Path, capsys: pytest.CaptureFixture) -> None:
    results = write_all(tmp_path / "runs", claim_records())
    code, out, err = run_cli(["claims", "--results", str(results), "--claims", str(claims_file)], capsys)
    assert code == 1, err  # a claim that was run fails
    assert "3 holds, 1 fails, 1 within noise, 2 not run" in out and "seed-to-seed σ 1.41 points" in out
    assert "Not run, no record for any of its cells (1): cutout neutralises SEM" in " ".join(out.split())
    assert "│ cutout neutralises" not in out  # listed in that line, not as a table row
    only_holds = tmp_path / "holds.toml"
    only_holds.write_text(CLAIMS.split("[[claim]]\nid = \"fails\"")[0])
    code, out, err = run_cli(["claims", "--results", str(results), "--claims", str(only_holds)], capsys)
    assert code == 0, err
    bad = tmp_path / "bad.toml"
    bad.write_text(CLAIMS.replace('test = "acc <= baseline - 30"', 'test = "acc is low"', 1))
    code, _, err = run_cli(["claims", "--results", str(results), "--claims", str(bad)], capsys)
    assert code == 2 and "'acc is low' is not" in err and len(err.strip().splitlines()) == 1


def references_toml() -> str:
    """Three published CUDA-vs-AT cells: the CUDA paper's protocol at eps 4/255 (run here in two presets),
    another paper's protocol (never comparable), and eps 8/255 (not run here)."""
    rows = [("P", "T1", 100, "paper", 4, 44.40, "AT", "\npoison_params = { pb = 0.3 }"),
            ("Q", "T2", 60, "ISS code", 4, 40.0, "other protocol", ""),
            ("R", "T3", 100, "paper", 8, 32.85, "not run here", "")]
    return "version = 1\n" + "".join(f"""
[[reference]]
paper = "{paper}"
table = "{table}"
dataset = "cifar10"
model = "resnet18"
epochs = {epochs}
protocol = "{protocol}"
poison = "cuda"{extra}
defense = "at"
defense_params = {{ norm = "linf", eps = "{eps}/255" }}
value = {value}
note = "{note}"
""" for paper, table, epochs, protocol, eps, value, note, extra in rows)


def test_references_join_comparable_and_different_protocol(tmp_path: Path) -> None:
    at4 = {"norm": "linf", "eps": 4 / 255}
    recs = [make_record("cuda", "at", 47.0, preset="paper", source="torchvision", defense_params=at4),
            make_record("cuda", "at", 41.0, preset="cpu", defense_params=at4),
            make_record("cuda", "at", 30.0, preset="cpu", defense_params={"norm": "linf", "eps": 2 / 255})]
    ref_file = tmp_path / "refs.toml"
    ref_file.write_text(references_toml())
    assert load_references(ref_file)[0] == 1
    runs = collect_runs(write_all(tmp_path / "runs", recs), lambda m: None)
    data = build_data(build_frame(runs), runs, "runs", references_file=ref_file)
    first, second, third = data["references"]
    by_preset = {o["group"].rsplit("-", 1)[-1]: o for o in first["ours"]}
    assert set(by_preset) == {"paper", "cpu"}  # eps 2/255 is not this setting
    assert by_preset["paper"]["comparable"] and by_preset["paper"]["delta"] == pytest.approx(2.6)
    assert not by_preset["cpu"]["comparable"] and by_preset["cpu"]["delta"] is None
    assert by_preset["cpu"]["differences"] == ["source cifar10-jpeg", "small-cnn vs resnet18", "15 vs 100 epochs",
                                               "preset cpu vs paper"]
    # a paper protocol that is not one of our presets is never comparable, even for the paper preset's cell
    paper_cell = next(o for o in second["ours"] if o["group"].endswith("paper"))
    assert not paper_cell["comparable"] and paper_cell["differences"] == ["100 vs 60 epochs", "preset paper vs ISS code"]
    assert third["ours"] == []


def test_curated_files_parse_and_cite_their_sources() -> None:
    """The shipped references hold the CUDA paper's ResNet-18 cells the leaderboard compares with."""
    _v, refs = load_references()
    values = {(r["poison"], r["defense"], r.get("defense_params", {}).get("mode"), r["value"]) for r in refs}
    for want in (("none", "none", None, 94.66), ("cuda", "none", None, 18.48), ("cuda", "at", None, 44.40),
                 ("cuda", "at", None, 51.19), ("cuda", "dat", None, 38.48), ("cuda", "mixup", None, 25.53),
                 ("cuda", "cutmix", None, 26.93), ("cuda", "smoothing", None, 43.85),
                 ("cuda", "finetune", "full", 42.42), ("cuda", "finetune", "linear", 48.22),
                 ("rem", "grayscale", None, 92.84), ("em", "jpeg", None, 81.50)):
        assert want in values, want
    assert all(r["paper"] and r["table"] for r in refs)
    _v, claims = load_claims()
    assert len(claims) >= 10 and len({c["id"] for c in claims}) == len(claims)


def test_a_claim_never_averages_two_configurations(tmp_path: Path, claims_file: Path) -> None:
    """Records of mixup at alpha 1 (today's default) and at alpha 0.2 both match the selector 'mixup':
    the claim reads the default one, not their mean."""
    recs = claim_records() + [make_record("cuda", "mixup", 70.0, defense_params={"alpha": 0.2}),
                              make_record("none", "mixup", 79.0, defense_params={"alpha": 0.2})]
    frame = load_frame(write_all(tmp_path / "runs", recs))
    _v, rows = load_claims(claims_file)
    got = {c["id"]: c for c in evaluate(rows, frame, agg.run_flags(frame), 0.5)}
    cell = got["holds"]["pairs"][0]["cell"]
    assert (cell["defense"], cell["mean"], cell["n"]) == ("mixup (alpha=1)", 22.0, 1)


def test_a_single_run_protocol_variant_borrows_its_presets_noise(tmp_path: Path, claims_file: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """A longer-schedule table run once per cell judges claims with the noise of its preset's main table,
    and says so; a table with no sibling to borrow from keeps no tolerance and claims no noise scale."""
    variant = {"epochs": 4}
    recs = claim_records() + [make_record(p, d, acc, overrides=variant, curve=[acc - 1.0, acc, acc, acc])
                              for p, d, acc in (("none", "none", 81.0), ("cuda", "mixup", 49.5), ("none", "mixup", 79.0))]
    results = write_all(tmp_path / "runs", recs)
    runs = collect_runs(results, lambda m: None)
    frame = build_frame(runs)
    noises = agg.group_noises(frame)
    main, longer = (noises[str(s)] for s in frame["group"].unique())
    assert main["tolerance"] == pytest.approx(4.0, abs=1e-3) and "borrowed_from" not in main
    assert longer["tolerance"] == main["tolerance"] and longer["borrowed_from"].endswith("preset smoke · epochs=3")
    data = build_data(frame, runs, "runs", claims_file=claims_file)
    variant_group = data["groups"][1]
    assert "epochs=4" in variant_group["title"] and variant_group["noise"]["borrowed_from"]
    mixing = next(c for c in variant_group["claims"] if c["id"] == "holds")
    assert mixing["pairs"][0]["margin"] == pytest.approx(-1.5) and mixing["verdict"] == "within noise"
    assert any("borrowed from" in c["text"] for c in variant_group["caveats"] if c["topic"] == "noise")
    code, out, _ = run_cli(["claims", "--results", str(results), "--claims", str(claims_file)], capsys)
    assert "borrowed from" in out
    alone = load_frame(write_all(tmp_path / "alone", [make_record("none", "none", 80.0, overrides=variant)]))
    (only,) = agg.group_noises(alone).values()
    assert only["tolerance"] == 0.0 and "borrowed_from" not in only


def test_claims_without_any_recorded_cell_are_one_line_not_rows(tmp_path: Path, claims_file: Path) -> None:
    runs = collect_runs(write_all(tmp_path / "runs", claim_records()), lambda m: None)
    (g,) = build_data(build_frame(runs), runs, "runs", claims_file=claims_file)["groups"]
    table, _details = doc.claims_blocks(g)
    shown = [row[0] for row in table.rows]
    assert "cutout neutralises SEM" not in shown and "DAT does not break CUDA" in shown  # a cell, not converged
    assert len(shown) == len(g["claims"]) - 1
    assert "Not run, no record for any of its cells (1): cutout neutralises SEM (sem × cutout)." in table.legend
    alone = collect_runs(write_all(tmp_path / "alone", [make_record("none", "none", 80.0)]), lambda m: None)
    (g,) = build_data(build_frame(alone), alone, "alone", claims_file=claims_file)["groups"]
    assert doc.claims_blocks(g) is None and unrecorded_text(claims_unrecorded(g)).startswith("Not run")
