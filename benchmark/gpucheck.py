"""``bench gpu-check``: the paper preset's first cells on a GPU inside a fixed wall-clock budget.

Step 1 measures training speed at the preset: ``bench perf train`` (the trainer against a bare loop and
a DataLoader + PIL pipeline), one evaluation pass, and the trainer with each cell's defense. Step 2 plans
from those speeds the most of three cells that fits the rest of the budget, cheapest first: plain training
on clean data, plain training on CUDA, then L-inf AT 4/255 on CUDA. A cell that cannot finish at the full
protocol runs the longest shortened schedule that fits, under its own preset label ``<preset>-short-<E>ep``
(E epochs, a step schedule's decays at the same fractions of training), so a shortened cell never shares
a table with the full protocol; each full-protocol cell that fits comes first (they are the comparable
ones), and a later call runs at the full protocol what an earlier one could only shorten. Cells run through the normal runner (records
in ``OUT/runs``); a cell the budget would overrun stops after an epoch, keeping its checkpoint (in the
cache folder) and writing no record. ``OUT/summary.md``, ``OUT/perf.md`` and ``OUT/gpu-check.json`` (the
plan state) are rewritten after every cell. Called again with the same OUT, it resumes: finished records
are reused, a stopped cell resumes from its checkpoint (on the same machine), and the speed measurement
is reused on the same device.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import click
import torch

from benchmark.cli_options import data_options, folder_option
from benchmark.data import ImageSet
from benchmark.errors import BenchError
from benchmark.evaluate import evaluate
from benchmark.io import read_json, write_json
from benchmark.models import build_model
from benchmark.perf import measure_train
from benchmark.protocol import PRESETS, Protocol, protocol_dict, resolve_protocol
from benchmark.records import environment, json_safe, machine, now_iso
from benchmark.runner import PreparedRun, RunSpec, execute, existing_record, prepare_run
from benchmark.train import StopTraining, checkpoint_epochs, numerics, prepare_model, train_model
from defenses.base import Defense, TrainContext

STATE_FILE = "gpu-check.json"
#: seconds kept back at the end of the budget for writing the summary
RESERVE_S = 3.0
#: per cell, beyond training and evaluation: preparing data, generating the poison (CUDA's is one batched
#: convolution per image), writing the record; an assumption, refined by nothing (it is small on a GPU)
SETUP_S = 5.0
#: sizes (timed steps, warm-up steps, rounds) of the throughput measurement, the largest that fits first
#: (the first is bench perf train's default); it times this many pipelines
PERF_SIZES = ((5, 2, 3), (2, 1, 1))
PERF_PIPELINES = 5
#: estimates from throughput alone (no epoch of that cell timed yet) are inflated by this factor
MARGIN = 1.15


@dataclass(frozen=True)
class Cell:
    """One cell of the check: a poison and a defense (with its parameters)."""

    name: str
    title: str
    poison: str
    defense: str
    defense_params: dict[str, str] = field(default_factory=dict)

    @property
    def defense_key(self) -> str:
        """Cells with one defense key train at one speed."""
        return self.defense + "".join(f",{k}={v}" for k, v in sorted(self.defense_params.items()))


CELLS = (
    Cell("clean", "plain training, clean data", "none", "none"),
    Cell("cuda", "plain training, CUDA", "cuda", "none"),
    Cell("cuda-at", "L∞ AT 4/255, CUDA", "cuda", "at", {"norm": "linf", "eps": "4/255"}),
)  # cheapest first


# ------------------------------------------------------------------------------------------ planning

@dataclass
class CellCost:
    """What the planner knows about a cell: its full schedule, its speed, and what is done already."""

    name: str
    full_epochs: int
    epoch_s: float  # seconds per epoch (training and the per-epoch evaluation)
    fixed_s: float  # seconds per run besides its epochs (setup, final evaluation)
    finished: bool = False  # a finished record at the full protocol exists
    short_epochs: int | None = None  # epochs of the cell's shortened schedule, where a record of it is finished
    done: dict[int, int] = field(default_factory=dict)  # schedule epochs -> epochs its checkpoint holds
    measured: bool = False  # epoch_s timed on this machine (else estimated from throughput)
    unmeasured: bool = False  # not measured yet: an earlier cell comes first, or no time was left

    def cost(self, epochs: int) -> float:
        return self.fixed_s + max(0, epochs - self.done.get(epochs, 0)) * self.epoch_s


@dataclass
class Step:
    name: str
    action: str  # run, reuse or skip
    epochs: int  # the schedule's epochs (0 when skipped)
    full: bool  # the full protocol, or a shortened one
    estimate_s: float = 0.0
    note: str = ""


def plan(cells: list[CellCost], seconds_left: float, short_epochs: dict[str, int]) -> list[Step]:
    """The most of ``cells`` (cheapest first) that fits ``seconds_left``: each cell at the full protocol
    where it fits, else at the longest shortened schedule that fits (the one ``short_epochs`` names for
    it where that still fits, so a stopped shortened run resumes with its schedule; a finished shortened
    record is kept), else skipped."""
    steps: list[Step] = []
    left = seconds_left
    for c in cells:
        if c.finished:
            steps.append(Step(c.name, "reuse", c.full_epochs, True, note="finished at the full protocol"))
            continue
        if c.unmeasured:
            steps.append(Step(c.name, "skip", 0, False, note="speed not measured: the cells before it come first, "
                              "and no time was left after them"))
            continue
        full = c.cost(c.full_epochs)
        if full <= left:
            steps.append(Step(c.name, "run", c.full_epochs, True, full, "full protocol"))
            left -= full
            continue
        why = f"the full protocol needs ~{full / 60:.1f} min, {max(0.0, left) / 60:.1f} min left"
        prev = short_epochs.get(c.name)
        if prev and c.short_epochs == prev:
            steps.append(Step(c.name, "reuse", prev, False, note=f"finished shortened; {why}"))
            continue
        for epochs in ([prev] if prev else []) + list(range(c.full_epochs - 1, 0, -1)):
            if c.cost(epochs) <= left:
                steps.append(Step(c.name, "run", epochs, False, c.cost(epochs), f"shortened: {why}"))
                left -= c.cost(epochs)
                break
        else:
            steps.append(Step(c.name, "skip", 0, False, note=f"does not fit: {why}; 1 epoch needs ~{c.cost(1):.0f} s"))
    return steps


def short_label(preset: str, epochs: int) -> str:
    return f"{preset}-short-{epochs}ep"


def short_overrides(proto: Protocol, epochs: int) -> dict[str, Any]:
    """A shortened schedule of ``proto`` under its own preset label: ``epochs`` epochs, a step schedule's
    decays at the same fractions of training (the one-cycle and cosine schedules scale by themselves)."""
    out: dict[str, Any] = {"preset": short_label(proto.preset, epochs), "epochs": epochs}
    if proto.schedule == "step":
        out["lr_step"] = max(1, round(epochs * proto.lr_step / proto.epochs))
    return out


def should_stop(now: float, deadline: float, epoch: int, epochs: int, epoch_s: float, final_s: float) -> bool:
    """After an epoch: stop (the checkpoint is written) if another epoch and the final evaluation would
    overrun the deadline; the last epoch never stops (only its evaluation is left)."""
    return epoch < epochs and now + epoch_s * 1.1 + final_s > deadline


# --------------------------------------------------------------------------------------- measuring

def _random_set(n: int, shape: tuple[int, int, int], num_classes: int, device: torch.device) -> ImageSet:
    gen = torch.Generator().manual_seed(0)
    return ImageSet(torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8),
                    torch.randint(0, num_classes, (n,), generator=gen), [str(i) for i in range(num_classes)]).to(device)


def _synced(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def eval_rate(prep: PreparedRun) -> float:
    """Images per second of one evaluation pass (after a warm-up pass), the protocol's model and numerics."""
    proto, device = prep.protocol, prep.device
    c = prep.data.shape[0]
    model = prepare_model(build_model(proto.model, prep.data.num_classes, c), proto, device)
    images = _random_set(proto.eval_batch_size, prep.data.shape, prep.data.num_classes, device)
    with numerics(proto):
        evaluate(model, images, prep.data.num_classes, batch_size=proto.eval_batch_size)
        t0 = _synced(device)
        evaluate(model, images, prep.data.num_classes, batch_size=proto.eval_batch_size)
        return len(images) / max(1e-9, _synced(device) - t0)


def final_eval_seconds(prep: PreparedRun) -> float:
    """Seconds of the defense's own final evaluation (e.g. AT's robust accuracy under PGD-20) on a random
    test set of the run's size; 0 for a defense without one."""
    if all(type(c).evaluate is Defense.evaluate for c in prep.defense.components):
        return 0.0
    device, proto = prep.device, prep.protocol
    c, k = prep.data.shape[0], prep.data.num_classes
    ctx = TrainContext(device=device, num_classes=k, in_channels=c, image_size=prep.data.shape[1:], protocol=proto,
                       seed=0, generator=torch.Generator().manual_seed(0))
    model = prepare_model(prep.defense.build_model(proto.model, k, c, ctx), proto, device)
    test = _random_set(len(prep.test), prep.data.shape, k, device)
    with numerics(proto):
        t0 = _synced(device)
        prep.defense.evaluate(model, test, ctx)
        return _synced(device) - t0


def trainer_rate(prep: PreparedRun, steps: int = 2) -> float:
    """Images per second of the trainer with this run's defense on random images: one untimed epoch of
    one batch, then one timed epoch of ``steps`` batches."""
    proto, device, bs = replace(prep.protocol, epochs=1), prep.device, prep.protocol.batch_size
    c, k = prep.data.shape[0], prep.data.num_classes
    ctx = TrainContext(device=device, num_classes=k, in_channels=c, image_size=prep.data.shape[1:], protocol=proto,
                       seed=0, generator=torch.Generator().manual_seed(0))
    model = prepare_model(prep.defense.build_model(proto.model, k, c, ctx), proto, device)
    images = _random_set(bs * (1 + steps), prep.data.shape, k, device)
    at = images.y.device
    with numerics(proto):
        train_model(model, images.subset(torch.arange(bs, device=at)), images.subset(torch.arange(0, device=at)),
                    proto, prep.defense, ctx)
        t0 = _synced(device)
        train_model(model, images.subset(torch.arange(bs, bs * (1 + steps), device=at)),
                    images.subset(torch.arange(0, device=at)), proto, prep.defense, ctx)
        return bs * steps / max(1e-9, _synced(device) - t0)


# ------------------------------------------------------------------------------------------- the check

@dataclass
class Options:
    out: Path
    budget: float
    preset: str = "paper"
    device: str = "auto"
    data_root: str | None = None
    cache_dir: str | None = None
    download: bool = False
    key: int = 0
    seed: int = 0
    started: float = field(default_factory=time.perf_counter)  # the budget counts from here


class Check:
    """One call of the check: state from earlier calls, the runs of each cell, the plan loop."""

    def __init__(self, opts: Options, say: Any = print) -> None:
        if opts.budget <= 0:
            raise BenchError(f"--budget must be a positive number of seconds, got {opts.budget:g}")
        self.opts, self.say = opts, say
        self.deadline = opts.started + opts.budget - RESERVE_S
        path = opts.out / STATE_FILE
        self.state: dict[str, Any] = read_json(path) if path.is_file() else {}
        if self.state and self.state.get("preset") != opts.preset:
            raise BenchError(f"--out {opts.out} holds a check of preset {self.state.get('preset')}; give another "
                             f"--out for preset {opts.preset}")
        self.state.update(preset=opts.preset, cells=dict(self.state.get("cells", {})))
        self.state.setdefault("short_epochs", {})
        self.state.setdefault("calls", []).append({"started": now_iso(), "budget_s": opts.budget})
        self.runs: dict[tuple[str, int | None], PreparedRun] = {}
        self.data: Any = None
        self.perf: dict[str, Any] = {}
        self.steps: list[Step] = []
        self.prep(CELLS[0], None)  # validates the request and loads the data before any measuring

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def prep(self, cell: Cell, epochs: int | None) -> PreparedRun:
        """The run of ``cell`` at the full protocol (``epochs`` None) or at a shortened schedule."""
        if (cell.name, epochs) not in self.runs:
            o = self.opts
            overrides = {} if epochs is None else short_overrides(resolve_protocol(o.preset), epochs)
            spec = RunSpec(dataset="cifar10", poison=cell.poison, key=o.key, defense=cell.defense,
                           defense_params=dict(cell.defense_params), preset=o.preset, overrides=overrides,
                           seed=o.seed, data_root=o.data_root, cache_dir=o.cache_dir, results=str(o.out / "runs"),
                           download=o.download, device=o.device)
            run = prepare_run(spec, data=self.data)
            self.data = run.data
            self.runs[(cell.name, epochs)] = run
        return self.runs[(cell.name, epochs)]

    # ---------------------------------------------------------------------------------- step 1

    def measure(self) -> None:
        """Throughput at the preset (reused from an earlier call on the same machine and preset)."""
        run = self.prep(CELLS[0], None)
        where = machine(environment(str(run.device)))
        saved = self.state.get("perf")
        if saved and saved.get("machine") == where:
            self.perf = saved
            self.say(f"speed: reusing the measurement of {saved['measured']} on {where}")
            return
        self.say(f"step 1: bench perf train at preset {self.opts.preset} on {where}")
        t0 = time.perf_counter()
        # a two-step probe sizes the measurement: bench perf train's defaults where they take under a
        # minute (and a quarter of the budget), fewer steps where not, none where even those would not
        step_s = run.protocol.batch_size / trainer_rate(run, steps=1)
        limit = min(60.0, self.left() / 4)
        need = [PERF_PIPELINES * (warmup + steps * rounds) * step_s * 2 for steps, warmup, rounds in PERF_SIZES]
        sizes = [size for size, seconds in zip(PERF_SIZES, need, strict=True) if seconds <= limit]
        if not sizes:
            raise BenchError(f"one training step at preset {self.opts.preset} takes {step_s:.1f} s on {where}: "
                             f"measuring the speed would take ~{need[-1]:.0f} s, more than a minute or a quarter of "
                             f"the {max(0.0, self.left()):.0f} s left of --budget {self.opts.budget:g}; give a "
                             "larger budget or a smaller preset (cpu, smoke)")
        steps, warmup, rounds = sizes[0]
        perf = measure_train(run.protocol.model, run.device, steps=steps, warmup=warmup, preset=self.opts.preset,
                             rounds=rounds)
        self.perf = {"machine": where, "device": str(run.device), "measured": now_iso(), "train": asdict(perf),
                     "eval_img_s": eval_rate(run), "trainer_img_s": {"none": perf.rows[0].images_per_second},
                     "epoch_s": {}, "protocol": protocol_dict(run.protocol)}
        self.perf["seconds"] = round(time.perf_counter() - t0, 1)
        self.state["perf"] = self.perf
        self.say(f"  trainer {perf.rows[0].images_per_second:.0f} img/s, evaluation {self.perf['eval_img_s']:.0f} "
                 f"img/s ({self.perf['seconds']:.0f} s)")

    def rate(self, cell: Cell) -> tuple[float, float] | None:
        """The trainer's img/s with this cell's defense and the seconds of the defense's own final
        evaluation, each measured once: the first if a few dozen plain steps of time are left, the second
        (slow on a CPU: AT's PGD-20) if two of the cell's epochs are. None until both are known."""
        rates, extra = self.perf["trainer_img_s"], self.perf.setdefault("final_eval_s", {"none": 0.0})
        key, run = cell.defense_key, self.prep(cell, None)
        if key not in rates:
            if self.left() < 30 * run.protocol.batch_size / rates["none"]:
                return None
            rates[key] = trainer_rate(run)
            self.say(f"  trainer with {key}: {rates[key]:.0f} img/s")
        if key not in extra:
            if self.left() < 2 * len(run.train) / rates[key] + SETUP_S:
                return None
            extra[key] = final_eval_seconds(run)
            self.say(f"  final evaluation of {key}: {extra[key]:.1f} s")
        return rates[key], extra[key]

    # ---------------------------------------------------------------------------------- step 2

    def cost(self, cell: Cell, measure: bool = True) -> CellCost:
        """What the planner needs to know about ``cell``; its speed is measured (once) only with
        ``measure``, so a later cell's measurement never takes an earlier cell's time."""
        run = self.prep(cell, None)
        n, n_test = len(run.train), len(run.test)
        eval_img_s = self.perf["eval_img_s"]
        measured = self.perf["epoch_s"].get(cell.defense_key)
        speed = self.rate(cell) if measure or cell.defense_key in self.perf["trainer_img_s"] else None
        if speed is None:
            epoch_s, extra = float("inf"), 0.0
        else:
            epoch_s = measured or MARGIN * (n / speed[0] + n_test / eval_img_s)
            extra = speed[1]
        fixed = SETUP_S + MARGIN * ((n_test + min(n, 10000)) / eval_img_s + extra)
        cost = CellCost(cell.name, run.protocol.epochs, epoch_s, fixed,
                        finished=existing_record(run) is not None, measured=bool(measured), unmeasured=speed is None)
        cost.done[run.protocol.epochs] = checkpoint_epochs(run.checkpoint_path) or 0
        short = self.state["short_epochs"].get(cell.name)
        if short:
            srun = self.prep(cell, short)
            cost.short_epochs = short if existing_record(srun) is not None else None
            cost.done[short] = checkpoint_epochs(srun.checkpoint_path) or 0
        return cost

    def run(self) -> None:
        """Measure, then plan and run one cell at a time, re-planning after each with what it measured."""
        self.measure()
        attempted: set[str] = set()
        by_name = {c.name: c for c in CELLS}
        short_epochs = self.state["short_epochs"]
        while True:
            # cells up to the first one still to try are measured; later ones wait for their turn
            active = next((i for i, c in enumerate(CELLS) if c.name not in attempted
                           and existing_record(self.prep(c, None)) is None), len(CELLS))
            costs = [self.cost(c, measure=i <= active) for i, c in enumerate(CELLS)]
            self.steps = plan(costs, self.left(), short_epochs)
            self.state["plan"] = [asdict(s) for s in self.steps]
            self.state["cost_model"] = [asdict(c) | {"full_s": c.cost(c.full_epochs)} for c in costs]
            step = next((s for s in self.steps if s.action == "run" and s.name not in attempted), None)
            if step is None:
                break
            attempted.add(step.name)
            cell = by_name[step.name]
            if not step.full:
                short_epochs[cell.name] = step.epochs
            self.run_cell(cell, step, next(c for c in costs if c.name == cell.name))
            self.write()
        for s in self.steps:
            if s.action != "run" or s.name not in attempted:
                self.say(f"{s.name}: {s.action} ({s.note})")

    def run_cell(self, cell: Cell, step: Step, cost: CellCost) -> None:
        run = self.prep(cell, None if step.full else step.epochs)
        label = run.protocol.preset
        self.say(f"step 2: {cell.name} ({cell.title}) at protocol {label}, {step.epochs} epochs, "
                 f"~{step.estimate_s / 60:.1f} min estimated, {self.left() / 60:.1f} min left")
        seconds: list[float] = []
        final_s = cost.fixed_s - SETUP_S

        def on_event(kind: str, data: dict[str, Any]) -> None:
            if kind == "note":
                self.say(f"  {data['text']}")
            if kind != "epoch":
                return
            seconds.append(float(data["seconds"]))
            if data["epoch"] <= 1 or data["epoch"] % 10 == 0 or data["epoch"] == step.epochs:
                self.say(f"  epoch {data['epoch']}/{step.epochs}: test {data['test_acc']:.2f}%, "
                         f"{data['seconds']:.1f} s")
            if should_stop(time.perf_counter(), self.deadline, data["epoch"], step.epochs, data["seconds"], final_s):
                raise StopTraining

        entry: dict[str, Any] = {"protocol": label, "epochs": step.epochs, "full": step.full}
        try:
            rec = execute(run, on_event)
            entry.update(status="finished", record=run.record_path.name, test_acc=rec["metrics"]["test_acc"])
            self.say(f"  finished: test accuracy {rec['metrics']['test_acc']:.2f}% ({run.record_path.name})")
        except StopTraining:
            done = checkpoint_epochs(run.checkpoint_path) or 0
            entry.update(status="stopped", epochs_done=done, checkpoint=str(run.checkpoint_path))
            self.say(f"  stopped by the budget after epoch {done}/{step.epochs}; the next call resumes it from "
                     f"{run.checkpoint_path} if that file is still there")
        except (KeyboardInterrupt, BenchError):
            raise
        except Exception as exc:  # the runner wrote a failed record; the other cells still run
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            self.say(f"  failed: {entry['error']}")
        if seconds:  # what an epoch of this defense really takes here (the first one includes warm-up)
            self.perf["epoch_s"][cell.defense_key] = statistics.median(seconds) if len(seconds) > 2 else max(seconds)
        self.state["cells"][cell.name] = entry

    def write(self) -> None:
        from benchmark.gpucheck_report import write_perf, write_summary

        call = self.state["calls"][-1]
        call["wall_s"] = round(time.perf_counter() - self.opts.started, 1)
        write_json(self.opts.out / STATE_FILE, json_safe(self.state))
        if self.perf:
            write_perf(self.opts.out / "perf.md", self.perf, self.state.get("cost_model", []))
        write_summary(self.opts.out / "summary.md", self.state, self.opts.out / "runs", CELLS)


def gpu_check(opts: Options, say: Any = print) -> Check:
    """Run the check (see the module docstring); the outputs are written even when it is interrupted."""
    check = Check(opts, say)
    try:
        check.run()
    finally:
        check.write()
    return check


# ------------------------------------------------------------------------------------------- command

@click.command("gpu-check")
@folder_option("--out", required=True, help="folder for the records (OUT/runs), summary.md, perf.md and the plan "
               "state; the same OUT again resumes")
@click.option("--budget", type=float, default=480, show_default=True,
              help="wall-clock seconds for the whole call; it exits before them with everything finished written")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="paper", show_default=True,
              help="protocol preset of the full-protocol cells")
@click.option("--key", type=int, default=0, envvar="BENCH_POISON_KEY", show_default=True,
              help="private CUDA key (only its fingerprint is written); env BENCH_POISON_KEY")
@click.option("--seed", type=int, default=0, show_default=True, help="run seed of every cell")
@data_options
def gpu_check_cmd(**kw: Any) -> None:
    """Measure training speed at a preset, then train the most of clean / CUDA / CUDA + L-inf AT 4/255
    that fits --budget (a shortened schedule under its own label where the full one does not fit)."""
    started = time.perf_counter()
    from benchmark.ui import console

    opts = Options(Path(kw["out"]), kw["budget"], kw["preset"], kw["device"], kw["data_root"], kw["cache_dir"],
                   kw["download"], kw["key"], kw["seed"], started)
    if kw["seed"] < 0:
        raise BenchError(f"--seed must be >= 0, got {kw['seed']}")
    gpu_check(opts, say=lambda text: console.print(text, markup=False))
    console.print(f"wrote {opts.out / 'summary.md'}, {opts.out / 'perf.md'} and the records in {opts.out / 'runs'} "
                  f"({time.perf_counter() - started:.0f} s of {opts.budget:g})", markup=False)
