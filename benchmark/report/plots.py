"""Stage 7 of the report: PNG figures of one protocol group, from the leaderboard data (and, for the
per-epoch curves, the records). Deterministic: fixed sizes, no timestamp metadata.

* summary: per poison, accuracy without defense, with the best standard-tier defense, and the clean
  references (a dumbbell plot);
* heatmap: the full defense x poison matrix, tiers and failing defenses marked, cells that did not
  converge boxed;
* curves: test accuracy per epoch, one panel per defense;
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
from benchmark.report.aggregate import other_sets
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


def plot_heatmap(g: dict[str, Any], standard: str, path: Path) -> Path:
    """Defenses (rows, tiers after the standard one) x poisons; † and a box = not a verdict, § = underfits,
    ‡ = another poisoned set than the column's no-defense cell."""
    plt, sns = pyplot()
    import numpy as np

    cells = _entries(g)
    defenses = [d for d in g["defenses"] if d["tier"] == standard] + [d for d in g["defenses"] if d["tier"] != standard]
    poisons = [p["label"] for p in g["poisons"]]
    data = np.full((len(defenses), len(poisons)), np.nan)
    annot = np.full(data.shape, "", dtype=object)
    bad = []
    marked_other = False
    for i, d in enumerate(defenses):
        for j, p in enumerate(poisons):
            e = cells.get((p, d["label"]))
            if e is not None:
                data[i, j] = e["test_acc"]["mean"]
                other = bool(other_sets(e.get("poison_sets")))
                annot[i, j] = f"{e['test_acc']['mean']:.1f}" + ("" if e["converged"] else "†") + \
                    ("§" if e.get("caveat") else "") + ("‡" if other else "")
                marked_other = marked_other or other
                if not e["converged"]:
                    bad.append((i, j))
    status = {e["defense"]: e["status"] for r in g["rankings"].values() for e in r["entries"]}
    labels = [d["label"] + ("" if d["final_epoch"] else " *") + ("" if d["tier"] == standard else f" [{d['tier']}]")
              + (f" ({status[d['label']]})" if status.get(d["label"]) in ("fails on clean", "not converged") else "")
              for d in defenses]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(poisons) + 4.0), 0.34 * len(defenses) + 1.9))
    sns.heatmap(data, annot=annot, fmt="", cmap="viridis", vmin=0, vmax=100, ax=ax, linewidths=0.5,
                cbar_kws={"label": "clean test accuracy (%)"}, xticklabels=poisons, yticklabels=labels,
                annot_kws={"fontsize": 8})
    for i, j in bad:
        ax.add_patch(plt.Rectangle((j + 0.04, i + 0.06), 0.92, 0.88, fill=False, edgecolor="#ff7f0e", linewidth=2.2))
    ax.grid(False)
    ax.set_facecolor("#f2f2f2")
    n_std = sum(d["tier"] == standard for d in defenses)
    if 0 < n_std < len(defenses):
        ax.axhline(n_std, color="white", linewidth=4)
    ax.set_xlabel("poison")
    ax.set_ylabel("defense")
    own = any(not d["final_epoch"] for d in defenses)
    ax.set_title(wrap(f"{g['title']} — clean test accuracy (%), final epoch"
                      + (" (* = the defense's own headline, e.g. a vote or a chosen epoch)" if own else "")
                      + "; grey = not run; † orange box = not a verdict (still rising, collapsed, unstable, still "
                      "learning or diverged); § = underfits (a verdict with a caveat)"
                      + ("; ‡ = another poisoned set than the column's no-defense cell" if marked_other else "")
                      + "; rows below the white line use extra data", 75), fontsize=10)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    plt.setp(ax.get_yticklabels(), rotation=0)
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


def plot_curves(g: dict[str, Any], records: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """One panel per defense: test accuracy per epoch of each poison (mean over seeds, band = std)."""
    plt, _sns = pyplot()
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    cells = {k: [records[r] for r in e["records"] if r in records] for k, e in _entries(g).items()}
    if not any(_curve(v)[0] for v in cells.values()):
        return None
    defenses = [d["label"] for d in g["defenses"]]
    poisons = [p["label"] for p in g["poisons"]]
    ncols = min(3, len(defenses))
    nrows = math.ceil(len(defenses) / ncols)
    legend_rows = math.ceil(len(poisons) / 6)
    height = 2.9 * nrows + 1.0 + 0.2 * legend_rows
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols, height), squeeze=False, sharey=True)
    colors = dict(zip(poisons, palette(len(poisons)), strict=True))
    colors[CLEAN] = (0.1, 0.1, 0.1)
    for k, d in enumerate(defenses):
        ax = axes[k // ncols][k % ncols]
        for p in poisons:
            epochs, mean, std = _curve(cells.get((p, d), []))
            if not epochs:
                continue
            style = {"linewidth": 2.2, "linestyle": "-"} if p == CLEAN else {"linewidth": 1.4, "linestyle": "--"}
            ax.plot(epochs, mean, marker="o", markersize=3, color=colors[p], **style)
            if any(s > 0 for s in std):
                ax.fill_between(epochs, np.array(mean) - std, np.array(mean) + std, color=colors[p], alpha=0.15)
        ax.set_title(d, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 100)
        if k % ncols == 0:
            ax.set_ylabel("test accuracy (%)")
    for k in range(len(defenses), nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    handles = [plt.Line2D([], [], color=colors[p], linewidth=2.2 if p == CLEAN else 1.4,
                          linestyle="-" if p == CLEAN else "--", marker="o", markersize=3) for p in poisons]
    fig.legend(handles, poisons, title="poison", loc="lower center", ncol=min(len(poisons), 6), fontsize=8,
               title_fontsize=9, bbox_to_anchor=(0.5, 0.0), frameon=False)
    fig.suptitle(wrap(f"{g['title']} — test accuracy per epoch, one panel per defense (mean over seeds, band = std)",
                      90), fontsize=10)
    fig.tight_layout(rect=(0, (0.45 + 0.2 * legend_rows) / height, 1, 1 - 0.55 / height))
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
        out["heatmap"] = plot_heatmap(g, standard, Path(f"{stem}-heatmap.png"))
        if (p := plot_pareto(g, standard, Path(f"{stem}-pareto.png"))) is not None:
            out["pareto"] = p
        if (p := plot_curves(g, records, Path(f"{stem}-curves.png"))) is not None:
            out["curves"] = p
    if (p := plot_ratio(g, Path(f"{stem}-ratio.png"))) is not None:
        out["ratio"] = p
    return out
