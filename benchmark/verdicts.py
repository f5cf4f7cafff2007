"""Whether one run's final accuracy may be used as a verdict: the stability and fit rules, in one place.

The leaderboard (``benchmark.report``), ``bench run``'s summary, ``bench results`` and ``bench claims``
all label a run with :func:`run_status`, so a cell the page refuses as a verdict is refused everywhere,
with the same one-line reason. The rules are pure functions of a run's per-epoch curve, its fit and the
measured noise, so they are tested on hand-made curves.

* **settle threshold** T = ``SETTLE_POINTS`` + the noise margin between two single runs
  (``TIE_SIGMAS``·σ·√2, :func:`margin_tolerance`): a move of the last epochs counts only when it is larger
  than what decides a verdict (``SETTLE_POINTS``, the neutralisation window) *and* beyond the measured noise,
  so a run is never flagged by a fraction of a point.
* **still rising**: the final epoch is more than T above each of the ``RISE_WINDOW`` epochs before it.
* **collapsed**: the final epoch is more than T below the peak of the tail (the last third of the
  schedule, at least ``RISE_WINDOW`` epochs before the final one).
* **unstable**: within the last ``RISE_WINDOW`` + 1 epochs the curve falls by more than T and rises by
  more than T (it swings, so the final epoch is one draw of a jumping curve).
* **still learning**: the run fits its training set more than ``TRAIN_GAP_POINTS`` worse than plain
  training on clean data *and* its last ``FLAT_EPOCHS`` test accuracies span more than T (it was still
  moving when it stopped).
* **underfits** (a verdict, with a caveat): the same fit gap with a flat end of the curve: the run has
  converged, at a high cost in fit; its cells are read against the defense's own clean cell.
* **diverged**: a non-finite loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

SETTLE_POINTS = 5.0
TIE_SIGMAS = 2.0
RISE_WINDOW = 3
FLAT_EPOCHS = 3
TRAIN_GAP_POINTS = 30.0

STABLE = ""
STILL_RISING = "still rising"
COLLAPSED = "collapsed"
UNSTABLE = "unstable"
STILL_LEARNING = "still learning"
UNDERFITS = "underfits"
DIVERGED = "diverged"
#: labels that make a run no verdict, most serious first (a cell takes the first label any of its runs has)
NOT_VERDICT = (DIVERGED, STILL_LEARNING, STILL_RISING, COLLAPSED, UNSTABLE)
#: every label a run can get, in the order a cell reports them
LABELS = (*NOT_VERDICT, UNDERFITS)


def margin_tolerance(sigma: float | None, n_a: int, n_b: int) -> float:
    """How far apart two cells' means must be to differ beyond noise: TIE_SIGMAS standard errors of the
    difference of two means of ``n_a`` and ``n_b`` independent runs, sigma·sqrt(1/n_a + 1/n_b) (two single
    runs differ by sigma·sqrt(2) on average; more seeds narrow it); 0 when no spread is measured."""
    return 0.0 if sigma is None else TIE_SIGMAS * sigma * math.sqrt(1 / n_a + 1 / n_b)


def settle_threshold(sigma: float | None) -> float:
    """T: how far the last epochs must move to flag a run (``SETTLE_POINTS`` plus two single runs' noise margin)."""
    return SETTLE_POINTS + margin_tolerance(sigma, 1, 1)


def tail_length(epochs: int) -> int:
    """Epochs before the final one that collapse and swing look at: the last third of the schedule."""
    return max(RISE_WINDOW, math.ceil(epochs / 3))


def curve_stability(curve: Sequence[float], threshold: float) -> tuple[str, str]:
    """(label, reason) of a per-epoch test-accuracy curve: still rising, collapsed, unstable or stable ("")."""
    accs = [float(a) for a in curve if a is not None and math.isfinite(float(a))]
    if len(accs) <= RISE_WINDOW:
        return STABLE, ""
    final, n = accs[-1], len(accs)
    before = accs[-1 - RISE_WINDOW:-1]
    if final - max(before) > threshold:
        return STILL_RISING, (f"final epoch {final:.1f} is {final - max(before):.1f} points above each of the "
                              f"{RISE_WINDOW} before it (threshold {threshold:.1f})")
    tail = accs[-1 - tail_length(n):]
    peak = max(tail[:-1])
    if peak - final > threshold:
        at = n - len(tail) + tail[:-1].index(peak) + 1
        return COLLAPSED, (f"final epoch {final:.1f} is {peak - final:.1f} points below the peak {peak:.1f} at epoch "
                           f"{at} of the last {len(tail)} (threshold {threshold:.1f})")
    end = accs[-1 - RISE_WINDOW:]
    fall = max(max(end[:i + 1]) - end[i] for i in range(len(end)))
    rise = max(end[i] - min(end[:i + 1]) for i in range(len(end)))
    if fall > threshold and rise > threshold:
        return UNSTABLE, (f"the last {len(end)} epochs swing by {fall:.1f} points down and {rise:.1f} up "
                          f"({min(end):.1f}–{max(end):.1f}; threshold {threshold:.1f})")
    return STABLE, ""


def fit_status(fit_acc: float | None, base_fit: float | None, curve: Sequence[float],
               threshold: float) -> tuple[str, str]:
    """(label, reason) of a run's fit: "" when it fits its training set about as well as plain training on
    clean data; else *still learning* (test curve still moving at the end) or *underfits* (flat end)."""
    if fit_acc is None or base_fit is None or not math.isfinite(fit_acc) or base_fit - fit_acc <= TRAIN_GAP_POINTS:
        return STABLE, ""
    gap = f"train accuracy {fit_acc:.1f} % vs {base_fit:.1f} % for plain training on clean data"
    end = [float(a) for a in curve if a is not None and math.isfinite(float(a))][-FLAT_EPOCHS:]
    span = max(end) - min(end) if end else math.inf
    if len(end) < FLAT_EPOCHS or span > threshold:
        return STILL_LEARNING, f"{gap}, and its last {FLAT_EPOCHS} epochs still span {span:.1f} points (threshold {threshold:.1f})"
    return UNDERFITS, (f"{gap}, with a flat end (last {FLAT_EPOCHS} epochs within {span:.1f} points): converged at a high "
                       "cost in fit; read it against the defense's own clean cell")


def run_status(curve: Sequence[float], fit_acc: float | None, base_fit: float | None, diverged: bool,
               sigma: float | None) -> tuple[str, str]:
    """(label, reason) of one run: the first of :data:`NOT_VERDICT` that applies, else *underfits* or ""."""
    threshold = settle_threshold(sigma)
    found = []
    if diverged:
        found.append((DIVERGED, "diverged (non-finite loss)"))
    found.append(fit_status(fit_acc, base_fit, curve, threshold))
    found.append(curve_stability(curve, threshold))
    found = [f for f in found if f[0]]
    if not found:
        return STABLE, ""
    return min(found, key=lambda f: LABELS.index(f[0]))


def is_verdict(label: str) -> bool:
    """Whether a run (or cell) with this label may be a verdict, a worst case, a claim cell or a ranking input."""
    return label not in NOT_VERDICT
