"""Study plots (matplotlib, PNG): the privacy-utility curve and ROC curves at one ε."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from dpmammo.report.tables import eps_columns  # noqa: E402
from dpmammo.study.config import StudyConfig, epsilon_label  # noqa: E402
from dpmammo.study.results import aggregate  # noqa: E402
from dpmammo.study.runner import eval_path  # noqa: E402


def x_positions(cfg: StudyConfig) -> dict[float, float]:
    """ε on a log axis; ∞ drawn one decade-ish right of the largest finite ε."""
    cols = eps_columns(cfg)
    finite = [e for e in cols if not math.isinf(e)]
    top = max(finite) if finite else 1.0
    return {e: (top * 4.0 if math.isinf(e) else e) for e in cols}


def privacy_utility(cfg: StudyConfig, rows: list[dict], path: Path) -> Path:
    """AUROC vs ε, one line per condition (error bars: std over seeds), one panel per test set.

    A condition measured only at ε = ∞ without private data (synthetic only) is drawn as a
    horizontal line: its utility does not depend on ε.
    """
    agg = aggregate(rows, "auroc")
    xs = x_positions(cfg)
    fig, axes = plt.subplots(1, len(cfg.test_sets), figsize=(5.2 * len(cfg.test_sets), 4), dpi=100, squeeze=False)
    for ax, test_set in zip(axes[0], cfg.test_sets):
        for i, cond in enumerate(cfg.conditions):
            pts = [(xs[e], agg[(cond, e, test_set)]) for e in xs if (cond, e, test_set) in agg]
            pts = [(x, s) for x, s in pts if s["mean"] is not None]
            if not pts:
                continue
            color = f"C{i}"
            if len(pts) == 1 and pts[0][0] == xs[math.inf]:
                s = pts[0][1]
                ax.axhline(s["mean"], color=color, ls="--", lw=1.2, label=f"{cond} (ε-independent)")
                ax.errorbar([pts[0][0]], [s["mean"]], yerr=[s["std"]], fmt="s", color=color, capsize=3)
                continue
            ax.errorbar([x for x, _ in pts], [s["mean"] for _, s in pts], yerr=[s["std"] for _, s in pts],
                        marker="o", capsize=3, color=color, label=cond)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xticks(list(xs.values()), [("∞" if math.isinf(e) else epsilon_label(e)) for e in xs])
        ax.minorticks_off()
        ax.set(xlabel="privacy budget ε (per patch; ∞ = non-private)", ylabel="AUROC (malignant)", title=test_set)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
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
            m = json.loads(eval_path(study_dir / at[0]["run_id"], test_set).read_text())
            ax.plot(m["roc"]["fpr"], m["roc"]["tpr"], color=f"C{i}", label=f"{cond} ({m['auroc']:.3f})")
            drawn += 1
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
        ax.set(xlabel="1 − specificity", ylabel="sensitivity (malignant)",
               title=f"{test_set}, ε={'∞' if math.isinf(eps) else epsilon_label(eps)}, seed {seed}")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path if drawn else None


def _eps(row: dict) -> float:
    return math.inf if row["epsilon_target"] in ("inf", math.inf) else float(row["epsilon_target"])
