"""Statistics of a membership-inference attack: ROC, TPR at low FPR, AUC, and ε lower bounds.

Hand-written on numpy/scipy rather than imported: the maintained implementation of these bounds
(jax_privacy.auditing, Google DeepMind) is numpy/scipy code too, but its package imports JAX,
optax and chex at import time (jax_privacy/__init__.py), some 600 MB for ~150 lines of
arithmetic; ML Privacy Meter's current code is scripts, not a package (its PyPI release,
privacy-meter 1.0.1 of 2023, predates RMIA and has no ε bound). The formulas below follow
jax_privacy.auditing and are tested against independent computations (tests/test_audit.py).

The ε lower bound from one threshold (Kairouz et al. 2015; Jagielski et al. 2020, "Auditing
differentially private machine learning"): any test of "member or not" against an (ε, δ)-DP
training run has TPR ≤ e^ε·FPR + δ, so ε ≥ log((TPR − δ) / FPR). With Clopper–Pearson bounds
(a lower bound on TPR and an upper bound on FPR, each at (1 − confidence)/2) the bound holds
with probability ≥ confidence, if the rule was fixed without looking at the audited model's
membership (see `choose_guesses`) and each unit's membership is an independent trial.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from dpmammo.audit.record import AttackResult, Estimate, TprAtFpr


def cp_interval(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Two-sided Clopper–Pearson interval for a binomial proportion k/n: each end fails with
    probability ≤ (1 − confidence)/2."""
    a = (1.0 - confidence) / 2
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def epsilon_from_counts(*, tp: int, n_members: int, fp: int, n_nonmembers: int, delta: float,
                        confidence: float = 0.95) -> float:
    """ε lower bound at one threshold: log((TPR_low − δ) / FPR_high), 0 when that is not positive.

    TPR_low and FPR_high are the ends of the two-sided Clopper–Pearson intervals at `confidence`,
    so together they fail with probability ≤ 1 − confidence.
    """
    return max(0.0, _log_ratio(tp, n_members, fp, n_nonmembers, delta, confidence))


def _log_ratio(tp: int, n_members: int, fp: int, n_nonmembers: int, delta: float, confidence: float) -> float:
    """log((TPR_low − δ) / FPR_high), −inf when TPR_low ≤ δ (unclamped: ranks rules that bound nothing)."""
    if n_members < 1 or n_nonmembers < 1:
        raise ValueError("need at least one member and one non-member")
    tpr_low, _ = cp_interval(tp, n_members, confidence)
    _, fpr_high = cp_interval(fp, n_nonmembers, confidence)
    return float(np.log((tpr_low - delta) / fpr_high)) if tpr_low > delta else -np.inf


def top_k_counts(scores: np.ndarray, is_member: np.ndarray, k: int) -> tuple[int, int]:
    """(true positives, false positives) of guessing "member" for the k highest scores."""
    top = np.argsort(-scores, kind="stable")[:k]
    return int(is_member[top].sum()), int(k - is_member[top].sum())


def choose_guesses(scores: np.ndarray, is_member: np.ndarray, *, delta: float, confidence: float) -> int:
    """How many units to guess "member" for: the k with the largest ε bound on these scores.

    Used on a *calibration* model whose membership the attacker knows, never on the audited one
    (a k picked on the membership it is then judged on would overstate the bound). The audited
    model then flags its own top-k: a count carries over between models, a raw score threshold
    does not (each model's scores sit on their own scale).
    """
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(is_member[order])
    n_in, n_out = int(is_member.sum()), int((~is_member).sum())
    best, best_k = -np.inf, n_in
    for k in range(1, len(scores) + 1):
        eps = _log_ratio(int(tp[k - 1]), n_in, int(k - tp[k - 1]), n_out, delta, confidence)
        if eps > best:
            best, best_k = eps, k
    return best_k


def auc(scores: np.ndarray, is_member: np.ndarray) -> float:
    """Area under the ROC curve: P(member score > non-member score), ties counted half."""
    out = np.sort(scores[~is_member])
    inn = scores[is_member]
    below = np.searchsorted(out, inn, side="left")
    ties = np.searchsorted(out, inn, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(inn) * len(out)))


def tpr_at_fpr(scores: np.ndarray, is_member: np.ndarray, fpr: float) -> float:
    """Largest TPR of a rule "member iff score ≥ t" whose FPR is ≤ `fpr` (no interpolation)."""
    out = np.sort(scores[~is_member])[::-1]
    allowed = int(np.floor(fpr * len(out) + 1e-9))  # false positives within the budget
    if allowed >= len(out):
        return 1.0
    return float((scores[is_member] > out[allowed]).mean())


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float


def bootstrap(scores: np.ndarray, is_member: np.ndarray, statistic, *, n_boot: int, seed: int,
              confidence: float = 0.95) -> Interval:
    """`statistic(scores, is_member)` and its percentile bootstrap interval, resampling members and
    non-members separately (so both are present in every resample)."""
    rng = np.random.default_rng(seed)
    inn, out = np.flatnonzero(is_member), np.flatnonzero(~is_member)
    flags = np.r_[np.ones(len(inn), dtype=bool), np.zeros(len(out), dtype=bool)]
    values = [statistic(scores[np.r_[rng.choice(inn, len(inn)), rng.choice(out, len(out))]], flags)
              for _ in range(n_boot)]
    a = (1 - confidence) / 2
    lo, hi = np.quantile(values, [a, 1 - a])
    return Interval(float(statistic(scores, is_member)), float(lo), float(hi))


FPRS = (0.01, 0.001)  # the false-positive rates every attack reports its TPR at
N_BOOT = 1000


def attack_result(name: str, scores: np.ndarray, is_member: np.ndarray, eps: float, bound, *, confidence: float,
                  seed: int, n_boot: int = N_BOOT):
    """(AttackResult, ROC curve) of one attack's scores: AUC and TPR at low FPR with bootstrap intervals."""
    a = bootstrap(scores, is_member, auc, n_boot=n_boot, seed=seed, confidence=confidence)
    tprs = []
    for f in FPRS:
        t = bootstrap(scores, is_member, lambda s, m, f=f: tpr_at_fpr(s, m, f), n_boot=n_boot,
                            seed=seed, confidence=confidence)
        tprs.append(TprAtFpr(fpr=f, tpr=Estimate(value=t.value, ci_low=t.low, ci_high=t.high)))
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(is_member, scores)
    return AttackResult(attack=name, auc=Estimate(value=a.value, ci_low=a.low, ci_high=a.high), tpr_at_fpr=tprs,
                        epsilon_lower_bound=eps, bound=bound), (fpr, tpr)
