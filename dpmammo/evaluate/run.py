"""Evaluate a finished run on named test sets: eval/<dataset>_<split>.json and a ROC PNG each."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import roc_curve

from dpmammo.data.images import N_VIEWS, load_images, load_labels
from dpmammo.data.sets import data_inputs, load_set, resolve_root, unit_of
from dpmammo.errors import DpMammoError
from dpmammo.evaluate.metrics import binary_metrics, check_both_classes, youden_threshold
from dpmammo.privacy.ledger import short
from dpmammo.files import check_out
from dpmammo.runs import EVAL, METRICS, RunDir
from dpmammo.device import resolve_device
from dpmammo.train import features as fc
from dpmammo.train.predict import predict_proba
from dpmammo.train.saved import load_run_model

if TYPE_CHECKING:  # annotations only
    import torch

    from dpmammo.data.manifest import PatchRecord
    from dpmammo.models import Classifier
    from dpmammo.train.config import TrainConfig


def evaluate_run(run_dir: str | Path, on: list[str], *, data_root: str | Path | None = None,
                 n_boot: int = 1000, device: str = "auto") -> dict[str, dict]:
    """Metrics of the run's model on each set in `on` (e.g. `cbis-ddsm/test`, `bcdr/test`).

    The decision threshold is chosen on the run's validation set (Youden's J) and reported
    beside the 0.5 threshold.
    """
    run_dir = Path(run_dir)
    try:
        cfg, model = load_run_model(run_dir)
    except FileNotFoundError:
        raise DpMammoError(f"{run_dir} is not a finished run (no {METRICS}); train it first") from None
    dev = resolve_device(device)
    model.to(dev)
    root = resolve_root(data_root if data_root is not None else cfg.data.root)
    run = RunDir(run_dir)
    check_out(run.path / EVAL, data_inputs(root, [*on, cfg.data.val]), f"{run_dir}: its eval folder")
    test_sets = {name: load_set(root, name) for name in on}  # every name checked before anything is written
    trained = {unit_of(r) for name in cfg.data.train for r in load_set(root, name)}
    for name, records in test_sets.items():
        shared = sorted(trained & {unit_of(r) for r in records})
        if shared:  # by patient after resolution: a path or another name for the training split is caught too
            raise DpMammoError(f"--on {name}: {len(shared)} of its patients are among the run's training patients "
                               f"(e.g. {shared[0][1]!r}); a result on them is not a test result: evaluate on a "
                               "patient-disjoint test set")
    val = load_set(root, cfg.data.val)
    yv = load_labels(val).numpy()
    check_both_classes(yv, cfg.data.val)
    flips = cfg.train.test_flips  # the run's own way of scoring an image, as on validation in training
    threshold = youden_threshold(yv, _proba(cfg, model, val, flips, dev))
    results = {}
    for name, records in test_sets.items():
        y = load_labels(records).numpy()
        p = _proba(cfg, model, records, flips, dev)
        m = binary_metrics(y, p, val_threshold=threshold, n_boot=n_boot)
        m.update(set=name, threshold_from=cfg.data.val, test_flips=flips)
        fpr, tpr, _ = roc_curve(y, p)
        m["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
        run.write_eval(name, m, roc=lambda path: plot_roc(fpr, tpr, m["auroc"], f"{run_title(run)}\non {name}", path))
        results[name] = m
    return results


def _proba(cfg: TrainConfig, model: Classifier, records: list[PatchRecord], flips: bool,
           dev: torch.device) -> np.ndarray:
    """P(malignant) of each record as predict_proba gives it; for a head on a fixed backbone with
    `train.feature_cache`, the head on the backbone's cached features (the same numbers: the runs of
    a study that share a backbone compute each set's features once)."""
    images = load_images(records, model.input_size)
    if fc.is_head_only(cfg):
        model.freeze_backbone()  # as in training (load_run_model builds the whole model unfrozen)
        feats = fc.cached_features(model, records, images, N_VIEWS if flips else 1, device=dev)
        return fc.head_proba(model, feats, flips=flips, device=dev)
    return predict_proba(model, images, flips=flips, device=dev)


def run_title(run: RunDir) -> str:
    """What a ROC title needs to be read alone: the run's path inside its study (condition/ε/seed)
    when it has one, and its guarantee."""
    parts = run.path.resolve().parts
    name = "/".join(parts[-3:]) if len(parts) >= 3 and parts[-1].startswith("seed") else run.name
    total = run.read_privacy().total if run.privacy.is_file() else None
    return f"{name} ({short(total)})" if total is not None else name


def plot_roc(fpr: np.ndarray, tpr: np.ndarray, auroc: float, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.plot(fpr, tpr, label=f"AUROC {auroc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="1 − specificity", ylabel="sensitivity (malignant)", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    try:
        fig.savefig(path, format="png")  # a temporary name without .png (RunDir.write_eval)
    finally:
        plt.close(fig)
