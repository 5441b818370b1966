"""Throughput of one DP training over 1 vs N processes. Run by hand (not part of the test suite):

    python benchmarks/distributed_speed.py [--data DIR] [--config configs/cnn-small-dp.yaml]
                                           [--epochs 2] [--nproc 1 2] [--device cpu]

Trains the config (real patch set, DP per patient) once per process count, one after the other,
each into a fresh temporary run directory, and prints per count: the training's own wall time
(metrics.json `wall_time_s`: the epochs, without starting processes and loading data), the
command's whole wall time, DP steps per second, and the load average before and after. On a
2-core CPU two processes share the same two cores, so the figure there says what the process
layer costs, not what several machines or GPUs gain.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from dpmammo.config import load_config
from dpmammo.train import TrainConfig, fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="data root (default: the configured one)")
    ap.add_argument("--config", default="configs/cnn-small-dp.yaml")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    overrides = [f"train.epochs={args.epochs}", f"train.device={args.device}"]
    if args.data:
        overrides.append(f"data.root={args.data}")
    cfg = load_config(TrainConfig, args.config, overrides)
    print(f"{platform.node()} {os.cpu_count()} cores; {args.config}, {args.epochs} epochs, device {args.device}")
    print("| processes | training wall s | command wall s | DP steps/s | load before → after |")
    print("|---|---|---|---|---|")
    for n in args.nproc:
        with tempfile.TemporaryDirectory() as tmp:
            before = os.getloadavg()[0]
            t0 = time.time()
            metrics = fit(cfg, Path(tmp) / "run", progress=False, nproc=n)
            total = time.time() - t0
            steps = _steps(Path(tmp) / "run")
            print(f"| {n} | {metrics['wall_time_s']:.1f} | {total:.1f} | {steps / metrics['wall_time_s']:.2f} | "
                  f"{before:.1f} → {os.getloadavg()[0]:.1f} |", flush=True)


def _steps(run: Path) -> int:
    """The DP steps the run took (its privacy record's own stage)."""
    stage = json.loads((run / "privacy.json").read_text())["stages"][-1]
    return int(stage["steps"])


if __name__ == "__main__":
    main()
