"""What ``bench audit`` prints: the plan with its cost before any work, the sweep's progress while it
runs (:class:`benchmark.ui.sweep.SweepDisplay`), and the answer."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from benchmark.audit.plan import AuditPlan
from benchmark.audit.render import acc_text, subject_text, tier_text, worst_lines
from benchmark.records import finished_record
from benchmark.sweep.plan import describe
from benchmark.ui.sweep import duration, estimate_text

VERDICT_STYLE = {"neutralised": "green", "survives": "red", "effective": "red", "no effect": "green",
                 "within noise": "yellow", "unstable": "magenta", "not run": "dim"}


def show_plan(console: Console, audit: AuditPlan) -> None:
    """Every cell: reused (with its accuracy) or to run (with its estimate on this hardware), and the total."""
    req, plan, est = audit.request, audit.plan, audit.estimate
    table = Table(title=f"audit plan: {req.kind} {req.name} · suite {req.suite.name} v{req.suite.version} · "
                        f"preset {plan.preset} · {plan.device}", title_justify="left")
    for col in ("poison", "defense", "seed", "state", "est."):
        table.add_column(col)
    for cell in plan.cells:
        poison, ratio, defense = describe(cell.spec)
        if cell.finished:
            rec = finished_record(audit.borrowed.get(cell.run_id, cell.record_path))
            acc = rec["metrics"]["test_acc"] if rec else None
            where = " from " + str(audit.borrowed[cell.run_id].parent) if cell.run_id in audit.borrowed else ""
            state = f"[green]reused[/]{where}" + (f" ({acc:.2f} %)" if acc is not None else "")
            cost = "-"
        else:
            seconds = est.cell_seconds.get(cell.run_id)
            started = est.started.get(cell.run_id)
            state = f"resume epoch {started}/{cell.epochs}" if started else "to run"
            cost = duration(seconds) if seconds is not None else "unknown"
        table.add_row(poison, defense, str(cell.spec.seed), state, cost)
    console.print(table)
    reused = len(plan.cells) - len(plan.todo)
    borrowed = f" ({len(audit.borrowed)} from the leaderboard's, copied into the results folder)" if audit.borrowed else ""
    console.print(f"{len(plan.todo)} of {len(plan.cells)} cells to run, {reused} reused from finished records{borrowed}; "
                  f"{estimate_text(est)} (timings of records made on this hardware: {audit.machine or 'unknown'})")
    if audit.generated is not None:
        console.print(f"poison {req.name}: made while validating, before anything trains "
                      f"({audit.generated['generation_seconds']:.1f} s; cached: the cells reuse it)")
    console.print(f"audit files: {audit.out}/audit.md and audit.json"
                  + ("" if audit.out_given else " (default: audits/ beside the results folder; --out to change)"))


def show_answer(console: Console, data: dict[str, Any], files: list[Any]) -> None:
    """The terminal summary: worst case per tier, every cell with its verdict, what rests on one seed."""
    console.print(f"\n[bold]audit of {subject_text(data)}[/] · suite {data['suite']['name']} "
                  f"v{data['suite']['version']} · preset {data['preset']} · {data['protocol']['group'] or ''} · "
                  f"commit {', '.join(c[:12] for c in data['commit']) or 'unknown'} · "
                  f"{', '.join(data['hardware']['records']) or data['hardware']['this_machine']}", soft_wrap=True)
    for line in worst_lines(data):
        console.print(f"  [bold]{line}[/]")
    table = Table(show_lines=False, title_justify="left")
    for col in ("poison", "defense", "tier", "accuracy %", "same defense, clean %", "verdict", "clean cost",
                "train time", "note"):
        table.add_column(col, overflow="fold")
    for r in data["cells"]:
        style = VERDICT_STYLE.get(r["verdict"], "")
        comp = r.get("compute") or {}
        table.add_row(r["poison"], r["defense"], tier_text(r["tier"]), acc_text(r["acc"]), acc_text(r["clean"]),
                      f"[{style}]{r['verdict']}[/]" if style else r["verdict"],
                      f"{r['clean_cost']:+.1f}" if r.get("clean_cost") is not None else "–",
                      (f"{comp['relative']:.2f}× plain" if comp.get("relative") else "–"), r["reason"] or "")
    console.print(table)
    budget = data.get("budget")
    if budget and budget["budget"]:
        b = budget["budget"]
        gen = budget.get("generation_s")
        console.print("budget: " + ", ".join(
            [f"type {budget['budget_type']}"] + [f"{k} {v['mean']:.4g}" for k, v in b.items() if k != "num_poisoned"]
            + ([f"L0 {budget['l0_mean']:.0f} px/image"] if budget.get("l0_mean") is not None else [])
            + [f"generation {gen['mean']:.1f} s" if gen else "generation not timed"]))
    for s in data["settle"]:
        console.print(f"[yellow]{s['cell']}: {s['why']}[/]")
    if data["settle"]:
        console.print(f"settle it (then run the same audit again): {data['settle'][0]['command']}", soft_wrap=True)
    run = data["run"]
    console.print(f"{run['cells']} cells: {run['reused']} reused, {run['trained']} trained, {run['failed']} failed; "
                  f"wrote {', '.join(map(str, files))}", soft_wrap=True)
