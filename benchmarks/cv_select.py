"""Choose a recipe by K-fold cross-validation over cbis-ddsm/train's patients (never a test set).

Why: the ε = ∞ recipes select their epoch on cbis-ddsm/val (192 patches of 102 patients), and
ranking recipes on that same small set misranked them twice (benchmarks/README.md, "The winners on
the test sets"). Here every recipe is run as the presets run it (its epoch still selected on
cbis-ddsm/val), K times, each time on the patients of K − 1 folds of cbis-ddsm/train
(`data.audit_split`, the member mechanism the audits use), and scored on the held-out fold's
patches: every training patch is scored once by a model that never saw its patient, so a recipe's
out-of-fold AUROC rests on 1104 patches of 578 patients, independent of the patches that chose its
epoch. Scores are the presets' (mean logit over the 4 flips with `--test-flips`).

Like a choice on cbis-ddsm/val, a choice made here is not DP-accounted: it looks at CBIS-DDSM's
training patients without noise, so the ε a study reports for those patients leaves it out. It
chooses a preset's defaults on the benchmark data; a user's own patients are not looked at.

Prints, per recipe and ε, the pooled out-of-fold AUROC, the folds' mean ± std, and the val AUROC
of the selected epochs. No test set is loaded. Run by hand; the table goes into benchmarks/README.md.

    DPMAMMO_DATA=/path/to/mammo_dp python benchmarks/cv_select.py --out demo/cv --epsilons inf \\
        --test-flips --recipes cnn-small-inf scatter-inf scatter-pca32-px16-inf
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from prior_ablation import BASE, RECIPES, THEN, merged  # noqa: E402  (one table of recipes for both scripts)


def folds_of(patients: list[str], k: int, seed: int) -> list[list[str]]:
    """The patients in k folds of near-equal size, from a seeded shuffle (the split is public
    bookkeeping, not DP randomness)."""
    order = np.random.default_rng([seed, 27]).permutation(sorted(patients))
    return [sorted(order[i::k].tolist()) for i in range(k)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    # recipes of one stage that need no pretrained run
    ap.add_argument("--recipes", nargs="+", required=True, choices=[r for r, (_, prior) in RECIPES.items()
                                                                    if r not in THEN and not prior])
    ap.add_argument("--epsilons", type=float, nargs="+", default=[math.inf], help="per patient; inf: no DP")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="the fold split's seed (also each run's train.seed)")
    ap.add_argument("--test-flips", action="store_true",
                    help="score by the mean logit over the 4 flips, as the presets do (not a symmetrised model: "
                         "its features are the same in every flip)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="change a key of every recipe's training config, e.g. --set optim.lr=0.2 (repeatable); "
                         "the runs go to a folder of their own per set of changes")
    args = ap.parse_args()

    import torch
    from sklearn.metrics import roc_auc_score

    from dpmammo.audit.models import FeaturePrimer, pool_logits
    from dpmammo.train.features import is_head_only
    from dpmammo.data.images import N_VIEWS
    from dpmammo.models.config import flip_invariant
    from dpmammo.train.build import initial_model
    from dpmammo.config import apply_overrides, parse_config
    from dpmammo.data.sets import load_set, resolve_root
    from dpmammo.runs import RunDir
    from dpmammo.train import TrainConfig, fit
    from dpmammo.train.members import AuditSplit

    torch.set_num_threads(2)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    records = load_set(resolve_root(None), "cbis-ddsm/train")
    patients = sorted({r.patient for r in records})
    folds = folds_of(patients, args.folds, args.seed)
    for name in args.recipes:
        over, _ = RECIPES[name]
        cells = []
        for eps in args.epsilons:
            score = np.full(len(records), np.nan)
            fold_aurocs, val_aurocs, t0 = [], [], time.time()
            # head-only recipes: every training patch's features once, each fold's subset sliced from them
            primer = None
            for f, held_out in enumerate(folds):
                data = apply_overrides(merged(BASE, over), args.overrides)  # (before the batch is scaled below)
                if math.isinf(eps):
                    del data["privacy"]
                else:
                    data["privacy"] = {**data["privacy"], "target_epsilon": eps}
                keep = sorted(set(patients) - set(held_out))
                # (a symmetrised model's features are the same in every flip: no flips to score by)
                flips = args.test_flips and not flip_invariant(parse_config(TrainConfig, data, name).model)
                data["train"] = {**data["train"], "seed": args.seed, **({"test_flips": True} if flips else {})}
                if not math.isinf(eps):  # keep the recipe's sampling rate q on the smaller pool (as audit models do)
                    data["train"]["batch_size"] = max(1, round(data["train"]["batch_size"] * len(keep) / len(patients)))
                data["data"] = {**data["data"], "audit_split": AuditSplit(
                    unit="patient", members=keep, seed=args.seed, role=f"cv-fold-{f}").model_dump(mode="json")}
                cfg = parse_config(TrainConfig, data, name)
                changed = ",".join(args.overrides).replace("/", "_") or "as-is"
                out = args.out / name / changed / f"eps{eps:g}" / f"seed{args.seed}-k{args.folds}" / f"fold{f}"
                if (out / "metrics.json").is_file():  # a finished fold is reused only if it trained on these members
                    if not RunDir(out).has_config(cfg):
                        raise SystemExit(f"{out} holds a run of another config (recipe edited?): use another --out")
                else:
                    if primer is None and is_head_only(cfg):
                        primer = FeaturePrimer(cfg, initial_model(cfg))
                    with primer.primed(cfg.data.audit_split) if primer is not None else nullcontext():
                        fit(cfg, out, progress=False)
                val_aurocs.append(json.loads((out / "metrics.json").read_text())["val"]["auroc"])
                held = set(held_out)
                idx = [i for i, r in enumerate(records) if r.patient in held]
                # the held-out fold scored from the same features
                if primer is not None and primer.n_views >= (N_VIEWS if flips else 1):
                    logits = primer.head_logits(out, [records[i] for i in idx], N_VIEWS if flips else 1)
                else:
                    logits = pool_logits(cfg, [out], [records[i] for i in idx])[0]  # (records, views, 2)
                d = logits[..., 1] - logits[..., 0]
                score[idx] = d.mean(1) if flips else d[:, 0]
                fold_aurocs.append(roc_auc_score([records[i].label for i in idx], score[idx]))
            pooled = roc_auc_score([r.label for r in records], score)
            cells.append(f"ε={eps:g}: out-of-fold {pooled:.3f} (folds {statistics.mean(fold_aurocs):.3f} ± "
                         f"{statistics.pstdev(fold_aurocs):.3f}; val {statistics.mean(val_aurocs):.3f}) "
                         f"{time.time() - t0:.0f} s")
        print(f"{name:24s} {' '.join(args.overrides)} " + "   ".join(cells) + f"   load {os.getloadavg()[0]:.1f}",
              flush=True)


if __name__ == "__main__":
    main()
