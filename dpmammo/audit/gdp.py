"""Gaussian differential privacy (Dong, Roth & Su 2022): the privacy profile of μ-GDP, and the
one-run ε *estimate* of Andrew et al. (ICLR 2024, "One-shot empirical privacy estimation for
federated learning", arXiv 2302.03098).

A mechanism is μ-GDP when telling any two neighbouring inputs apart is at least as hard as telling
N(0, 1) from N(μ, 1): the Gaussian mechanism with sensitivity Δ and noise σ is exactly (Δ/σ)-GDP.
μ-GDP is (ε, δ(ε))-DP for every ε ≥ 0 with (their Corollary 2.13)

    δ(ε) = Φ(−ε/μ + μ/2) − e^ε · Φ(−ε/μ − μ/2).

Andrew et al.'s estimate: canaries that were trained on ("in") and canaries that were not ("out")
are scored by one statistic that is close to Gaussian for both (a sum of many noisy projections);
the shift of the "in" scores in units of the "out" spread, μ̂ = (mean_in − mean_out) / std_out,
is read as the μ of a GDP mechanism and turned into ε at the recipe's δ. It is an ESTIMATE of the
privacy the threat model achieves, not a bound: it assumes Gaussian scores and carries sampling
error (the record gives a bootstrap interval), and it may land above the promise without any bug
when the promise is tight. The ε lower *bound* is Steinke et al.'s (dpmammo.audit.one_run).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, special

from dpmammo.audit import stats

MU_CAP = 1e100


def gdp_delta(epsilon: float, mu: float) -> float:
    """δ at which μ-GDP is (ε, δ)-DP (closed form, module docstring); 0 for μ = 0."""
    if mu < 0 or epsilon < 0:
        raise ValueError(f"need μ ≥ 0 and ε ≥ 0, got μ={mu}, ε={epsilon}")
    if mu == 0:
        return 0.0
    a, b = -epsilon / mu + mu / 2, -epsilon / mu - mu / 2
    # e^ε Φ(b) = ½·erfcx(−b/√2)·e^{ε − b²/2} and ε − b²/2 = −a²/2 exactly: no e^ε to overflow, and no
    # cancellation between ε and log Φ(b) when μ is large (a near-perfect attack).
    return float(special.ndtr(a) - 0.5 * special.erfcx(-b / math.sqrt(2)) * math.exp(-a * a / 2))


def gdp_epsilon(mu: float, delta: float) -> float:
    """The smallest ε ≥ 0 with μ-GDP ⇒ (ε, δ)-DP: the root of δ(ε) = δ (δ(ε) decreases in ε)."""
    if not 0 < delta < 1:
        raise ValueError(f"need 0 < δ < 1, got {delta}")
    if not mu < MU_CAP:  # μ² would overflow: no noise left to speak of
        return float("inf")
    if gdp_delta(0.0, mu) <= delta:
        return 0.0
    hi = max(1.0, mu * mu)
    while gdp_delta(hi, mu) > delta:
        hi *= 2
    return float(optimize.brentq(lambda e: gdp_delta(e, mu) - delta, 0.0, hi, xtol=1e-10))


def gdp_mu(scores: np.ndarray, included: np.ndarray) -> float:
    """μ̂ = (mean of "in" scores − mean of "out" scores) / std of "out" scores, floored at 0: an
    included canary moves its score up by construction, so a negative shift is sampling noise."""
    inn, out = scores[included], scores[~included]
    if len(inn) < 2 or len(out) < 2:
        raise ValueError("need at least two included and two excluded canaries")
    spread = float(np.std(out, ddof=1))
    if spread == 0:
        return 0.0 if inn.mean() <= out.mean() else float("inf")
    return max(0.0, float(inn.mean() - out.mean()) / spread)


def gdp_estimate(scores: np.ndarray, included: np.ndarray, *, delta: float, n_boot: int, seed: int,
                 confidence: float = 0.95) -> tuple[stats.Interval, stats.Interval]:
    """(μ̂, ε̂ at δ), each with a percentile bootstrap interval over canaries (in and out resampled
    separately)."""
    # A resample with no spread among "out" scores has μ = ∞; capped so the interval's quantiles stay numbers.
    mu = stats.bootstrap(scores, included, lambda s, i: min(gdp_mu(s, i), MU_CAP), n_boot=n_boot, seed=seed,
                         confidence=confidence)
    eps = stats.Interval(*(gdp_epsilon(v, delta) for v in (mu.value, mu.low, mu.high)))
    return mu, eps
