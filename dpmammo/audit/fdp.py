"""The one-run f-DP auditing bound of Mahloujifar, Melis & Chaudhuri ("Auditing f-Differential
Privacy in One Run", ICML 2025, arXiv 2410.22235), for the Gaussian trade-off curve.

The game is Steinke et al.'s (dpmammo.audit.one_run): m canaries, each included with probability ½
independently; after one run the auditor guesses the membership of c′ of them (here the top k
"in" and the bottom k "out") and abstains on the rest; c of its guesses are right. Where Steinke
et al. test an (ε, δ) claim, Mahloujifar et al. test a trade-off curve f (f-DP, Dong, Roth & Su
2022). Their bound with abstention: under an f-DP mechanism, if P[at least c of the c′ guesses are
right] ≥ τ, then r_0 + h_0 ≤ c′/m, for the sequences defined backwards from r_c = τ·c/m and
h_c = τ·(c′ − c)/m by

    h_i = max(h_{i+1}, (s − 1)·f̄⁻¹(r_{i+1})),    r_i = r_{i+1} + i/(c′ − i)·(h_i − h_{i+1}),

with s = 2 possible secrets (in, out) and f̄⁻¹ the inverse of the blow-up f̄(x) = 1 − f(x), the
smallest type-I error at which a test reaches power x. So r_0 + h_0 > c′/m rejects f at level τ:
under every f-DP mechanism the observed count had probability below τ. This is the paper's
appendix routine (`audit_rh_with_cap`), which Meta's PrivacyGuard (`FDPAnalysisNode`) and
jax_privacy.auditing (`_epsilon_one_run_fdp`) implement the same way; transcribed here, with r
capped at 1 as jax_privacy does and the loop stopped once h no longer changes (from there on
neither h nor r can change).

The curves audited are μ-GDP, f = G_μ with f̄⁻¹(x) = Φ(Φ⁻¹(x) − μ), as in both implementations.
The test is monotone in μ (a larger μ is a weaker claim), so the guesses reject every μ below a
threshold μ̂; the ε reported is that of μ̂-GDP at the record's δ (dpmammo.audit.gdp).

What it is: a lower BOUND at the stated confidence, under the premise that the mechanism's
privacy is described by a Gaussian trade-off curve (the paper's "hypothesized f-DP curve";
DP-SGD's composed subsampled Gaussian is close to one): with that confidence the mechanism is not
μ-GDP for any μ < μ̂, so no Gaussian-DP guarantee of it has ε below ε(μ̂) at δ. It is not a bound
on (ε, δ)-DP for an arbitrary mechanism; Steinke et al.'s is, and needs no premise. Where the
trade-off curve is Gaussian, this bound is the tighter of the two for the same guesses, because it
uses the whole curve instead of one (ε, δ) point of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import special

from dpmammo.audit import gdp, one_run

InverseBlowUp = Callable[[np.ndarray], np.ndarray]
MU_MAX = 1e3  # beyond it G_μ ≈ no privacy at all; a rejection there is reported as an unbounded μ
_REFINE_POINTS, _REFINE_ROUNDS = 64, 4  # bracket refinement: width / 64⁴ ≈ 6e-8 of the bracket


def rejects(inverse_blow_up: InverseBlowUp, *, m: int, guesses: int, correct: int, significance: float,
            shape: tuple[int, ...] = ()) -> np.ndarray:
    """Whether `correct` right guesses of `guesses` among m canaries reject f at level `significance`
    (the recursion of the module docstring). `inverse_blow_up` maps an array of r values to f̄⁻¹(r);
    it may hold a family of curves, one per element of `shape` (then the answer has that shape)."""
    if not 0 <= correct <= guesses <= m:
        raise ValueError(f"need 0 ≤ correct ≤ guesses ≤ m, got correct={correct}, guesses={guesses}, m={m}")
    if not 0 < significance < 1:
        raise ValueError(f"need 0 < significance < 1, got {significance}")
    r = np.full(shape, significance * correct / m)
    h = np.full(shape, significance * (guesses - correct) / m)
    for i in range(correct - 1, -1, -1):
        h_new = np.maximum(h, inverse_blow_up(r))
        if np.array_equal(h_new, h):
            break
        r, h = np.minimum(r + i / (guesses - i) * (h_new - h), 1.0), h_new
    return r + h > guesses / m


def gdp_inverse_blow_up(mu: np.ndarray | float) -> InverseBlowUp:
    """f̄⁻¹ of μ-GDP: the type-I error at which the best test of N(0, 1) against N(μ, 1) has power x."""
    mu = np.asarray(mu, dtype=float)
    return lambda x: special.ndtr(special.ndtri(x) - mu)


def mu_lower_bound(*, m: int, guesses: int, correct: int, confidence: float = 0.95) -> float:
    """μ̂: the guesses reject μ-GDP for every μ < μ̂ at `confidence` (0 when they reject none, ∞ when
    they reject every μ up to MU_MAX). The value returned is itself rejected: a bound, rounded down."""
    significance = 1.0 - confidence

    def test(mu) -> np.ndarray:
        mu = np.asarray(mu, dtype=float)
        return rejects(gdp_inverse_blow_up(mu), m=m, guesses=guesses, correct=correct, significance=significance,
                       shape=mu.shape)

    if correct == 0 or not test(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while test(hi):
        lo, hi = hi, 2 * hi
        if hi > MU_MAX:
            return float("inf")
    for _ in range(_REFINE_ROUNDS):  # lo rejected, hi not: evaluate a grid between them at once
        grid = np.linspace(lo, hi, _REFINE_POINTS + 2)[1:-1]
        hit = test(grid)
        if hit.any():
            lo = float(grid[np.flatnonzero(hit)[-1]])
        above = grid[~hit & (grid > lo)]
        hi = float(above[0]) if len(above) else hi
    return lo


def epsilon_lower_bound(*, m: int, guesses: int, correct: int, delta: float, confidence: float = 0.95) -> float:
    """ε at δ of μ̂-GDP (mu_lower_bound): the f-DP one-run bound on ε under the Gaussian premise."""
    mu = mu_lower_bound(m=m, guesses=guesses, correct=correct, confidence=confidence)
    return 0.0 if mu == 0 else gdp.gdp_epsilon(mu, delta)


@dataclass(frozen=True)
class FdpResult:
    epsilon: float
    mu: float
    k: int
    guesses: int
    correct: int


def best_bound(scores: np.ndarray, included: np.ndarray, k_grid: list[int], *, delta: float,
               confidence: float = 0.95, two_sided: bool = False) -> FdpResult:
    """The best f-DP bound over the k grid (one_run.best_over_k: the k with the largest μ̂), with ε
    that of μ̂-GDP at δ."""
    def bound(m: int, guesses: int, correct: int, level: float) -> float:
        return mu_lower_bound(m=m, guesses=guesses, correct=correct, confidence=level)

    best = one_run.best_over_k(scores, included, k_grid, bound, confidence=confidence, two_sided=two_sided)
    eps = 0.0 if best.bound == 0 else gdp.gdp_epsilon(best.bound, delta)
    return FdpResult(epsilon=eps, mu=best.bound, k=best.k, guesses=best.guesses, correct=best.correct)
