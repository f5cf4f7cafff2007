"""What an audit runs: the subject against its suite as sweep cells, validated, with what is reused and
what the rest will cost on this hardware.

A poison audit is the poison against plain training and every defense of the suite, with the clean row
(each defense on clean data, which its verdict compares with); a defense audit is the defense and plain
training against every poison of the suite and clean data. Each (poison, defense) pair is planned by
:func:`benchmark.sweep.plan_sweep` (so every name and parameter is checked and every finished record
found, exactly as ``bench sweep`` does), and the cells are run by :func:`benchmark.sweep.run_sweep`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmark import paths
from benchmark.audit.suites import Entry, Suite
from benchmark.errors import BenchError
from benchmark.io import read_json, write_json
from benchmark.records import environment, find_record, finished_record, machine
from benchmark.registry import DEFENSES, POISONS
from benchmark.sweep import Plan, SweepSpec, generate_poison, plan_sweep
from benchmark.sweep.estimate import Estimate, estimate
from benchmark.sweep.plan import Warn

KINDS = ("poison", "defense")


@dataclass
class AuditRequest:
    """Everything ``bench audit`` was asked for (the CLI's flags map onto these)."""

    kind: str  # "poison" or "defense"
    name: str
    params: dict[str, Any]
    suite: Suite
    seeds: list[int] = field(default_factory=lambda: [0])
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    dataset: str = "cifar10"
    key: int = 0
    data_root: str | None = None
    cache_dir: str | None = None
    results: str | None = None
    leaderboard: str | None = None
    device: str = "auto"

    @property
    def subject(self) -> Entry:
        return Entry(self.name, dict(self.params))


@dataclass
class AuditPlan:
    request: AuditRequest
    plan: Plan  # every cell of the audit, as one sweep plan
    pairs: list[tuple[Entry, Entry]]  # (poison, defense) asked for, clean rows not included
    #: per pair: the run ids of its cells (one per seed) and of its clean row's
    pair_cells: list[tuple[list[str], list[str]]]
    machine: str  # where this audit runs: the hardware its estimate comes from
    estimate: Estimate
    out: Path
    generated: dict[str, Any] | None = None  # the subject poison, made while validating
    out_given: bool = False
    #: run id -> the finished record in a leaderboard folder a cell reuses (copied into the results folder
    #: when the audit runs, so that folder alone holds every record behind the audit)
    borrowed: dict[str, Path] = field(default_factory=dict)

    @property
    def results(self) -> Path:
        return paths.results_dir(self.request.results)

    def leaderboard_folders(self) -> list[Path]:
        """The records the rank and the noise come from besides the audit's own results folder."""
        lb = self.request.leaderboard
        folder = Path(lb) if lb else None
        if folder is None or not folder.is_dir() or folder.resolve() == self.results.resolve():
            return []
        return [folder]


def default_leaderboard() -> str | None:
    """The repository's records (``results/runs`` under the working directory) when there are any."""
    return "results/runs" if Path("results/runs").is_dir() else None


def default_out(results: Path, slug: str) -> Path:
    """Audit files go to ``audits/<subject>`` beside the results folder (results/runs -> results/audits)."""
    return results.expanduser().parent / "audits" / slug


def _scoped(name: str, params: dict[str, Any]) -> dict[str, Any]:
    return {f"{name}.{k}": v for k, v in params.items()}


def pairs_of(req: AuditRequest) -> list[tuple[Entry, Entry]]:
    """(poison, defense) of every cell the audit asks for, before its clean row."""
    none = Entry("none")
    if req.kind == "poison":
        return [(req.subject, d) for d in [none, *req.suite.defenses]]
    if not req.suite.poisons:
        raise BenchError(f"suite {req.suite.name} (version {req.suite.version}) names no poisons to audit a defense against")
    return [(p, d) for p in req.suite.poisons for d in (req.subject, none)]


def check_request(req: AuditRequest) -> AuditRequest:
    """Names resolved to their registered ones (unknown: a did-you-mean error) and the suite non-empty."""
    if req.kind not in KINDS:
        raise BenchError(f"an audit is of a poison or a defense, not '{req.kind}'")
    if req.kind == "poison":
        name = POISONS.canonical(req.name)
        if name == "none":
            raise BenchError("--poison none is clean data, not a poison to audit; see 'bench list poisons'")
        if not req.suite.defenses:
            raise BenchError(f"suite {req.suite.name} names no defenses to audit a poison against")
    else:
        name = "+".join(DEFENSES.canonical(n.strip()) for n in req.name.split("+"))
    if not req.seeds or min(req.seeds) < 0:
        raise BenchError(f"--seeds must be integers >= 0, got {req.seeds}")
    return replace(req, name=name)


def build_plan(req: AuditRequest, out: str | None, warn: Warn | None = None, jobs: int = 1) -> AuditPlan:
    """Validate and plan every cell (one-line errors before any work: :func:`validate_subject_poison`
    included); estimate what is left to run from the records made on this machine."""
    req = check_request(req)
    pairs = pairs_of(req)
    cells: dict[str, Any] = {}
    pair_cells: list[tuple[list[str], list[str]]] = []
    first: Plan | None = None
    for poison, defense in pairs:
        sweep = SweepSpec(
            poisons=[poison.name], defenses=[defense.name], seeds=list(req.seeds), dataset=req.dataset,
            preset=req.preset, poison_params=_scoped(poison.name, poison.params),
            defense_params=_scoped(defense.name, defense.params), overrides=dict(req.overrides), key=req.key,
            clean_row=True, data_root=req.data_root, cache_dir=req.cache_dir, results=req.results, device=req.device)
        planned = plan_sweep(sweep, warn=warn)
        first = first or planned
        pair_cells.append(([c.run_id for c in planned.cells if c.spec.poison != "none" or poison.name == "none"],
                           [c.run_id for c in planned.cells if c.spec.poison == "none"]))
        for cell in planned.cells:
            cells.setdefault(cell.run_id, cell)
    assert first is not None
    plan = Plan(first.sweep, first.device, first.preset, list(cells.values()))
    here = machine(environment(plan.device))
    audit = AuditPlan(req, plan, pairs, pair_cells, here, None,  # type: ignore[arg-type]
                      Path(out) if out else default_out(paths.results_dir(req.results), slug_of(req, plan.preset)),
                      out_given=bool(out))
    validate_subject_poison(audit)
    borrow(audit)
    audit.estimate = estimate(plan, jobs, on_machine=here, more=audit.leaderboard_folders())
    return audit


def borrow(audit: AuditPlan) -> None:
    """Cells without a finished record in the results folder that have one (same run id, so the same
    config and seed) in a leaderboard folder: reused from there, e.g. the clean rows of the repository's
    records. Nothing is written here (a dry run writes nothing); :func:`copy_borrowed` copies them."""
    for cell in audit.plan.cells:
        if cell.finished:
            continue
        for folder in audit.leaderboard_folders():
            found = find_record(folder, cell.run_id)
            if found is not None and finished_record(found) is not None:
                audit.borrowed[cell.run_id] = found
                cell.finished = True
                break


def copy_borrowed(audit: AuditPlan) -> None:
    """The borrowed records, copied as they are (atomically) to their cells' paths in the results folder."""
    for cell in audit.plan.cells:
        source = audit.borrowed.get(cell.run_id)
        if source is not None and finished_record(cell.record_path) is None:
            write_json(cell.record_path, read_json(source))


def validate_subject_poison(audit: AuditPlan) -> None:
    """A poison audit's poison that trains no surrogate (no per-preset recipe: CUDA, an imported file) is
    made now, as the sweep would make it first, so a file that does not match the clean training set
    (shape, labels, changes outside its poisoned indices) is a one-line error before any cell trains.
    The artifact is cached: the cells use it."""
    req = audit.request
    if req.kind != "poison" or POISONS.get(req.name).preset_params:
        return
    cell = next(c for c in audit.plan.cells if c.spec.poison == req.name)
    if Path(cell.artifact).exists() and Path(cell.artifact).with_suffix(".json").exists():
        return
    audit.generated = generate_poison(cell.spec)


def slug_of(req: AuditRequest, preset: str) -> str:
    """A folder name for the audit's files: kind, subject (a named import by its name) and preset."""
    label = str(req.params.get("name") or "") if req.name == "import" else ""
    label = label or req.name
    extra = "-".join(f"{k}={v}" for k, v in sorted(req.params.items()) if k not in ("path", "name"))
    text = f"{req.kind}-{label}" + (f"-{extra}" if extra else "") + f"-{preset}"
    return "".join(ch if ch.isalnum() or ch in "-=._+" else "_" for ch in text)[:100]
