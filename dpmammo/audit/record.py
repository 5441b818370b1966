"""audit.json: what an audit measured, as a typed record (the one reader reports use)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from dpmammo.audit.config import AuditMethod
from dpmammo.errors import DpMammoError
from dpmammo.files import write_json_atomic
from dpmammo.privacy.config import Unit
from dpmammo.privacy.ledger import ChainTotal

AUDIT_JSON, ROC_PNG = "audit.json", "roc.png"
# What the adversary sees: the final model's outputs only, every noisy update of DP-SGD, or the
# final model's weights.
ThreatModel = Literal["black-box final model", "white-box all iterates", "white-box final model"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Estimate(_Record):
    value: float
    ci_low: float
    ci_high: float


class TprAtFpr(_Record):
    fpr: float
    tpr: Estimate


class ThresholdBound(_Record):
    """Clopper–Pearson bound for guessing "member" on the target's top `guesses` units, that count
    fixed on a calibration model (a reference model attacked with the others), not the target."""

    kind: Literal["top-k"] = "top-k"
    calibration_model: str
    guesses: int
    true_positives: int
    members: int
    false_positives: int
    non_members: int


class OneRunBound(_Record):
    """Steinke et al.'s bound: `correct` of `guesses` right among m canaries, best k of `k_grid`
    (Bonferroni over the grid)."""

    kind: Literal["one-run"] = "one-run"
    canaries: int
    included: int
    k_grid: list[int]
    guesses: int
    correct: int
    two_sided: bool = False  # guesses "in" for the top k and "out" for the bottom k
    # Set where the attack's bound is the larger of this and an f-DP bound (gradient-canary): Steinke
    # et al.'s ε alone, proved at `confidence` (each of the two at half the record's significance).
    epsilon: Optional[float] = None
    confidence: Optional[float] = None


class FdpBound(_Record):
    """Mahloujifar, Melis & Chaudhuri's (2025) one-run f-DP bound (dpmammo.audit.fdp) on the same
    game: the guesses (best k of `k_grid`, Bonferroni over the grid) reject μ-GDP for every μ < `mu`
    at `confidence`; `epsilon` is the ε of `mu`-GDP at `delta`. A BOUND under the premise that the
    mechanism's trade-off curve is Gaussian (Steinke et al.'s needs none)."""

    kind: Literal["f-dp-gaussian"] = "f-dp-gaussian"
    mu: float
    epsilon: float
    delta: float
    confidence: float
    k_grid: list[int]
    guesses: int
    correct: int
    two_sided: bool


class GaussianPairBound(_Record):
    """Agrawal et al.'s (2026) one-run bound (dpmammo.audit.gdp.gaussian_pair_bound): every canary's
    score counts, none is thresholded into a guess. `mu` is a lower confidence limit at `confidence`
    of the in/out shift in units of the larger spread, `epsilon` the ε of `mu`-GDP at `delta`. A
    BOUND under the premise that the scores are independent Gaussian draws, tails included (the
    white-box sum score is near Gaussian by the central limit theorem over steps);
    `normality_p_in`/`_out` test that premise on each side, in the bulk of the scores only."""

    kind: Literal["gaussian-pair"] = "gaussian-pair"
    mu: float
    epsilon: float
    delta: float
    confidence: float
    normality_p_in: float
    normality_p_out: float
    # The point estimate μ̂ and its standard error, of which `mu` is the lower limit (None in records
    # written before they were kept).
    mu_hat: Optional[float] = None
    standard_error: Optional[float] = None


class CanaryMechanism(_Record):
    """What a gradient-canary run's DP-SGD was (noise multiplier σ, Poisson rate q, steps T), and the
    sum score's shift `ideal_mu` = q·T / √(T·(σ² + q(1 − q))) that the ideal mechanism gives: noise
    and the canaries alone, no drift from real gradients (in units of C, an included canary adds 1
    with probability q at each step, Bernoulli variance q(1 − q), beside noise of variance σ²). A
    Gaussian-pair `mu_hat` far from it, (mu_hat − ideal_mu) / standard_error beyond ±3, says the scores
    are not the premise's: above, more leaks than the promise allows (a bug); below, drift or
    interaction hides part of the canaries' signal."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    ideal_mu: float


class GdpEstimate(_Record):
    """Andrew et al.'s (2024) ESTIMATE, not a bound: μ̂ = (mean_in − mean_out)/std_out of the canary
    scores read as μ-GDP, and the ε of μ̂-GDP at `delta` (dpmammo.audit.gdp); bootstrap intervals."""

    kind: Literal["gdp-estimate"] = "gdp-estimate"
    mu: Estimate
    epsilon: Estimate
    delta: float


class AttackResult(_Record):
    attack: str
    auc: Estimate
    tpr_at_fpr: list[TprAtFpr]
    # A BOUND: holds with probability ≥ the record's confidence. With `fdp_bound` (gradient-canary), the
    # larger of Steinke et al.'s (`bound.epsilon`) and the f-DP bound, each proved at half the significance.
    epsilon_lower_bound: float
    bound: ThresholdBound | OneRunBound
    threat_model: ThreatModel = "black-box final model"
    gdp_estimate: Optional[GdpEstimate] = None
    fdp_bound: Optional[FdpBound] = None
    gaussian_bound: Optional[GaussianPairBound] = None  # gradient-canary, the near-Gaussian sum score


class AuditRecord(_Record):
    """One audit of one recipe. `measured_epsilon` is the ε lower BOUND of the method's primary
    attack (fixed before the audit, so it needs no correction for picking the best of several rows);
    `estimated_epsilon` (gradient-canary) is the Gaussian-DP ESTIMATE of attack `estimate_attack`,
    which is no bound and may exceed the promise when the promise is tight; `gaussian_epsilon` is
    the Gaussian-pair BOUND of the attack that carries a `gaussian_bound` (premise: its scores are
    Gaussian), at `confidence` on its own."""

    method: AuditMethod
    reference_models: int
    unit: Unit
    seed: int
    confidence: float
    units: int
    target_members: int
    promised: ChainTotal
    stage_epsilon: Optional[float]
    delta: Optional[float]
    primary: str
    measured_epsilon: float
    attacks: list[AttackResult]
    estimated_epsilon: Optional[float] = None
    estimate_attack: Optional[str] = None
    gaussian_epsilon: Optional[float] = None
    mechanism: Optional[CanaryMechanism] = None  # gradient-canary: the audited DP-SGD and its ideal shift
    target: str
    notes: list[str]
    wall_time_s: float
    dpmammo_version: str


def write_audit(path: str | Path, record: AuditRecord) -> None:
    write_json_atomic(path, record.model_dump(mode="json"))


def read_audit(path: str | Path) -> AuditRecord:
    path = Path(path)
    if not path.is_file():
        raise DpMammoError(f"missing {path.name} in {path.parent}: no finished audit there")
    try:
        return AuditRecord.model_validate(json.loads(path.read_text()))
    except (ValueError, ValidationError) as e:
        raise DpMammoError(f"{path} is not a dpmammo audit record ({e.__class__.__name__}); "
                           "was it written by another version? rerun the audit into a new folder") from None
