"""The files ``bench gpu-check`` leaves in its output folder besides the records: ``summary.md`` (our
cells, each with its protocol, beside the CUDA paper's published cells) and ``perf.md`` (the measured
speeds and the cost model the plan used). Numbers come from the records, the measurement and
``benchmark/report/references.toml``; nothing here is typed in."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmark.io import atomic_write
from benchmark.protocol import full_protocol
from benchmark.records import load_records
from benchmark.report.collect import dataset_sources
from benchmark.report.references import differences, load_references

#: the published cells the check is read against (rows of references.toml)
REFERENCE_PAPER = "Sadasivan et al., CVPR 2023 (CUDA)"
REFERENCE_TABLE = "Table 2"


def _write(path: Path, lines: list[str]) -> None:
    text = "\n".join(lines).rstrip() + "\n"
    atomic_write(path, lambda p: p.write_text(text))


def reference(cell: Any) -> dict[str, Any] | None:
    """The CUDA paper's row for ``cell`` (same poison, defense and defense parameters)."""
    for ref in load_references()[1]:
        params = {k: str(v) for k, v in (ref.get("defense_params") or {}).items()}
        tables = [t.strip() for t in str(ref["table"]).split("/")]  # "Table 2 / Table 4": in both
        if (ref["paper"], ref["poison"], ref["defense"]) == (REFERENCE_PAPER, cell.poison, cell.defense) \
                and REFERENCE_TABLE in tables and params == dict(cell.defense_params):
            return ref
    return None


def _numerics(proto: dict[str, Any]) -> str:
    full = full_protocol(proto)
    return f"amp {full['amp']}, tf32 {'on' if full['tf32'] else 'off'}, {full['memory_format']}"


def _cell_records(runs: list[tuple[Path, dict[str, Any]]], cell: Any) -> list[dict[str, Any]]:
    """Finished records of ``cell``, the full protocol's first, then shortened ones by epochs."""
    recs = [r for _, r in runs if r["status"] == "finished" and r["config"]["poison"]["name"] == cell.poison
            and r["config"]["defense"]["name"] == cell.defense]
    return sorted(recs, key=lambda r: ("-short-" in r["config"]["preset"], -r["config"]["protocol"]["epochs"]))


def write_summary(path: Path, state: dict[str, Any], runs_dir: Path, cells: Iterable[Any]) -> None:
    runs = load_records(runs_dir) if runs_dir.is_dir() else []
    perf = state.get("perf") or {}
    call = state["calls"][-1]
    lines = [f"# gpu-check: preset `{state['preset']}`", "",
             f"Machine: {perf.get('machine', 'not measured')} ({perf.get('device', '?')}). Call {len(state['calls'])}: "
             f"budget {call['budget_s']:g} s, used {call.get('wall_s', 0):g} s.", "",
             f"## Our cells beside the CUDA paper ({REFERENCE_PAPER}, {REFERENCE_TABLE})", "",
             "| cell | protocol | epochs | numerics | test acc. (final) | peak (epoch) | paper | comparable? |",
             "|---|---|---|---|---|---|---|---|"]
    sources = set()
    status = {s["name"]: s for s in state.get("plan", [])}
    for cell in cells:
        ref = reference(cell)
        paper = f"{ref['value']:.2f}" if ref else "-"
        recs = _cell_records(runs, cell)
        for rec in recs:
            cfg, m = rec["config"], rec["metrics"]
            sources.add(str(cfg.get("dataset_source") or ""))
            group = {"dataset": cfg["dataset"], "dataset_source": cfg.get("dataset_source") or "",
                     "model": cfg["model"], "epochs": cfg["protocol"]["epochs"], "preset": cfg["preset"]}
            diff = differences(ref, group) if ref else ["no published cell"]
            lines.append(f"| {cell.title} | `{cfg['preset']}` | {cfg['protocol']['epochs']} | "
                         f"{_numerics(cfg['protocol'])} | {m['test_acc']:.2f} | {m['peak_test_acc']:.2f} "
                         f"({m['peak_epoch']}) | {paper} | {'yes' if not diff else 'no: ' + '; '.join(diff)} |")
        if not recs:
            step = status.get(cell.name, {})
            where = state.get("cells", {}).get(cell.name, {})
            text = step.get("note") or "not planned"
            if where.get("status") == "stopped":
                text = f"stopped after epoch {where['epochs_done']} of {where['epochs']} (resumes on the next call)"
            elif where.get("status") == "failed":
                text = f"failed: {where['error']}"
            lines.append(f"| {cell.title} | - | - | - | {text} | - | {paper} | - |")
    lines += ["", "## This call's plan", ""]
    lines += [f"- {s['name']}: {s['action']}" + (f" at {s['epochs']} epochs" if s["epochs"] else "")
              + f" ({s['note']})" for s in state.get("plan", [])]
    lines += ["", "## How to read it", "",
              "Accuracy is clean test accuracy (%); lower means a stronger poison. A cell is comparable to the "
              "paper only with the paper's dataset from a source comparable to papers, its model, its number "
              "of epochs and the `paper` preset (benchmark/report/references.py). A protocol named "
              "`<preset>-short-<E>ep` is a shortened schedule run because the full one did not fit the budget: "
              "its own protocol, never the paper's, and never in a table with `paper`. Numerics (bf16 autocast, "
              "TF32, channels-last) are part of the protocol; see docs/gpu-check.md."]
    for source in sorted(s for s in sources if s):
        note = dataset_sources().get(source, {}).get("note")
        if note:
            lines += ["", f"Dataset source `{source}`: {note}"]
    _write(path, lines)


def write_perf(path: Path, perf: dict[str, Any], cost_model: list[dict[str, Any]]) -> None:
    train = perf["train"]
    rows = train["rows"]
    flops = train["train_flops"]
    lines = [f"# gpu-check: speed at preset `{train['preset']}`", "",
             f"{perf['machine']} ({perf['device']}), measured {perf['measured']}"
             + (f" in {perf['seconds']:g} s" if "seconds" in perf else "") + ".", "",
             f"## Training throughput (`bench perf train`): {train['model']}, batch {train['batch_size']}"
             + (f", {_numerics(perf['protocol'])}" if "protocol" in perf else ""), "",
             "| pipeline | img/s | ms / step | GFLOP/s |", "|---|---|---|---|"]
    for r in rows:
        mark = " *" if r["trainer_format"] and not r["name"].startswith("trainer") else ""
        lines.append(f"| {r['name']}{mark} | {r['images_per_second']:.0f} | {1000 * r['seconds_per_step']:.1f} | "
                     f"{flops * r['images_per_second'] / 1e9:.0f} |")
    trainer = rows[0]["images_per_second"]
    bare = next((r for r in rows[1:] if r["trainer_format"]), rows[1])["images_per_second"]
    loader = rows[-1]["images_per_second"]
    lines += ["", f"trainer / bare (*, the trainer's layout): {trainer / bare:.2f}x; trainer / DataLoader + PIL: "
              f"{trainer / loader:.2f}x. Training step {flops / 1e6:.0f} MFLOP per image; best of {train['rounds']} "
              f"rounds of {train['steps']} steps after {train['warmup']} warm-up steps, random images.", "",
              f"Evaluation: {perf['eval_img_s']:.0f} img/s. Trainer with each cell's defense: "
              + ", ".join(f"{k} {v:.0f} img/s" for k, v in perf["trainer_img_s"].items()) + "; the defense's own "
              "final evaluation: " + ", ".join(f"{k} {v:.1f} s" for k, v in perf.get("final_eval_s", {}).items())
              + ".", "",
              "## Cost model of the plan", "",
              "| cell | epochs (full) | s / epoch | per run (s) | full protocol (min) | checkpoint epochs |",
              "|---|---|---|---|---|---|"]
    for c in cost_model:
        done = ", ".join(f"{v} of {k}" for k, v in c["done"].items() if v) or "-"
        source = "measured" if c.get("measured") else "estimated"
        lines.append(f"| {c['name']} | {c['full_epochs']} | {c['epoch_s']:.1f} ({source}) | "
                     f"{c['fixed_s']:.1f} | {c['full_s'] / 60:.1f} | {done} |")
    lines += ["", "An estimated epoch is (training images / trainer img/s with the cell's defense + test images / "
              "evaluation img/s) x 1.15; once an epoch of that defense has run here, the median measured epoch "
              "replaces it. Per run: 5 s of setup (data, poison generation, record) plus the final evaluation "
              "(test set, a training probe of up to 10k images, and the defense's own evaluation, timed once) x 1.15."]
    _write(path, lines)
