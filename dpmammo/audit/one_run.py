"""The ε lower bound of "Privacy Auditing with One (1) Training Run" (Steinke, Nasr & Jagielski,
NeurIPS 2023, arXiv 2305.08846).

m canaries are each included in training independently with probability ½; after one run the
auditor guesses "in" for the k+ canaries it scores highest and "out" for the k− lowest, and
abstains on the rest. Under (ε, δ)-DP the number of correct guesses W among the r = k+ + k−
guesses satisfies (their Theorem 3 / Proposition 5.2)

    P[W ≥ v] ≤ β + α·2m·δ,  β = P[Binomial(r, q) ≥ v],  q = e^ε / (1 + e^ε),
    α = max_{1≤i≤v} P[v − i ≤ Binomial(r, q) < v] / i,

so an observed v rejects every ε whose p-value is below 1 − confidence: the largest such ε is
the lower bound. Their reference code (the paper's Algorithm 2 and `get_eps_audit`) and
jax_privacy.auditing compute the same; this is a transcription in numpy/scipy (see
dpmammo.audit.stats for why not the library).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import optimize, special, stats


def p_value(*, m: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """Probability, under (ε, δ)-DP, of ≥ `correct` right guesses out of `guesses` with m canaries."""
    if correct <= 0:
        return 1.0
    q = float(special.expit(epsilon))
    beta = float(stats.binom.sf(correct - 1, guesses, q))
    if delta == 0:
        return beta
    i = np.arange(1, correct + 1)
    tail = stats.binom.sf(correct - i - 1, guesses, q) - beta  # P[v − i ≤ B < v]
    alpha = float(np.max(tail / i))
    return min(1.0, beta + alpha * 2 * m * delta)


def epsilon_lower_bound(*, m: int, guesses: int, correct: int, delta: float, confidence: float = 0.95) -> float:
    """Largest ε that (m, guesses, correct) rejects at `confidence`; 0 when none is rejected."""
    if not 0 <= correct <= guesses <= m:
        raise ValueError(f"need 0 ≤ correct ≤ guesses ≤ m, got correct={correct}, guesses={guesses}, m={m}")
    significance = 1.0 - confidence

    def gap(eps: float) -> float:  # > 0 while ε is rejected
        return significance - p_value(m=m, guesses=guesses, correct=correct, epsilon=eps, delta=delta)

    if guesses == 0 or gap(0.0) <= 0:
        return 0.0
    hi = 1.0
    while gap(hi) > 0:
        if hi > 1e3:  # every guess right and m huge: no finite ε survives
            return float("inf")
        hi *= 2
    return float(optimize.brentq(gap, 0.0, hi, xtol=1e-6))


# k per side (top k "in", bottom k "out"), as fractions of the m canaries. Low scores are evidence too:
# a member rarely scores far against the label it was trained on, so Steinke et al.'s two-sided game
# (k+ = k−) proves more than guessing "in" alone, black-box as well as white-box.
K_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5)


def k_grid(m: int) -> list[int]:
    """The k per side that the one-run audits try for m canaries (Bonferroni over this grid); never
    past m // 2, so the top k and the bottom k never overlap (round() takes 63.5 to 64)."""
    return sorted({max(1, min(m // 2, round(m * f))) for f in K_FRACTIONS})


def guesses_from_scores(scores: np.ndarray, included: np.ndarray, k_plus: int, k_minus: int = 0) -> tuple[int, int]:
    """(guesses, correct) when guessing "in" for the k+ highest scores and "out" for the k− lowest."""
    if k_plus + k_minus > len(scores):
        raise ValueError(f"k+ + k− = {k_plus + k_minus} exceeds the {len(scores)} canaries")
    order = np.argsort(-scores, kind="stable")
    top, bottom = order[:k_plus], order[len(order) - k_minus:] if k_minus else order[:0]
    return k_plus + k_minus, int(included[top].sum() + (~included[bottom]).sum())


BoundOfGuesses = Callable[[int, int, int, float], float]  # (m, guesses, correct, confidence) → bound


@dataclass(frozen=True)
class BestOverK:
    bound: float
    k: int
    guesses: int
    correct: int


def best_over_k(scores: np.ndarray, included: np.ndarray, k_grid: list[int], bound: BoundOfGuesses, *,
                confidence: float = 0.95, two_sided: bool = False) -> BestOverK:
    """The best `bound` over guessing the top k of `k_grid` "in" (and, `two_sided`, the bottom k "out",
    Steinke et al.'s k+ = k−, which uses the evidence of low scores too), abstaining on the rest. Each
    k is tested at (1 − confidence)/len(k_grid) (Bonferroni: choosing k after seeing the scores costs
    that much). The best is the largest `bound`; of equal ones, the first k of the grid's."""
    if not k_grid:
        raise ValueError("need at least one k in the k grid")
    m = len(scores)
    level = 1.0 - (1.0 - confidence) / len(k_grid)
    best = None
    for k in k_grid:
        guesses, correct = guesses_from_scores(scores, included, k, k if two_sided else 0)
        value = bound(m, guesses, correct, level)
        if best is None or value > best.bound:
            best = BestOverK(bound=value, k=k, guesses=guesses, correct=correct)
    return best


def best_bound(scores: np.ndarray, included: np.ndarray, k_grid: list[int], *, delta: float,
               confidence: float = 0.95, two_sided: bool = False) -> tuple[float, int, int, int]:
    """Steinke et al.'s ε lower bound, the best over the k grid (best_over_k).

    Returns (ε lower bound, k, guesses, correct) of the best k.
    """
    def bound(m: int, guesses: int, correct: int, level: float) -> float:
        return epsilon_lower_bound(m=m, guesses=guesses, correct=correct, delta=delta, confidence=level)

    best = best_over_k(scores, included, k_grid, bound, confidence=confidence, two_sided=two_sided)
    return best.bound, best.k, best.guesses, best.correct
