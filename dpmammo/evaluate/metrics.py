"""Binary metrics with malignant (label 1) as the positive class.

AUPRC is malignant-positive (the reference study used benign-positive; AUROC is the same
either way, AUPRC is not). Thresholds: 0.5, and the one chosen on validation (Youden's J).
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from dpmammo.errors import DpMammoError


def check_both_classes(y: np.ndarray, what: str) -> None:
    if len(np.unique(y)) < 2:
        raise DpMammoError(f"{what} holds one class only: AUROC is undefined")


def at_threshold(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    pred = p >= threshold
    tp = int(np.sum(pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))
    pos, neg = int(np.sum(y == 1)), int(np.sum(y == 0))
    return {
        "threshold": float(threshold),
        "accuracy": (tp + tn) / len(y),
        "sensitivity": tp / pos,
        "specificity": tn / neg,
    }


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity − 1."""
    fpr, tpr, thr = roc_curve(y, p)
    best = int(np.argmax(tpr - fpr))
    return float(min(thr[best], 1.0))


def bootstrap_auroc_ci(y: np.ndarray, p: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI for AUROC, resampling patches with replacement."""
    rng = np.random.default_rng(seed)
    n = len(y)
    stats = []
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        if y[i].min() == y[i].max():
            continue
        stats.append(roc_auc_score(y[i], p[i]))
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def binary_metrics(y: np.ndarray, p: np.ndarray, *, val_threshold: float, n_boot: int = 1000,
                   seed: int = 0) -> dict:
    """All reported metrics for scores `p` = P(malignant) against labels `y` (1 = malignant)."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    if not np.all(np.isfinite(p)):
        raise DpMammoError("model produced non-finite scores; the run is broken, not evaluable")
    check_both_classes(y, "test set")
    auroc = float(roc_auc_score(y, p))
    lo, hi = bootstrap_auroc_ci(y, p, n_boot=n_boot, seed=seed)
    out = {
        "n": int(len(y)),
        "n_malignant": int(y.sum()),
        "auroc": auroc,
        "auroc_ci95": [lo, hi],
        "auprc": float(average_precision_score(y, p)),
        "positive_class": "malignant",
        "at_0.5": at_threshold(y, p, 0.5),
        "at_val_threshold": at_threshold(y, p, val_threshold),
    }
    assert not math.isnan(auroc)
    return out
