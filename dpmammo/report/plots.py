"""Study plots (matplotlib, PNG): the privacy-utility curve and ROC curves at one ε."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from dpmammo.privacy.config import UNIT_WORDS  # noqa: E402
from dpmammo.privacy.budget import format_epsilon, parse_epsilon  # noqa: E402
from dpmammo.study.config import StudyConfig  # noqa: E402
from dpmammo.study.results import aggregate  # noqa: E402
from dpmammo.runs import RunDir  # noqa: E402
from dpmammo.files import save_figure  # noqa: E402


def privacy_utility(cfg: StudyConfig, rows: list[dict], path: Path) -> Path:
    """AUROC vs the *chain-total* ε of each run (log axis), one line per condition (error bars: std
    over seeds), one panel per test set, shared y axis.

    A point sits at the guarantee its model has, not at its DP stage's target. Runs without a
    guarantee (non-private, or fed by a generator trained without DP) have no ε to sit at: they
    are drawn hollow at their target ε (non-private at the right end), and the legend says so.
    A condition that touched no private data (synthetic only) is a horizontal line.
    """
    agg = aggregate(rows, "auroc")
    finite = sorted(e for e in cfg.epsilons if not math.isinf(e))
    totals = [s["total_epsilon"] for s in agg.values() if s["total_epsilon"] is not None]
    top = max(finite + totals) if (finite or totals) else 1.0
    bottom = min(finite + totals) if (finite or totals) else 1.0
    x_nonprivate = top * 4.0  # the "non-private" slot, right of every finite ε
    fig, axes = plt.subplots(1, len(cfg.test_sets), figsize=(5.6 * len(cfg.test_sets), 4.2), dpi=100,
                             squeeze=False, sharey=True)
    hollow_used = False
    for ax, test_set in zip(axes[0], cfg.test_sets):
        for i, cond in enumerate(cfg.conditions):
            color = f"C{i}"
            cells = [(e, agg[(cond, e, test_set)]) for e in [*finite, math.inf] if (cond, e, test_set) in agg]
            cells = [(e, s) for e, s in cells if s["mean"] is not None]
            if len(cells) == 1 and cells[0][1]["total"] == "public":
                s = cells[0][1]
                ax.axhline(s["mean"], color=color, ls="--", lw=1.2, label=f"{cond} (no private data)")
                continue
            solid = [(s["total_epsilon"], s) for _, s in cells if s["total_epsilon"] is not None]
            hollow = [(x_nonprivate if math.isinf(e) else e, s) for e, s in cells if s["total_epsilon"] is None]
            if solid:
                solid.sort(key=lambda t: t[0])
                ax.errorbar([x for x, _ in solid], [s["mean"] for _, s in solid], yerr=[s["std"] for _, s in solid],
                            marker="o", capsize=3, color=color, label=cond)
            if hollow:
                hollow_used = True
                ax.errorbar([x for x, _ in hollow], [s["mean"] for _, s in hollow], yerr=[s["std"] for _, s in hollow],
                            fmt="o", mfc="white", capsize=3, color=color, label=None if solid else cond)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ticks = sorted({*finite, *[round(t, 1) for t in totals]})
        ax.set_xticks([*ticks, x_nonprivate], [*(f"{t:g}" for t in ticks), "non-\nprivate"])
        ax.set_xlim(bottom / 1.6, x_nonprivate * 1.6)
        ax.minorticks_off()
        ax.set(xlabel=f"total ε of the chain ({UNIT_WORDS[cfg.privacy.unit].split(' (')[0]}; log scale)",
               ylabel="AUROC (malignant)", title=test_set)
        ax.grid(alpha=0.3)
    if hollow_used:
        axes[0][0].plot([], [], "o", mfc="white", color="grey", label="hollow: no guarantee (at target ε)")
    axes[0][0].legend(fontsize=8, loc="best")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def roc_epsilon(cfg: StudyConfig) -> float:
    if cfg.roc_epsilon is not None:
        return cfg.roc_epsilon
    finite = [e for e in cfg.epsilons if not math.isinf(e)]
    return max(finite) if finite else math.inf


def roc_curves(cfg: StudyConfig, rows: list[dict], study_dir: Path, path: Path) -> Optional[Path]:
    """ROC per condition at one ε (first seed), one panel per test set. ε-independent conditions
    (synthetic only) use their single run."""
    eps = roc_epsilon(cfg)
    seed = cfg.seeds[0]
    ok = [r for r in rows if r["status"] == "ok" and r["seed"] == seed]
    fig, axes = plt.subplots(1, len(cfg.test_sets), figsize=(4.6 * len(cfg.test_sets), 4.4), dpi=100, squeeze=False)
    drawn = 0
    for ax, test_set in zip(axes[0], cfg.test_sets):
        for i, cond in enumerate(cfg.conditions):
            mine = [r for r in ok if r["condition"] == cond and r["test_set"] == test_set]
            at = [r for r in mine if _eps(r) == eps] or [r for r in mine if len({_eps(m) for m in mine}) == 1]
            if not at:
                continue
            m = RunDir(study_dir / at[0]["run_id"]).read_eval(test_set)
            ax.plot(m["roc"]["fpr"], m["roc"]["tpr"], color=f"C{i}", label=f"{cond} ({m['auroc']:.3f})")
            drawn += 1
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
        ax.set(xlabel="1 − specificity", ylabel="sensitivity (malignant)",
               title=f"{test_set}, {'non-private' if math.isinf(eps) else 'target ε=' + format_epsilon(eps)}, seed {seed}")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)
    return path if drawn else None


def _eps(row: dict) -> float:
    return parse_epsilon(row["epsilon_target"])
