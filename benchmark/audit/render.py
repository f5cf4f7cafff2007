"""``audit.md``: the audit as a page an author can paste into an appendix (a thin rendering of
``audit.json``), and the short texts the terminal summary shares with it."""

from __future__ import annotations

from typing import Any

from benchmark.report.collect import STANDARD_TIER


def acc_text(stat: dict[str, Any] | None, unit: str = "") -> str:
    """``43.21 ± 0.80 (seeds 0, 1, 2)``; ``–`` when not run."""
    if not stat:
        return "–"
    spread = f" ± {stat['std']:.2f}" if stat["n"] > 1 else ""
    seeds = ("seed " if stat["n"] == 1 else "seeds ") + ", ".join(map(str, stat["seeds"]))
    return f"{stat['mean']:.2f}{spread}{unit} ({seeds})"


def tier_text(tier: str) -> str:
    return "standard" if tier == STANDARD_TIER else tier


def subject_text(data: dict[str, Any]) -> str:
    s = data["subject"]
    params = ", ".join(f"{k}={v}" for k, v in sorted(s["params"].items()))
    return f"{data['kind']} {s['name']}" + (f" ({params})" if params else "")


def worst_lines(data: dict[str, Any]) -> list[str]:
    """One sentence per tier: the worst case, the cell that gives it, and its rank."""
    lines = []
    for tier, w in data["worst_case"].items():
        rank = data["rank"].get(tier) or {}
        what = "defense" if data["kind"] == "poison" else "poison"
        cell = w["cell"]["defense"] if data["kind"] == "poison" else w["cell"]["poison"]
        if not w.get("acc"):
            lines.append(f"{tier_text(tier)} tier: no worst case: no converged cell ({w['status']}; not run: "
                         f"{', '.join(w['not_run']) or 'none'}; unstable: {', '.join(w['not_converged']) or 'none'})")
            continue
        text = f"{tier_text(tier)} tier: worst case {acc_text(w['acc'], ' %')}, {what} {cell}"
        if rank.get("rank"):
            judged = len(rank.get("judged_by") or rank.get("judged_on") or [])
            cls = f" in budget class {rank['budget_class']}" if rank.get("budget_class") else ""
            text += (f"; rank {rank['rank']} of {rank['of']} ranked {'poisons' if data['kind'] == 'poison' else 'defenses'}{cls} in these records (results and leaderboard), judged by the "
                     f"same {judged} {'defenses' if data['kind'] == 'poison' else 'poisons'}")
        else:
            text += f"; not ranked ({w['status']}: {w['covered']} of {w['total']} cells usable)"
        lines.append(text)
    return lines or ["no worst case: no cell of the audit has a finished, converged record"]


def markdown(data: dict[str, Any]) -> str:
    """The whole audit as Markdown."""
    suite = data["suite"]
    out = [f"# Audit: {subject_text(data)}", "",
           f"Suite **{suite['name']}** version {suite['version']} ({suite['file']}) · preset **{data['preset']}** · "
           f"{data['protocol']['group'] or 'no finished record'} · seeds {', '.join(map(str, data['seeds']))} · "
           f"commit {', '.join(c[:12] for c in data['commit']) or 'unknown'} · hardware "
           f"{', '.join(data['hardware']['records']) or data['hardware']['this_machine']} · {data['created']}", ""]
    out += ["## Worst case", ""] + [f"- {line}" for line in worst_lines(data)] + [""]
    budget = data.get("budget")
    if budget:
        b = budget["budget"]
        parts = [f"type {budget['budget_type']}"]
        if budget.get("eps") is not None:
            parts.append(f"ε = {budget['eps']:.4g} ({budget['eps'] * 255:.3g}/255)")
        for key, name, fmt in (("linf_255", "L∞", "{:.0f}/255"), ("l2_mean", "mean L2", "{:.3f}"),
                               ("psnr", "PSNR", "{:.1f} dB"), ("ssim", "SSIM", "{:.3f}")):
            if b.get(key):
                parts.append(f"{name} {fmt.format(b[key]['mean'])}")
        if budget.get("l0_mean") is not None:
            parts.append(f"L0 {budget['l0_mean']:.0f} pixels per image (max {budget['l0_max']})")
        classes = {r.get("budget_class") for r in data["rank"].values()} - {None}
        parts.append(f"budget class {', '.join(sorted(classes))}" if classes else
                     "budget class: not assigned by this version of the report (poisons ranked together)")
        gen = budget.get("generation_s")
        out += ["## Budget and cost", "", "- " + "; ".join(parts),
                f"- generation: {gen['mean']:.1f} s" + (f" on {', '.join(budget['devices'])}" if budget["devices"] else "")
                if gen else "- generation: not timed", ""]
    out += ["## Cells", "", data["rule"], "",
            "| poison | defense | tier | accuracy (%) | same defense on clean (%) | verdict | clean-data cost | "
            "training time | note |", "|---|---|---|---|---|---|---|---|---|"]
    for r in data["cells"]:
        cost = f"{r['clean_cost']:+.1f}" if r.get("clean_cost") is not None else "–"
        comp = r.get("compute") or {}
        time = (f"{comp['training_s']:.0f} s" + (f" ({comp['relative']:.2f}× plain)" if comp.get("relative") else "")
                if comp.get("training_s") is not None else "–")
        tier = tier_text(r["tier"])
        out.append(f"| {r['poison']} | {r['defense']} | {tier} | {acc_text(r['acc'])} | {acc_text(r['clean'])} | "
                   f"**{r['verdict']}** | {cost} | {time} | {r['reason'] or ''} |")
    out.append("")
    if data["settle"]:
        out += ["## Verdicts resting on too few seeds", ""]
        out += [f"- {s['cell']}: {s['why']}" for s in data["settle"]]
        out += ["", "Run the missing seeds (only what is missing runs), then the same `bench audit` again:", "",
                "```", data["settle"][0]["command"], "```", ""]
    run = data["run"]
    out += ["## Provenance", "",
            f"{run['cells']} cells: {run['reused']} reused from finished records, {run['trained']} trained by this "
            f"audit, {run['failed']} failed. Records: `{data['results']}`"
            + (f"; ranked against `{'`, `'.join(data['leaderboard'])}`." if data["leaderboard"] else "."),
            "", f"Noise: {_noise(data['noise'])}", ""]
    return "\n".join(out)


def _noise(noise: dict[str, Any]) -> str:
    if noise.get("sigma") is None:
        return "no seed-to-seed spread measured for this protocol."
    text = (f"σ = {noise['sigma']:.2f} points ({noise.get('source') or 'victim'} spread, the largest measured source; "
            f"{noise['cells']} multi-seed cells)")
    return text + (f" (borrowed from {noise['borrowed_from']})" if noise.get("borrowed_from") else "") + "."
