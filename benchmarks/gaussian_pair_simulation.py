"""How much the white-box audit's Gaussian-pair bound can prove at the quick `real` recipe's
sampling, simulated on the ideal mechanism (no training, seconds).

Each simulated run: M Dirac canaries, each included with probability ½; over T steps an included
canary joins a step with probability q and adds 1 (its clipped gradient, in units of C), and every
step adds N(0, σ²) noise, σ calibrated for ε at δ by the recipe's accountant (`--accountant`). The
score is the sum over steps (the audit's `all-iterates-sum`), and the bound is
`dpmammo.audit.gdp.gaussian_pair_bound` at 95 %. Prints, per ε, the mean bound, its 5th and 95th percentiles, and the share of runs at or
above 0.5·ε (issue 24's target); the ε of μ-GDP at the central-limit μ = q√T/σ for comparison.

    python benchmarks/gaussian_pair_simulation.py --runs 200 --accountant prv
"""

from __future__ import annotations

import argparse
import math

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--canaries", type=int, default=1000)
    ap.add_argument("--sample-rate", type=float, default=0.12, help="q of the quick real recipe with its canaries")
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--delta", type=float, default=1e-4)
    ap.add_argument("--epsilons", type=float, nargs="+", default=[2.0, 4.0, 8.0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--accountant", choices=["rdp", "prv"], default="prv", help="configs/cnn-small-dp.yaml's: prv")
    args = ap.parse_args()

    from dpmammo.audit.gdp import gaussian_pair_bound, gdp_epsilon
    from dpmammo.privacy.accounting import calibrate_noise

    q, steps, m = args.sample_rate, args.steps, args.canaries
    for eps in args.epsilons:
        sigma = calibrate_noise(target_epsilon=eps, delta=args.delta, sample_rate=q, steps=steps, accountant=args.accountant)
        rng = np.random.default_rng(int(eps * 100))
        got = []
        for _ in range(args.runs):
            included = rng.random(m) < 0.5
            scores = rng.binomial(steps, q, m) * included + rng.normal(0.0, sigma * math.sqrt(steps), m)
            got.append(gaussian_pair_bound(scores, included, delta=args.delta, confidence=0.95).epsilon)
        got = np.array(got)
        clt = gdp_epsilon(q * math.sqrt(steps) / sigma, args.delta)
        print(f"ε={eps:g} σ={sigma:.3f}: bound mean {got.mean():.2f} (÷ε {got.mean() / eps:.2f}), 5–95 % "
              f"{np.quantile(got, 0.05):.2f}–{np.quantile(got, 0.95):.2f}, ≥ 0.5·ε in {np.mean(got >= 0.5 * eps):.0%} "
              f"of {args.runs} runs; μ-GDP ε at the central-limit μ {clt:.2f}")


if __name__ == "__main__":
    main()
