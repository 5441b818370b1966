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
from scipy import stats as sps

from dpmammo.audit import stats
from dpmammo.audit.record import GaussianPairBound

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


# --- a bound under a stated premise: the canary scores are Gaussian ---------------------------

MIN_SIDE = 8  # canaries on each side (in, out) below which no Gaussian is fitted


def gaussian_pair_bound(scores: np.ndarray, included: np.ndarray, *, delta: float,
                        confidence: float) -> GaussianPairBound:
    """The one-run ε lower bound of Agrawal et al. (2026, "Let's Ask Gauss: Improved One-Run Privacy
    Auditing", arXiv 2606.12733): a BOUND at `confidence` under a premise, that the "in" and "out"
    scores are Gaussian draws, independent across canaries. The white-box sum score is near
    Gaussian by the central limit theorem over training steps (each step adds independent Gaussian
    noise; an included canary adds a clipped unit with probability q), and Dirac canaries barely
    interact. The ε at small δ rests on the tails, 3–4 spreads out, which the normality test of a few
    hundred scores (`normality_p_in`/`_out`) checks only in the bulk: the bound is as good as the
    Gaussian model of the tails.

    Why it holds under the premise. The canary scores are a post-processing of the mechanism's
    output, and the in/out pair over canaries is a mixture of each canary's pair, so by joint
    convexity of the hockey-stick divergence its (ε, δ) curve is at most the mechanism's. Let
    s = max(s_in, s_out) and Δ = m_in − m_out > 0. The equal-variance pair N(m_out, s²), N(m_in, s²)
    attains its δ(ε) on a set {x > t} (in over out) or {x < t'} (out over in) with t, t' beyond the
    far side of the other mean: t > m_out, t' < m_in. Narrowing the spread of the side measured
    there to its true s_out ≤ s (or s_in ≤ s) only thins that tail, so the true pair's δ(ε) is at
    least as large in the direction of the side with the smaller spread. So μ = Δ/s read as μ-GDP
    under-states the pair. Its lower confidence limit uses the normal approximation with the delta
    method's standard error, √(1/n_in + 1/n_out + μ²/(2·min(n_in, n_out))): the mean difference over
    the larger spread contributes at most 1/n_in + 1/n_out, and the sample spread that μ is measured
    in, from one side, μ²/(2n) of that side's n (the smaller n, to be safe).
    """
    inn, out = np.asarray(scores, float)[included], np.asarray(scores, float)[~included]
    n_in, n_out = len(inn), len(out)
    if n_in < MIN_SIDE or n_out < MIN_SIDE:
        raise ValueError(f"need at least {MIN_SIDE} included and {MIN_SIDE} excluded canaries, got {n_in} and {n_out}")
    spread = max(float(np.std(inn, ddof=1)), float(np.std(out, ddof=1)))
    if spread == 0:
        raise ValueError("every canary score is the same: nothing to fit a Gaussian to")
    mu_hat = float(inn.mean() - out.mean()) / spread
    se = math.sqrt(1 / n_in + 1 / n_out + mu_hat * mu_hat / (2 * min(n_in, n_out)))
    mu = max(0.0, mu_hat - float(special.ndtri(confidence)) * se)
    return GaussianPairBound(mu=mu, epsilon=gdp_epsilon(mu, delta), delta=delta, confidence=confidence,
                             mu_hat=mu_hat, standard_error=se, normality_p_in=_normality_p(inn),
                             normality_p_out=_normality_p(out))


def _normality_p(x: np.ndarray) -> float:
    return float(sps.normaltest(x).pvalue)
