"""Stage 7 of the report: PNG figures of one protocol group, from the leaderboard data (and, for the
per-epoch curves, the records). Deterministic: fixed sizes, no timestamp metadata.

* summary: per poison, accuracy without defense, with the best standard-tier defense, and the clean
  references (a dumbbell plot);
* curves: test accuracy per epoch, one panel per poison with the best few defenses on it (the full
  matrix is a table, coloured in the HTML page);
* ratio: accuracy against poison ratio (partial poisoning).
"""

from __future__ import annotations

import io
import math
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmark.io import atomic_write
from benchmark.report.collect import CLEAN, NO_DEFENSE, num

DPI = 110


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    plt.rcParams.update({"svg.hashsalt": "bench", "figure.dpi": 100})
    return plt, sns


def save(fig: Any, path: Path) -> Path:
    """PNG without timestamp metadata, written atomically."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    data = buf.getvalue()
    atomic_write(Path(path), lambda p: p.write_bytes(data))
    return Path(path)


def wrap(text: str, width: int = 70) -> str:
    return "\n".join(textwrap.wrap(text, width))


def palette(n: int) -> list:
    """``n`` distinguishable colours: tab10, then tab20's dark shades before its light ones."""
    _plt_, sns = pyplot()
    if n <= 10:
        return sns.color_palette("tab10", n)
    tab20 = sns.color_palette("tab20", 20)
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return [tab20[order[i % 20]] for i in range(n)]


def _entries(g: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["poison"], e["defense"]): e for e in g["entries"]}


def plot_summary(g: dict[str, Any], path: Path) -> Path | None:
    """Dumbbell per poison: no defense (red) -> best converged standard-tier defense (green, labelled),
    that defense on clean data (hollow green), plain training on clean data (dashed line)."""
    ranking = {e["poison"]: e for e in (g.get("poison_ranking") or {}).get("entries", [])}
    cells = _entries(g)
    base = cells.get((CLEAN, NO_DEFENSE))
    rows = [p["label"] for p in g["poisons"] if p["label"] != CLEAN and p["label"] in ranking]
    if not rows or base is None:
        return None
    rows.sort(key=lambda p: (cells[(p, NO_DEFENSE)]["test_acc"]["mean"] if (p, NO_DEFENSE) in cells else 101, p))
    plt, _sns = pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 0.55 * len(rows) + 1.6))
    clean = base["test_acc"]["mean"]
    ax.axvline(clean, color="#555", linestyle="--", linewidth=1.2, label=f"plain training, clean data ({clean:.1f})")
    for i, p in enumerate(rows):
        r = ranking[p]
        none = cells.get((p, NO_DEFENSE))
        x0 = none["test_acc"]["mean"] if none else None
        if r["best_defense"] == NO_DEFENSE:  # no defense run on it beats plain training (or none ran yet)
            ax.annotate(f"no defense above plain training ({r['covered']}/{r['total']} defenses run)",
                        (x0 if x0 is not None else 0, i), xytext=(0, 7), textcoords="offset points", ha="center",
                        fontsize=8, color="#555")
        best = r["worst"]["mean"] if r["worst"] and r["best_defense"] != NO_DEFENSE else None
        if x0 is not None and best is not None:
            ax.plot([x0, best], [i, i], color="#9a9a9a", linewidth=2.5, zorder=1)
        if x0 is not None:
            ax.scatter([x0], [i], color="#d62728", s=60, zorder=3, label="no defense" if i == 0 else None)
        if best is not None:
            ax.scatter([best], [i], color="#2ca02c", s=60, zorder=3, label="best standard-tier defense" if i == 0 else None)
            own = cells.get((CLEAN, r["best_defense"]))
            if own is not None:
                ax.scatter([own["test_acc"]["mean"]], [i], facecolors="none", edgecolors="#2ca02c", s=60, zorder=2,
                           label="that defense on clean data" if i == 0 else None)
            ax.annotate(f"{r['best_defense']} ({r['covered']}/{r['total']} defenses run)", (best, i), xytext=(0, 7),
                        textcoords="offset points", ha="center", fontsize=8, color="#1e6e1e")
    budgets = {b["poison"]: b for b in g.get("poison_costs") or []}
    ax.set_yticks(range(len(rows)), [f"{p}\n{budget_label(budgets.get(p), ranking[p].get('class'))}" for p in rows],
                  fontsize=8)
    ax.set_ylim(len(rows) - 0.4, -0.8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("clean test accuracy (%)")
    ax.set_title(wrap(f"{g['title']} — per poison: without defense vs the best defense that only has the "
                      "poisoned data (converged cells); lower = stronger poison", 80), fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.55 / (0.55 * len(rows) + 0.5)),
              ncol=2, fontsize=8, frameon=False)
    return save(fig, path)


def budget_label(b: dict[str, Any] | None, cls: str | None) -> str:
    """A poison's budget in a few words for a figure: class, L-inf, PSNR, SSIM."""
    if not b:
        return cls or ""
    m = {k: (v or {}).get("mean") for k, v in b["budget"].items()}
    parts = [cls or b["budget_type"]]
    if m.get("linf_255") is not None and not parts[0].startswith("L∞ ≤"):
        parts.append(f"L∞ {m['linf_255']:.0f}/255")
    if m.get("psnr") is not None:
        parts.append(f"{m['psnr']:.1f} dB")
    if m.get("ssim") is not None:
        parts.append(f"SSIM {m['ssim']:.2f}")
    return ", ".join(parts)


def plot_pareto(g: dict[str, Any], tier: str, path: Path) -> Path | None:
    """Worst case vs clean accuracy of the defenses of one tier, the Pareto front joined and labelled,
    dominated defenses hollow; the reference (plain training) as a cross."""
    r = (g.get("rankings") or {}).get(tier)
    if not r:
        return None
    points = [e for e in r["entries"] if e["clean"] and e["worst"] and e["status"] in ("ranked", "incomplete", "reference")]
    if len(points) < 2:
        return None
    plt, _sns = pyplot()
    front = set(r.get("pareto", {}).get("front", []))
    fig, ax = plt.subplots(figsize=(8.0, 6.0))
    xs = sorted((e["clean"]["mean"], e["worst"]["mean"]) for e in points if e["defense"] in front)
    if len(xs) > 1:
        ax.plot([x for x, _ in xs], [y for _, y in xs], color="#2ca02c", linewidth=1.5, zorder=1, label="Pareto front")
    placed: list[tuple[float, float]] = []
    for e in sorted(points, key=lambda e: (e["worst"]["mean"], e["clean"]["mean"])):
        x, y = e["clean"]["mean"], e["worst"]["mean"]
        on = e["defense"] in front
        crowd = sum(abs(x - px) < 3.0 and abs(y - py) < 1.5 for px, py in placed)  # stack labels of close points
        placed.append((x, y))
        if e["status"] == "reference":
            ax.scatter([x], [y], marker="x", color="#555", s=60, zorder=3)
        else:
            ax.scatter([x], [y], s=55, zorder=3, color="#2ca02c" if on else "none",
                       edgecolors="#2ca02c" if on else "#888", linewidths=1.4)
        label = e["defense"] + (" (incomplete)" if e["status"] == "incomplete" else "")
        ax.annotate(label, (x, y), xytext=(4, 4 + 10 * crowd), textcoords="offset points", fontsize=7.5,
                    arrowprops={"arrowstyle": "-", "color": "#aaa", "linewidth": 0.6} if crowd else None,
                    color="#1e6e1e" if on else "#555")
    ax.scatter([], [], s=55, color="#2ca02c", label="on the front")
    ax.scatter([], [], s=55, color="none", edgecolors="#888", label="dominated")
    ax.scatter([], [], marker="x", color="#555", label="plain training (reference)")
    ax.set_xlabel("clean accuracy of the defense (%)  — higher = cheaper on clean data")
    ax.set_ylabel("worst case over the poisons (%)  — higher = better")
    ax.set_title(wrap(f"{g['title']} — tier {tier}: worst case vs clean accuracy per defense (verdict cells only); "
                      "a defense is dominated when another is at least as good on both", 80), fontsize=10)
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    return save(fig, path)


def _curve(recs: list[dict[str, Any]]) -> tuple[list[int], list[float], list[float]]:
    per: dict[int, list[float]] = defaultdict(list)
    for r in recs:
        for e in (r.get("metrics") or {}).get("per_epoch") or []:
            if isinstance(e, dict) and num(e.get("epoch")) is not None and num(e.get("test_acc")) is not None:
                per[int(e["epoch"])].append(float(e["test_acc"]))
    epochs = sorted(per)
    means = [sum(per[e]) / len(per[e]) for e in epochs]
    stds = [math.sqrt(sum((v - m) ** 2 for v in per[e]) / (len(per[e]) - 1)) if len(per[e]) > 1 else 0.0
            for e, m in zip(epochs, means, strict=True)]
    return epochs, means, stds


#: defenses drawn per panel of the curves besides no defense: the best ones on that poison
CURVE_DEFENSES = 3


def curve_defenses(g: dict[str, Any], poison: str, standard: str) -> list[str]:
    """No defense, then the ``CURVE_DEFENSES`` standard-tier defenses with the highest final accuracy on
    ``poison`` (converged cells first, ties by name)."""
    tier = {d["label"]: d["tier"] for d in g["defenses"]}
    cells = [e for e in g["entries"] if e["poison"] == poison and e["defense"] != NO_DEFENSE
             and tier.get(e["defense"]) == standard]
    best = sorted(cells, key=lambda e: (not e["converged"], -e["test_acc"]["mean"], e["defense"]))[:CURVE_DEFENSES]
    return [NO_DEFENSE, *(e["defense"] for e in best)]


def plot_curves(g: dict[str, Any], records: dict[str, dict[str, Any]], path: Path,
                standard: str = "poisoned-only") -> Path | None:
    """Small multiples, one panel per poison: test accuracy per epoch without defense and under the best
    few standard-tier defenses on it (mean over seeds, band = std), plain training on clean data dashed."""
    plt, _sns = pyplot()
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    entries = _entries(g)
    cells = {k: [records[r] for r in e["records"] if r in records] for k, e in entries.items()}
    poisons = [p["label"] for p in g["poisons"] if p["label"] != CLEAN and _curve(cells.get((p["label"], NO_DEFENSE), []))[0]]
    if not poisons:
        return None
    ncols = min(4, len(poisons))
    nrows = math.ceil(len(poisons) / ncols)
    height = 3.3 * nrows + 0.6
    width = max(7.0, 4.2 * ncols)  # one panel alone gets room for its legend
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, sharey=True, layout="constrained")
    reference = _curve(cells.get((CLEAN, NO_DEFENSE), []))
    colours = palette(CURVE_DEFENSES + 1)
    colours = [(0.84, 0.15, 0.16), *[c for c in colours if c != colours[3]][:CURVE_DEFENSES]]
    for k, poison in enumerate(poisons):
        ax = axes[k // ncols][k % ncols]
        if reference[0]:
            ax.plot(reference[0], reference[1], color="#777", linestyle="--", linewidth=1.2, label="clean, no defense")
        for colour, d in zip(colours, curve_defenses(g, poison, standard), strict=False):
            epochs, mean, std = _curve(cells.get((poison, d), []))
            if not epochs:
                continue
            converged = entries[(poison, d)]["converged"]
            ax.plot(epochs, mean, marker="o", markersize=2.5, linewidth=1.6, color=colour,
                    linestyle="-" if converged else ":",
                    label=("no defense" if d == NO_DEFENSE else d) + ("" if converged else " † not converged"))
            if any(s > 0 for s in std):
                ax.fill_between(epochs, np.array(mean) - std, np.array(mean) + std, color=colour, alpha=0.18)
        ax.set_title(f"poison: {poison}", fontsize=10)
        ax.set_xlabel("epoch", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7, loc="upper left", frameon=True, framealpha=0.85)
        if k % ncols == 0:
            ax.set_ylabel("test accuracy (%)", fontsize=9)
    for k in range(len(poisons), nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    title = wrap(f"{g['title']} — test accuracy per epoch, one panel per poison: no defense and the "
                 f"{CURVE_DEFENSES} standard-tier defenses with the highest final accuracy on it (mean over seeds, "
                 "band = std); dashed: plain training on clean data; dotted: did not converge", int(width * 13))
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def plot_ratio(g: dict[str, Any], path: Path) -> Path | None:
    part = g["partial"]
    if not part["rows"]:
        return None
    plt, _sns = pyplot()
    poisons = sorted({r["poison"] for r in part["rows"]})
    fig, axes = plt.subplots(1, len(poisons), figsize=(5.5 * len(poisons), 3.8), squeeze=False, sharey=True)
    defenses = sorted({r["defense"] for r in part["rows"]}, key=lambda d: (d != NO_DEFENSE, d))
    colors = dict(zip(defenses, palette(len(defenses)), strict=True))
    for k, poison in enumerate(poisons):
        ax = axes[0][k]
        for row in (r for r in part["rows"] if r["poison"] == poison):
            xs = [x for x in part["ratios"] if f"{x:g}" in row["cells"]]
            ys = [row["cells"][f"{x:g}"] for x in xs]
            ax.errorbar([100 * x for x in xs], [y["mean"] for y in ys], yerr=[y["std"] for y in ys],
                        marker="o" if row["setting"] == "mixed" else "s", capsize=3, color=colors[row["defense"]],
                        linestyle="-" if row["setting"] == "mixed" else ":", label=f"{row['defense']}, {row['setting']}")
        ax.set_title(f"poison: {poison}", fontsize=10)
        ax.set_xlabel("poisoned fraction of the training set (%)")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=8, loc="lower left")
        if k == 0:
            ax.set_ylabel("clean test accuracy (%)")
    fig.suptitle(wrap(f"{g['title']} — partial poisoning (mixed vs clean-only)", 90), fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def make_plots(g: dict[str, Any], records: dict[str, dict[str, Any]], plots_dir: Path,
               standard: str) -> dict[str, Path]:
    """This group's figures; {kind: path}."""
    stem = Path(plots_dir) / g["slug"]
    out: dict[str, Path] = {}
    if g["entries"]:
        if (p := plot_summary(g, Path(f"{stem}-summary.png"))) is not None:
            out["summary"] = p
        if (p := plot_pareto(g, standard, Path(f"{stem}-pareto.png"))) is not None:
            out["pareto"] = p
        if (p := plot_curves(g, records, Path(f"{stem}-curves.png"), standard)) is not None:
            out["curves"] = p
    if (p := plot_ratio(g, Path(f"{stem}-ratio.png"))) is not None:
        out["ratio"] = p
    return out
