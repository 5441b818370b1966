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


def test_a_head_on_a_fixed_backbone_is_evaluated_from_cached_features_with_the_same_numbers(phantom_root, tmp_path,
                                                                                             monkeypatch):
    """`evaluate_run` scores a head-only run (fixed backbone, `train.feature_cache`) from the
    backbone's cached features of the set (written to the cache, where a run sharing the backbone
    finds them), with the probabilities predict_proba gives on the images."""
    from dpmammo.data.images import load_images, load_labels
    from dpmammo.data.sets import load_set
    from dpmammo.evaluate.run import evaluate_run
    from dpmammo.train import features as fc
    from dpmammo.train import fit
    from dpmammo.train.predict import predict_proba
    from dpmammo.train.saved import load_run_model
    from sklearn.metrics import roc_auc_score
    from tests.test_train import phantom_config

    monkeypatch.setenv("DPMAMMO_CACHE", str(tmp_path / "cache"))
    cfg = phantom_config(phantom_root, model__={"name": "scatter", "input_size": 32, "pool": 2},
                         optim__={"name": "sgd", "lr": 0.1}, train__epochs=2, train__test_flips=True)
    fit(cfg, tmp_path / "run", progress=False)
    result = evaluate_run(tmp_path / "run", ["phantom/test"], n_boot=10)["phantom/test"]
    records = load_set(phantom_root, "phantom/test")
    _, model = load_run_model(tmp_path / "run")
    assert fc.cache_path(model, records, 4).is_file()
    p = predict_proba(model, load_images(records, 32), flips=True)
    assert result["auroc"] == pytest.approx(roc_auc_score(load_labels(records).numpy(), p), abs=1e-6)
    assert 0.5 < result["auroc"] <= 1.0
