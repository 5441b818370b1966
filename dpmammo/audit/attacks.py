"""Membership-inference attacks as score functions: a higher score says "member" more strongly.

Every attack sees the audited model's signal on each scored record, and (reference-model attacks)
the signals of K reference models of the same recipe with their known membership. A signal is
the logit margin of the record's training label, z_y − z_other, in each of the 4 flip views
(shape (records, views)): for two classes that is Carlini et al.'s logit-scaled confidence
log(p_y / (1 − p_y)), computed without rounding p_y to 1.

- `loss` (Yeom et al. 2018): log p_y of the audited model alone, the baseline row.
- `lira-online`, `lira-offline` (Carlini et al. 2022, "Membership Inference Attacks From First
  Principles"): per record and view, Gaussians fitted to the reference models' signals with the
  record in (online) and out; the score is the log-likelihood ratio (online) or the one-sided
  log p-value under "out" (offline), averaged over views (their augmentation queries).
- `rmia` (Zarifzadeh et al. 2024, "Low-Cost High-Power Membership Inference Attacks"): the
  likelihood ratio p(x|θ)/p(x) against population records z (never members of any model), the
  score is the fraction of z it beats (γ = 1); p(x) is the mean over reference models, half of
  which hold x (their online setting).

Written here rather than imported: ML Privacy Meter, whose `run_rmia` this follows, ships as
scripts, not a library (see dpmammo.audit.stats); Carlini et al.'s LiRA is research code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from scipy import stats

# Carlini et al. (§VI-B) fit one variance over all records when there are few reference models:
# a per-record variance from a handful of samples is worse than a shared one. Per record from
# this many in- and out-observations on.
PER_RECORD_VARIANCE_FROM = 32
MIN_STD = 1e-3  # a model that is certain of every record gives zero spread


@dataclass
class Signals:
    """Signals of the scored records and (RMIA) of population records.

    target: (R, V) of the audited model; refs: (K, R, V); ref_in: (K, R) bool membership;
    target_pop: (P, V) and refs_pop: (K, P, V) on population records (or None).
    """

    target: np.ndarray
    refs: Optional[np.ndarray] = None
    ref_in: Optional[np.ndarray] = None
    target_pop: Optional[np.ndarray] = None
    refs_pop: Optional[np.ndarray] = None

    def calibration(self) -> "Signals":
        """Reference model 0 as the audited model, references 2.. as its references: the
        attacker's calibration game, whose answers it knows. Reference 1 is left out: it holds
        exactly the units reference 0 does not (paired models), which would give the game away."""
        return Signals(self.refs[0], self.refs[2:], self.ref_in[2:],
                       None if self.refs_pop is None else self.refs_pop[0],
                       None if self.refs_pop is None else self.refs_pop[2:])


def log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def loss_attack(s: Signals) -> np.ndarray:
    return log_sigmoid(s.target).mean(1)


def _gaussians(s: Signals) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mean_in, std_in, mean_out, std_out), each (R, V), from the reference models."""
    w_in = s.ref_in[:, :, None].astype(float)
    w_out = 1.0 - w_in
    n_in, n_out = w_in.sum(0), w_out.sum(0)
    if (n_out < 1).any():
        raise ValueError("a record is in every reference model: no 'out' signal to compare with")
    mean_out = (s.refs * w_out).sum(0) / n_out
    mean_in = (s.refs * w_in).sum(0) / np.maximum(n_in, 1)
    if min(n_in.min(), n_out.min()) >= PER_RECORD_VARIANCE_FROM:
        std_in = np.sqrt(((s.refs - mean_in) ** 2 * w_in).sum(0) / (n_in - 1))
        std_out = np.sqrt(((s.refs - mean_out) ** 2 * w_out).sum(0) / (n_out - 1))
    else:  # one variance per view over all records
        std_in = np.sqrt(((s.refs - mean_in) ** 2 * w_in).sum((0, 1)) / max(1.0, float(w_in.sum())))
        std_out = np.sqrt(((s.refs - mean_out) ** 2 * w_out).sum((0, 1)) / max(1.0, float(w_out.sum())))
        std_in, std_out = np.broadcast_to(std_in, mean_in.shape), np.broadcast_to(std_out, mean_out.shape)
    return mean_in, np.maximum(std_in, MIN_STD), mean_out, np.maximum(std_out, MIN_STD)


def lira_online(s: Signals) -> np.ndarray:
    mean_in, std_in, mean_out, std_out = _gaussians(s)
    if (s.ref_in.sum(0) < 1).any():
        raise ValueError("a record is in no reference model: online LiRA needs 'in' signals")
    llr = stats.norm.logpdf(s.target, mean_in, std_in) - stats.norm.logpdf(s.target, mean_out, std_out)
    return llr.mean(1)


def lira_offline(s: Signals) -> np.ndarray:
    _, _, mean_out, std_out = _gaussians(s)
    return -stats.norm.logsf(s.target, mean_out, std_out).mean(1)


def rmia(s: Signals) -> np.ndarray:
    if s.target_pop is None or s.refs_pop is None:
        raise ValueError("rmia needs population signals")
    prob = lambda m: np.exp(log_sigmoid(m)).mean(-1)  # noqa: E731  p(trained label), mean over views
    ratio_x = prob(s.target) / prob(s.refs).mean(0)
    ratio_z = prob(s.target_pop) / prob(s.refs_pop).mean(0)
    return (ratio_x[:, None] > ratio_z[None, :]).mean(1)


@dataclass(frozen=True)
class Attack:
    """A score function and the audit methods (dpmammo.audit.config.METHOD_WORDS) whose reference
    models it scores with: each such audit reports it beside the method's primary attack."""

    score: Callable[[Signals], np.ndarray]
    reported_by: tuple[str, ...]


# The one table of reference-model attacks, in the order an audit reports them. A new attack is
# its score function (any module) and one `register_attack` line.
ATTACKS: dict[str, Attack] = {
    "lira-online": Attack(lira_online, ("lira",)),
    "lira-offline": Attack(lira_offline, ("lira",)),
    "rmia": Attack(rmia, ("rmia",)),
    "loss": Attack(loss_attack, ("lira", "rmia")),
}


def register_attack(name: str, score: Callable[[Signals], np.ndarray], reported_by: tuple[str, ...]) -> None:
    """Add an attack to the table: every audit of a method in `reported_by` then scores it."""
    if name in ATTACKS:
        raise ValueError(f"attack {name!r} is registered already")
    ATTACKS[name] = Attack(score, tuple(reported_by))


def attacks_of(method: str) -> list[tuple[str, Attack]]:
    """The reference-model attacks an audit of `method` reports, (name, attack) in the table's order."""
    return [(name, attack) for name, attack in ATTACKS.items() if method in attack.reported_by]


def unit_scores(record_scores: np.ndarray, record_unit: np.ndarray, n_units: int) -> np.ndarray:
    """A unit's score is the mean of its records' scores (a patient's patches)."""
    total = np.bincount(record_unit, weights=record_scores, minlength=n_units)
    return total / np.bincount(record_unit, minlength=n_units)
