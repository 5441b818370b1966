"""How long does a LiRA audit of the quick preset's head-only recipe take?

    python benchmarks/audit_speed.py --data /path/to/mammo_dp [--models 64] [--epsilon 6] [--threads 1]

The recipe is the quick preset's `synthetic→real` fine-tune stage (frozen cnn-small backbone,
head-only DP-SGD on cached features, patient-level). Set-up, not timed: the pretrain run it
starts from (by default 1 epoch instead of the preset's 20: the audit's cost does not depend on
how good the backbone is, only on its shape) and the feature cache of the training and
validation sets. Timed: `audit_recipe` with K reference models, i.e. K + 1 trainings through
`fit` plus scoring every pool patient. Target: ≤ 5 minutes for K = 64 on 2 CPU cores.
Prints the load average before and after: on a shared machine the time means little without it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=os.environ.get("DPMAMMO_DATA"), help="the mammo_dp folder")
    ap.add_argument("--models", type=int, default=64, help="reference models K")
    ap.add_argument("--epsilon", type=float, default=6.0, help="target ε of the fine-tune stage")
    ap.add_argument("--pretrain-epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a new temporary one)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("DPMAMMO_CACHE", str(Path(tempfile.mkdtemp(prefix="audit-cache-"))))
    from dpmammo.audit import AuditSettings, audit_recipe
    from dpmammo.audit.models import FeaturePrimer, load_pool, pool_logits
    from dpmammo.train.build import initial_model
    from dpmammo.study import expand, load_study
    from dpmammo.train import fit

    out = args.out or Path(tempfile.mkdtemp(prefix="audit-speed-"))
    study = load_study(preset="quick", overrides=[f"data_root={args.data}",
                                                  f"stages.pretrain.epochs={args.pretrain_epochs}"])
    plan = expand(study)
    tag = "epsinf" if args.epsilon == float("inf") else f"eps{args.epsilon:g}"
    pretrain, finetune = plan.runs["synthetic/pretrain/seed0"], plan.runs[f"synthetic-to-real/{tag}/seed0"]
    t0 = time.time()
    if not (out / "pretrain" / "metrics.json").is_file():
        fit(pretrain.config, out / "pretrain", progress=False)
    cfg = finetune.config.model_copy(update={"init_from": (out / "pretrain").resolve()})
    FeaturePrimer(cfg, initial_model(cfg))  # the training set's features (every flip view)
    pool_logits(cfg, [], load_pool(cfg, "patient").records)  # the pool's 4-view features
    pool_logits(cfg, [], load_pool(cfg, "patient").population)
    print(f"set-up (pretrain {args.pretrain_epochs} epoch(s), feature cache): {time.time() - t0:.1f} s")

    load_before = os.getloadavg()
    t0 = time.time()
    rec = audit_recipe(cfg, out / "audit", AuditSettings(method="lira", models=args.models), progress="lines")
    wall = time.time() - t0
    load_after = os.getloadavg()
    print(f"LiRA audit, K={args.models} reference models + target, head-only DP at target ε={args.epsilon:g} "
          f"per patient, {rec.units} patients, {args.threads} torch thread(s): {wall:.1f} s "
          f"({wall / (args.models + 1):.2f} s per model incl. scoring); target ≤ 300 s")
    print(f"load average (1, 5, 15 min) before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    for a in rec.attacks:
        print(f"  {a.attack:13s} AUC {a.auc.value:.3f} [{a.auc.ci_low:.3f}, {a.auc.ci_high:.3f}]  "
              f"TPR@1%FPR {a.tpr_at_fpr[0].tpr.value:.3f}  ε ≥ {a.epsilon_lower_bound:.2f}/patient")
    print(f"promised: {rec.promised.guarantee} ε={rec.stage_epsilon} (stage), measured {rec.measured_epsilon:.2f}; "
          f"audit folder {out / 'audit'}")


if __name__ == "__main__":
    main()
