"""Claims checked on our cells (holds / fails / within noise / inconclusive / not run, and never on a cell
that did not converge or was measured under other conditions than its source's), thresholds relative to a
defense's span and from the source's numbers, the two-sided test, `bench claims` exit codes, and the
paper-vs-ours join (comparable vs different protocol)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli
from report_records import make_record, write_all

from benchmark.errors import BenchError
from benchmark.report import aggregate as agg
from benchmark.report import build_data, build_frame, collect_runs, load_frame
from benchmark.report import document_claims as papers
from benchmark.report.claims import (
    TEST,
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
protocol = { generation = "smoke" }

[[claim]]
id = "fails"
claim = "mixup neutralises EM"
source = "test"
poison = "em"
defenses = ["mixup"]
test = "acc >= clean - 5"
protocol = { generation = "smoke" }

[[claim]]
id = "noise"
claim = "mixup neutralises REM"
source = "test"
poison = "rem"
defenses = ["mixup"]
test = "acc >= clean - 5"
protocol = { generation = "smoke" }

[[claim]]
id = "absent"
claim = "cutout neutralises SEM"
source = "test"
poison = "sem"
defenses = ["cutout"]
test = "acc >= clean - 5"
protocol = { generation = "smoke" }

[[claim]]
id = "unconverged"
claim = "DAT does not break CUDA"
source = "test"
poison = "cuda"
defenses = ["dat"]
test = "acc <= baseline - 30"
protocol = { generation = "smoke" }

[[claim]]
id = "other"
claim = "SEM is stronger than REM without defense"
source = "test"
poison = "sem"
defenses = ["none"]
test = "acc < other"
other = { poison = "rem" }
protocol = { generation = "smoke" }

[[claim]]
id = "partial"
claim = "a half-poisoned set is as learnable as its clean half"
source = "test"
poison = "cuda"
ratios = [0.5]
defenses = ["none"]
test = "acc >= other - 5"
other = { poison = { name = "cuda", clean_only = true } }
protocol = { generation = "smoke" }
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
    test = {"_test": (">=", "clean", -1.0, 5.0, "points"), "_protocol": {"metric": "final"}}

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
    assert "3 holds, 1 fails, 1 within noise, 0 inconclusive, 2 not run" in out and "seed-to-seed σ 1.41 points" in out
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
    table, _details = papers.claims_blocks(g)
    shown = [row[0] for row in table.rows]
    assert "cutout neutralises SEM" not in shown and "DAT does not break CUDA" in shown  # a cell, not converged
    assert len(shown) == len(g["claims"]) - 1
    assert "Not run, no record for any of its cells (1): cutout neutralises SEM (sem × cutout)." in table.legend
    alone = collect_runs(write_all(tmp_path / "alone", [make_record("none", "none", 80.0)]), lambda m: None)
    (g,) = build_data(build_frame(alone), alone, "alone", claims_file=claims_file)["groups"]
    assert papers.claims_blocks(g) is None and unrecorded_text(claims_unrecorded(g)).startswith("Not run")


PROTOCOL_CLAIMS = """
version = 4

[[claim]]
id = "recipe"
claim = "mixup neutralises EM (a source that generated EM with the paper recipe)"
source = "test"
poison = "em"
defenses = ["mixup"]
test = "acc >= clean - 5"
protocol = { generation = "paper" }

[[claim]]
id = "gray-test"
claim = "grayscale (train and test) does not break CUDA"
source = "test"
poison = "cuda"
defenses = [{ name = "grayscale", params = { test = true } }, "grayscale"]
test = "acc <= clean - 30"
protocol = { generation = "smoke", test_set = "grayscale" }

[[claim]]
id = "metric"
claim = "CUDA stays unlearnable under mixup (number of unknown kind)"
source = "test"
poison = "cuda"
defenses = ["mixup"]
test = "acc <= baseline - 30"
protocol = { generation = "smoke", metric = "unspecified" }

[[claim]]
id = "epochs"
claim = "CUDA stays unlearnable under mixup at 200 epochs"
source = "test"
poison = "cuda"
defenses = ["mixup"]
test = "acc <= baseline - 30"
protocol = { generation = "smoke", epochs = 200, conditions = ["generation", "epochs"] }
"""


def test_a_protocol_mismatch_is_inconclusive_never_fails(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recs = claim_records() + [make_record("cuda", "grayscale", 22.0), make_record("none", "grayscale", 78.0),
                              make_record("cuda", "grayscale", 25.0, defense_params={"test": True}),
                              make_record("none", "grayscale", 70.0, defense_params={"test": True})]
    results = write_all(tmp_path / "runs", recs)
    frame = load_frame(results)
    path = tmp_path / "claims.toml"
    path.write_text(PROTOCOL_CLAIMS)
    _v, rows = load_claims(path)
    got = {c["id"]: c for c in evaluate(rows, frame, agg.run_flags(frame), 2 ** 0.5)}
    # EM of the smoke recipe against a paper-recipe source: 30 vs 73 would fail, but it is another poison
    (recipe,) = got["recipe"]["pairs"]
    assert recipe["would"] == "fails" and got["recipe"]["verdict"] == "inconclusive"
    assert recipe["verdict"].startswith("inconclusive (protocol differs: generation recipe: preset smoke vs the source's (")
    assert "would be fails" in pair_text(recipe)
    # the grayscale-test-set cell is judged against the grayscale-test-set clean cell; train-only is not
    judged, train_only = got["gray-test"]["pairs"]
    assert (judged["cell"]["mean"], judged["reference"]["mean"], judged["verdict"]) == (25.0, 70.0, "holds")
    assert train_only["verdict"] == "inconclusive (protocol differs: test images: clean vs the source's grayscale)"
    assert got["gray-test"]["verdict"] == "holds"
    assert got["metric"]["verdict"] == "inconclusive" and got["metric"]["pairs"][0]["verdict"] == "inconclusive (metric unspecified)"
    assert got["epochs"]["pairs"][0]["verdict"] == "inconclusive (protocol differs: epochs: 3 vs the source's 200)"
    code, out, err = run_cli(["claims", "--results", str(results), "--claims", str(path)], capsys)
    assert code == 0, err  # an inconclusive claim is not a failure
    assert "1 holds, 0 fails, 0 within noise, 3 inconclusive, 0 not run" in out


def test_thresholds_relative_to_the_span_and_from_the_source() -> None:
    """Span thresholds scale with the defense's own clean accuracy above chance; source thresholds take
    the share of the span the source lost (a resistance half of it, a recovery at least RECOVER_FLOOR)."""
    def claim(test: str, **kw: float) -> dict:
        op, kind, sign, amount, span, source = TEST.match(test).groups()
        unit = "source" if source else ("span" if span else "points")
        return {"id": "x", "test": test, **kw, "_test": (op, kind, -1.0 if sign == "-" else 1.0, float(amount or 0), unit),
                "_protocol": {"metric": "final", "conditions": []}}

    def cell(mean: float, n: int = 3) -> dict:
        return {"mean": mean, "n": n, "converged": True}

    clean = cell(78.0)
    span = check_pair(cell(70.0), clean, claim("acc >= clean - 0.1 span"), 1.0, clean, 10.0)
    assert span["threshold"] == pytest.approx(78.0 - 6.8) and span["verdict"] == "within noise"  # 70 vs 71.2
    # the same 0.1 of the span on a defense whose clean accuracy is 48: a 3.8-point band, not 6.8
    low = cell(48.0)
    assert check_pair(cell(40.0), low, claim("acc >= clean - 0.1 span"), 1.0, low, 10.0)["threshold"] == pytest.approx(44.2)
    resist = check_pair(cell(30.0), clean, claim("acc <= baseline - source", source_acc=26.93, source_ref=94.66),
                        1.0, clean, 10.0)
    lost = (94.66 - 26.93) / (94.66 - 10.0)
    assert resist["offset"] == pytest.approx(-lost / 2 * 68.0, abs=1e-3) and resist["verdict"] == "holds"
    assert "source 26.93 vs 94.66" in resist["basis"]
    recover = check_pair(cell(72.0), clean, claim("acc >= clean - source", source_acc=93.01, source_ref=92.41),
                         1.0, clean, 10.0)
    assert recover["offset"] == pytest.approx(-0.10 * 68.0)  # the source lost nothing: the recovery floor
    tight = check_pair(cell(60.0), clean, claim("acc >= clean - source", source_acc=78.53, source_ref=94.34),
                       1.0, clean, 10.0)
    assert tight["offset"] == pytest.approx(-(94.34 - 78.53) / 84.34 * 68.0, abs=1e-3) and tight["verdict"] == "fails"


def test_two_sided_claims_hold_inside_the_band_and_fail_outside_either_way() -> None:
    band = {"_test": ("~=", "other", 1.0, 0.05, "span"), "_protocol": {"metric": "final", "conditions": []}}
    ref, span_ref = {"mean": 70.0, "n": 3, "converged": True}, {"mean": 81.0, "n": 3, "converged": True}

    def verdict(mean: float) -> str:
        return check_pair({"mean": mean, "n": 3, "converged": True}, ref, band, 1.0, span_ref, 10.0)["verdict"]

    # band 0.05 x 71 = 3.55 points, tolerance 2·sqrt(2/3) = 1.63
    assert verdict(70.5) == "holds" and verdict(69.0) == "holds"
    assert verdict(60.0) == "fails" and verdict(80.0) == "fails"  # too low and too high both break "≈"
    assert verdict(73.0) == "within noise"  # 3 points off: inside the band, but not beyond noise



@pytest.mark.parametrize(("test", "extra", "message"), [
    ("acc ~= other - 0.1 span", "", "'~=' takes a band"),
    ("acc >= clean - source", "", "needs the numbers source_acc and source_ref"),
    ("acc >= clean - 5", 'protocol = { conditions = ["weather"] }', "unknown protocol condition"),
])
def test_malformed_claims_are_one_line_errors(tmp_path: Path, test: str, extra: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[[claim]]\nid = "x"\nclaim = "x"\nsource = "x"\npoison = "cuda"\ndefenses = ["none"]\n'
                    f'test = "{test}"\nother = {{ poison = "cuda" }}\n' + (extra or "protocol = {}") + "\n")
    with pytest.raises(BenchError, match=message):
        load_claims(path)


def test_curated_caveats_name_our_cells_with_numbers_from_the_records(tmp_path: Path) -> None:
    """The APBench disagreements are data (references.toml [[caveat]]); the page adds our number."""
    from benchmark.report.references import load_caveats

    caveats = load_caveats()
    assert {("em", "grayscale"), ("tap", "ueraser"), ("ops", "ueraser"), ("lsp", "grayscale")} <= {
        (c["poison"], c["defense"]) for c in caveats}
    runs = collect_runs(write_all(tmp_path / "runs", claim_records() + [make_record("em", "grayscale", 41.5),
                                                                         make_record("none", "grayscale", 75.0)]),
                        lambda m: None)
    (g,) = build_data(build_frame(runs), runs, "runs")["groups"]
    (em,) = [c for c in g["caveats"] if c["topic"] == "APBench: EM × grayscale"]
    assert em["text"].endswith("Here: em × grayscale 41.5 % (1 seed).")
    assert not any(c["topic"].startswith("APBench: UEraser") for c in g["caveats"])  # no ueraser cell here


def test_poison_instances_count_distinct_poisoned_sets_not_keys() -> None:
    import pandas as pd

    from benchmark.report.claims import poison_instances

    def row(key: str, digest: str, l2: float) -> dict:
        return {"key_fingerprint": key, "poison_digest": digest, "l2_mean": l2, "psnr": 30.0, "ssim": 0.9, "linf_255": 8}

    two = pd.DataFrame([row("k0", "", 1.0), row("k0", "", 1.0), row("k3", "d3", 1.2)])  # a fresh instance
    same_bytes = pd.DataFrame([row("k0", "", 1.07), row("k1", "d1", 1.07)])  # a deterministic poison: any key, one set
    assert poison_instances(two) == 2 and poison_instances(same_bytes) == 1
