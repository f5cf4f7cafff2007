"""The ``bench audit`` command (registered on the ``bench`` group in benchmark/cli.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from benchmark.audit.plan import AuditRequest, build_plan, copy_borrowed, default_leaderboard
from benchmark.audit.quick import recompute_quick
from benchmark.audit.render import markdown
from benchmark.audit.report import build_audit
from benchmark.audit.suites import load_suite
from benchmark.cli_options import check_folder, data_options, folder_option
from benchmark.errors import BenchError
from benchmark.io import atomic_write
from benchmark.params import parse_kv
from benchmark.protocol import resolve_overrides
from benchmark.registry import POISONS
from benchmark.report.build import to_json
from benchmark.report.frame import load_frame
from benchmark.sweep import ExecutorOptions, run_sweep
from benchmark.sweep.config import EXECUTORS
from benchmark.ui import console, warner
from benchmark.ui.audit import show_answer, show_plan
from benchmark.ui.sweep import SweepDisplay


def _seeds(text: str) -> list[int]:
    try:
        seeds = list(dict.fromkeys(int(s) for s in text.split(",") if s.strip()))
    except ValueError:
        raise BenchError(f"--seeds must be comma-separated integers >= 0, got '{text}'") from None
    if not seeds or min(seeds) < 0:
        raise BenchError(f"--seeds must be comma-separated integers >= 0, got '{text}'")
    return seeds


@click.command("audit")
@click.option("--poison", help="audit this poison against the suite's defenses (import: a file made elsewhere, "
              "--poison-param path=FILE)")
@click.option("--poison-param", "poison_params", multiple=True, metavar="NAME=VALUE", help="parameter of the audited poison, repeatable")
@click.option("--defense", help="audit this defense (or composition) against the suite's poisons and clean data")
@click.option("--defense-param", "defense_params", multiple=True, metavar="NAME=VALUE", help="parameter of the audited defense, repeatable")
@click.option("--suite", default="standard", show_default=True,
              help="standard (every plugin), quick (computed from the records) or a suite .toml file")
@click.option("--seeds", default="0", show_default=True, help="comma-separated run seeds of every cell")
@click.option("--preset", help="protocol preset: smoke, cpu (default without GPU), paper (default with GPU)")
@click.option("--protocol-param", "protocol_params", multiple=True, metavar="NAME=VALUE",
              help="protocol override for every cell (a protocol variant: ranked only against records of it)")
@click.option("--dataset", default="cifar10", show_default=True, help="cifar10, cifar100, svhn, fashion-mnist or imagefolder:PATH")
@click.option("--key", type=int, default=0, envvar="BENCH_POISON_KEY", show_default=True,
              help="private poison key; env BENCH_POISON_KEY")
@click.option("--executor", type=click.Choice(list(EXECUTORS)), default="local", show_default=True,
              help="local worker processes or a Ray cluster")
@click.option("--jobs", type=int, default=1, show_default=True, help="local executor: parallel worker processes")
@click.option("--address", help="Ray cluster address (default: start a local instance)")
@folder_option("--results", envvar="BENCH_RESULTS", help="folder for the run records (default results/runs); "
               "finished records there are reused, and `bench leaderboard` on it shows the audit")
@click.option("--leaderboard", type=click.Path(file_okay=False, exists=True),
              help="records to rank against, and to take noise and timings from (default: results/runs when it exists)")
@folder_option("--out", help="folder for audit.md and audit.json (default: audits/<subject> beside the results folder)")
@click.option("--dry-run", is_flag=True, help="print the plan and its cost, run nothing")
@click.option("--recompute-quick", is_flag=True, help="recompute the quick suite from the --leaderboard records "
              "(of --preset, default cpu) and rewrite its file when the selection changed; audits nothing")
@data_options
def audit_cmd(**kw: Any) -> None:
    """Audit a poison against the standard defenses, or a defense against the standard poisons: plan and
    cost first, then only the missing cells, then the worst case and every cell's verdict (audit.md/.json)."""
    warn = warner("bench audit")
    leaderboard = kw["leaderboard"] or default_leaderboard()
    if kw["recompute_quick"]:
        if kw["poison"] or kw["defense"]:
            raise BenchError("--recompute-quick audits nothing; give it without --poison or --defense")
        if leaderboard is None:
            raise BenchError("--recompute-quick needs records: give --leaderboard DIR")
        suite, written = recompute_quick(load_frame(leaderboard, warn), kw["preset"] or "cpu")
        console.print(f"quick suite {suite.path}: version {suite.version} "
                      f"({'rewritten' if written else 'unchanged'}); defenses "
                      f"{', '.join(f'{e.text()} ({e.tier})' for e in suite.defenses)}; poisons "
                      f"{', '.join(e.text() for e in suite.poisons)}", soft_wrap=True)
        return
    if bool(kw["poison"]) == bool(kw["defense"]):
        raise BenchError("bench audit needs exactly one of --poison NAME or --defense NAME")
    if kw["poison"] and kw["defense_params"] or kw["defense"] and kw["poison_params"]:
        raise BenchError("--poison-param goes with --poison, --defense-param with --defense")
    if kw["poison"]:
        reject_targeted(kw["poison"])
    ExecutorOptions(kw["executor"], kw["jobs"], address=kw["address"]).check()
    kind = "poison" if kw["poison"] else "defense"
    req = AuditRequest(
        kind=kind, name=kw[kind], params=parse_kv(kw[f"{kind}_params"], f"--{kind}-param"),
        suite=load_suite(kw["suite"]), seeds=_seeds(kw["seeds"]), preset=kw["preset"],
        overrides=resolve_overrides(parse_kv(kw["protocol_params"], "--protocol-param"), owner="--protocol-param"),
        dataset=kw["dataset"], key=kw["key"], data_root=kw["data_root"], cache_dir=kw["cache_dir"],
        results=kw["results"], leaderboard=leaderboard, device=kw["device"])
    audit = build_plan(req, kw["out"], warn, kw["jobs"] if kw["executor"] == "local" else 1)
    check_folder(audit.out, "--out")
    show_plan(console, audit)
    if kw["dry_run"]:
        return
    copy_borrowed(audit)
    summary = None
    if audit.plan.todo:
        with SweepDisplay(console) as display:
            summary = run_sweep(audit.plan.sweep, kw["executor"], kw["jobs"], kw["address"], display.on_event,
                                plan=audit.plan, warn=warn)
    data = build_audit(audit, summary, warn)
    files = write_audit(audit.out, data)
    show_answer(console, data, files)
    if summary is not None and summary.failed:
        sys.exit(1)


def reject_targeted(name: str) -> None:
    """A poison of another threat model than availability has no audit (its verdict is a success rate over
    trials, not an accuracy a defense restores): say how its trials are run and reported instead."""
    try:
        model = getattr(POISONS.get(name), "threat_model", "availability")
    except BenchError:  # an unknown name: the plan names the valid ones
        return
    if model != "availability":
        raise BenchError(f"bench audit measures availability poisons; '{name}' is a {model} poison: run its trials "
                         f"with `bench sweep --poisons {name} --seeds 0,1,2,3,4,5,6,7,8,9 --defenses none,...` and read "
                         "them in `bench leaderboard` (section Targeted poisoning)")


def write_audit(out: Path, data: dict[str, Any]) -> list[Path]:
    """``audit.json`` and ``audit.md`` in ``out``, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (("audit.json", to_json(data)), ("audit.md", markdown(data))):
        atomic_write(out / name, lambda p, t=text: p.write_text(t, encoding="utf-8"))
        written.append(out / name)
    return written
