"""The ``bench`` command line: list, run, poison (and more commands registered by other modules).

Bad input never shows a traceback: it prints one line on stderr and exits with code 2.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from benchmark import paths
from benchmark.audit.command import audit_cmd
from benchmark.cli_options import (
    check_device,
    check_folder,
    data_options,
    folder_option,
    out_option,
    poison_options,
)
from benchmark.device import default_preset, resolve_device
from benchmark.errors import BenchError
from benchmark.gpucheck import gpu_check_cmd
from benchmark.models import check_model
from benchmark.params import parse_kv
from benchmark.perf import measure_rem_sem, measure_train, perf_table, train_perf_table
from benchmark.perf_defenses import (
    SKIPPED,
    check_names,
    default_defenses,
    defense_cost_table,
    measure_defenses,
)
from benchmark.poisoning import check_export_path, export_artifact
from benchmark.pretrain import pretrain
from benchmark.protocol import PRESETS
from benchmark.registry import MODELS
from benchmark.report import claims_report, write_leaderboard, write_results
from benchmark.runner import RunSpec, prepare_run
from benchmark.sweep import estimate, plan_sweep, run_sweep, sweep_from_options
from benchmark.ui import (
    console,
    held_warnings,
    note,
    poison_progress,
    run_with_display,
    show_page_status,
    show_poison_export,
    show_pretrain_epoch,
    show_pretrained,
    summary_table,
    warner,
)
from benchmark.ui.sweep import SweepDisplay, show_dry_run, show_summary
from benchmark.ui.tables import LIST_SECTIONS, show_claims, show_list

# ------------------------------------------------------------------------------------------ group

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="unlearnable-bench")
def cli() -> None:
    """unlearnable-bench: does an unlearnable-data poison survive a defense?

    Example: bench run --poison cuda --defense dat --data-root ../shared/data
    """


# ------------------------------------------------------------------------------------------- list

@cli.command("list")
@click.argument("what", required=False, type=click.Choice(list(LIST_SECTIONS)))
@click.argument("name", required=False)
def list_cmd(what: str | None, name: str | None) -> None:
    """List poisons, defenses, models, datasets and presets with their parameters.

    With a NAME (`bench list poisons cuda`, `bench list defenses at`): every parameter of that poison
    or defense with its type, default, valid range, meaning and the values each generation preset uses."""
    show_list(console, what, name)


# -------------------------------------------------------------------------------------------- run

PROTOCOL_FLAGS = ("epochs", "batch_size", "lr", "model", "train_subset", "test_subset", "weight_decay",
                  "schedule", "grad_clip")


@cli.command("run")
@poison_options
@click.option("--defense", default="none", show_default=True, help="defense name, or a composition such as at+mixup")
@click.option("--defense-param", "defense_params", multiple=True, metavar="NAME=VALUE", help="defense parameter (name or component.name), repeatable")
@click.option("--preset", help="protocol preset: smoke, cpu (default without GPU), paper (default with GPU)")
@click.option("--model", help="override the preset's model")
@click.option("--epochs", type=int, help="override the preset's epochs")
@click.option("--batch-size", type=int, help="override the preset's batch size")
@click.option("--lr", type=float, help="override the preset's learning rate")
@click.option("--weight-decay", type=float, help="override the preset's weight decay")
@click.option("--schedule", help="override the schedule: onecycle, step, cosine, constant")
@click.option("--grad-clip", type=float, help="override the gradient-norm clip (0 = off)")
@click.option("--train-subset", type=int, help="train on a fixed subset of this many images (0 = all)")
@click.option("--test-subset", type=int, help="evaluate on a fixed subset of this many test images (0 = all)")
@click.option("--protocol-param", "protocol_params", multiple=True, metavar="NAME=VALUE", help="any other protocol field")
@click.option("--seed", type=int, default=0, show_default=True,
              help="run seed (model init, data order, augmentation; and the poison key unless --key is given)")
@click.option("--clean-only", is_flag=True, help="partial poisoning baseline: train only on the unpoisoned part")
@click.option("--match-epochs", is_flag=True, help="with --clean-only: train the preset's epochs on the smaller set "
              "(default: as many optimizer steps as the full run, so the baseline is not under-trained)")
@click.option("--baseline/--no-baseline", default=True, show_default=True, help="also run the matching clean (--poison none) run if missing")
@folder_option("--results", envvar="BENCH_RESULTS", help="folder for run records (default results/runs)")
@click.option("--force", is_flag=True, help="run again even if a finished record exists")
@data_options
def run_cmd(**kw: Any) -> None:
    """Train a victim on (poisoned) data under a defense and record clean test accuracy."""
    overrides: dict[str, Any] = {k: kw[k] for k in PROTOCOL_FLAGS if kw.get(k) is not None}
    overrides.update(parse_kv(kw["protocol_params"], "--protocol-param"))
    spec = RunSpec(
        dataset=kw["dataset"], poison=kw["poison"], poison_params=parse_kv(kw["poison_params"], "--poison-param"),
        key=kw["key"], ratio=kw["ratio"], clean_only=kw["clean_only"], defense=kw["defense"],
        defense_params=parse_kv(kw["defense_params"], "--defense-param"), preset=kw["preset"],
        overrides=overrides, seed=kw["seed"], data_root=kw["data_root"], cache_dir=kw["cache_dir"],
        results=kw["results"], download=kw["download"], device=kw["device"], force=kw["force"],
        match_steps=not kw["match_epochs"],
    )
    if kw["match_epochs"] and not kw["clean_only"]:
        raise BenchError("--match-epochs goes with --clean-only (it sets how long the clean-only baseline trains)")
    main_rec, base_rec = run_with_display(spec, baseline=kw["baseline"], console=console)
    console.print(summary_table(main_rec, base_rec))
    console.print(f"record: {main_rec.get('_path', main_rec['run_id'])}")
    if main_rec.get("_path") and main_rec.get("status") == "finished":
        base_path = base_rec.get("_path") if base_rec and base_rec is not main_rec else None
        show_page_status(console, paths.results_dir(kw["results"]), main_rec["_path"], base_path)


# ----------------------------------------------------------------------------------------- poison

@cli.command("poison")
@poison_options
@click.option("--preset", default=None, help="generation preset for poisons that train a surrogate: smoke, cpu, paper")
@click.option("--train-subset", type=int, default=0, show_default=True,
              help="poison only a fixed stratified subset of this many training images, as a protocol preset does "
                   "(20000 = the cpu preset's victim subset, which `bench run` then reuses from the cache); 0 = the "
                   "whole training set")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="output .npz (a .json sidecar is written beside it)")
@data_options
def poison_cmd(**kw: Any) -> None:
    """Generate (or reuse from cache) a poisoned training set and export it as npz + JSON sidecar."""
    out = check_export_path(kw["out"])
    # the run a preset would train on these images, so the subset and the cached artifact are the run's
    prep = prepare_run(RunSpec(
        dataset=kw["dataset"], poison=kw["poison"], poison_params=parse_kv(kw["poison_params"], "--poison-param"),
        key=kw["key"], ratio=kw["ratio"], preset=kw["preset"], overrides={"train_subset": kw["train_subset"]},
        data_root=kw["data_root"], cache_dir=kw["cache_dir"], download=kw["download"], device=kw["device"]))
    with poison_progress(console, prep.poison.name) as progress:
        _poisoned, manifest = prep.poisoned_set(progress=progress)
    sidecar = export_artifact(Path(manifest["artifact"]), manifest, out)
    show_poison_export(console, prep, manifest, out, sidecar)


# ------------------------------------------------------------------------------------------- perf

@cli.group("perf", invoke_without_command=True)
@click.option("--model", default="small-cnn", show_default=True, help="surrogate architecture (bench list models)")
@click.option("--batch-size", type=int, default=None, help="generation batch (default: 128 on a GPU, 32 on CPU)")
@click.option("--steps", type=int, default=2, show_default=True, help="timed steps per poison (after one warm-up step)")
@click.option("--preset", type=click.Choice(["paper", "cpu", "smoke"]), default="paper", show_default=True,
              help="generation hyperparameters (PGD steps, EOT samples, ...) to time")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
@click.pass_context
def perf_cmd(ctx: click.Context, model: str, batch_size: int | None, steps: int, preset: str, device: str) -> None:
    """Time one REM generation step against one SEM step (same model, batch, budget); 'bench perf train'
    times the trainer."""
    if ctx.invoked_subcommand is not None:
        return
    dev = resolve_device(device)
    MODELS.canonical(model)
    batch = batch_size if batch_size is not None else (128 if dev.type == "cuda" else 32)
    if batch < 2 or steps < 1:
        raise BenchError(f"--batch-size must be >= 2 and --steps >= 1, got {batch} and {steps}")
    costs = measure_rem_sem(model, batch, steps, dev, preset)
    console.print(perf_table(costs, f"generation step cost: {model}, batch {batch}, preset {preset}, {dev}"))


@perf_cmd.command("train")
@click.option("--model", default=None, help="architecture (default: the preset's, small-cnn on CPU, resnet18 on a GPU)")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
@click.option("--batch-size", type=int, default=None, help="batch (default: the preset's, 256 on CPU, 512 on a GPU)")
@click.option("--steps", type=int, default=5, show_default=True, help="timed steps per pipeline")
@click.option("--warmup", type=int, default=2, show_default=True, help="untimed warm-up steps per pipeline")
@click.option("--rounds", type=int, default=3, show_default=True, help="timed rounds; each pipeline reports its best")
@click.option("--workers", type=int, default=None, help="DataLoader workers (default: min(4, CPU cores))")
@click.option("--threads", type=int, default=None, help="intra-op CPU threads (default: torch's, one per core)")
def perf_train_cmd(model: str | None, device: str, batch_size: int | None, steps: int, warmup: int,
                   rounds: int, workers: int | None, threads: int | None) -> None:
    """Trainer img/s against bare forward/backward and a DataLoader + PIL pipeline (same model, batch, SGD)."""
    dev = resolve_device(device)
    preset = default_preset(dev)
    model = model or PRESETS[preset]["model"]
    check_model(model)
    if ((batch_size is not None and batch_size < 2) or min(steps, rounds) < 1 or warmup < 0 or (workers or 0) < 0
            or (threads is not None and threads < 1)):
        raise BenchError(f"--batch-size must be >= 2, --steps, --rounds and --threads >= 1, --warmup and --workers "
                         f">= 0; got {batch_size}, {steps}, {rounds}, {threads}, {warmup}, {workers}")
    console.print(train_perf_table(measure_train(model, dev, batch_size, steps, warmup, workers, preset, threads,
                                                 rounds)))


@perf_cmd.command("defenses")
@click.option("--defenses", "names", default=None, help="comma-separated defenses (default: every registered one "
              "but finetune); plain training is always measured as the reference")
@click.option("--model", default="small-cnn", show_default=True, help="victim architecture")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
@click.option("--batch-size", type=int, default=None, help="batch (default: the preset's)")
@click.option("--steps", type=int, default=2, show_default=True, help="timed steps per defense and epoch in a round")
@click.option("--rounds", type=int, default=3, show_default=True, help="timed rounds; each defense reports its best")
@click.option("--threads", type=int, default=1, show_default=True, help="intra-op CPU threads (1: a --jobs 2 sweep cell)")
def perf_defenses_cmd(names: str | None, model: str, device: str, batch_size: int | None, steps: int, rounds: int,
                      threads: int) -> None:
    """Each defense's training-step, prepare and predict cost relative to plain training, side by side."""
    dev = resolve_device(device)
    check_model(model)
    chosen = [n.strip() for n in names.split(",")] if names else default_defenses()
    if not all(chosen) or (batch_size is not None and batch_size < 2) or min(steps, rounds, threads) < 1:
        raise BenchError("--defenses must name defenses (no empty entries), --batch-size >= 2, --steps, --rounds "
                         f"and --threads >= 1; got {names!r}, {batch_size}, {steps}, {rounds}, {threads}")
    check_names(chosen)
    preset = default_preset(dev)
    costs = measure_defenses(chosen, model, dev, preset, batch_size, steps, rounds, threads)
    caption = (f"Best of {rounds} rounds of {steps} steps per defense and epoch, defenses taking turns; CPU time of "
               f"this process ({threads} thread(s)); random images. prepare: one-off data-level cost; predict: one "
               f"test image against one plain forward (defenses that own prediction). Not timed: "
               + "; ".join(f"{k} ({v})" for k, v in SKIPPED.items()) + ".")
    console.print(defense_cost_table(costs, f"defense cost: {model}, preset {preset} protocol, {dev}", caption))


# --------------------------------------------------------------------------------------- pretrain

@cli.command("pretrain")
@click.option("--dataset", default="cifar10", show_default=True, help="clean data to pretrain on (cifar10, cifar100, ...)")
@click.option("--model", default="small-cnn", show_default=True, help="architecture; the victim must use the same (--model)")
@out_option(required=True, help="output file (.safetensors), e.g. backbones/small-cnn-cifar10-holdout.safetensors")
@click.option("--split", type=click.Choice(["holdout", "train", "all"]), default="holdout", show_default=True,
              help="holdout: training images outside the preset's victim subset; train: that subset, clean; all")
@click.option("--preset", help="protocol preset for the training recipe (default: cpu without GPU, paper with)")
@click.option("--epochs", type=int, help="override the preset's epochs")
@click.option("--protocol-param", "protocol_params", multiple=True, metavar="NAME=VALUE", help="any other protocol field")
@click.option("--max-images", type=int, default=0, show_default=True, help="use a fixed stratified subset of this many of the split's images (0 = all)")
@click.option("--seed", type=int, default=0, show_default=True, help="model init and data order")
@data_options
def pretrain_cmd(**kw: Any) -> None:
    """Train a clean backbone for `--defense finetune` (writes safetensors + provenance metadata)."""
    overrides: dict[str, Any] = parse_kv(kw["protocol_params"], "--protocol-param")
    if kw["epochs"] is not None:
        overrides["epochs"] = kw["epochs"]
    res = pretrain(kw["dataset"], kw["model"], kw["out"], kw["preset"], kw["split"], kw["seed"], overrides,
                   kw["data_root"], kw["cache_dir"], kw["download"], kw["device"], on_epoch=show_pretrain_epoch(console),
                   max_images=kw["max_images"])
    show_pretrained(console, res.metadata, res.path)


# ------------------------------------------------------------------------------------ leaderboard

@cli.command("leaderboard")
@click.option("--results", default="results/runs", envvar="BENCH_RESULTS", show_default=True, help="folder of run records; env BENCH_RESULTS")
@out_option(default=None, help="output file (default leaderboard.md, .html or .tex by --format)")
@folder_option("--plots", default="results/plots", show_default=True, help="folder for the PNG plots")
@click.option("--format", "fmt", type=click.Choice(["md", "html", "latex"]), default="md", show_default=True,
              help="md, html (one self-contained page) or latex (booktabs)")
@click.option("--samples/--no-samples", default=True, show_default=True,
              help="sample grids per poison (need the dataset and the poison cache; cheap poisons are re-created; "
                   "an existing grid is kept only if its .png.json sidecar names the same poison)")
@click.option("--data-root", envvar="BENCH_DATA_ROOT", help="datasets for the sample grids; env BENCH_DATA_ROOT")
@click.option("--cache-dir", envvar="BENCH_CACHE_DIR", help="cached poisons and decoded datasets; env BENCH_CACHE_DIR")
@out_option("--json", "json_out", default=None,
              help="the tables as data (default: results/leaderboard.json in the folder of --out)")
def leaderboard_cmd(results: str, out: str | None, plots: str, fmt: str, samples: bool, data_root: str | None,
                    cache_dir: str | None, json_out: str | None) -> None:
    """Regenerate the leaderboard (tables, plots, leaderboard.json) from the run records alone."""
    with held_warnings("bench leaderboard") as warn:
        summary = write_leaderboard(results, out, plots, fmt, paths.data_root(data_root), paths.cache_dir(cache_dir),
                                    samples, warn, json_out)
    click.echo(f"wrote {summary.out} and {summary.json} ({summary.records} records, {summary.groups} table groups) "
               f"and {len(summary.plots)} plots in {plots}")


@cli.command("results")
@click.option("--results", default="results/runs", envvar="BENCH_RESULTS", show_default=True, help="folder of run records; env BENCH_RESULTS")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "json"]), default="csv", show_default=True,
              help="csv, parquet (needs pyarrow) or json (a list of row objects)")
@out_option(default=None, help="output file (default: csv/json to stdout; parquet needs --out)")
def results_cmd(results: str, fmt: str, out: str | None) -> None:
    """The records as one tidy table, one row per finished run (what the leaderboard aggregates); trials of
    targeted poisoning after the availability runs (column threat_model, outcome in target_*)."""
    with held_warnings("bench results") as warn:
        text, rows = write_results(results, fmt, out, warn)
    if text is not None:
        click.echo(text, nl=False)
    else:
        print(f"wrote {out} ({rows} runs)", file=sys.stderr)


@cli.command("claims")
@click.option("--results", default="results/runs", envvar="BENCH_RESULTS", show_default=True, help="folder of run records; env BENCH_RESULTS")
@click.option("--claims", "claims_file", default=None, help="claims file (default: the curated benchmark/report/claims.toml)")
def claims_cmd(results: str, claims_file: str | None) -> None:
    """Check the papers' claims on the records; exit code 1 if a claim that was run fails."""
    with held_warnings("bench claims") as warn:
        groups, code = claims_report(results, warn, claims_file)
    show_claims(console, groups)
    sys.exit(code)


# ------------------------------------------------------------------------------------------ sweep

@cli.command("sweep")
@click.option("--config", type=click.Path(dir_okay=False), help="TOML sweep file (sweeps/*.toml); flags given here override it")
@click.option("--poisons", help="comma-separated poisons, e.g. cuda,em,rem,sem (the clean 'none' row is always added)")
@click.option("--defenses", help="comma-separated defenses or compositions, e.g. none,mixup,at+mixup  [default: none]")
@click.option("--seeds", help="comma-separated run seeds; each also draws its poison key unless --key is given  [default: 0]")
@click.option("--models", help="comma-separated victim models (default: the preset's)")
@click.option("--ratios", help="comma-separated poison ratios; below 1 also runs the clean-only baseline  [default: 1.0]")
@click.option("--dataset", help="cifar10, cifar100, svhn, fashion-mnist or imagefolder:PATH  [default: cifar10]")
@click.option("--preset", help="protocol preset: smoke, cpu (default without GPU), paper (default with GPU)")
@click.option("--key", type=int, envvar="BENCH_POISON_KEY", help="private poison key for every seed; env BENCH_POISON_KEY  [default: each seed draws its own key, seed 0 key 0]")
@click.option("--poison-param", "poison_params", multiple=True, metavar="[POISON.]NAME=VALUE", help="poison parameter for every poison that declares it, or POISON.NAME for one; repeatable")
@click.option("--defense-param", "defense_params", multiple=True, metavar="[DEFENSE.]NAME=VALUE", help="defense parameter, as --poison-param; repeatable")
@click.option("--protocol-param", "protocol_params", multiple=True, metavar="NAME=VALUE", help="protocol override for every cell (epochs=2, train_subset=1000, ...)")
@click.option("--clean-row/--no-clean-row", default=None, help="also run every defense on clean data (--poison none)  [default: on]")
@click.option("--clean-only-baseline/--no-clean-only-baseline", default=None, help="with ratios below 1, also train on the unpoisoned part only  [default: on]")
@click.option("--executor", type=click.Choice(["local", "ray"]), help="local worker processes or a Ray cluster  [default: local]")
@click.option("--jobs", type=int, help="local executor: parallel worker processes (cores are split between them; ignored with --executor ray)  [default: 1]")
@click.option("--address", help="Ray cluster: 'auto', HOST:6379 or ray://HOST:10001 (default: start a local instance)")
@click.option("--dry-run", is_flag=True, help="print the grid and an estimated cost, run nothing")
@click.option("--force", is_flag=True, help="run cells again even if their finished records exist")
@click.option("--rerun-stale", is_flag=True, help="run finished cells again whose records trained on another poisoned "
              "set than the cached poison (same poison, params and key; e.g. generated on another CPU)")
@folder_option("--results", envvar="BENCH_RESULTS", help="folder for run records (default results/runs)")
@data_options
def sweep_cmd(**kw: Any) -> None:
    """Run a grid of poisons x defenses x seeds (each poison generated once; finished cells skipped)."""
    ctx = click.get_current_context()
    explicit = {name for name in kw if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    sweep, ex = sweep_from_options(kw, explicit)
    for flag, folder in (("--results", sweep.results), ("--cache-dir", sweep.cache_dir)):
        if folder:  # a value from the --config file (flags were checked while parsing)
            check_folder(folder, flag)
    check_device(sweep.device)
    if ex.executor == "ray" and ex.jobs_given:
        # Ray places one cell per GPU (or per CPU without GPUs) on its own; --jobs only sizes the local pool
        note("bench sweep", f"--jobs {ex.jobs} is ignored with --executor ray (Ray runs as many cells at once as "
             "the cluster has GPUs, or CPUs without GPUs)")
    warn = warner("bench sweep")
    if kw["dry_run"]:
        plan = plan_sweep(sweep, warn=warn)
        show_dry_run(console, plan, estimate(plan, ex.jobs if ex.executor == "local" else 1))
        return
    with SweepDisplay(console) as display:
        summary = run_sweep(sweep, ex.executor, ex.jobs, ex.address, display.on_event, warn=warn)
    show_summary(console, summary)
    if summary.failed:
        sys.exit(1)


cli.add_command(gpu_check_cmd)  # bench gpu-check: benchmark/gpucheck.py
cli.add_command(audit_cmd)  # bench audit: benchmark/audit/


# ------------------------------------------------------------------------------------------ entry

INTERRUPTED = "bench: interrupted; run the same command again to resume from the last finished epoch"


def _interrupt_on_sigterm() -> None:
    """``kill`` (SIGTERM) stops a command like Ctrl-C: the run keeps its last epoch checkpoint and a
    sweep terminates its worker processes instead of leaving them running."""
    if threading.current_thread() is threading.main_thread():
        def _raise(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _raise)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors with exit code 2 for bad input."""
    _interrupt_on_sigterm()
    try:
        cli.main(args=argv, prog_name="bench", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort as exc:  # click turns Ctrl-C (and our SIGTERM) into Abort
        if isinstance(exc.__cause__, KeyboardInterrupt):
            print(INTERRUPTED, file=sys.stderr)
        else:
            print("bench: aborted", file=sys.stderr)
        sys.exit(130)
    except click.exceptions.UsageError as exc:
        msg = exc.format_message().replace("\n", " ")
        where = exc.ctx.command_path if exc.ctx else "bench"
        print(f"{where}: error: {msg} (see --help)", file=sys.stderr)
        sys.exit(2)
    except click.exceptions.ClickException as exc:
        print(f"bench: error: {exc.format_message()}", file=sys.stderr)
        sys.exit(2)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("BENCH_DEBUG"):
            raise
        print(f"bench: run failed: {type(exc).__name__}: {exc} (set BENCH_DEBUG=1 for the traceback; "
              "a failed run's record holds it too)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
