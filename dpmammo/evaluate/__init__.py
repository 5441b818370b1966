"""Metrics (malignant-positive) and ROC data for a trained run on named test sets.

Exports load on first use (dpmammo.lazy), like every dpmammo package.
"""

from dpmammo.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "dpmammo.evaluate.metrics": ["binary_metrics", "bootstrap_auroc_ci", "youden_threshold"],
    "dpmammo.evaluate.run": ["evaluate_run"],
})
