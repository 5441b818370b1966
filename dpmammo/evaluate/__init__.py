"""Metrics (malignant-positive) and ROC data for a trained run on named test sets."""

from dpmammo.evaluate.metrics import binary_metrics, bootstrap_auroc_ci, youden_threshold
from dpmammo.evaluate.run import evaluate_run

__all__ = ["binary_metrics", "bootstrap_auroc_ci", "youden_threshold", "evaluate_run"]
