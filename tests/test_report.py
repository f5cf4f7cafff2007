"""bench leaderboard / bench results: the tidy frame, aggregation against hand-computed answers, ties,
tiers, convergence flags, rankings, provenance, the rendered page and its JSON, byte-identical
regeneration, bad records, and the sample grids."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
from conftest import run_cli
from report_records import CUDA_PARAMS, make_record, write, write_all

from attacks.base import key_fingerprint
from benchmark.records import run_id
from benchmark.report import aggregate as agg
from benchmark.report import build_frame, collect_runs, load_frame, write_leaderboard
from benchmark.report import load_frame as records_load_frame
from benchmark.report.collect import threads_text

HOLDOUT = {"finetune": {"pretrained_on": {"model": "small-cnn", "dataset": "cifar10", "split": "holdout",
                                          "train_images": 30000, "epochs": 15, "clean_test_acc": 80.0}}}


def standard_set() -> list[dict]:
    """Known answers: clean/none 81 ± sqrt(2) (n=2), cuda/none 22 ± sqrt(8), cuda/mixup 50, clean/mixup 78,
    em/none 15, em/mixup 30, sem only without defense, a partial cuda poison (mixed and clean-only)."""
    return [
        make_record("none", "none", 80.0, seed=0, peak=85.0), make_record("none", "none", 82.0, seed=1, peak=86.0),
        make_record("cuda", "none", 20.0, seed=0, peak=30.0), make_record("cuda", "none", 24.0, seed=1, peak=31.0),
        make_record("cuda", "mixup", 50.0, defense_metrics={"robust_acc": 12.5}), make_record("none", "mixup", 78.0),
        make_record("em", "none", 15.0), make_record("em", "mixup", 30.0), make_record("sem", "none", 10.0),
        make_record("cuda", "none", 60.0, ratio=0.5), make_record("cuda", "none", 70.0, ratio=0.5, clean_only=True),
    ]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return write_all(tmp_path / "runs", standard_set())


def group_frame(folder: Path):
    frame = load_frame(folder)
    assert frame["group"].nunique() == 1
    return frame


def test_tidy_frame_and_cells_match_hand_computed_values(results: Path) -> None:
    frame = records_load_frame(results)  # the public one-liner
    assert len(frame) == 11 and {"test_acc", "poison_label", "defense_label", "tier", "family", "seed"} <= set(frame)
    assert (frame.loc[frame["poison"] == "none", "poison_label"] == "clean").all()
    c = agg.cells(frame)
    clean, cuda = c.loc[("clean", "none")], c.loc[("cuda", "none")]
    assert (clean["mean"], clean["n"], clean["seeds"]) == (81.0, 2, [0, 1])
    assert clean["std"] == pytest.approx(math.sqrt(2)) and cuda["std"] == pytest.approx(math.sqrt(8))
    assert cuda["mean"] == 22.0 and cuda["peak"] == pytest.approx(30.5)
    assert ("sem", "mixup") not in c.index and ("cuda", "none") in c.index
    assert len(c) == 7  # the two partial runs are not cells of the matrix
    noise = agg.noise(c)  # pooled over the two multi-seed cells: sqrt((2 + 8) / 2)
    assert noise["sigma"] == pytest.approx(math.sqrt(5), abs=1e-4) and noise["tolerance"] == pytest.approx(2 * math.sqrt(10), abs=1e-3)
    assert frame.loc[frame["defense.robust_acc"].notna(), "defense.robust_acc"].tolist() == [12.5]


def test_tie_ranks_share_a_rank_within_tolerance() -> None:
    sigma = 1 / 2 ** 0.5  # two single runs: 2·sigma·sqrt(2) = 2.0 points
    assert agg.tie_ranks([40.0, 39.0, 30.0, 29.5, 20.0], sigma) == [1, 1, 3, 3, 5]
    assert agg.tie_ranks([40.0, 38.5, 37.0], sigma) == [1, 1, 3]  # compared with the first of the run, no chaining
    assert agg.tie_ranks([40.0, 39.0], None) == [1, 2]
    assert agg.tie_ranks([40.0, 38.5], sigma, [4, 4]) == [1, 2]  # 4 seeds each: 1.0 point is enough


def ranking_set(backbone: Path) -> list[dict]:
    """Three comparable poisons; noise from clean/none (80, 84): sigma = 2.83, two single runs tie within 8.0."""
    acc = {("none", "none"): [80.0, 84.0], ("cuda", "none"): [20.0], ("em", "none"): [15.0], ("rem", "none"): [30.0],
           ("none", "mixup"): [78.0], ("cuda", "mixup"): [40.0], ("em", "mixup"): [45.0], ("rem", "mixup"): [50.0],
           ("none", "cutout"): [77.0], ("cuda", "cutout"): [36.0], ("em", "cutout"): [60.0], ("rem", "cutout"): [55.0],
           ("none", "cutmix"): [76.0], ("cuda", "cutmix"): [25.0], ("em", "cutmix"): [50.0], ("rem", "cutmix"): [52.0],
           ("none", "grayscale"): [74.0], ("cuda", "grayscale"): [45.0],  # 1 of 3 poisons: incomplete
           ("none", "random-noise"): [], ("random-noise", "none"): [79.0]}
    recs = [make_record(p, d, v, seed=i) for (p, d), vals in acc.items() for i, v in enumerate(vals)]
    recs.append(make_record("none", "dat", 13.0, defense_params={"official_bn_update": True}))  # fails on clean
    recs.append(make_record("cuda", "dat", 17.0, defense_params={"official_bn_update": True}))
    # extra clean data: a linear probe that beats every standard defense must not become a worst case
    recs += [make_record(p, "finetune", v, defense_params={"backbone": str(backbone), "mode": "linear"},
                         defense_source=HOLDOUT, defense_info=False)
             for p, v in (("none", 81.0), ("cuda", 70.0), ("em", 75.0), ("rem", 77.0))]
    return recs


def test_rankings_ties_statuses_and_tiers(tmp_path: Path) -> None:
    frame = group_frame(write_all(tmp_path / "runs", ranking_set(tmp_path / "backbone.safetensors")))
    c = agg.cells(frame)
    tol = agg.noise(c)["sigma"]
    assert tol == pytest.approx(math.sqrt(8), abs=1e-3) and agg.noise(c)["tolerance"] == pytest.approx(8.0, abs=1e-3)
    ft = frame.loc[frame["defense"] == "finetune", "defense_label"].iloc[0]
    assert agg.defense_tiers(c)[ft] == "extra-clean-data"  # derived from the holdout backbone
    std = agg.defense_ranking(c, "poisoned-only", tol)
    assert std["poisons"] == ["cuda", "em", "rem"]
    by = {e["defense"]: e for e in std["entries"]}
    # worst cases: mixup 40 (cuda), cutout 36 (cuda, within 8.0 of 40: tied), cutmix 25 (cuda)
    assert [(e["defense"], e.get("rank")) for e in std["entries"] if e["status"] == "ranked"] == \
        [("mixup", 1), ("cutout", 1), ("cutmix", 3)]
    assert (by["mixup"]["worst"]["mean"], by["mixup"]["worst_poison"], by["mixup"]["mean"]) == (40.0, "cuda", 45.0)
    assert by["none"]["status"] == "reference" and by["none"]["cost"] == 0.0
    assert by["grayscale"]["status"] == "incomplete" and by["grayscale"]["not_run"] == ["em", "rem"]
    assert by["dat (official)"]["status"] == "fails on clean"
    assert ft not in by
    extra = agg.defense_ranking(c, "extra-clean-data", tol)
    assert [(e["defense"], e.get("rank")) for e in extra["entries"]] == [(ft, 1)]
    # a poison's worst case is over the standard tier: cuda's is grayscale's 45 (not finetune's 70)
    poisons = {e["poison"]: e for e in agg.poison_ranking(c, tol, std)["entries"]}
    assert (poisons["cuda"]["worst"]["mean"], poisons["cuda"]["best_defense"]) == (45.0, "grayscale")
    assert (poisons["em"]["worst"]["mean"], poisons["em"]["best_defense"]) == (60.0, "cutout")
    assert "dat (official)" not in agg.poison_ranking(c, tol, std)["defenses"]
    assert poisons["random-noise"]["status"] == "incomplete" and "rank" not in poisons["random-noise"]
    # ranks: cuda 45, rem 55, em 60 (within 8.0 of 55: tied)
    assert [(p, poisons[p]["rank"]) for p in ("cuda", "rem", "em")] == [("cuda", 1), ("rem", 2), ("em", 2)]


def test_convergence_flags_exclude_cells_from_verdicts(tmp_path: Path) -> None:
    recs = [make_record("none", "none", 80.0, train_acc=90.0), make_record("cuda", "none", 20.0),
            make_record("none", "mixup", 78.0), make_record("em", "none", 15.0),
            # still climbing: final 45 is 13 points above each of the 3 epochs before it
            make_record("cuda", "mixup", 45.0, curve=[20.0, 30.0, 31.0, 32.0, 45.0]),
            make_record("em", "mixup", 30.0),
            # fits its own training set far worse than plain training (40 vs 90)
            make_record("none", "dat", 42.0, train_acc=40.0), make_record("cuda", "dat", 35.0, train_acc=44.0)]
    frame = group_frame(write_all(tmp_path / "runs", recs))
    assert frame.loc[(frame["defense"] == "mixup") & (frame["poison"] == "cuda"), "final_rise"].item() == 13.0
    c = agg.cells(frame)
    assert not c.loc[("cuda", "mixup"), "converged"] and c.loc[("cuda", "mixup"), "stability"] == "still rising"
    assert "13.0 points above each of the 3 before it" in c.loc[("cuda", "mixup"), "not_converged"]
    assert not c.loc[("clean", "dat"), "converged"]
    assert "train accuracy 44.0 % vs 90.0 %" in c.loc[("cuda", "dat"), "not_converged"]
    assert c.loc[("em", "mixup"), "converged"] and c.loc[("clean", "none"), "converged"]
    std = agg.defense_ranking(c, "poisoned-only", None)
    by = {e["defense"]: e for e in std["entries"]}
    assert by["mixup"]["worst"]["mean"] == 30.0 and by["mixup"]["not_converged"] == ["cuda"]  # 45 is not used
    assert by["dat"]["status"] == "not converged"
    poisons = {e["poison"]: e for e in agg.poison_ranking(c, None, std)["entries"]}
    assert poisons["cuda"]["worst"]["mean"] == 20.0 and poisons["cuda"]["not_converged"] == ["mixup"]


def test_an_epoch_selecting_defense_is_judged_by_its_training_run_not_its_early_model(tmp_path: Path) -> None:
    """early-stop restores an early epoch, whose model fits the training set poorly by design (20 %); its
    run trained to 88 % and converged. A plain run with the same 20 % train accuracy did not fit."""
    def selecting(poison: str, acc: float, last_epoch_train: float) -> dict:
        rec = make_record(poison, "early-stop", acc, defense_params={"val_size": 20}, train_acc=20.0)
        m = rec["metrics"]
        m["per_epoch"][-1]["train_acc"] = last_epoch_train
        m.update({"selected_epoch": 1, "selected_val_acc": 30.0, "stopped_early": False})
        return rec

    recs = [make_record("none", "none", 80.0, train_acc=90.0), make_record("cuda", "none", 20.0),
            selecting("none", 79.0, 88.0), selecting("cuda", 30.0, 88.0), selecting("em", 25.0, 40.0),
            make_record("em", "none", 15.0, train_acc=20.0)]
    frame = group_frame(write_all(tmp_path / "runs", recs))
    c = agg.cells(frame)
    es = frame.loc[frame["defense"] == "early-stop", "defense_label"].iloc[0]
    assert c.loc[("cuda", es), "converged"] and c.loc[("clean", es), "converged"]
    assert "train accuracy 40.0 % vs 90.0 %" in c.loc[("em", es), "not_converged"]  # its run did not fit either
    assert "train accuracy 20.0 % vs 90.0 %" in c.loc[("em", "none"), "not_converged"]


def test_the_summary_marks_an_undefended_cell_that_is_not_a_verdict(tmp_path: Path) -> None:
    recs = [make_record("none", "none", 80.0, train_acc=90.0), make_record("cuda", "none", 20.0),
            make_record("em", "none", 15.0, train_acc=20.0),  # em's plain run did not fit: not a verdict
            make_record("none", "mixup", 78.0), make_record("cuda", "mixup", 50.0), make_record("em", "mixup", 30.0)]
    out = tmp_path / "site" / "leaderboard.md"
    write_leaderboard(write_all(tmp_path / "runs", recs), out, tmp_path / "plots", samples=False)
    summary = out.read_text().split("### Summary")[1].split("###")[0]
    assert re.search(r"^\| em \| [^|]+ \| 15\.0† \|", summary, re.M), summary
    assert re.search(r"^\| cuda \| [^|]+ \| 20\.0 \|", summary, re.M), summary
    assert "† = not a verdict" in summary


def test_cells_of_another_poisoned_set_are_marked(tmp_path: Path) -> None:
    """A column whose cells trained on different bytes of one recipe and key (a poison regenerated on another
    CPU) says so: sets told apart by digest where records carry one, else by the measured budget."""
    def on_set(rec: dict, l2: float = 5.0, digest: str | None = None) -> dict:
        rec["poison"]["budget"]["l2_mean"] = l2
        rec["poison"]["digest"] = digest
        return rec

    recs = [make_record("none", "none", 80.0), make_record("none", "mixup", 78.0), make_record("none", "cutout", 77.0),
            on_set(make_record("em", "none", 15.0)), on_set(make_record("em", "mixup", 30.0), l2=5.3),
            on_set(make_record("em", "cutout", 31.0), l2=5.000001),  # the same set, budget rounded elsewhere
            on_set(make_record("cuda", "none", 20.0), digest="a" * 16),
            on_set(make_record("cuda", "mixup", 40.0), digest="b" * 16),  # same budget, other bytes
            on_set(make_record("cuda", "cutout", 35.0), digest="a" * 16)]
    results = write_all(tmp_path / "runs", recs)
    frame = load_frame(results)
    sets = {(p, d): int(s) for p, d, s in zip(frame["poison"], frame["defense"], frame["poison_set"], strict=True)}
    assert sets == {("none", "none"): 0, ("none", "mixup"): 0, ("none", "cutout"): 0, ("em", "none"): 1,
                    ("em", "mixup"): 2, ("em", "cutout"): 1, ("cuda", "none"): 1, ("cuda", "mixup"): 2,
                    ("cuda", "cutout"): 1}
    out = tmp_path / "leaderboard.md"
    write_leaderboard(results, out, tmp_path / "plots", samples=False)
    text = out.read_text()
    assert "| mixup | 78.0 | 40.0‡ | 30.0‡ |" in text and "| cutout | 77.0 | 35.0 | 31.0 |" in text
    assert "‡ = trained on another poisoned set than the column's no-defense cell" in text
    assert "em: its cells trained on 2 poisoned sets" in text and "set 2: L2 5.3000" in text
    assert f"digest {'b' * 16}, 1 run (mixup)" in text


def test_page_json_and_byte_identical_regeneration(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "site" / "leaderboard.md"
    summary = write_leaderboard(results, out, tmp_path / "plots", samples=False)
    text = out.read_text()
    assert summary.json == tmp_path / "site" / "results" / "leaderboard.json"
    data = json.loads(summary.json.read_text())
    (g,) = data["groups"]
    entry = next(e for e in g["entries"] if (e["poison"], e["defense"]) == ("cuda", "none"))
    assert entry["test_acc"] == {"mean": 22.0, "std": 2.8284, "n": 2} and entry["seeds"] == [0, 1]
    assert entry["peak_test_acc"] == 30.5 and len(entry["records"]) == 2 and entry["converged"]
    # defenses are rows grouped by family, poisons columns with clean first
    assert "| defense | clean | cuda | em | sem |" in text
    assert "| *plain training* |  |  |  |  |" in text and "| *data augmentation* |  |  |  |  |" in text
    # the seed count is spelled out beside the ± (never a superscript)
    assert "| none | 81.0 ± 1.4 (n=2) | 22.0 ± 2.8 (n=2) | 15.0 | 10.0 |" in text
    assert "| mixup | 78.0 | 50.0 | 30.0 | – |" in text and "‡" not in text  # every column on one poisoned set
    assert "| none | cuda | 22.0 | 30.5 | 3 |" in text  # peak more than 3 points above final: a caveat table
    assert "| cuda | none | mixed | 81.0 ± 1.4 (n=2) | 60.0 (72 steps) | 22.0 ± 2.8 (n=2) |" in text
    assert "| cuda | none | clean-only, steps matched | 81.0 ± 1.4 (n=2) | 70.0 (72 steps) | – |" in text
    # the summary: one row per poison, strongest first (class, no defense, best defense, it on clean, verdict)
    summary_rows = re.findall(r"^\| (\w+) \| [^|]+ \| [^|]+ \| [^|]+ \| [^|]+ \| [^|]+ \| (.+) \|$",
                              text.split("### Summary")[1].split("###")[0], re.M)
    assert [(p, v) for p, v in summary_rows if p != "poison"] == [
        ("sem", "no defense run"), ("em", "**stands** (1 of 1 usable defenses run)"),
        ("cuda", "**stands** (1 of 1 usable defenses run)")], summary_rows
    assert "| cuda | unbounded / perceptual | 22.0 ± 2.8 (n=2) | mixup | 50.0 | 78.0 |" in text
    assert "heatmap" not in text  # the coloured matrix replaces it (HTML)
    # no table of the page is wider than a laptop's screen of markdown
    assert max(len(line) for line in text.splitlines() if line.startswith("|")) <= 200
    assert "Protocol: preset `smoke`" in text and "Records: " in text and "### Provenance" in text
    assert "### Protocol and caveats" in text and "JPEG re-encoding" in text
    assert "## Paper vs ours" in text and "source cifar10-jpeg" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links and all(lnk.startswith("../plots/") and (out.parent / lnk).is_file() for lnk in links)
    # the same records give the same bytes: page, JSON and every PNG
    before = {p: p.read_bytes() for p in [out, summary.json, *summary.plots]}
    shutil.rmtree(tmp_path / "plots")
    again = write_leaderboard(results, out, tmp_path / "plots", samples=False)
    assert sorted(again.plots) == sorted(summary.plots)
    assert all(p.read_bytes() == b for p, b in before.items())


def test_html_links_cells_to_records_and_latex(results: Path, tmp_path: Path) -> None:
    html = tmp_path / "site" / "index.html"
    write_leaderboard(results, html, tmp_path / "plots", fmt="html", samples=False)
    page = html.read_text()
    hrefs = re.findall(r'<a href="([^"#]+\.json)"', page)
    assert hrefs and all((html.parent / h).resolve().is_file() for h in hrefs)
    assert "data:image/png;base64," in page and "<sup>" not in page
    # matrix cells coloured by accuracy, several runs named as such under the value
    assert re.search(r'<td class="r" style="background:#[0-9a-f]{6}"><a href="[^"]+" title="seed 0">22.0 ± 2.8</a>'
                     r'<span class="runs">n=2: seeds <a', page)
    assert "<th>`" not in page and "`</th>" not in page
    tex = tmp_path / "lb.tex"
    write_leaderboard(results, tex, tmp_path / "plots", fmt="latex", samples=False)
    body = tex.read_text()
    assert body.count("\\begin{tabular}") == body.count("\\end{tabular}}") > 5
    assert "\\multicolumn{5}{l}{\\textit{plain training}}" in body and "$\\pm$" in body


def test_bad_records_are_skipped_with_one_warning_each(results: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    (results / "corrupt.json").write_text('{"schema_version": 1, "run_id": ')
    future = make_record("cuda", "cutmix", 99.0)
    future["schema_version"] = 99
    write(results, future, "future.json")
    write(results, make_record("cuda", "cutout", 99.0, status="failed"), "failed.json")
    odd = make_record("cuda", "cutmix", 99.0, seed=7)
    odd["config"]["poison"] = "cuda"
    write(results, odd, "odd.json")
    write(results, make_record("none", "none", 80.0, seed=0, peak=85.0), "a-copy.json")
    out = tmp_path / "lb.md"
    code, stdout, err = run_cli(["leaderboard", "--results", str(results), "--out", str(out), "--plots",
                                 str(tmp_path / "plots"), "--no-samples"], capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 5, err
    for name, why in (("corrupt.json", "unreadable JSON"), ("future.json", "schema_version"),
                      ("failed.json", "failed run"), ("a-copy.json", "duplicate"), ("odd.json", "config.poison")):
        assert any(name in w and why in w for w in warnings), (name, err)
    text = out.read_text()
    assert "99.0" not in text and "| cutmix |" not in text and "| cutout |" not in text
    assert "| none | 81.0 ± 1.4 (n=2) |" in text and "11 run records" in text and "wrote" in stdout


def test_no_usable_records_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write(tmp_path / "runs", make_record("cuda", "none", 10.0, status="failed"))
    code, _, err = run_cli(["leaderboard", "--results", str(tmp_path / "runs"), "--out", str(tmp_path / "x.md")], capsys)
    assert code == 2 and "no usable finished run records" in err and not (tmp_path / "x.md").exists()
    code, _, err = run_cli(["results", "--results", str(tmp_path / "missing")], capsys)
    assert code == 2 and "does not exist" in err


def test_results_command_formats(results: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_cli(["results", "--results", str(results)], capsys)
    assert code == 0, err
    header, *rows = out.strip().splitlines()
    assert len(rows) == 11 and "test_acc" in header.split(",") and "defense_label" in header.split(",")
    code, _, err = run_cli(["results", "--results", str(results), "--format", "json", "--out", str(tmp_path / "r.json")], capsys)
    rows = json.loads((tmp_path / "r.json").read_text())
    assert code == 0 and len(rows) == 11 and {r["test_acc"] for r in rows} >= {22.0 - 2, 24.0, 50.0}
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        code, _, err = run_cli(["results", "--results", str(results), "--format", "parquet", "--out",
                                str(tmp_path / "r.parquet")], capsys)
        assert code == 2 and "pip install pyarrow" in err and len(err.strip().splitlines()) == 1


def test_labels_variants_and_revisions(tmp_path: Path) -> None:
    """DAT's official variant is labelled by its declared variant, not a param dump; AT budgets print as
    k/255; records of two poison revisions are separate rows, never averaged as seeds."""
    recs = [make_record("none", "dat", 42.0), make_record("none", "dat", 13.0, defense_params={"official_bn_update": True}),
            make_record("none", "at", 60.0, defense_params={"eps": 4 / 255}),
            make_record("rem", "none", 20.0, params={"rho_u": 8 / 255})]
    assert recs[-1]["config"]["poison"]["revision"] == 2  # REM's current algorithm
    old = make_record("rem", "none", 40.0, params={"rho_u": 8 / 255})
    del old["config"]["poison"]["revision"]  # a record of revision 1 (no revision field)
    old["run_id"] = run_id(old["config"])
    recs.append(old)
    recs[1].pop("defense_info")  # older records: the variant is derived from the config
    frame = build_frame(collect_runs(write_all(tmp_path / "runs", recs), lambda m: None))
    assert set(frame["defense_label"]) == {"dat", "dat (official)", "at (eps=4/255)", "none"}
    assert set(frame["poison_label"]) == {"clean", "rem", "rem (revision=2)"}


def last_two_commits_changing(path: str) -> list[str]:
    """The newest two commits of this repository that changed ``path`` (newest first); skips the test
    where the git history is not at hand."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    log = subprocess.run(["git", "log", "--format=%H", "-2", "--", path], cwd=repo, capture_output=True, text=True)
    commits = log.stdout.split()
    if log.returncode != 0 or len(commits) < 2:
        pytest.skip("needs the repository's git history")
    return commits


def test_provenance_names_commits_and_warns_on_code_changes(tmp_path: Path) -> None:
    """Two real commits of this repository between which defenses/dat.py changed: cells of dat made at
    both are flagged; mixup's file did not change between them, so it is not."""
    new, old = last_two_commits_changing("defenses/dat.py")
    recs = [make_record("none", "none", 80.0, commit=old, created="2026-01-01T00:00:00+00:00"),
            make_record("none", "dat", 40.0, commit=old, created="2026-01-01T01:00:00+00:00"),
            make_record("cuda", "dat", 30.0, commit=new, created="2026-01-02T00:00:00+00:00")]
    from benchmark.report import notes

    frame = group_frame(write_all(tmp_path / "runs", recs))
    prov = notes.provenance(frame)
    assert [c["commit"] for c in prov["commits"]] == [old, new]
    assert [c["records"] for c in prov["commits"]] == [2, 1]
    (warning,) = prov["warnings"]
    assert warning.startswith("defense dat") and "defenses/dat.py changed" in warning
    assert notes.provenance_line(frame).startswith("Records: 3 runs, 2 commits")


def test_a_poison_whose_code_changed_but_whose_bytes_did_not_is_not_flagged(tmp_path: Path) -> None:
    """Records carry the poisoned set's digest: across commits that changed attacks/cuda.py, runs on one
    digest measured the same data (no warning); another digest, or a record without one, is flagged."""
    new, old = last_two_commits_changing("attacks/cuda.py")
    from benchmark.report import notes

    def warnings(second_digest: str | None) -> list[str]:
        first = make_record("cuda", "none", 20.0, commit=old, created="2026-01-01T00:00:00+00:00")
        second = make_record("cuda", "mixup", 30.0, commit=new, created="2026-01-02T00:00:00+00:00")
        first["poison"]["digest"], second["poison"]["digest"] = "a" * 16, second_digest
        folder = write_all(tmp_path / str(second_digest), [make_record("none", "none", 80.0), first, second])
        return [w for w in notes.provenance(group_frame(folder))["warnings"] if w.startswith("poison cuda")]

    assert warnings("a" * 16) == []
    assert len(warnings("b" * 16)) == 1 and len(warnings(None)) == 1


def test_every_plot_is_written_including_samples(results: Path, tmp_path: Path, data_root: Path,
                                                 cache_dir: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "lb.md"
    code, _, err = run_cli(["leaderboard", "--results", str(results), "--out", str(out), "--plots",
                            str(tmp_path / "plots"), "--data-root", str(data_root), "--cache-dir", str(cache_dir)],
                           capsys)
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    stem = "cifar10-cifar10-jpeg-small-cnn-smoke"
    for kind in ("summary", "curves", "ratio", "samples-cuda"):
        assert f"{stem}-{kind}.png" in names
    assert all((tmp_path / "plots" / n).stat().st_size > 1000 for n in names if n.endswith(".png"))
    sidecar = json.loads((tmp_path / "plots" / f"{stem}-samples-cuda.png.json").read_text())
    assert sidecar["poison"] == "cuda" and sidecar["params"] == CUDA_PARAMS and sidecar["ratio"] == 1.0
    assert sidecar["key_fingerprint"] == key_fingerprint(0) and sidecar["revision"] == 1
    assert "samples-em" not in " ".join(names) and "needs surrogate training" in err
    assert f"![samples of cuda](plots/{stem}-samples-cuda.png)" in out.read_text()
    first = (tmp_path / "plots" / f"{stem}-samples-cuda.png").read_bytes()
    shutil.rmtree(tmp_path / "plots")
    run_cli(["leaderboard", "--results", str(results), "--out", str(out), "--plots", str(tmp_path / "plots"),
             "--data-root", str(data_root), "--cache-dir", str(cache_dir)], capsys)
    assert (tmp_path / "plots" / f"{stem}-samples-cuda.png").read_bytes() == first


def test_samples_from_cache_match_recreated(data_root: Path, cache_dir: Path) -> None:
    """The cached artifact and the cheap re-creation on one image per class give the same images, and an
    artifact of another poison revision is never used."""
    import torch

    from benchmark.data import load_dataset, stratified_subset
    from benchmark.poisoning import build_poison, get_poisoned
    from benchmark.report.samples import SampleSource

    rec = make_record("cuda", "none", 20.0)
    warnings: list[str] = []
    recreated = SampleSource(data_root, cache_dir, warnings.append).images(rec, "cuda")
    assert recreated is not None and not warnings
    data = load_dataset("cifar10", data_root, cache_dir)
    train = data.train.subset(stratified_subset(data.train.y, 512, 0))
    from benchmark.data import poison_dataset_id

    dataset_id = poison_dataset_id(data, train, 512, 0)
    _, manifest = get_poisoned(train, dataset_id, build_poison("cuda", CUDA_PARAMS, 0, 1.0, "smoke"), cache_dir,
                               torch.device("cpu"), "smoke")
    assert manifest["cached"] is False
    source = SampleSource(data_root, cache_dir, warnings.append)
    cached = source.images(rec, "cuda")
    assert cached is not None and not warnings
    assert torch.equal(cached[0], recreated[0]) and torch.equal(cached[1], recreated[1])
    poison = rec["config"]["poison"]
    assert source.artifact(dataset_id, poison) is not None and source.artifact(dataset_id, {**poison, "revision": 2}) is None
    other = make_record("cuda", "none", 20.0)
    other["config"]["poison"]["key_fingerprint"] = key_fingerprint(12345)
    assert SampleSource(data_root, cache_dir, warnings.append).images(other, "cuda") is None and "private" in warnings[-1]


def test_existing_grid_kept_only_when_its_sidecar_names_the_poison(results: Path, tmp_path: Path, data_root: Path,
                                                                   cache_dir: Path) -> None:
    plots = tmp_path / "plots"
    with_data = write_leaderboard(results, tmp_path / "a.md", plots, data_root=data_root, cache_dir=cache_dir)
    grid = next(p for p in with_data.plots if "samples-cuda" in p.name)
    (tmp_path / "empty").mkdir()
    warnings: list[str] = []
    without = write_leaderboard(results, tmp_path / "b.md", plots, data_root=tmp_path / "empty",
                                cache_dir=tmp_path / "cache", warn=warnings.append)
    assert grid in without.plots and any("kept the existing sample grid" in w for w in warnings)
    assert (tmp_path / "a.md").read_text() == (tmp_path / "b.md").read_text()
    changed = tmp_path / "changed"
    for rec in standard_set():
        if rec["config"]["poison"]["name"] == "cuda":
            rec["config"]["poison"]["params"] = {**CUDA_PARAMS, "pb": 0.5}
            rec["run_id"] = run_id(rec["config"])
        write(changed, rec)
    warnings.clear()
    write_leaderboard(changed, tmp_path / "c.md", plots, data_root=tmp_path / "empty", cache_dir=tmp_path / "cache",
                      warn=warnings.append)
    assert "samples of cuda" not in (tmp_path / "c.md").read_text() and grid.is_file()
    assert any("not showing" in w and "params differ" in w for w in warnings)


def test_sample_diff_row_says_the_factor_it_draws() -> None:
    import numpy as np

    from benchmark.report.samples import diff_image, diff_label

    clean = np.full((1, 3, 2, 2), 0.5)
    poisoned = clean.copy()
    poisoned[0, 0, 0, 0] += 8 / 255
    poisoned[0, 1, 1, 1] -= 4 / 255
    shown, amp, peak = diff_image(clean, poisoned)
    assert peak == pytest.approx(8 / 255) and amp == pytest.approx(0.5 * 255 / 8)
    assert shown[0, 0, 0, 0] == pytest.approx(1.0) and shown[0, 2, 0, 0] == pytest.approx(0.5)
    assert diff_label(amp) == "diff ×15.9"


def test_labels_hide_params_only_older_records_carry() -> None:
    """A smoothing record from before its params changed (eval_subset, n_samples=32) and one at today's
    defaults get short, distinct labels, not a dump of every parameter either one has."""
    from benchmark.report.collect import defense_defaults, make_labels

    now = defense_defaults("smoothing")
    old = {"sigma": 0.5, "n_samples": 32, "alpha": 0.001, "eval_subset": 1000}
    ids = [("smoothing", json.dumps(now, sort_keys=True)), ("smoothing", json.dumps(old, sort_keys=True))]
    labels = make_labels(ids, {}, defense_defaults)
    assert sorted(labels.values()) == [f"smoothing (n_samples={now['n_samples']})", "smoothing (n_samples=32)"]
    assert make_labels(ids[:1], {}, defense_defaults) == {ids[0]: "smoothing"}


def test_protocol_variants_get_their_own_table_after_the_main_one(tmp_path: Path) -> None:
    """A second protocol of one preset (DAT's longer budget) is its own table, after the table most
    records share, whose anchor and plot names do not change when a variant appears."""
    main = [make_record("none", acc=80.0), make_record("cuda", acc=20.0), make_record("cuda", "mixup", acc=30.0)]
    longer = make_record("cuda", acc=25.0)
    longer["config"]["protocol"]["epochs"] = 40
    longer["run_id"] = run_id(longer["config"])
    alone = build_frame(collect_runs(write_all(tmp_path / "a", main), warn=print))
    frame = build_frame(collect_runs(write_all(tmp_path / "b", main + [longer]), warn=print))
    groups = list(dict.fromkeys(frame["group"]))
    assert len(groups) == 2 and groups[0] == alone["group"].iloc[0]  # main table first, same slug
    titles = list(dict.fromkeys(frame["group_title"]))
    assert titles[0].endswith("epochs=3") and titles[1].endswith("epochs=40")
    assert (frame["group"] == groups[1]).sum() == 1


def test_cost_table_uses_cpu_seconds_where_records_count_them(tmp_path: Path) -> None:
    """Wall times on a shared machine include waiting for a core; the CPU-time ratio is shown next to the
    wall-time one once records carry ``timings.training_cpu``."""
    recs = [make_record("none", acc=80.0), make_record("none", "mixup", acc=75.0)]
    before = build_frame(collect_runs(write_all(tmp_path / "a", recs), warn=print))
    assert before["training_cpu_s"].isna().all()
    recs[0]["timings"]["training_cpu"], recs[1]["timings"]["training_cpu"] = 8.0, 10.0
    results = write_all(tmp_path / "b", recs)
    costs = {c["defense"]: c for c in agg_costs(build_frame(collect_runs(results, warn=print)))}
    assert costs["mixup"]["relative"] == 2.0 and costs["mixup"]["relative_cpu"] == 1.25  # wall 20/10, CPU 10/8
    write_leaderboard(results, tmp_path / "lb.md", tmp_path / "plots", samples=False)  # clean runs only: renders
    page = (tmp_path / "lb.md").read_text()
    assert "× plain (CPU)" in page and "1.25×" in page


def test_cost_ratio_compares_only_runs_on_the_same_hardware(tmp_path: Path) -> None:
    """A defense's × plain divides its training time by plain training's on the same CPU model and thread
    count only: a run on another machine, or one whose record does not name its CPU, gets no ratio."""
    recs = [make_record("none", acc=80.0), make_record("cuda", acc=20.0),
            make_record("none", "mixup", acc=75.0), make_record("cuda", "mixup", acc=30.0),
            make_record("none", "cutout", acc=75.0)]
    recs[1]["timings"]["training"] = 30.0  # plain mean on this hardware: (10 + 30) / 2 = 20
    recs[2]["timings"]["training"] = 50.0  # 2.5x
    recs[3]["environment"]["cpu"] = "Another CPU"  # 20 s elsewhere: not comparable
    del recs[4]["environment"]["cpu"]  # an older record: hardware unknown
    results = write_all(tmp_path / "runs", recs)
    costs = {c["defense"]: c for c in agg_costs(build_frame(collect_runs(results, warn=print)))}
    assert (costs["mixup"]["relative"], costs["mixup"]["compared"], costs["mixup"]["runs"]) == (2.5, 1, 2)
    assert costs["cutout"]["relative"] is None and costs["cutout"]["compared"] == 0
    # absolute minutes are one machine's too: mixup's 20 s elsewhere is not averaged with its 50 s here
    assert (costs["mixup"]["training_s"], costs["mixup"]["timed_on_reference"]) == (50.0, True)
    assert costs["cutout"]["timed_on_reference"] is False  # only a run of unknown hardware: shown with *
    write_leaderboard(results, tmp_path / "lb.md", tmp_path / "plots", samples=False)
    cost_section = (tmp_path / "lb.md").read_text().split("### Cost and budgets")[1].split("<sub>")[0]
    rows = {line.split("|")[1].strip(): (line.split("|")[4].strip(), line.split("|")[5].strip())
            for line in cost_section.splitlines() if line.startswith(("| mixup |", "| cutout |"))}
    assert rows == {"mixup": ("0.8", "2.50× (1 of 2)"), "cutout": ("0.3*", "–")}


def agg_costs(frame):
    from benchmark.report.costs import defense_costs

    return defense_costs(frame[frame["group"] == frame["group"].iloc[0]], list(dict.fromkeys(frame["defense_label"])))


def test_matrix_legend_names_defenses_whose_headline_is_not_the_final_epoch(tmp_path: Path) -> None:
    """Smoothing's number is its smoothed classifier's vote and early-stop's the epoch chosen on clean
    validation data: the legend of each tier's table says so instead of calling every cell final-epoch."""
    recs = [make_record("none", "none", 80.0), make_record("cuda", "none", 20.0),
            make_record("none", "smoothing", 60.0), make_record("cuda", "smoothing", 45.0),
            make_record("none", "early-stop", 79.0, defense_params={"val_size": 20}),
            make_record("cuda", "early-stop", 30.0, defense_params={"val_size": 20})]
    out = tmp_path / "leaderboard.md"
    write_leaderboard(write_all(tmp_path / "runs", recs), out, tmp_path / "plots", samples=False)
    legends = [line for line in out.read_text().splitlines() if line.startswith("<sub>Final-epoch clean test accuracy")]
    standard, extra = legends[0], legends[1]
    assert "(except smoothing: smoothed classifier: majority vote" in standard and "early-stop" not in standard
    assert "(except early-stop (val_size=20): clean test accuracy of the epoch with the best accuracy on the held-out clean" in extra
    assert "smoothing" not in extra


def test_threads_text_counts_threads_in_words() -> None:
    assert threads_text([1, 1]) == "(1 thread)"
    assert threads_text([2, 1]) == "(1/2 threads)"
    assert threads_text([4]) == "(4 threads)"


def test_defense_metrics_per_defense_and_paper_ratios(results: Path, tmp_path: Path) -> None:
    """Each defense's own metrics in its own small table; paper vs ours compares each side's ratio to its own
    clean accuracy (mixup: no clean mixup number in the paper, so plain training's on both sides)."""
    write(results, make_record("cuda", "cutout", 35.0, defense_metrics={"robust_acc": 20.0, "flips": 3.0}), "co1.json")
    write(results, make_record("none", "cutout", 77.0, defense_metrics={"robust_acc": 40.0, "flips": 5.0}), "co2.json")
    out = tmp_path / "lb.md"
    write_leaderboard(results, out, tmp_path / "plots", samples=False)
    text = out.read_text()
    metrics = text.split("### Defense metrics")[1].split("\n### ")[0]
    mixup = metrics.split("#### mixup")[1].split("####")[0]
    cutout = metrics.split("#### cutout")[1].split("####")[0]
    assert "| poison | robust_acc |" in mixup and "| cuda | 12.5 |" in mixup and "flips" not in mixup
    assert "| poison | flips | robust_acc |" in cutout and "| cuda | 3.0 | 20.0 |" in cutout
    assert "`" not in mixup.splitlines()[2]  # a plain header, no literal backticks
    paper = text.split("## Paper vs ours")[1]
    assert "| cuda × none | 18.5 / 94.7 = 0.20 | 22.0 ± 2.8 (n=2) / 81.0 = 0.27 | agrees: holds |" in paper
    assert "| cuda × mixup | 25.5 / 94.7 = 0.27 | 50.0 / 81.0 = 0.62 | agrees: holds |" in paper
    assert "| none × none |" not in paper  # the clean references are the denominators, not rows


def test_records_from_before_a_new_parameter_read_as_what_they_ran(tmp_path: Path) -> None:
    """AR's `coefficients` and RSK+FF's `order` were added with new defaults: records made before them
    lack the parameter and keep their run ids, and the report labels them by the value they ran with
    (`coefficients=key`, `order=crop-filter`), never as the new default."""
    old_ar = make_record("ar", acc=30.0, params={"coefficients": "key"})
    new_ar = make_record("ar", acc=40.0)
    old_rsk = make_record("cuda", "rsk-ff", acc=50.0, defense_params={"order": "crop-filter"})
    new_rsk = make_record("cuda", "rsk-ff", acc=55.0)
    assert "coefficients" not in old_ar["config"]["poison"]["params"]  # what a record of the key draw holds
    assert "order" not in old_rsk["config"]["defense"]["params"]
    frame = build_frame(collect_runs(write_all(tmp_path, [make_record("none", acc=81.0), make_record("cuda", acc=21.0),
                                                          old_ar, new_ar,
                                                          old_rsk, new_rsk]), warn=print))
    labels = dict(zip(frame["test_acc"], zip(frame["poison_label"], frame["defense_label"], strict=True), strict=True))
    assert labels[30.0][0] == "ar (coefficients=key)" and labels[40.0][0] == "ar (coefficients=official)"
    alone = build_frame(collect_runs(write_all(tmp_path / "old", [make_record("none", acc=81.0), old_ar]), warn=print))
    assert set(alone["poison_label"]) == {"clean", "ar (coefficients=key)"}  # never read as the new default
    assert labels[50.0][1] == "rsk-ff (order=crop-filter)" and labels[55.0][1] == "rsk-ff (order=filter-crop)"
