"""Metrics: malignant is the positive class; thresholds and CIs behave."""

from __future__ import annotations

import numpy as np
import pytest

from dpmammo.errors import DpMammoError
from dpmammo.evaluate import binary_metrics, bootstrap_auroc_ci, youden_threshold


def test_auprc_is_malignant_positive():
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0])  # 2 malignant of 8
    p = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.3, 0.2, 0.1])
    m = binary_metrics(y, p, val_threshold=0.5, n_boot=50)
    assert m["auroc"] == 1.0 and m["auprc"] == 1.0
    # A benign-positive AUPRC would score the same ranking differently: make sure we are not that.
    m_flipped = binary_metrics(1 - y, 1 - p, val_threshold=0.5, n_boot=50)
    assert m_flipped["auroc"] == 1.0 and m_flipped["n_malignant"] == 6


def test_sensitivity_and_specificity_at_threshold():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.6, 0.4, 0.2, 0.1, 0.3, 0.7, 0.2])
    m = binary_metrics(y, p, val_threshold=0.35, n_boot=50)
    assert m["at_0.5"]["sensitivity"] == 0.5 and m["at_0.5"]["specificity"] == 0.75
    assert m["at_val_threshold"]["sensitivity"] == 0.75 and m["at_val_threshold"]["specificity"] == 0.75


def test_youden_threshold_separates_separable_scores():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    t = youden_threshold(y, p)
    assert 0.3 < t <= 0.6


def test_bootstrap_ci_brackets_auroc_and_narrows_with_n():
    rng = np.random.default_rng(0)
    def sample(n):
        y = rng.integers(0, 2, n)
        return y, y * 0.5 + rng.normal(0, 0.5, n)
    y, p = sample(200)
    lo, hi = bootstrap_auroc_ci(y, p, n_boot=300)
    from sklearn.metrics import roc_auc_score
    assert lo < roc_auc_score(y, p) < hi
    y2, p2 = sample(2000)
    lo2, hi2 = bootstrap_auroc_ci(y2, p2, n_boot=300)
    assert hi2 - lo2 < (hi - lo) / 2


def test_one_class_test_set_is_refused():
    with pytest.raises(DpMammoError, match="one class"):
        binary_metrics(np.ones(5, int), np.linspace(0, 1, 5), val_threshold=0.5)
