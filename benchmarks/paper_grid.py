"""The paper grid's head-only runs, end to end, after feature extraction. Run by hand:

    DPMAMMO_DATA=../shared/data/mammo_dp python benchmarks/paper_grid.py [--seed 42] [--epochs 300]
        [--compare-epochs 10] [--threads 1]

Every run of the `paper` preset that trains a head on a frozen backbone (real, real+synthetic and
the synthetic→real fine-tunes: 4 conditions × 6 ε × 3 seeds less the full-model pretrain runs) is
trained with `dpmammo.train.fit`, exactly as the study would, in the mode `auto` picks (book-keeping
for the MLP head) for the full epochs. Then one real and one real+synthetic DP run are trained for a
few epochs in each of hooks (the old CPU `auto`), ghost (the previous `auto`) and book-keeping, and
extrapolated per epoch, side by side. CPU-seconds are process time, all threads.

Also printed: the DP steps of the grid, and the time Opacus's secure-mode noise (four Gaussian draws
per coordinate, against floating-point attacks) takes per step for this head, measured on its own:
the part of every step that no clipping mode can remove.

One thread by default: a head step at batch 128 is not faster with two (benchmarks/README.md), so a
second thread only adds spin-waiting to the CPU-seconds; two runs at once use two cores better.

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

from dpmammo.allocator import keep_freed_memory
from dpmammo.models import create_model
from dpmammo.privacy import read_privacy
from dpmammo.privacy.opacus_internals import generate_noise
from dpmammo.study import expand, load_study
from dpmammo.train import features as fc
from dpmammo.train import fit


def fake_cached_features(model, records, images, n_views, **_):
    g = torch.Generator().manual_seed(len(records) * 10 + n_views)
    return torch.randn(len(images), n_views, model.num_features, generator=g)


def run_cpu_seconds(cfg, out: Path) -> tuple[float, float, int]:
    """(process CPU seconds, wall seconds, DP steps) of one fit."""
    c0, w0 = time.process_time(), time.time()
    fit(cfg, out, progress=False)
    own = read_privacy(out / "privacy.json").own
    return time.process_time() - c0, time.time() - w0, own.steps or 0


def noise_seconds_per_step(head: torch.nn.Module) -> float:
    """Opacus's secure-mode noise for every trainable tensor of `head`, as its optimizer draws it (min of 20)."""
    gen = torch.Generator().manual_seed(0)
    params = [p for p in head.parameters() if p.requires_grad]
    times = []
    for _ in range(21):
        t = time.perf_counter()
        for p in params:
            generate_noise(std=1.0, reference=p, generator=gen, secure_mode=True)
        times.append(time.perf_counter() - t)
    return min(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--compare-epochs", type=int, default=10, help="epochs timed per mode for the side-by-side")
    ap.add_argument("--limit", type=int, default=0, help="only the first N head-only runs (0: all)")
    ap.add_argument("--seed", type=int, default=None, help="only the runs of this seed (the grid has 3; multiply)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: read the wall seconds (CPU-seconds then count only the host's share)")
    args = ap.parse_args()
    keep_freed_memory()  # as the dpmammo command does
    torch.set_num_threads(args.threads)
    fc.cached_features = fake_cached_features  # see the module docstring
    study = load_study(None, preset="paper", overrides=["model.pretrained=false"])
    plan = expand(study)
    heads = [s for s in plan.runs.values() if s.config.model.freeze_backbone]
    heads = [s for s in heads if args.seed is None or s.seed == args.seed]
    heads = heads[:args.limit] if args.limit else heads
    print(f"load average at start {os.getloadavg()[0]:.1f}; {len(heads)} head-only runs of {len(plan.runs)}; "
          f"{args.epochs} epochs; threads {args.threads}; device {args.device}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="paper-grid-"))
    total, total_steps, noise_s, noise_of = 0.0, 0, 0.0, {}
    for spec in heads:
        cfg = spec.config.model_copy(deep=True)
        cfg.train.epochs = args.epochs
        cfg.train.device = args.device
        if cfg.privacy is not None:
            cfg.privacy.grad_sample_mode = "auto"
        cpu, wall, steps = run_cpu_seconds(cfg, tmp / spec.run_id / "auto")
        head = cfg.model.head  # the fine-tunes keep the pretrain's linear head, the others train the MLP
        if head not in noise_of:
            noise_of[head] = noise_seconds_per_step(create_model(cfg.model).head)
        total, total_steps, noise_s = total + cpu, total_steps + steps, noise_s + steps * noise_of[head]
        print(f"  {spec.run_id:<38} auto {cpu:7.1f} CPU-s ({wall:6.1f} s wall, {steps:5d} DP steps, {head} head)",
              flush=True)
    print(f"head-only runs, auto mode: {total:.0f} CPU-s = {total / 60:.1f} CPU-min (target ≤ 15 CPU-min); "
          f"{total_steps} DP steps; load average {os.getloadavg()[0]:.1f}", flush=True)
    per_step = ", ".join(f"{h} head {t * 1e3:.2f} ms" for h, t in noise_of.items())
    print(f"secure-mode noise alone ({per_step} per step): {noise_s:.0f} CPU-s = {noise_s / 60:.1f} CPU-min", flush=True)

    # Side by side: a few epochs of one real and one real+synthetic DP run in each mode, extrapolated.
    dp_specs = [s for s in heads if not math.isinf(s.epsilon)]
    picked = [next(s for s in dp_specs if s.stage == stage) for stage in ("real", "real+synthetic")
              if any(s.stage == stage for s in dp_specs)]
    for spec in picked:
        for mode in ("hooks", "ghost", "bookkeeping"):
            cfg = spec.config.model_copy(deep=True)
            cfg.train.epochs, cfg.train.device = args.compare_epochs, args.device
            cfg.privacy.grad_sample_mode = mode
            cpu, wall, steps = run_cpu_seconds(cfg, tmp / spec.run_id / mode)
            print(f"  {spec.run_id:<38} {mode:<11} {args.compare_epochs} epochs: {cpu:7.1f} CPU-s "
                  f"→ {cpu * args.epochs / args.compare_epochs:8.0f} CPU-s "
                  f"extrapolated to {args.epochs} epochs", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.1f}; outputs in {tmp}")


if __name__ == "__main__":
    main()
