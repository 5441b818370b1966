"""The audit's ROC plot: TPR against FPR on log axes, where low-FPR leakage shows."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dpmammo.audit.record import AuditRecord  # noqa: E402
from dpmammo.privacy.ledger import short  # noqa: E402
from dpmammo.files import save_figure  # noqa: E402


def roc_plot(record: AuditRecord, curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=100)
    floor = 1.0 / max(2, record.units)
    for i, result in enumerate(record.attacks):
        fpr, tpr = curves[result.attack]
        ax.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), color=f"C{i}",
                label=f"{result.attack}: AUC {result.auc.value:.3f}, ε ≥ {result.epsilon_lower_bound:.2f}")
    ax.plot([floor, 1], [floor, 1], ls="--", c="grey", lw=0.8, label="chance")
    ax.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor, 1.05),
           xlabel=f"false positive rate (non-member {record.unit}s)", ylabel=f"true positive rate (member {record.unit}s)",
           title=f"{record.method} audit; promised: {short(record.promised)}")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save_figure(fig, path)
    return path
