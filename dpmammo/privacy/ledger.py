"""The privacy ledger: what each stage spent, and the one guarantee for a chain of stages.

A run's privacy.json is a `PrivacyRecord`: one `StageSpend` per stage of its chain (every stage
whose output entered the run: a generator behind a synthetic set, a pretrain run behind
`init_from`, the origin of a weight file) and one `ChainTotal`. Reports read the total through
`read_privacy`, never a stage's ε.

Composition of a chain (e.g. DP-GAN → synthetic pretrain → DP fine-tune):
- stages that touched no private data add nothing;
- any stage without a guarantee (private data without DP, seeded noise, weights or synthetic
  data of unknown origin) makes the total "no guarantee";
- a DP stage spends typed privacy events (dpmammo.privacy.events): DP-SGD steps, or one Gaussian
  release, each behind the Gaussian release of a noisy unit count where the stage made one;
- the DP stages' events compose in one accountant and are converted at one δ: RDP (adding the
  stages' RDP curves) when every stage used it, else PRV (Gopi et al. 2021, numerically composing
  the events' privacy-loss distributions). The events describe the mechanisms themselves, so
  either composition is valid whichever accountant calibrated each stage;
- the unit of the total is the patient only if every DP stage protected patients: patient-level
  DP implies patch-level DP, not the other way round.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from dpmammo.errors import DpMammoError
from dpmammo.files import write_json_atomic
from dpmammo.privacy.accounting import epsilon_of
from dpmammo.privacy.config import UNIT_WORDS, PrivacyConfig, ReleasePrivacyConfig, Unit
from dpmammo.privacy.events import DpSgdEvent, GaussianRelease, PrivacyEvent

Guarantee = Literal["dp", "none", "public"]
# Why a stage gives no guarantee.
NoGuaranteeReason = Literal["non-private", "seeded-noise", "unknown-origin"]
REASON_WORDS: dict[str, str] = {"non-private": "private data used without DP",
                                "seeded-noise": "seeded noise (test-only switch)",
                                "unknown-origin": "an input of unknown origin"}
# The mechanism a stage's noise_multiplier belongs to (dpmammo.privacy.events).
Mechanism = Literal["dp-sgd", "gaussian-release"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReleaseSpend(_Record):
    """A Gaussian release a DP-SGD stage made before its steps, besides its unit count (the centre of
    a head's features, dpmammo.train.centre): noise std noise_multiplier·sensitivity on a sum."""

    what: str
    noise_multiplier: float
    sensitivity: float


class StageSpend(_Record):
    """One stage's record. guarantee: dp (ε, δ below hold for `unit`), none (see `reason`),
    public (touched no private data). A stage that added noise records its `mechanism`: dp-sgd
    (noise_multiplier, sample_rate, steps, max_grad_norm) or gaussian-release (noise_multiplier,
    sensitivity)."""

    stage: str
    run: str
    data: list[str]
    guarantee: Guarantee
    reason: Optional[NoGuaranteeReason] = None
    unit: Optional[Unit] = None
    epsilon: Optional[float] = None
    delta: Optional[float] = None
    target_epsilon: Optional[float] = None
    mechanism: Optional[Mechanism] = None
    noise_multiplier: Optional[float] = None
    sample_rate: Optional[float] = None
    steps: Optional[int] = None
    accountant: Optional[str] = None
    max_grad_norm: Optional[float] = None
    sensitivity: Optional[float] = None  # gaussian-release: L2 sensitivity of the released sum to one unit
    # σ of the Gaussian release of the private unit count (sensitivity 1) that `sample_rate` was set
    # from; the exact count is never recorded (under add/remove adjacency it is private).
    unit_count_noise: Optional[float] = None
    releases: list[ReleaseSpend] = []  # dp-sgd: its other releases before its steps, in order
    note: str = ""

    def events(self) -> list[PrivacyEvent]:
        """What a DP stage spent, in order: the release of its noisy unit count (if it made one), its
        other releases, then its DP-SGD steps or its Gaussian release; [] for a stage without a guarantee."""
        if self.guarantee != "dp":
            return []
        count = [] if self.unit_count_noise is None else [GaussianRelease.unit_count(self.unit_count_noise, self.unit)]
        others = [GaussianRelease(noise_multiplier=r.noise_multiplier, sensitivity=r.sensitivity, unit=self.unit,
                                  what=r.what) for r in self.releases]
        if self.mechanism == "gaussian-release":
            own = GaussianRelease(noise_multiplier=self.noise_multiplier, sensitivity=self.sensitivity, unit=self.unit)
        else:
            own = DpSgdEvent(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=self.steps,
                             max_grad_norm=self.max_grad_norm, unit=self.unit)
        return [*count, *others, own]

    @model_validator(mode="before")
    @classmethod
    def _mechanism_of_older_records(cls, data):
        # Records written before `mechanism` existed: every stage with a noise multiplier was DP-SGD
        # (a Gaussian release was written as DP-SGD with q = 1, one step, C = 1: the same ε).
        if isinstance(data, dict) and "mechanism" not in data and data.get("noise_multiplier") is not None:
            return {**data, "mechanism": "dp-sgd"}
        return data

    @model_validator(mode="after")
    def _consistent(self):
        if (self.guarantee == "none") != (self.reason is not None):
            raise ValueError("a stage has a `reason` exactly when its guarantee is none")
        if self.guarantee == "dp" and (self.unit is None or self.epsilon is None or self.delta is None):
            raise ValueError("a dp stage records its unit, epsilon and delta")
        if self.guarantee == "dp" and self.mechanism is None:
            raise ValueError("a dp stage records its mechanism (dp-sgd or gaussian-release) and noise_multiplier")
        needs = {"dp-sgd": ("noise_multiplier", "sample_rate", "steps", "max_grad_norm"),
                 "gaussian-release": ("noise_multiplier", "sensitivity"), None: ()}[self.mechanism]
        missing = [name for name in needs if getattr(self, name) is None]
        if missing:
            raise ValueError(f"a {self.mechanism} stage records {', '.join(missing)}")
        if self.mechanism == "gaussian-release" and (self.sample_rate, self.steps, self.max_grad_norm) != (None,) * 3:
            raise ValueError("a gaussian-release stage has no sample_rate, steps or max_grad_norm (it is not DP-SGD)")
        if self.releases and self.mechanism != "dp-sgd":
            raise ValueError("only a dp-sgd stage records releases before its steps")
        return self


class ChainTotal(_Record):
    guarantee: Guarantee
    epsilon: Optional[float] = None
    delta: Optional[float] = None
    unit: Optional[Unit] = None
    reason: Optional[NoGuaranteeReason] = None
    method: str
    stages: list[str]


class PrivacyRecord(_Record):
    """privacy.json: the chain of stages (this run's own stage last), the composed total, and
    notes on what else the run released (e.g. why no training loss is recorded under DP)."""

    stages: list[StageSpend]
    total: ChainTotal
    notes: list[str] = []

    @property
    def own(self) -> StageSpend:
        return self.stages[-1]

    def describe(self) -> str:
        return describe(self.total)


def dp_stage(*, stage: str, run: str, data: list[str], dp, note: str = "", planned: bool = False) -> StageSpend:
    """The record of a DP stage (`dp` is a DPSetup): its steps taken, or with `planned` the steps it
    was calibrated for. A test-only seeded-noise run keeps its numbers for inspection but gives no
    guarantee."""
    p = dp.config
    seeded = p.seeded_noise_for_tests
    epsilon = epsilon_of(dp.planned_events(), p.delta, p.accountant) if planned else dp.epsilon()
    return StageSpend(
        stage=stage, run=run, data=list(data), guarantee="none" if seeded else "dp",
        reason="seeded-noise" if seeded else None, unit=p.unit, epsilon=epsilon, delta=p.delta,
        target_epsilon=p.target_epsilon, mechanism="dp-sgd", noise_multiplier=dp.noise_multiplier,
        sample_rate=dp.sample_rate,
        steps=dp.planned_steps if planned else dp.steps_taken, accountant=p.accountant, max_grad_norm=p.max_grad_norm,
        unit_count_noise=dp.sampler.unit_count_noise,
        releases=[ReleaseSpend(what=r.what, noise_multiplier=r.noise_multiplier, sensitivity=r.sensitivity)
                  for r in dp.releases],
        note=("seeded noise: anyone who knows train.seed can remove it; for tests only. " if seeded else "") + note)


def release_stage(*, stage: str, run: str, data: list[str], privacy: ReleasePrivacyConfig, release: GaussianRelease,
                  note: str = "") -> StageSpend:
    """The record of one Gaussian release (dpmammo.privacy.mechanisms.gaussian_release): its σ and
    sensitivity; ε is the accountant's for that one release."""
    if release.unit != privacy.unit:
        raise DpMammoError(f"the release protects each {release.unit} but its privacy block says {privacy.unit}")
    seeded = privacy.seeded_noise_for_tests
    epsilon = epsilon_of([release], privacy.delta, privacy.accountant)
    return StageSpend(
        stage=stage, run=run, data=list(data), guarantee="none" if seeded else "dp",
        reason="seeded-noise" if seeded else None, unit=privacy.unit, epsilon=epsilon, delta=privacy.delta,
        target_epsilon=privacy.target_epsilon, mechanism="gaussian-release", noise_multiplier=release.noise_multiplier,
        sensitivity=release.sensitivity, accountant=privacy.accountant,
        note=("seeded noise: anyone who knows train.seed can remove it; for tests only. " if seeded else "")
        + f"one Gaussian release, sensitivity {release.sensitivity:g}" + (f"; {note}" if note else ""))


def non_dp_stage(*, stage: str, run: str, data: list[str], n_private: int) -> StageSpend:
    """A stage without DP: no guarantee if it touched private data (`n_private` > 0), public otherwise."""
    if n_private:
        return StageSpend(stage=stage, run=run, data=list(data), guarantee="none", reason="non-private",
                          note=f"{stage} trained on private patches without DP")
    return StageSpend(stage=stage, run=run, data=list(data), guarantee="public",
                      note="no private data in the training sets")


def weights_stage(path: Path, *, declared_public: bool) -> StageSpend:
    """The stage of a weight file that does not come from a finished dpmammo run (whose chain it
    would carry): public if the user declared it so, else of unknown origin (no guarantee)."""
    if declared_public:
        return StageSpend(stage="weights", run=str(path), data=["public"], guarantee="public",
                          note="weight file declared public (public_weights)")
    return StageSpend(stage="weights", run=str(path), data=["unknown"], guarantee="none", reason="unknown-origin",
                      note=f"weight file {path} is not in a finished dpmammo run and is not declared public "
                           "(public_weights): whatever it was trained on is unaccounted")


def prior_history(upstream: list[StageSpend], privacy: Optional[PrivacyConfig]) -> list[PrivacyEvent]:
    """The privacy events of the DP stages in `upstream`, for a stage whose `privacy.target` is the
    chain's total; [] for a stage-only target or a non-private stage. The total is one accountant's
    composition in one unit (compose: PRV as soon as one stage used PRV), so the stage must
    calibrate in the accountant the chain will compose in and protect the same unit: an RDP stage
    after a PRV one is refused, as is another unit or an input that carries no guarantee at all."""
    if privacy is None or privacy.target != "total":
        return []
    bad = next((s for s in upstream if s.guarantee == "none"), None)
    if bad is not None:
        raise DpMammoError(f"privacy.target is total but input {bad.stage} ({bad.run}) has no DP guarantee "
                           f"({REASON_WORDS[bad.reason]}): there is no total to target; use privacy.target: stage")
    dp = [s for s in upstream if s.guarantee == "dp"]
    for s in dp:
        if chain_accountant([s.accountant, privacy.accountant]) != privacy.accountant:
            raise DpMammoError(f"privacy.target is total: {s.stage} ({s.run}) used accountant {s.accountant}, so the "
                               f"chain composes in prv, and this stage would calibrate in rdp; set privacy.accountant: prv")
        if s.unit != privacy.unit:
            raise DpMammoError(f"privacy.target is total: {s.stage} ({s.run}) protects each {s.unit}, this stage each "
                               f"{privacy.unit}; a total needs one unit")
    return [e for s in dp for e in s.events()]


def chain_accountant(accountants: list[Optional[str]]) -> str:
    """The accountant a chain whose DP stages used `accountants` composes in: RDP when every stage
    used it (an RDP chain's total is then what its stages were calibrated on), else PRV, valid for
    any mix. The one place the rule lives: a stage that targets the total must calibrate in it."""
    return "rdp" if all(a == "rdp" for a in accountants) else "prv"


def compose(stages: list[StageSpend], delta: Optional[float] = None) -> ChainTotal:
    """The guarantee of running all `stages` on the same private data set."""
    names = [f"{s.stage}:{s.run}" for s in stages]
    bad = next((s for s in stages if s.guarantee == "none"), None)
    if bad is not None:
        return ChainTotal(guarantee="none", reason=bad.reason,
                          method=f"stage {bad.stage} ({bad.run}) has no DP guarantee: {REASON_WORDS[bad.reason]}",
                          stages=names)
    dp = [s for s in stages if s.guarantee == "dp"]
    if not dp:
        return ChainTotal(guarantee="public", method="no stage touched private data", stages=names)
    unit = "patient" if all(s.unit == "patient" for s in dp) else "patch"
    # One composition converts the whole chain at one δ: the caller's, else the last DP stage's (so a
    # consumer that adds no DP stage states its input's guarantee unchanged).
    delta = dp[-1].delta if delta is None else delta
    accountant = chain_accountant([s.accountant for s in dp])
    eps = epsilon_of([e for s in dp for e in s.events()], delta, accountant)
    return ChainTotal(guarantee="dp", epsilon=eps, delta=delta, unit=unit,
                      method=f"{accountant.upper()} composition of all DP stages", stages=names)


def check_planned_total(upstream: list[StageSpend], own: StageSpend) -> None:
    """Compose the chain as `write_privacy` will, with the stage's record as it will be written
    (`own`: for DP-SGD from dp_stage(planned=True), its planned steps), before the stage trains: an
    accountant that cannot evaluate that total (Opacus's PRV at a tiny δ over a long history)
    refuses then, not after training."""
    compose([*upstream, own], delta=own.delta)


def write_privacy(path: str | Path, own: StageSpend, upstream: list[StageSpend],
                  notes: list[str] | None = None) -> PrivacyRecord:
    """privacy.json for a run: its chain (upstream stages, then its own) and the composed total."""
    chain = [*upstream, own]
    # A chain's total is stated at the δ of this stage when it is DP, else at that of the chain's
    # last DP stage (one composition converts the whole chain at one δ; see compose).
    record = PrivacyRecord(stages=chain, total=compose(chain, delta=own.delta if own.guarantee == "dp" else None),
                           notes=list(notes or []))
    write_json_atomic(path, record.model_dump(mode="json"))
    return record


def read_privacy(path: str | Path) -> PrivacyRecord:
    """A run's privacy.json as a typed record (the one reader every report uses)."""
    path = Path(path)
    if not path.is_file():
        raise DpMammoError(f"missing {path.name} in {path.parent}: not a finished dpmammo run")
    try:
        return PrivacyRecord.model_validate(json.loads(path.read_text()))
    except (ValueError, ValidationError) as e:
        raise DpMammoError(f"{path} is not a dpmammo privacy record ({e.__class__.__name__}); "
                           "was it written by another version? retrain or remove the run") from None


def describe(total: ChainTotal) -> str:
    """Human wording for a total, with its unit: never shows a missing guarantee as ε = 0."""
    if total.guarantee == "dp":
        return f"(ε = {total.epsilon:.2f}, δ = {total.delta:.0e})-DP {UNIT_WORDS[total.unit]}"
    if total.guarantee == "public":
        return "no private data used"
    return f"no guarantee ({REASON_WORDS[total.reason]})"


def short(total: ChainTotal) -> str:
    """Compact wording for table cells: `ε=5.99/patient`, `no guarantee`, `public`."""
    if total.guarantee == "dp":
        return f"ε={total.epsilon:.2f}/{total.unit}"
    return "public" if total.guarantee == "public" else "no guarantee"


def provenance_stages(prov: dict) -> list[StageSpend]:
    """The privacy chain a synthetic folder carries (provenance.json, written by `dpmammo gan sample`);
    a folder without one is of unknown origin: no guarantee for whatever uses it."""
    if prov.get("chain"):
        return [StageSpend.model_validate(s) for s in prov["chain"]]
    return [StageSpend(stage="generator", run=Path(prov["folder"]).name, data=["unknown"], guarantee="none",
                       reason="unknown-origin",
                       note="synthetic folder without provenance.json: its generator's training is unaccounted "
                            "(the shipped c-dcgan set came from a GAN trained on CBIS-DDSM without DP)")]


def synthetic_chain(provenances: list[dict]) -> list[StageSpend]:
    """The chains of every synthetic folder a stage consumes (dpmammo.data.sets.synthetic_provenance):
    every stage that trains on data brings this into its own ledger."""
    return [s for prov in provenances for s in provenance_stages(prov)]
