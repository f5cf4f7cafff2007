"""The answer of an audit as data (``audit.json``): worst case, every cell with its verdict, budget,
costs, rank, and the commands that settle a verdict resting on one seed.

Nothing here decides what a number may be used for: cells, convergence, noise, rankings and costs are
the report's (:mod:`benchmark.report.aggregate`, :mod:`benchmark.report.costs`), computed on the frame
of the audit's records together with the leaderboard's, and a cell's verdict is the claims check
(:func:`benchmark.report.claims.check_pair`) of the test "accuracy >= the same defense on clean data
minus ``aggregate.NEUTRALISED_WITHIN``": holds = neutralised, fails = survives.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.audit.plan import AuditPlan
from benchmark.audit.suites import Entry
from benchmark.records import now_iso, read_record
from benchmark.report import aggregate as agg
from benchmark.report import costs
from benchmark.report.claims import check_pair
from benchmark.report.collect import (
    CLEAN,
    NO_DEFENSE,
    STANDARD_TIER,
    Warn,
    collect_repeats,
    collect_runs,
)
from benchmark.report.frame import build_frame, hardware

SCHEMA = "unlearnable-bench/audit/1"
#: claims-check verdict -> audit verdict, for a defense's cell and for plain training's (the poison alone)
VERDICTS = {"holds": "neutralised", "fails": "survives", "within noise": "within noise", "not converged": "unstable",
            "not run": "not run"}
REFERENCE_VERDICTS = {"holds": "no effect", "fails": "effective", "within noise": "within noise",
                      "not converged": "unstable", "not run": "not run"}
#: a defense the report does not judge (aggregate.defense_status), in words
UNJUDGED = {"fails on clean": "fails on clean data", "not converged": "did not converge on clean data"}
SETTLE_SEEDS = 3  # a worst case needs 3 seeds (issue of the verdict rules)


def load_runs(audit: AuditPlan, warn: Warn) -> list[tuple[Path, dict[str, Any]]]:
    """Finished records of the audit's results folder, then the leaderboard's (a run id once)."""
    runs, seen = [], set()
    for folder in [audit.results, *audit.leaderboard_folders()]:
        if not folder.is_dir():
            continue
        for path, rec in collect_runs(folder, warn):
            if rec["run_id"] not in seen:
                seen.add(rec["run_id"])
                runs.append((path, rec))
    return runs


def load_repeats(audit: AuditPlan, warn: Warn) -> list[tuple[Path, dict[str, Any]]]:
    """Records a re-run on another machine replaced, in the same folders: the machine-to-machine spread
    the page's noise includes, so the audit's verdicts use the page's σ."""
    return [r for folder in [audit.results, *audit.leaderboard_folders()] if folder.is_dir()
            for r in collect_repeats(folder, warn)]


def _stat(row: pd.Series | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"mean": agg.rnd(row["mean"]), "std": agg.rnd(row["std"]), "n": int(row["n"]),
            "seeds": [int(s) for s in row["seeds"]], "converged": bool(row["converged"])}


def _get(c: pd.DataFrame, poison: str | None, defense: str | None) -> pd.Series | None:
    return c.loc[(poison, defense)] if poison and defense and (poison, defense) in c.index else None


def cell_labels(audit: AuditPlan, frame: pd.DataFrame) -> dict[tuple[int, int], tuple[str, str] | None]:
    """(pair index, 0) -> the (poison, defense) labels of that pair's records in the frame; (i, 1) -> its
    clean row's; None where no run of it finished."""
    by_id = frame.drop_duplicates("run_id").set_index("run_id") if not frame.empty else pd.DataFrame()
    out: dict[tuple[int, int], tuple[str, str] | None] = {}
    for i, ids in enumerate(audit.pair_cells):
        for clean in (0, 1):
            hit = [r for r in ids[clean] if r in by_id.index]
            out[(i, clean)] = (str(by_id.at[hit[0], "poison_label"]), str(by_id.at[hit[0], "defense_label"])) \
                if hit else None
    return out


def failures(audit: AuditPlan) -> dict[tuple[str, str], str]:
    """(poison, defense) name pair -> the error of a failed record of the audit (the cell is not run)."""
    out = {}
    for cell in audit.plan.cells:
        rec = read_record(cell.record_path)
        if rec is not None and rec.get("status") == "failed":
            out[(cell.spec.poison, cell.spec.defense)] = str(rec.get("error") or "failed")
    return out


#: the audit's verdict as a claim of the claims check: "accuracy >= the same defense on clean data minus
#: NEUTRALISED_WITHIN points", measured on this benchmark's own protocol (no source conditions to differ from)
NEUTRALISED_TEST: dict[str, Any] = {
    "_test": (">=", "clean", -1.0, float(agg.NEUTRALISED_WITHIN), "points"),
    "_protocol": {"metric": "final", "conditions": []},
}


def _packed(row: pd.Series | None) -> dict[str, Any] | None:
    return None if row is None else {"mean": float(row["mean"]), "n": int(row["n"]), "converged": bool(row["converged"])}


def verdict(c: pd.DataFrame, labels: tuple[str, str] | None, clean: tuple[str, str] | None,
            sigma: float | None) -> dict[str, Any]:
    """The claims check of one cell against the same defense on clean data (see the module docstring)."""
    cell, ref = _get(c, *(labels or (None, None))), _get(c, *(clean or (None, None)))
    check = check_pair(_packed(cell), _packed(ref), NEUTRALISED_TEST, sigma)
    reason = ""
    if check["verdict"] == "not converged":
        reason = "; ".join(f"{what}: {r['not_converged']}" for what, r in (("cell", cell), ("clean row", ref))
                           if r is not None and not r["converged"])
    return {**check, "reason": reason}


def _sub(c: pd.DataFrame, level: str, keep: set[str]) -> pd.DataFrame:
    return c[c.index.get_level_values(level).isin(keep)]


def budget_info(g: pd.DataFrame, label: str, preset: str, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The subject poison's budget as the report states it (declared type, measured L-inf, L2, PSNR, SSIM,
    generation cost), with its declared epsilon and the L0 an imported file's manifest measures."""
    entry = next((p for p in costs.poison_costs(g, preset) if p["poison"] == label), None)
    if entry is None:
        return None
    params = next(((r["config"]["poison"].get("params") or {}) for r in records), {})
    info = next(((r.get("poison") or {}).get("info") or {} for r in records), {})
    return {**entry, "eps": params.get("eps"), "l0_mean": info.get("l0_mean"), "l0_max": info.get("l0_max")}


def settle_command(audit: AuditPlan, pairs: list[tuple[Entry, Entry]], seeds: list[int]) -> str:
    """The `bench sweep` that runs the missing seeds of ``pairs`` (and their clean rows) into the audit's
    results folder; the same `bench audit` afterwards reuses them."""
    req = audit.request
    poisons = list(dict.fromkeys(p.name for p, _ in pairs))
    defenses = list(dict.fromkeys(d.name for _, d in pairs))
    args = ["bench", "sweep", "--poisons", ",".join(poisons), "--defenses", ",".join(defenses),
            "--seeds", ",".join(map(str, seeds)), "--preset", audit.plan.preset]
    for flag, entries in (("--poison-param", [p for p, _ in pairs]), ("--defense-param", [d for _, d in pairs])):
        for entry in {e.text(): e for e in entries}.values():
            args += [a for k, v in sorted(entry.params.items()) for a in (flag, f"{entry.name}.{k}={v}")]
    args += [a for k, v in sorted(req.overrides.items()) for a in ("--protocol-param", f"{k}={v}")]
    if req.dataset != "cifar10":
        args += ["--dataset", req.dataset]
    args += ["--results", str(audit.results)]
    text = " ".join(shlex.quote(a) for a in args)
    return text + (" --key $BENCH_POISON_KEY" if req.key else "")


def build_audit(audit: AuditPlan, summary: Any, warn: Warn) -> dict[str, Any]:
    """Everything the audit's files and terminal summary show, as JSON-ready data."""
    req = audit.request
    runs = load_runs(audit, warn)
    frame = build_frame(runs) if runs else pd.DataFrame()
    mine = frame[frame["run_id"].isin({c.run_id for c in audit.plan.cells})] if not frame.empty else frame
    labels = cell_labels(audit, frame)
    slug = str(mine["group"].mode().iloc[0]) if not mine.empty else None
    g = frame[frame["group"] == slug] if slug else pd.DataFrame()
    c = agg.cells(g) if slug else pd.DataFrame()
    noise = agg.group_noises(frame, repeats=load_repeats(audit, warn))[slug] if slug else \
        {"sigma": None, "tolerance": 0.0, "cells": 0}
    sigma = noise["sigma"]
    tiers = agg.defense_tiers(c) if not c.empty else {}
    failed = failures(audit)
    own_records = [read_record(cell.record_path) for cell in audit.plan.cells]
    rows, cost_by = [], {d["defense"]: d for d in (costs.defense_costs(g, agg.ordered_defenses(c)) if not c.empty else [])}
    rank_all = {t: agg.defense_ranking(c, t, sigma) for t in agg.tier_order() if t in tiers.values()}
    clean_cost = {e["defense"]: e["cost"] for r in rank_all.values() for e in r["entries"]}
    unjudged = {e["defense"]: e["status"] for r in rank_all.values() for e in r["entries"]
                if e["status"] in ("fails on clean", "not converged")}
    for i, (poison, defense) in enumerate(audit.pairs):
        lab, clean = labels[(i, 0)], labels[(i, 1)]
        check = verdict(c, lab, clean, sigma) if not c.empty else {"verdict": "not run", "reason": ""}
        names = VERDICTS if defense.name != NO_DEFENSE else REFERENCE_VERDICTS
        dlabel = lab[1] if lab else (clean[1] if clean else defense.text())
        error = failed.get((poison.name, defense.name))
        rows.append({
            "poison": lab[0] if lab else poison.text(), "defense": dlabel,
            "tier": tiers.get(dlabel) or defense.tier or STANDARD_TIER,
            "acc": _stat(_get(c, *lab)) if lab else None, "clean": _stat(_get(c, *clean)) if clean else None,
            "verdict": names.get(check["verdict"], check["verdict"]),
            "reason": "; ".join(t for t in (check["reason"], f"failed: {error}" if error else "",
                                            f"the defense {UNJUDGED[unjudged[dlabel]]}: the report neither ranks "
                                            "it nor takes a worst case from it" if dlabel in unjudged else "") if t),
            "threshold": check.get("threshold"), "margin": check.get("margin"), "tolerance": check.get("tolerance"),
            "clean_cost": clean_cost.get(dlabel), "compute": _compute(cost_by.get(dlabel)),
            "records": list(_get(c, *lab)["records"]) if lab and _get(c, *lab) is not None else [],
        })
    subject = _subject_label(audit, labels)
    data: dict[str, Any] = {
        "schema": SCHEMA, "created": now_iso(), "kind": req.kind,
        "subject": {"name": req.name, "params": {k: v for k, v in req.params.items()}, "label": subject},
        "suite": req.suite.record(), "preset": audit.plan.preset, "seeds": list(req.seeds),
        "protocol": {"group": str(g["group_title"].iloc[0]) if slug else None, "overrides": dict(req.overrides),
                     "dataset": req.dataset},
        "commit": _commits(own_records), "hardware": _hardware(own_records, audit.machine),
        "noise": {k: noise.get(k) for k in ("sigma", "source", "tolerance", "cells", "borrowed_from") if k in noise},
        "rule": rule_text(sigma, noise.get("source")), "cells": rows,
        "run": _run_counts(audit, summary),
        "leaderboard": [str(p) for p in audit.leaderboard_folders()], "results": str(audit.results),
    }
    data.update(_poison_answer(audit, g, c, sigma, rows, subject, own_records) if req.kind == "poison"
                else _defense_answer(c, sigma, rows, subject))
    data["settle"] = _settle(audit, data)
    return data


def _compute(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    return {"training_s": entry["training_s"], "evaluation_s": entry["evaluation_s"], "relative": entry["relative"],
            "hardware": entry["reference_hardware"]}


def _subject_label(audit: AuditPlan, labels: dict) -> str | None:
    for i, _pair in enumerate(audit.pairs):
        if labels[(i, 0)]:
            return labels[(i, 0)][0] if audit.request.kind == "poison" else labels[(i, 0)][1]
    return None


def _commits(recs: list[dict[str, Any] | None]) -> list[str]:
    return sorted({str((r.get("environment") or {}).get("git_commit") or "unknown") for r in recs if r})


def _hardware(recs: list[dict[str, Any] | None], here: str) -> dict[str, Any]:
    return {"this_machine": here, "records": sorted({hardware(r.get("environment") or {}) or "unknown"
                                                     for r in recs if r and r.get("status") == "finished"})}


def _run_counts(audit: AuditPlan, summary: Any) -> dict[str, Any]:
    done = getattr(summary, "done", 0)
    return {"cells": len(audit.plan.cells), "reused": len(audit.plan.cells) - len(audit.plan.todo),
            "trained": done, "failed": getattr(summary, "failed", 0),
            "wall_s": getattr(summary, "wall_seconds", 0.0)}


def rule_text(sigma: float | None, source: str | None = None) -> str:
    base = (f"A cell is neutralised when its accuracy is at least the same defense's accuracy on clean data minus "
            f"{agg.NEUTRALISED_WITHIN:g} points, survives when it is below that, within noise when it is closer "
            f"to that threshold than {agg.TIE_SIGMAS:g} standard errors of the difference, unstable when a run or "
            "its clean row did not converge (the report's rule), and not run without a finished record.")
    if sigma is None:
        return base + (" No seed-to-seed spread is measured for this protocol (no cell with several seeds), so no "
                       "cell can be within noise: verdicts say only which side of the threshold a cell lies on.")
    return base + (f" Noise: σ = {sigma:.2f} points, the largest spread measured on enough cells among victim seeds, "
                   f"poison instances and machines (here: {source or 'victim'}), as on the leaderboard.")


def _poison_answer(audit: AuditPlan, g: pd.DataFrame, c: pd.DataFrame, sigma: float | None,
                   rows: list[dict[str, Any]], subject: str | None, records: list) -> dict[str, Any]:
    """Worst case per tier over the suite's defenses, and the rank it takes among the leaderboard's poisons
    judged by the same defenses (the report's poison ranking on those cells)."""
    out: dict[str, Any] = {"worst_case": {}, "rank": {}, "budget": None}
    if subject is None or c.empty:
        return out
    suite = {r["defense"] for r in rows} | {NO_DEFENSE}
    sub = _sub(c, "defense_label", suite)
    for tier in [t for t in agg.tier_order() if t in agg.defense_tiers(sub).values()]:
        ranking = agg.defense_ranking(sub, tier, sigma)
        pr = agg.poison_ranking(sub, sigma, ranking, costs.budget_classes(g, audit.plan.preset))
        entry = next((e for e in pr["entries"] if e["poison"] == subject), None)
        if entry is None:
            continue
        ranked = [e for e in pr["entries"] if e["status"] == "ranked" and e.get("class") == entry.get("class")]
        out["worst_case"][tier] = {"acc": entry["worst"], "cell": {"poison": subject, "defense": entry["best_defense"]},
                                   "status": entry["status"], "covered": entry["covered"], "total": entry["total"],
                                   "not_run": entry["not_run"], "not_converged": entry["not_converged"],
                                   "drop": entry["drop"], "undefended": entry["undefended"]}
        out["rank"][tier] = {"rank": entry.get("rank"), "of": len(ranked), "budget_class": entry.get("class"),
                             "judged_by": list(pr["defenses"]), "above": _neighbours(ranked, entry)}
    own = [r for r in records if r and r.get("status") == "finished" and r["config"]["poison"]["name"] != "none"]
    out["budget"] = budget_info(g, subject, audit.plan.preset, own)
    return out


def _neighbours(ranked: list[dict[str, Any]], entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The poisons ranked just stronger and just weaker than the subject, for context."""
    if entry not in ranked:
        return []
    i = ranked.index(entry)
    return [{"poison": e["poison"], "rank": e["rank"], "worst": e["worst"]["mean"]}
            for e in ranked[max(0, i - 1):i + 2] if e is not entry]


def _defense_answer(c: pd.DataFrame, sigma: float | None, rows: list[dict[str, Any]],
                    subject: str | None) -> dict[str, Any]:
    """Worst case (lowest accuracy) over the suite's poisons and the rank it takes in its tier among the
    leaderboard's defenses judged on the same poisons (the report's defense ranking on those cells)."""
    out: dict[str, Any] = {"worst_case": {}, "rank": {}}
    if subject is None or c.empty:
        return out
    suite = {r["poison"] for r in rows} | {CLEAN}
    sub = _sub(c, "poison_label", suite)
    tier = agg.defense_tiers(sub).get(subject)
    if tier is None:
        return out
    ranking = agg.defense_ranking(sub, tier, sigma)
    entry = next(e for e in ranking["entries"] if e["defense"] == subject)
    ranked = [e for e in ranking["entries"] if e["status"] == "ranked"]
    out["worst_case"][tier] = {"acc": entry["worst"], "cell": {"poison": entry["worst_poison"], "defense": subject},
                               "status": entry["status"], "covered": entry["covered"], "total": entry["total"],
                               "not_run": entry["not_run"], "not_converged": entry["not_converged"],
                               "clean": entry["clean"], "clean_cost": entry["cost"], "mean": entry["mean"]}
    out["rank"][tier] = {"rank": entry.get("rank"), "of": len(ranked), "judged_on": list(ranking["poisons"]),
                         "above": [{"defense": e["defense"], "rank": e["rank"], "worst": e["worst"]["mean"]}
                                   for e in ranked if e is not entry][:3]}
    return out


def _settle(audit: AuditPlan, data: dict[str, Any]) -> list[dict[str, Any]]:
    """Verdicts that rest on too few seeds: a worst case on fewer than ``SETTLE_SEEDS``, a cell within noise
    on one; each with the command that runs the seeds to settle it."""
    out = []
    need: list[tuple[str, tuple[Entry, Entry]]] = []
    worst_cells = {(w["cell"]["poison"], w["cell"]["defense"]) for w in data["worst_case"].values() if w.get("acc")}
    for (pair, row) in zip(audit.pairs, data["cells"], strict=True):
        acc = row["acc"]
        if acc is None:
            continue
        if (row["poison"], row["defense"]) in worst_cells and acc["n"] < SETTLE_SEEDS:
            need.append((f"the worst case rests on {acc['n']} seed{'s' if acc['n'] > 1 else ''} (a worst case needs "
                         f"{SETTLE_SEEDS})", pair))
        elif row["verdict"] == "within noise" and acc["n"] == 1:
            need.append(("within noise on one seed", pair))
    if need:
        seeds = sorted(set(audit.request.seeds) | set(range(SETTLE_SEEDS)))
        command = settle_command(audit, [p for _, p in need], seeds)
        for why, (poison, defense) in need:
            out.append({"cell": f"{poison.text()} × {defense.text()}", "why": why, "command": command})
    return out
