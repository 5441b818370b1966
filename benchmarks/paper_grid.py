"""The paper grid's head-only runs, end to end, after feature extraction. Run by hand:

    DPMAMMO_DATA=../shared/data/mammo_dp python benchmarks/paper_grid.py [--epochs 300] [--hooks-epochs 3]

Every run of the `paper` preset that trains a head on a frozen backbone (real, real+synthetic and
the synthetic→real fine-tunes: 4 conditions × 6 ε × 3 seeds less the full-model pretrain runs) is
trained with `dpmammo.train.fit`, exactly as the study would, in `ghost` mode (what `auto`
picks for the MLP head) for the full epochs, and in `hooks` mode (the old `auto` on CPU) for a
few epochs, extrapolated per step. CPU-seconds (process time, all threads) per run and in total.

What is not the paper's: the features. Extracting swin_t features of 4104 patches × 4 flip views
at 224 px takes an hour on this CPU and is a one-off cost (benchmarks/dp_speed.py part 1 times
it); here the feature cache is replaced by random features of the right shape (N, 4, 768), and
the backbone is random-init swin_t (no ImageNet download). Training time does not depend on
the values. Fine-tunes start from random weights instead of their pretrain run, for the same reason.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from dpmammo.study import expand, load_study
from dpmammo.train import features as fc
from dpmammo.train import fit


def fake_cached_features(model, records, images, n_views, **_):
    g = torch.Generator().manual_seed(len(records) * 10 + n_views)
    return torch.randn(len(images), n_views, model.num_features, generator=g)


def run_cpu_seconds(cfg, out: Path) -> tuple[float, float]:
    """(process CPU seconds, wall seconds) of one fit."""
    c0, w0 = time.process_time(), time.time()
    fit(cfg, out, progress=False)
    return time.process_time() - c0, time.time() - w0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--hooks-epochs", type=int, default=3, help="epochs timed in hooks mode (then extrapolated)")
    ap.add_argument("--hooks-runs", type=int, default=2, help="runs timed in hooks mode (one real, one real+synthetic)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N head-only runs (0: all)")
    ap.add_argument("--seed", type=int, default=None, help="only the runs of this seed (the grid has 3; multiply)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fc.cached_features = fake_cached_features  # see the module docstring
    study = load_study(None, preset="paper", overrides=["model.pretrained=false"])
    plan = expand(study)
    heads = [s for s in plan.runs.values() if s.config.model.freeze_backbone]
    heads = [s for s in heads if args.seed is None or s.seed == args.seed]
    heads = heads[:args.limit] if args.limit else heads
    print(f"load average at start {os.getloadavg()[0]:.1f}; {len(heads)} head-only runs of {len(plan.runs)}; "
          f"{args.epochs} epochs; threads {args.threads}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="paper-grid-"))
    total_ghost, rows = 0.0, []
    for spec in heads:
        cfg = spec.config.model_copy(deep=True)
        cfg.train.epochs = args.epochs
        cfg.train.device = "cpu"
        if cfg.privacy is not None:
            cfg.privacy.grad_sample_mode = "auto"
        cpu, wall = run_cpu_seconds(cfg, tmp / spec.run_id / "auto")
        total_ghost += cpu
        rows.append((spec.run_id, cpu, wall))
        print(f"  {spec.run_id:<38} auto {cpu:7.1f} CPU-s ({wall:6.1f} s wall)", flush=True)
    print(f"head-only runs, auto mode: {total_ghost:.0f} CPU-s = {total_ghost / 60:.1f} CPU-min "
          f"(target ≤ 15 CPU-min); load average {os.getloadavg()[0]:.1f}", flush=True)

    # hooks (the old CPU `auto`): a few epochs of a few DP runs, extrapolated per epoch to the full grid.
    dp_specs = [s for s in heads if not math.isinf(s.epsilon)]
    picked = []
    for stage in ("real", "real+synthetic"):
        picked += [s for s in dp_specs if s.stage == stage][:1]
    picked = picked[:args.hooks_runs]
    for spec in picked:
        for mode in ("hooks", "ghost"):
            cfg = spec.config.model_copy(deep=True)
            cfg.train.epochs, cfg.train.device = args.hooks_epochs, "cpu"
            cfg.privacy.grad_sample_mode = mode
            cpu, wall = run_cpu_seconds(cfg, tmp / spec.run_id / mode)
            print(f"  {spec.run_id:<38} {mode:<5} {args.hooks_epochs} epochs: {cpu:7.1f} CPU-s → "
                  f"{cpu * args.epochs / args.hooks_epochs:8.0f} CPU-s extrapolated to {args.epochs} epochs", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.1f}; outputs in {tmp}")


if __name__ == "__main__":
    main()
