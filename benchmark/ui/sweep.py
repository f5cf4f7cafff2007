"""What ``bench sweep`` prints: the grid of a dry run with its cost, progress fed by the sweep's
events, the summary table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from benchmark.sweep import Estimate, Plan, SweepSummary
from benchmark.sweep.plan import describe
from benchmark.ui import progress_bar


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class SweepDisplay:
    """One overall progress bar, an epoch bar for a cell training in this process, and a line per finished
    poison and cell; ``on_event`` is what ``run_sweep`` calls."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = progress_bar(console, info=False)
        self.task: Any = None
        self.summary: SweepSummary | None = None
        self.running: dict[str, Any] = {}  # run id -> its epoch bar, while it trains

    def __enter__(self) -> SweepDisplay:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        getattr(self, f"_{kind}")(**data)

    def _start(self, plan: Plan, executor: str, jobs: int, address: str | None, summary: SweepSummary) -> None:
        self.summary = summary
        jobs_text = f" × {jobs} jobs" if executor == "local" else f" ({address or 'local instance'})"
        self.console.print(f"sweep: {len(plan.cells)} cells ({len(plan.todo)} to run, {summary.skipped} finished "
                           f"already), {len(plan.poison_jobs())} poisons needed · preset {plan.preset} · "
                           f"{plan.device} · executor {executor}{jobs_text}")
        self.task = self.progress.add_task("sweep", total=len(plan.todo))
        self.progress.start()

    def _poison(self, cells: list[Any], info: dict[str, Any] | None, error: str | None) -> None:
        spec = cells[0].spec
        name = spec.poison + (f" r={spec.ratio:g}" if spec.ratio < 1 else "")
        if error:
            self.console.print(f"[red]poison {name} failed[/]: {error}")
        elif info and not info["cached"]:
            self.console.print(f"poison {name}: generated in {info['generation_seconds']:.2f} s")

    def _progress(self, cell: Any, kind: str, data: dict[str, Any]) -> None:
        """A bar of the running cell's epochs (cells run in this process tell their epochs)."""
        if kind == "train_start":
            self.running[cell.run_id] = self.progress.add_task(f"  {cell.label}", total=data["epochs"])
        elif kind == "epoch" and cell.run_id in self.running:
            self.progress.update(self.running[cell.run_id], completed=data["epoch"])

    def _cell(self, cell: Any, result: dict[str, Any]) -> None:
        if cell.run_id in self.running:
            self.progress.remove_task(self.running.pop(cell.run_id))
        status = result["status"]
        if status == "finished":
            self.console.print(f"[green]done[/] {cell.label}: {result['test_acc']:.2f} % ({result['seconds']:.1f} s)")
        elif status == "failed":
            self.console.print(f"[red]failed[/] {cell.label}: {result['error']}")
        failed = self.summary.failed if self.summary else 0
        self.progress.update(self.task, advance=1, description=f"sweep ({failed} failed)" if failed else "sweep")


def summary_table(summary: SweepSummary) -> Table:
    table = Table(title="sweep summary", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("cells", str(summary.cells))
    table.add_row("done", str(summary.done))
    table.add_row("skipped (finished before)", str(summary.skipped))
    table.add_row("failed", f"[red]{summary.failed}[/]" if summary.failed else "0")
    table.add_row("poisons", f"{summary.poisons_generated} generated, {summary.poisons_cached} from cache")
    table.add_row("wall time", duration(summary.wall_seconds))
    for label, error in summary.failures[:10]:
        table.add_row("[red]failed[/]", f"{label}: {error}")
    return table


def show_summary(console: Console, summary: SweepSummary) -> None:
    console.print(summary_table(summary))
    console.print(f"sweep: {summary.done} done, {summary.skipped} skipped, {summary.failed} failed "
                  f"in {duration(summary.wall_seconds)}")


def estimate_text(est: Estimate) -> str:
    """'N of M cells to run; estimated cost: ...' in words."""
    known, unknown, jobs = est.known_seconds, est.unknown, est.jobs
    if est.todo == 0:
        text = "nothing to run: every cell has a finished record"
    elif unknown and not known:
        text = "estimated cost: unknown (no finished records with the same preset/model/defense yet)"
    else:
        text = f"estimated cost: {duration(known)} of compute"
        if jobs > 1:
            text += f" (about {duration(known / jobs)} with {jobs} jobs)"
        if unknown:
            text = "estimated cost: unknown for " + f"{unknown} cells/poisons; at least {duration(known)} for the rest"
    return text


def show_dry_run(console: Console, plan: Plan, est: Estimate) -> None:
    """The grid (one row per cell) and the cost estimate from past records' timings."""
    table = Table(title=f"sweep grid: {len(plan.cells)} cells, preset {plan.preset}, {plan.device}",
                  title_justify="left")
    for col in ("poison", "ratio", "defense", "model", "seed", "state", "est.", "run id"):
        table.add_column(col, no_wrap=col == "run id", min_width=12 if col == "run id" else None)
    for cell in plan.cells:
        poison, ratio, defense = describe(cell.spec)
        seconds = est.cell_seconds.get(cell.run_id)
        started = est.started.get(cell.run_id)  # resumes from its checkpoint; the estimate is what is left
        state = (("[yellow]stale[/]" if cell.stale else "[green]done[/]") if cell.finished
                 else (f"epoch {started}/{cell.epochs}" if started else "todo"))
        cost = "-" if cell.finished else (duration(seconds) if seconds is not None else "unknown")
        table.add_row(poison, ratio, defense, cell.cost_key[1], str(cell.spec.seed), state, cost, cell.run_id)
    console.print(table)
    console.print(f"{est.todo} of {len(plan.cells)} cells to run; {estimate_text(est)}")
