"""Choose the quick preset's DP settings on the *validation* set (never on a test set).

Trains the quick preset's `real` condition at each ε for every candidate of the `dp:` block and
prints the selected-epoch validation AUROC (cbis-ddsm/val), mean over ε. The preset keeps the
best candidate. Run by hand (minutes on 2 cores); no test set is loaded.

    DPMAMMO_DATA=../shared/data/mammo_dp python benchmarks/select_quick_preset.py --out demo/select
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from dpmammo.study import load_study
from dpmammo.study.recipes import build_runs
from dpmammo.train import fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 6.0])
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 128], help="expected units (patients) per step")
    ap.add_argument("--epochs", type=int, nargs="+", default=[12, 30])
    ap.add_argument("--lr", type=float, nargs="+", default=[2e-3])
    ap.add_argument("--unit", default="patient")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for batch, epochs, lr in itertools.product(args.batch, args.epochs, args.lr):
        aurocs, wall = [], 0.0
        for eps in args.epsilons:
            study = load_study(None, preset="quick", overrides=[
                f"dp.batch_size={batch}", f"dp.epochs={epochs}", f"dp.lr={lr}", f"privacy.unit={args.unit}"])
            (spec,) = build_runs(study, "real", eps, study.seeds[0])
            out = args.out / f"b{batch}-e{epochs}-lr{lr:g}" / f"eps{eps:g}"
            t0 = time.time()
            m = fit(spec.config, out, progress=False) if not (out / "metrics.json").is_file() else None
            wall += time.time() - t0
            m = m or json.loads((out / "metrics.json").read_text())
            aurocs.append(m["val"]["auroc"])
        rows.append((batch, epochs, lr, aurocs, sum(aurocs) / len(aurocs), wall))
        print(f"batch {batch:4d} epochs {epochs:3d} lr {lr:g}: val AUROC "
              + " ".join(f"ε={e:g} {a:.3f}" for e, a in zip(args.epsilons, aurocs))
              + f" mean {rows[-1][4]:.3f} ({wall:.0f} s)", flush=True)
    best = max(rows, key=lambda r: r[4])
    print(f"best on validation: batch {best[0]}, epochs {best[1]}, lr {best[2]:g} (mean val AUROC {best[4]:.3f})")


if __name__ == "__main__":
    main()
