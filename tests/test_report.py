"""bench leaderboard: aggregation and rankings on hand-made records with known answers, preset
separation, bad records, duplicates, idempotence, HTML/LaTeX output and plot files."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from attacks.base import key_fingerprint
from benchmark.protocol import protocol_dict, resolve_protocol
from benchmark.records import SCHEMA_VERSION, record_filename, run_id, validate_record
from benchmark.report import (
    accuracy_matrix,
    collect_runs,
    defense_ranking,
    group_runs,
    partial_rows,
    poison_ranking,
    write_leaderboard,
)

CUDA_PARAMS = {"pb": 0.3, "k": 3, "universal": False}


def make_record(poison: str = "none", defense: str = "none", acc: float = 50.0, seed: int = 0,
                preset: str = "smoke", ratio: float = 1.0, clean_only: bool = False, peak: float | None = None,
                defense_metrics: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
                status: str = "finished") -> dict[str, Any]:
    """A record shaped like the runner's (CIFAR-10 JPEG copy, small-cnn), with chosen accuracies."""
    proto = protocol_dict(resolve_protocol(preset))
    if params is None:
        params = CUDA_PARAMS if poison == "cuda" else {}
    config = {
        "dataset": "cifar10", "dataset_source": "cifar10-jpeg", "train_size": proto["train_subset"] or 50000,
        "test_size": proto["test_subset"] or 10000, "model": proto["model"], "preset": preset, "protocol": proto,
        "seed": seed,
        "poison": {"name": poison, "params": params, "ratio": ratio,
                   "key_fingerprint": None if poison == "none" else key_fingerprint(0), "clean_only": clean_only},
        "defense": {"name": defense, "params": {}, "components": [{"name": defense, "params": {}}]},
    }
    epochs = proto["epochs"]
    curve = [{"epoch": e, "train_loss": 1.0, "train_acc": 50.0, "test_acc": round(acc * e / epochs, 3),
              "lr": 0.01, "seconds": 0.1} for e in range(1, epochs + 1)]
    finished = status == "finished"
    rec = {
        "schema_version": SCHEMA_VERSION, "run_id": run_id(config), "status": status,
        "created": f"2026-01-{10 + seed:02d}T12:00:00+00:00", "config": config,
        "environment": {"device": "cpu", "device_name": "cpu"},
        "poison": {"budget": None if poison == "none" else {"linf": 0.5, "linf_255": 128, "l2_mean": 5.0,
                                                            "psnr": 20.0, "ssim": 0.8, "num_poisoned": 512},
                   "generation_seconds": 0.5, "generation_device": "cpu"},
        "metrics": {"test_acc": acc, "peak_test_acc": peak if peak is not None else acc, "peak_epoch": epochs,
                    "per_epoch": curve, "defense": defense_metrics or {}} if finished else {},
        "timings": {"training": 1.0}, "error": None if finished else "RuntimeError: boom",
    }
    assert validate_record(rec) is None
    return rec


def write(results: Path, rec: dict[str, Any], name: str | None = None) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    path = results / (name or record_filename(rec["config"], rec["run_id"]))
    path.write_text(json.dumps(rec, indent=2))
    return path


def standard_set() -> list[dict[str, Any]]:
    """Known answers: clean/none 81 ± 1.414 (n=2), cuda/none 22 ± 2.828, cuda/mixup 50, clean/mixup 78,
    em/none 15, em/mixup 30, sem only under none (incomplete coverage), a partial cuda poison."""
    return [
        make_record("none", "none", 80.0, seed=0, peak=85.0), make_record("none", "none", 82.0, seed=1, peak=86.0),
        make_record("cuda", "none", 20.0, seed=0, peak=30.0), make_record("cuda", "none", 24.0, seed=1, peak=31.0),
        make_record("cuda", "mixup", 50.0, defense_metrics={"robust_test_acc": 12.5}),
        make_record("none", "mixup", 78.0, defense_metrics={"robust_test_acc": 40.0}),
        make_record("em", "none", 15.0), make_record("em", "mixup", 30.0, defense_metrics={"robust_test_acc": 5.0}),
        make_record("sem", "none", 10.0),
        make_record("cuda", "none", 60.0, ratio=0.5), make_record("cuda", "none", 70.0, ratio=0.5, clean_only=True),
    ]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    folder = tmp_path / "runs"
    for rec in standard_set():
        write(folder, rec)
    return folder


def test_matrix_mean_std_and_rankings(results: Path) -> None:
    (group,) = group_runs(collect_runs(results, lambda m: None))
    m = accuracy_matrix(group)
    assert m.rows == ["clean", "cuda", "em", "sem"] and m.cols == ["none", "mixup"]
    clean = m.get("clean", "none")
    assert clean.mean == pytest.approx(81.0) and clean.std == pytest.approx(math.sqrt(2)) and clean.n == 2
    cuda = m.get("cuda", "none")
    assert cuda.mean == pytest.approx(22.0) and cuda.std == pytest.approx(math.sqrt(8)) and cuda.n == 2
    assert cuda.fmt() == "22.00 ± 2.83 (n=2)" and m.get("cuda", "mixup").fmt() == "50.00"
    assert m.get("sem", "mixup") is None
    assert accuracy_matrix(group, "peak_test_acc").get("cuda", "none").mean == pytest.approx(30.5)

    ranks = poison_ranking(m)
    assert [r.poison for r in ranks] == ["em", "cuda", "sem"]  # sem is incomplete: ranked last despite 10
    assert ranks[0].worst.mean == 30.0 and ranks[0].defense == "mixup" and ranks[0].drop == pytest.approx(51.0)
    assert ranks[1].worst.mean == 50.0 and ranks[1].defense == "mixup"
    assert (ranks[2].covered, ranks[2].total, ranks[2].missing) == (1, 2, ("mixup",))

    # sem was run only without defense: it is left out of the poisons defenses are compared on
    d = {r.defense: r for r in defense_ranking(m)}
    assert [(r.defense, r.reference) for r in defense_ranking(m)] == [("none", True), ("mixup", False)]
    assert d["none"].cost == pytest.approx(0.0) and d["mixup"].cost == pytest.approx(-3.0)
    assert d["none"].worst.mean == 15.0 and d["none"].poison == "em"
    assert d["none"].mean == pytest.approx((22 + 15) / 2)
    assert d["mixup"].worst.mean == 30.0 and d["mixup"].poison == "em" and d["mixup"].mean == pytest.approx(40.0)
    assert (d["mixup"].covered, d["mixup"].total, d["mixup"].missing) == (2, 2, ())

    ratios, rows = partial_rows(group)
    assert ratios == [0.0, 0.5, 1.0]
    by = {r.setting: r for r in rows}
    assert by["mixed"].cells[0.5].mean == 60.0 and by["mixed"].cells[1.0].mean == pytest.approx(22.0)
    assert by["clean-only"].cells[0.5].mean == 70.0 and 1.0 not in by["clean-only"].cells
    assert by["mixed"].cells[0.0].mean == pytest.approx(81.0)


def test_markdown_tables_and_legends(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "site" / "leaderboard.md"
    write_leaderboard(results, out, tmp_path / "plots", samples=False)
    text = out.read_text()
    assert "| clean | 81.00 ± 1.41 (n=2) | 78.00 |" in text
    assert "| cuda | 22.00 ± 2.83 (n=2) | 50.00 |" in text
    assert "| sem | 10.00 | – |" in text
    assert "| 1 | em | 30.00 | mixup | 15.00 | 51.00 | 2/2 | – |" in text
    assert "| 3 | sem | 10.00 | none | 10.00 | 71.00 | 1/2 | mixup |" in text
    assert "| ref | none | 81.00 ± 1.41 (n=2) | +0.00 | 18.50 | 15.00 | em | 2/2 | – |" in text
    assert "| 1 | mixup | 78.00 | -3.00 | 40.00 | 30.00 | em | 2/2 | – |" in text
    assert "Comparable poisons (K = 2): cuda, em (left out: sem, run only without defense)" in text
    assert "Peak clean test accuracy (oracle upper bound)" in text
    assert "### Defense metrics" in text and "| `robust_test_acc` |" in text
    assert "| mixup | clean | 40.00 |" in text and "| mixup | cuda | 12.50 |" in text
    assert "| cuda | none | mixed | 81.00 ± 1.41 (n=2) | 60.00 | 22.00 ± 2.83 (n=2) |" in text
    assert "| cuda | none | clean-only | 81.00 ± 1.41 (n=2) | 70.00 | – |" in text
    assert "CIFAR-10 (JPEG copy)" in text and "not bit-exact" in text
    assert "lower = stronger poison" in text.lower()
    assert "newest record: 2026-01-11" in text
    # every table has a legend that states the protocol
    tables = re.findall(r"^\|(?::?---:?\|)+$", text, flags=re.M)
    assert text.count("Protocol: preset `smoke`") == len(tables) == 7
    # plots are linked relative to the output file
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links and all(lnk.startswith("../plots/") and (out.parent / lnk).is_file() for lnk in links)


def test_rankings_compare_defenses_on_the_same_poisons(tmp_path: Path) -> None:
    """Known answer for the case that put plain training first: a control poison (random-noise) run only
    without defense must not count against every defense; a defense run on one poison (at) ranks after
    those run on both (finetune, cutout) whatever its worst case; a defense run only on clean data
    (jpeg) compares on no poison and comes last; none is the unranked reference row."""
    acc = {("none", "none"): 80.0, ("none", "finetune"): 81.0, ("none", "at"): 60.0, ("none", "cutout"): 75.0,
           ("none", "jpeg"): 72.0,
           ("cuda", "none"): 20.0, ("cuda", "finetune"): 38.0, ("cuda", "at"): 42.0, ("cuda", "cutout"): 25.0,
           ("em", "none"): 30.0, ("em", "finetune"): 43.0, ("em", "cutout"): 28.0,
           ("random-noise", "none"): 79.0}
    folder = tmp_path / "runs"
    for (poison, defense), value in acc.items():
        write(folder, make_record(poison, defense, value))
    (group,) = group_runs(collect_runs(folder, lambda m: None))
    m = accuracy_matrix(group)

    defenses = defense_ranking(m)
    assert [d.defense for d in defenses] == ["none", "finetune", "cutout", "at", "jpeg"]
    assert [d.reference for d in defenses] == [True, False, False, False, False]
    d = {x.defense: x for x in defenses}
    assert (d["none"].covered, d["none"].total, d["none"].mean, d["none"].worst.mean) == (2, 2, 25.0, 20.0)
    assert (d["finetune"].covered, d["finetune"].worst.mean, d["finetune"].poison) == (2, 38.0, "cuda")
    assert (d["at"].covered, d["at"].total, d["at"].missing, d["at"].mean) == (1, 2, ("em",), 42.0)
    assert (d["jpeg"].covered, d["jpeg"].worst, d["jpeg"].mean) == (0, None, None)

    poisons = poison_ranking(m)  # compared on the 4 defenses run on a poison (not jpeg)
    assert [(p.poison, p.covered, p.total) for p in poisons] == [("cuda", 4, 4), ("em", 3, 4), ("random-noise", 1, 4)]
    assert (poisons[0].worst.mean, poisons[0].defense) == (42.0, "at")
    assert poisons[1].missing == ("at",) and poisons[2].missing == ("at", "cutout", "finetune")

    out = tmp_path / "lb.md"
    write_leaderboard(folder, out, tmp_path / "plots", samples=False)
    text = out.read_text()
    assert "| ref | none | 80.00 | +0.00 | 25.00 | 20.00 | cuda | 2/2 | – |" in text
    assert "| 1 | finetune | 81.00 | +1.00 | 40.50 | 38.00 | cuda | 2/2 | – |" in text
    assert "| 3 | at | 60.00 | -20.00 | 42.00 | 42.00 | cuda | 1/2 | em |" in text
    assert "| 4 | jpeg | 72.00 | -8.00 | – | – | – | 0/2 | cuda, em |" in text
    assert "Comparable poisons (K = 2): cuda, em (left out: random-noise, run only without defense)" in text
    assert "| 3 | random-noise | 79.00 | none | 79.00 | 1.00 | 1/4 | 3 (run: none) |" in text
    assert "left out, run on clean data only: jpeg" in text


def test_presets_never_share_a_table(tmp_path: Path) -> None:
    folder = tmp_path / "runs"
    for preset, acc in (("smoke", 40.0), ("cpu", 70.0)):
        write(folder, make_record("none", "none", acc, preset=preset))
        write(folder, make_record("cuda", "none", acc / 2, preset=preset))
    groups = group_runs(collect_runs(folder, lambda m: None))
    assert [g.preset for g in groups] == ["smoke", "cpu"]
    assert [accuracy_matrix(g).get("clean", "none").n for g in groups] == [1, 1]
    out = tmp_path / "lb.md"
    write_leaderboard(folder, out, tmp_path / "plots", samples=False)
    text = out.read_text()
    assert text.count("### Clean test accuracy, poison × defense") == 2
    assert "· preset smoke" in text and "· preset cpu" in text
    assert "| clean | 40.00 |" in text and "| clean | 70.00 |" in text


def test_protocol_overrides_split_groups(tmp_path: Path) -> None:
    folder = tmp_path / "runs"
    write(folder, make_record("none", "none", 40.0))
    rec = make_record("none", "none", 60.0)
    rec["config"]["protocol"]["epochs"] = 5
    rec["run_id"] = run_id(rec["config"])
    write(folder, rec)
    groups = group_runs(collect_runs(folder, lambda m: None))
    assert len(groups) == 2 and {g.variant for g in groups} == {"epochs=3", "epochs=5"}


def test_bad_records_are_skipped_with_one_warning_each(results: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    (results / "corrupt.json").write_text('{"schema_version": 1, "run_id": ')
    future = make_record("cuda", "cutmix", 99.0)
    future["schema_version"] = 99
    write(results, future, "future.json")
    write(results, make_record("cuda", "cutout", 99.0, status="failed"), "failed.json")
    odd = make_record("cuda", "cutmix", 99.0, seed=7)
    odd["config"]["poison"] = "cuda"  # passes validate_record, but is not an object
    write(results, odd, "odd.json")
    dup = make_record("none", "none", 80.0, seed=0, peak=85.0)
    write(results, dup, "a-copy.json")  # same config and seed as a record already there
    out = tmp_path / "lb.md"
    code, stdout, err = run_cli(["leaderboard", "--results", str(results), "--out", str(out), "--plots",
                                 str(tmp_path / "plots"), "--no-samples"], capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 5, err
    assert any("corrupt.json" in w and "unreadable JSON" in w for w in warnings)
    assert any("future.json" in w and "schema_version" in w for w in warnings)
    assert any("failed.json" in w and "failed run" in w for w in warnings)
    assert any("duplicate" in w and "a-copy.json" in w for w in warnings)
    assert any("odd.json" in w and "config.poison" in w for w in warnings)
    text = out.read_text()
    assert "99.00" not in text and "cutmix" not in text and "cutout" not in text
    assert "| clean | 81.00 ± 1.41 (n=2) | 78.00 |" in text  # the duplicate counted once
    assert "11 run records" in text and "wrote" in stdout


def test_no_usable_records_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write(tmp_path / "runs", make_record("cuda", "none", 10.0, status="failed"))
    code, _, err = run_cli(["leaderboard", "--results", str(tmp_path / "runs"), "--out", str(tmp_path / "x.md")],
                           capsys)
    assert code == 2 and "no usable finished run records" in err and not (tmp_path / "x.md").exists()
    code, _, err = run_cli(["leaderboard", "--results", str(tmp_path / "missing")], capsys)
    assert code == 2 and "does not exist" in err


def test_idempotent_html_latex(results: Path, tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    first = write_leaderboard(results, tmp_path / "a.md", plots, samples=False)
    png = {p: p.read_bytes() for p in first.plots}
    second = write_leaderboard(results, tmp_path / "b.md", plots, samples=False)
    assert (tmp_path / "a.md").read_bytes() == (tmp_path / "b.md").read_bytes()
    assert {p: p.read_bytes() for p in second.plots} == png

    html_path = write_leaderboard(results, tmp_path / "lb.html", plots, fmt="html", samples=False).out
    page = html_path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<table>") >= 7
    assert page.count('src="data:image/png;base64,') == 4 and 'src="plots' not in page
    assert "22.00 ± 2.83 (n=2)" in page
    again = write_leaderboard(results, tmp_path / "lb2.html", plots, fmt="html", samples=False).out
    assert again.read_bytes() == html_path.read_bytes()

    tex = write_leaderboard(results, tmp_path / "lb.tex", plots, fmt="latex", samples=False).out.read_text()
    assert tex.count("\\toprule") == tex.count("\\bottomrule") == tex.count("\\begin{tabular}") >= 7
    assert "22.00 $\\pm$ 2.83 (n=2)" in tex and "robust\\_test\\_acc" in tex
    assert "\\includegraphics[width=\\linewidth]{plots/" in tex
    # every table is shrunk to the text width when too wide, and the preamble it needs is stated
    assert tex.count("\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%") == 7
    assert tex.count("\\end{tabular}}") == 7 and "\\usepackage{graphicx}" in tex.split("\n\n")[0]
    assert "\\begin{tabular}{lp{4.5cm}rrrrrrl}" in tex  # the poison table's params wrap


def test_every_plot_is_written_including_samples(results: Path, tmp_path: Path, data_root: Path,
                                                 cache_dir: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "lb.md"
    code, _, err = run_cli(["leaderboard", "--results", str(results), "--out", str(out), "--plots",
                            str(tmp_path / "plots"), "--data-root", str(data_root), "--cache-dir", str(cache_dir)],
                           capsys)
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    stem = "cifar10-cifar10-jpeg-small-cnn-smoke"
    for kind in ("heatmap", "bars", "curves", "ratio", "samples-cuda"):
        assert f"{stem}-{kind}.png" in names
    assert all((tmp_path / "plots" / n).stat().st_size > 1000 for n in names if n.endswith(".png"))
    # each sample grid has a sidecar naming the poison it shows
    sidecar = json.loads((tmp_path / "plots" / f"{stem}-samples-cuda.png.json").read_text())
    assert sidecar["poison"] == "cuda" and sidecar["params"] == CUDA_PARAMS and sidecar["ratio"] == 1.0
    assert sidecar["key_fingerprint"] == key_fingerprint(0) and sidecar["revision"] == 1
    # cuda is re-created from its key (not cached here); em and sem need surrogate training or are unknown
    assert "samples-em" not in " ".join(names) and "needs surrogate training" in err
    text = out.read_text()
    assert f"![samples of cuda](plots/{stem}-samples-cuda.png)" in text
    # deterministic: a fresh regeneration gives the same PNG
    first = (tmp_path / "plots" / f"{stem}-samples-cuda.png").read_bytes()
    shutil.rmtree(tmp_path / "plots")
    run_cli(["leaderboard", "--results", str(results), "--out", str(out), "--plots", str(tmp_path / "plots"),
             "--data-root", str(data_root), "--cache-dir", str(cache_dir)], capsys)
    assert (tmp_path / "plots" / f"{stem}-samples-cuda.png").read_bytes() == first


def test_samples_from_cache_match_recreated(results: Path, data_root: Path, cache_dir: Path) -> None:
    """The cached artifact and the cheap re-creation on one image per class give the same images."""
    import torch

    from benchmark.data import load_dataset, stratified_subset
    from benchmark.poisoning import build_poison, get_poisoned
    from benchmark.report import SampleSource

    rec = make_record("cuda", "none", 20.0)
    warnings: list[str] = []
    recreated = SampleSource(data_root, cache_dir, warnings.append).images(rec, "cuda")
    assert recreated is not None and not warnings
    data = load_dataset("cifar10", data_root, cache_dir)
    train = data.train.subset(stratified_subset(data.train.y, 512, 0))
    dataset_id = {"name": data.name, "source": data.source, "train_size": 512, "train_subset": 512, "subset_seed": 0}
    _, manifest = get_poisoned(train, dataset_id, build_poison("cuda", CUDA_PARAMS, 0, 1.0, "smoke"), cache_dir,
                               torch.device("cpu"), "smoke")
    assert manifest["cached"] is False
    cached = SampleSource(data_root, cache_dir, warnings.append).images(rec, "cuda")
    assert cached is not None and not warnings
    assert cached[2] == recreated[2] == list(data.train.classes)
    assert torch.equal(cached[0], recreated[0]) and torch.equal(cached[1], recreated[1])
    assert not torch.equal(cached[0], cached[1])
    other = make_record("cuda", "none", 20.0)
    other["config"]["poison"]["key_fingerprint"] = key_fingerprint(12345)
    assert SampleSource(data_root, cache_dir, warnings.append).images(other, "cuda") is None
    assert "private" in warnings[-1]


def test_sample_grid_never_uses_an_artifact_of_another_poison_revision(data_root: Path, cache_dir: Path) -> None:
    """A cached artifact made by revision 1 of a poison must not illustrate records of revision 2."""
    import torch

    from benchmark.data import load_dataset, stratified_subset
    from benchmark.poisoning import build_poison, get_poisoned
    from benchmark.report import SampleSource

    data = load_dataset("cifar10", data_root, cache_dir)
    train = data.train.subset(stratified_subset(data.train.y, 512, 0))
    dataset_id = {"name": data.name, "source": data.source, "train_size": 512, "train_subset": 512, "subset_seed": 0}
    get_poisoned(train, dataset_id, build_poison("cuda", CUDA_PARAMS, 0, 1.0, "smoke"), cache_dir,
                 torch.device("cpu"), "smoke")
    poison = make_record("cuda", "none", 20.0)["config"]["poison"]
    source = SampleSource(data_root, cache_dir, lambda _: None)
    assert source._artifact(dataset_id, poison) is not None
    assert source._artifact(dataset_id, {**poison, "revision": 2}) is None


def test_missing_data_skips_sample_grid_with_warning(results: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    warnings: list[str] = []
    summary = write_leaderboard(results, tmp_path / "lb.md", tmp_path / "plots", data_root=tmp_path / "empty",
                                cache_dir=tmp_path / "cache", warn=warnings.append)
    assert not any("samples" in p.name for p in summary.plots)
    assert any("no sample grid" in w and "CIFAR-10" in w for w in warnings)


def test_existing_sample_grid_is_kept_when_it_cannot_be_remade(results: Path, tmp_path: Path, data_root: Path,
                                                              cache_dir: Path) -> None:
    """A fresh clone has the committed grids but not the data or the poison cache: the regenerated
    document must still link them (byte-for-byte reproducibility of leaderboard.md)."""
    plots = tmp_path / "plots"
    with_data = write_leaderboard(results, tmp_path / "a.md", plots, data_root=data_root, cache_dir=cache_dir)
    grid = next(p for p in with_data.plots if "samples-cuda" in p.name)
    (tmp_path / "empty").mkdir()
    warnings: list[str] = []
    without = write_leaderboard(results, tmp_path / "b.md", plots, data_root=tmp_path / "empty",
                                cache_dir=tmp_path / "cache", warn=warnings.append)
    assert grid in without.plots and any("kept the existing sample grid" in w for w in warnings)
    assert (tmp_path / "a.md").read_text() == (tmp_path / "b.md").read_text()


def test_stale_sample_grid_is_dropped_when_its_poison_changed(results: Path, tmp_path: Path, data_root: Path,
                                                             cache_dir: Path) -> None:
    """The grid's file name comes from the row label, which stays "cuda" when the records' CUDA params
    change: an existing grid that cannot be re-made is shown only if its sidecar names the records'
    poison; otherwise it is dropped from the page with a warning."""
    plots = tmp_path / "plots"
    write_leaderboard(results, tmp_path / "a.md", plots, data_root=data_root, cache_dir=cache_dir)
    grid = plots / "cifar10-cifar10-jpeg-small-cnn-smoke-samples-cuda.png"
    assert grid.is_file() and Path(f"{grid}.json").is_file()
    changed = tmp_path / "changed"
    for rec in standard_set():
        if rec["config"]["poison"]["name"] == "cuda":
            rec["config"]["poison"]["params"] = {**CUDA_PARAMS, "pb": 0.5}
            rec["run_id"] = run_id(rec["config"])
        write(changed, rec)
    (tmp_path / "empty").mkdir()

    def regenerate(out: str) -> tuple[str, list[str]]:
        warnings: list[str] = []
        write_leaderboard(changed, tmp_path / out, plots, data_root=tmp_path / "empty", cache_dir=tmp_path / "cache",
                          warn=warnings.append)
        return (tmp_path / out).read_text(), [w for w in warnings if "sample grid" in w and "samples-cuda" in w]

    text, warned = regenerate("b.md")
    assert "samples of cuda" not in text and grid.is_file()
    assert len(warned) == 1 and "not showing" in warned[0] and "params differ" in warned[0]
    # a grid without a sidecar (or with an unreadable one) cannot vouch for what it shows either
    Path(f"{grid}.json").unlink()
    text, warned = regenerate("c.md")
    assert "samples of cuda" not in text and "says which poison it shows" in warned[0]
    Path(f"{grid}.json").write_text("{not json")
    text, warned = regenerate("d.md")
    assert "samples of cuda" not in text and "unreadable" in warned[0]


def test_defense_labels_show_non_default_and_differing_params():
    """A single AT variant still says its budget (it differs from the default 8/255); variants that
    differ from each other are told apart by every param that varies; budgets print as k/255 and defaults stay hidden."""
    from benchmark.report import _defense_defaults, _labels

    def pid(name, **params):
        base = {"at": {"norm": "linf", "eps": 8 / 255, "steps": 10, "step_size": 0.0, "eval_steps": 20,
                       "eval_samples": 500}, "mixup": {"alpha": 1.0, "ways": 2}}[name]
        return name, json.dumps({**base, **params}, sort_keys=True)

    one = _labels([pid("at", eps=4 / 255), pid("mixup")], {}, _defense_defaults)
    assert one == {pid("at", eps=4 / 255): "at (eps=4/255)", pid("mixup"): "mixup"}
    three = _labels([pid("at"), pid("at", eps=4 / 255), pid("at", norm="l2", eps=0.5)], {}, _defense_defaults)
    assert sorted(three.values()) == ["at (eps=0.5, norm=l2)", "at (eps=4/255, norm=linf)",
                                      "at (eps=8/255, norm=linf)"]


def test_poison_revisions_are_separate_rows() -> None:
    """Records of two algorithm revisions of a poison (same name and params) are never averaged
    together as if they were seeds: each revision is its own labelled row."""
    old = make_record("rem", "none", 40.0, params={"rho_u": 8 / 255})
    new = make_record("rem", "none", 20.0, params={"rho_u": 8 / 255})
    new["config"]["poison"]["revision"] = 2
    new["run_id"] = run_id(new["config"])
    groups = group_runs([(Path("a.json"), old), (Path("b.json"), new)])
    m = accuracy_matrix(groups[0])
    assert sorted(m.rows) == ["rem", "rem (revision=2)"]
    assert m.get("rem", "none").mean == 40.0 and m.get("rem (revision=2)", "none").mean == 20.0


def test_highlights_state_what_the_matrix_says() -> None:
    """Known answers: em is neutralised by grayscale (within 5 points of grayscale's clean row), cuda by
    nothing (closest: mixup), random noise has no effect, dat fails on clean data and so neutralises
    nothing, jpeg costs 8 points on clean data."""
    from benchmark.report import CLEAN, Matrix, highlights, stat

    acc = {(CLEAN, "none"): 80.0, (CLEAN, "grayscale"): 76.0, (CLEAN, "mixup"): 79.0, (CLEAN, "dat"): 15.0,
           (CLEAN, "jpeg"): 72.0,
           ("cuda", "none"): 20.0, ("cuda", "grayscale"): 22.0, ("cuda", "mixup"): 30.0, ("cuda", "dat"): 14.0,
           ("em", "none"): 15.0, ("em", "grayscale"): 73.0, ("em", "mixup"): 25.0,
           ("random-noise", "none"): 79.5}
    m = Matrix([CLEAN, "cuda", "em", "random-noise"], ["none", "dat", "grayscale", "jpeg", "mixup"],
               {k: stat([v]) for k, v in acc.items()})
    text = "\n".join(highlights(m))
    assert "em 15.0 % (-65.0), cuda 20.0 % (-60.0), random-noise 79.5 % (-0.5)" in text
    assert "**No effect** even without defense (within 5 points of clean): random-noise." in text
    assert "em by grayscale (73.0 % vs 76.0 %)" in text and "cuda by" not in text
    assert "cuda (closest: mixup, 30.0 % vs 79.0 % on clean data; 2 of 3 usable defenses run)" in text
    assert "jpeg -8.0" in text and "grayscale -4.0" not in text
    assert "dat 15.0 %" in text.split("**Fails on clean data**")[1]


def test_seed_spread_note_is_measured_on_the_table():
    """The sentence under the highlights quotes the std of the table's multi-seed cells, not a fixed claim."""
    from benchmark.report import Matrix, Stat, seed_spread_note

    cells = {("clean", "none"): Stat(80.0, 0.5, 2), ("cuda", "none"): Stat(20.0, 3.0, 2),
             ("cuda", "mixup"): Stat(30.0, 1.0, 3), ("em", "none"): Stat(25.0, 0.0, 1)}
    note = seed_spread_note(Matrix(["clean", "cuda", "em"], ["none", "mixup"], cells))
    assert "3 cells" in note and "median 1.0" in note and "max 3.0" in note
    single = seed_spread_note(Matrix(["em"], ["none"], {("em", "none"): Stat(25.0, 0.0, 1)}))
    assert "not measured" in single


def test_integer_metrics_without_a_spread_print_without_plus_minus() -> None:
    from benchmark.report import Stat

    assert Stat(1000.0, 0.0, 2).fmt(0) == "1000 (n=2)"
    assert Stat(1000.0, 0.0, 1).fmt(0) == "1000"
    assert Stat(999.5, 0.7, 2).fmt(0) == "1000 ± 1 (n=2)"  # a real spread keeps its ±
    assert Stat(45.0, 0.0, 2).fmt(2) == "45.00 ± 0.00 (n=2)"  # a measured accuracy keeps its std


def test_poison_table_shows_only_non_default_params() -> None:
    """A full EM recipe is 15 params, all but the changed ones set by the preset: the table shows the
    changed ones, or says that the preset's defaults were used."""
    from benchmark.poisoning import build_poison
    from benchmark.report import _poison_params_text

    em = build_poison("em", {}, 0, 1.0, "cpu").record()
    assert len(em["params"]) > 10
    assert _poison_params_text(em, "cpu") == "defaults of preset cpu"
    assert _poison_params_text({**em, "params": {**em["params"], "eps": 16 / 255}}, "cpu") == "eps=16/255"
    assert _poison_params_text(build_poison("cuda", {}, 0, 1.0, "cpu").record(), "cpu") == "defaults"
    assert _poison_params_text({"name": "not-installed", "params": {"b": 2, "a": 1}}, "cpu") == "a=1, b=2"


def test_sample_diff_row_says_the_factor_it_draws() -> None:
    """The difference row is drawn as grey + amp x diff, and its label states amp (not 2 x amp)."""
    import numpy as np

    from benchmark.report import diff_image, diff_label

    clean = np.full((1, 3, 2, 2), 0.5)
    poisoned = clean.copy()
    poisoned[0, 0, 0, 0] += 8 / 255
    poisoned[0, 1, 1, 1] -= 4 / 255
    shown, amp, peak = diff_image(clean, poisoned)
    assert peak == pytest.approx(8 / 255) and amp == pytest.approx(0.5 * 255 / 8)
    assert shown[0, 0, 0, 0] == pytest.approx(1.0) and shown[0, 1, 1, 1] == pytest.approx(0.25)
    assert shown[0, 2, 0, 0] == pytest.approx(0.5)  # unchanged pixel: grey
    assert np.allclose(shown - 0.5, amp * (poisoned - clean))
    assert diff_label(amp) == "diff ×15.9"


def test_bar_styles_tell_17_or_more_defenses_apart() -> None:
    from benchmark.report import bar_styles

    for n in (3, 17, 30):
        styles = bar_styles([f"d{i}" for i in range(n)])
        keys = {(tuple(round(v, 4) for v in color), hatch) for color, hatch in styles.values()}
        assert len(keys) == n
    seventeen = bar_styles([f"d{i}" for i in range(17)])
    assert len({tuple(c) for c, _ in seventeen.values()}) == 17  # 17 distinct colours, not 17 husl shades
    assert bar_styles(["none", "mixup"])["none"] == bar_styles(["none", "mixup", "at"])["none"]  # fixed slot
