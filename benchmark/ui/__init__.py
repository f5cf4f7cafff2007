"""What a user sees: rich progress and summary tables of runs (here), sweeps (ui.sweep) and
``bench list`` / ``bench claims`` (ui.tables). Everything the commands print goes through this package."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from benchmark.errors import BenchError
from benchmark.runner import PreparedRun, RunSpec, execute, existing_record, prepare_run

console = Console(highlight=False)


def progress_bar(console: Console, label: str = "[cyan]{task.description}", info: bool = True,
                 elapsed: bool = True) -> Progress:
    """The progress bar of every command: live on a terminal, nothing (lines instead) in a log."""
    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn("{task.fields[info]}")] if info else []
    columns += [TimeElapsedColumn(), TextColumn("ETA")] if elapsed else []
    return Progress(*columns, TimeRemainingColumn(), console=console, disable=not console.is_terminal,
                    transient=False)


def warner(command: str) -> Callable[[str], None]:
    """``command: warning: ...`` on stderr, one line per problem (a skipped record, a rerun cell)."""
    return lambda msg: print(f"{command}: warning: {msg}", file=sys.stderr)


@contextlib.contextmanager
def held_warnings(command: str) -> Iterator[Callable[[str], None]]:
    """Warnings printed when the command has succeeded, or folded into its one-line error when it
    fails (a folder whose only record is unreadable: the error names that record)."""
    held: list[str] = []
    try:
        yield held.append
    except BenchError as exc:
        if not held:
            raise
        more = f"; {len(held) - 1} more" if len(held) > 1 else ""
        raise BenchError(f"{exc} ({held[0]}{more})") from None
    for msg in held:
        warner(command)(msg)


def note(command: str, text: str) -> None:
    print(f"{command}: note: {text}", file=sys.stderr)


def _describe(prep: PreparedRun) -> str:
    poison = prep.config["poison"]
    params = ",".join(f"{k}={v}" for k, v in poison["params"].items())
    pdesc = poison["name"] + (f"({params})" if params else "")
    if poison["ratio"] != 1.0:
        pdesc += f" ratio={poison['ratio']:g}" + (" clean-only" if poison.get("clean_only") else "")
    if poison.get("key_fingerprint"):
        pdesc += f" key#{poison['key_fingerprint'][:8]}"
    return (f"{prep.data.name} ({prep.data.source}, {len(prep.train)} train / {len(prep.test)} test) · "
            f"preset {prep.protocol.preset} · {prep.protocol.model} · {prep.protocol.epochs} epochs · "
            f"poison {pdesc} · defense {prep.config['defense']['name']} · seed {prep.spec.seed} · {prep.device}")


def _warn(console: Console) -> Callable[[str], None]:
    return lambda msg: console.print(f"[yellow]warning:[/] {msg}", highlight=False)


def _run_one(prep: PreparedRun, console: Console, label: str) -> dict[str, Any]:
    existing = existing_record(prep, _warn(console))
    if existing and not prep.spec.force:
        console.print(f"[dim]{label}: finished record exists ({prep.record_path}); --force to run again[/]")
        return dict(existing, _path=str(prep.record_path))
    console.print(f"[bold]{label}[/]: {_describe(prep)}")
    live = console.is_terminal
    progress = progress_bar(console)
    epochs = prep.protocol.epochs
    state: dict[str, Any] = {}

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "poison_progress":
            if "poison" not in state:
                state["poison"] = progress.add_task(f"poison {prep.poison.name}", total=data["total"], info="")
            info = " ".join(f"{k} {v}" for k, v in data.items() if k not in ("step", "total"))
            progress.update(state["poison"], completed=data["step"], info=info)
            if not live and data["step"] % max(1, data["total"] // 10) == 0:
                console.print(f"  poison {prep.poison.name} step {data['step']}/{data['total']} {info}")
        elif kind == "poison_done" and prep.poison.name != "none":
            how = "cached" if data.get("cached") else f"generated in {data['generation_seconds']:.2f} s"
            console.print(f"  poison {prep.poison.name}: {how}")
        elif kind == "note":
            console.print(f"  {data['text']}")
        elif kind == "train_start":
            state["epochs"] = data.get("epochs", epochs)
            state["train"] = progress.add_task("train", total=state["epochs"], info="")
            if data.get("resume"):
                console.print("  resuming from checkpoint")
        elif kind == "epoch":
            info = f"loss {data['train_loss']:.3f} train {data['train_acc']:.1f}% test {data['test_acc']:.2f}%"
            if "val_acc" in data:
                info += f" val {data['val_acc']:.2f}%"
            progress.update(state["train"], completed=data["epoch"], info=info)
            if not live:
                console.print(f"  epoch {data['epoch']:>3}/{state['epochs']} {info} ({data['seconds']:.1f} s)")

    with progress:
        rec = execute(prep, on_event)
    return dict(rec, _path=str(prep.record_path))


def run_with_display(spec: RunSpec, baseline: bool, console: Console) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Validate both runs first (bad input fails before any work), then run baseline and main run."""
    prep = prepare_run(spec)
    base_prep = None
    if prep.poison.name != "none":
        base_spec = replace(spec, poison="none", poison_params={}, ratio=1.0, clean_only=False, force=False)
        base_prep = prepare_run(base_spec)
    base_rec = None
    if base_prep is not None:
        base_rec = existing_record(base_prep)  # _run_one warns if it is unreadable
        if base_rec is not None:
            base_rec = dict(base_rec, _path=str(base_prep.record_path))
        elif baseline:
            base_rec = _run_one(base_prep, console, "clean baseline")
    rec = _run_one(prep, console, "run")
    if prep.poison.name == "none":
        base_rec = rec
    return rec, base_rec


def _fmt(v: Any, unit: str = "", digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}{unit}"
    return f"{v}{unit}"


def summary_table(rec: dict[str, Any], base: dict[str, Any] | None) -> Table:
    cfg, m, t = rec["config"], rec["metrics"], rec["timings"]
    table = Table(title=f"{cfg['poison']['name']} vs {cfg['defense']['name']} — {cfg['dataset']} "
                        f"({cfg['dataset_source']}), {cfg['model']}, preset {cfg['preset']}, seed {cfg['seed']}",
                  title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    base_acc = base["metrics"]["test_acc"] if base else None
    defense = cfg["defense"]["name"]
    base_label = "clean baseline test acc" + ("" if defense == "none" else f" ({defense} on clean data)")
    table.add_row(base_label, _fmt(base_acc, " %") + ("" if base else "  (not run: --no-baseline)"))
    selected = m.get("selected_epoch")
    label = f"test acc (epoch {selected}, chosen on clean validation)" if selected else "test acc (final)"
    table.add_row(label, _fmt(m["test_acc"], " %") +
                  ("  [red](training diverged: the loss became NaN/inf)[/red]" if m.get("diverged") else ""))
    if base_acc is not None and cfg["poison"]["name"] != "none":
        table.add_row("drop vs clean", _fmt(base_acc - m["test_acc"], " points"))
    target = m.get("target")
    if target:  # a targeted trial: its outcome is the headline; the accuracies above say what it cost
        outcome = "[bold red]success[/]" if target["success"] else "[bold green]failure[/]"
        table.add_row("targeted trial", f"{outcome}: test image #{target['test_index']} (class {target['true_class']}) "
                      f"predicted as class {target['predicted_class']}; adversarial class {target['adversarial_class']} "
                      f"(p = {_fmt(target['adversarial_prob'], '', 3)}, true class p = {_fmt(target['true_prob'], '', 3)})")
    table.add_row("peak test acc (oracle)", f"{_fmt(m['peak_test_acc'], ' %')} at epoch {m['peak_epoch']}")
    if selected:
        stop = f", stopped after epoch {len(m['per_epoch'])}" if m.get("stopped_early") else ""
        table.add_row("validation acc (selected epoch)", f"{_fmt(m.get('selected_val_acc'), ' %')} on "
                      f"{rec.get('training', {}).get('validation_images')} held-out clean images{stop}")
    table.add_row("train acc (on its training set)", _fmt(m["train_acc"], " %"))
    for k, v in (m.get("defense") or {}).items():
        table.add_row(f"defense: {k}", _fmt(v, "", 3) if not isinstance(v, (dict, list)) else str(v))
    b = (rec.get("poison") or {}).get("budget") or {}
    if cfg["poison"]["name"] != "none" and b:
        held = rec.get("training", {}).get("validation_images")
        table.add_row("poisoned images", f"{b.get('num_poisoned')} of {cfg['train_size']}"
                      + (f"; {held} of them held out as their clean originals for validation, not trained on"
                         if held else ""))
        table.add_row("budget", f"not measured: {b['not_measured']}" if b.get("not_measured") else
                      f"L-inf {b.get('linf_255')}/255 · mean L2 {_fmt(b.get('l2_mean'), '', 3)} · "
                      f"PSNR {_fmt(b.get('psnr'), ' dB')} · SSIM {_fmt(b.get('ssim'), '', 4)}")
        if rec["poison"].get("digest"):
            table.add_row("poisoned set digest", str(rec["poison"]["digest"]))
    if cfg["poison"].get("key_fingerprint"):
        table.add_row("key fingerprint", cfg["poison"]["key_fingerprint"])
    gen = t.get("poison_generation")
    table.add_row("timings", f"poison {_fmt(gen, ' s', 3)}{' (cached)' if t.get('poison_cached') else ''} · "
                             f"training {_fmt(t.get('training'), ' s', 1)} · evaluation {_fmt(t.get('evaluation'), ' s', 1)}")
    return table


def show_page_status(console: Console, results: Any, record: str, baseline: str | None = None) -> None:
    """How the leaderboard reads this run (and its clean baseline): tier and stability label with the reason
    (the page's rule, computed on every record of the results folder), one line per run and cell."""
    from benchmark.report.status import record_status, status_text

    for what, path in (("this run", record), ("its clean baseline", baseline)):
        try:
            st = record_status(results, path) if path else None
        except BenchError:
            st = None
        if st is None:
            if what == "this run":
                show_trial_status(console, results, record)
            continue
        console.print(f"leaderboard: tier {st['tier']}; {what}: {status_text(st['label'], st['reason'])}")
        if st.get("cell") and len(st.get("seeds", [])) > 1:
            console.print(f"leaderboard cell {st['cell']} (seeds {', '.join(map(str, st['seeds']))}): "
                          f"{status_text(st['cell_label'], st['cell_reason'])}")


def show_trial_status(console: Console, results: Any, record: str) -> None:
    """A targeted trial's outcome and its cell's success rate as the page's targeted section reads them."""
    from benchmark.report.document_targeted import rate_text
    from benchmark.report.targeted import trial_status

    try:
        st = trial_status(results, record)
    except BenchError:
        st = None
    if st is None:
        return
    trial, cell = st["trial"], st["cell"]
    outcome = "no target outcome in the record (not a trial)" if trial is None else (
        f"target test image {trial['test_index']} (class {trial['true_class']}) classified as {trial['predicted_class']}, "
        f"adversarial class {trial['adversarial_class']}: {'success' if trial['success'] else 'failure'}")
    console.print(f"leaderboard (targeted poisoning, its own section): this trial: {outcome}")
    console.print(f"targeted cell {cell['poison']} × {cell['defense']}: success {rate_text(cell)} "
                  f"({100 * cell['level']:g} % Clopper-Pearson)")


@contextlib.contextmanager
def poison_progress(console: Console, name: str) -> Iterator[Any]:
    live = console.is_terminal
    progress = progress_bar(console, f"[cyan]poison {name}", elapsed=False)
    task: dict[str, Any] = {}

    def update(step: int, total: int, info: dict[str, Any]) -> None:
        text = " ".join(f"{k} {v}" for k, v in info.items())
        if "t" not in task:
            task["t"] = progress.add_task(name, total=total, info="")
        progress.update(task["t"], completed=step, info=text)
        if not live and step % max(1, total // 10) == 0:
            console.print(f"  step {step}/{total} {text}")

    with progress:
        yield update


def show_poison_export(console: Console, prep: PreparedRun, manifest: dict[str, Any], out: Any, sidecar: Any) -> None:
    """What ``bench poison`` made: the poison, its budget, the files written."""
    b = manifest["budget"]
    state = "reused from cache" if manifest.get("cached") else "generated"
    console.print(f"[bold]{prep.poison.name}[/] on {prep.data.name} ({prep.data.source}, {len(prep.train)} images): "
                  f"{state}, {b['num_poisoned']} poisoned, generation {manifest['generation_seconds']:.3f} s on "
                  f"{manifest['generation_device']}")
    if b.get("not_measured"):
        console.print(f"budget: not measured: {b['not_measured']}")
    else:
        console.print(f"budget: L-inf {b['linf_255']}/255, mean L2 {b['l2_mean']:.3f}, PSNR {b['psnr']:.2f} dB, "
                      f"SSIM {b['ssim']:.4f}")
    console.print(f"wrote {out} and {sidecar}")


def show_pretrain_epoch(console: Console) -> Callable[[dict[str, Any]], None]:
    return lambda e: console.print(f"  epoch {e['epoch']:>3} loss {e['train_loss']:.3f} test {e['test_acc']:.2f}%")


def show_pretrained(console: Console, metadata: dict[str, Any], path: Any) -> None:
    m = metadata
    console.print(f"backbone {m['model']} pretrained on {m['train_images']} clean {m['dataset']} ({m['dataset_source']}) "
                  f"images, split {m['split']}, {m['epochs']} epochs: clean test acc {m['clean_test_acc']:.2f}%")
    console.print(f"wrote {path}")
