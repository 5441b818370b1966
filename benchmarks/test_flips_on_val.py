"""Validation AUROC of finished classifier runs scored without and with test-time flips.

How `train.test_flips` was chosen: each run's released weights score cbis-ddsm/val (or the sets
given) from view 0 alone and from the mean logit over the 4 flips, the rule `train.test_flips`
applies (`dpmammo.train.predict.predict_proba`). Post-processing of finished runs: nothing trains.

    DPMAMMO_DATA=/path/to/mammo_dp python benchmarks/test_flips_on_val.py "runs/utility/real/*/seed*"
"""

from __future__ import annotations

import argparse
import glob

import numpy as np
from sklearn.metrics import roc_auc_score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", help="a glob of finished run folders (quote it)")
    ap.add_argument("--on", nargs="+", default=["cbis-ddsm/val"], help="sets to score (never choose on a test set)")
    args = ap.parse_args()

    from dpmammo.data.images import load_images, load_labels
    from dpmammo.data.sets import load_set, resolve_root
    from dpmammo.models.config import flip_invariant
    from dpmammo.train.predict import predict_proba
    from dpmammo.train.saved import load_run_model

    rows = []
    for run in sorted(glob.glob(args.runs)):
        cfg, model = load_run_model(run)
        if flip_invariant(cfg.model):  # the same features in every flip: nothing for the flips to change
            print(f"{run}: skipped (model.symmetrize: its features are the same in every flip)", flush=True)
            continue
        root = resolve_root(cfg.data.root)
        for name in args.on:
            records = load_set(root, name)
            y, x = load_labels(records).numpy(), load_images(records, model.input_size)
            plain, flipped = (roc_auc_score(y, predict_proba(model, x, flips=f)) for f in (False, True))
            rows.append(flipped - plain)
            print(f"{run}  {name}: {plain:.4f} → {flipped:.4f} ({flipped - plain:+.4f})", flush=True)
    if rows:
        print(f"{len(rows)} scores: mean change {np.mean(rows):+.4f}, raised in {int(np.sum(np.array(rows) > 0))}")


if __name__ == "__main__":
    main()
