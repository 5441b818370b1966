"""The privacy ledger: what each stage spent, and the one guarantee for a chain of stages.

Unit of privacy: one lesion patch of the private training set (cbis-ddsm/train). Patient-level
privacy follows only by group privacy (a patient with k patches gets k·ε, roughly).

Composition of a chain (e.g. DP-GAN → synthetic pretrain → DP fine-tune):
- stages that touched no private data add nothing;
- any stage that touched private data without DP makes the total "no guarantee";
- DP stages on RDP accountants compose exactly by adding their RDP curves (one accountant
  history); otherwise ε and δ add up (basic composition), which is looser but valid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict

from dpmammo.privacy.accounting import epsilon_of

UNIT = "one lesion patch of the private training set"

Guarantee = Literal["dp", "none", "public"]


class StageSpend(BaseModel):
    """One stage's record. guarantee: dp (ε, δ below hold), none (private data without DP),
    public (touched no private data)."""

    model_config = ConfigDict(extra="forbid")

    stage: str
    run: str
    data: list[str]
    guarantee: Guarantee
    epsilon: Optional[float] = None
    delta: Optional[float] = None
    target_epsilon: Optional[float] = None
    noise_multiplier: Optional[float] = None
    sample_rate: Optional[float] = None
    steps: Optional[int] = None
    accountant: Optional[str] = None
    max_grad_norm: Optional[float] = None
    dataset_size: Optional[int] = None
    note: str = ""


class ChainTotal(BaseModel):
    model_config = ConfigDict(extra="forbid")

    guarantee: Guarantee
    epsilon: Optional[float] = None
    delta: Optional[float] = None
    method: str
    stages: list[str]


def stage_spend(*, stage: str, run: str, data: list[str], dp, dataset_size: int, n_private: int,
                note: str = "") -> StageSpend:
    """The record of one stage: its DP spend (`dp` is a DPSetup), or what touching data without DP means."""
    common = dict(stage=stage, run=run, data=list(data), dataset_size=dataset_size)
    if dp is not None:
        p = dp.config
        return StageSpend(**common, guarantee="dp", epsilon=dp.epsilon(), delta=p.delta,
                          target_epsilon=p.target_epsilon, noise_multiplier=dp.noise_multiplier,
                          sample_rate=dp.sample_rate, steps=dp.steps_taken, accountant=p.accountant,
                          max_grad_norm=p.max_grad_norm, note=note)
    if n_private:
        return StageSpend(**common, guarantee="none", note=f"{stage} trained on private data without DP")
    return StageSpend(**common, guarantee="public", note="no private data in the training sets")


def compose(stages: list[StageSpend], delta: Optional[float] = None) -> ChainTotal:
    """The guarantee of running all `stages` on the same private data set."""
    names = [f"{s.stage}:{s.run}" for s in stages]
    if any(s.guarantee == "none" for s in stages):
        bad = next(s for s in stages if s.guarantee == "none")
        return ChainTotal(guarantee="none", method=f"stage {bad.stage} ({bad.run}) has no DP guarantee",
                          stages=names)
    dp = [s for s in stages if s.guarantee == "dp"]
    if not dp:
        return ChainTotal(guarantee="public", method="no stage touched private data", stages=names)
    if delta is None:
        delta = sum(s.delta for s in dp)
    if all(s.accountant == "rdp" for s in dp):
        history = [(s.noise_multiplier, s.sample_rate, s.steps) for s in dp]
        eps = epsilon_of(history, delta, "rdp")
        return ChainTotal(guarantee="dp", epsilon=eps, delta=delta,
                          method="RDP composition of all DP stages", stages=names)
    return ChainTotal(guarantee="dp", epsilon=sum(s.epsilon for s in dp), delta=sum(s.delta for s in dp),
                      method="basic composition (ε and δ add)", stages=names)


def write_privacy_json(path: str | Path, own: StageSpend, upstream: list[StageSpend]) -> dict:
    """privacy.json: this stage's keys at the top level, the chain, and the composed total."""
    chain = [*upstream, own]
    total = compose(chain, delta=own.delta if own.guarantee == "dp" else None)
    record = {
        **own.model_dump(),
        "unit": UNIT,
        "chain": [s.model_dump() for s in chain],
        "total": total.model_dump(),
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)
    return record


def read_chain(privacy_json: str | Path) -> list[StageSpend]:
    """The full chain recorded in a run's privacy.json (to extend it in a later stage)."""
    data = json.loads(Path(privacy_json).read_text())
    return [StageSpend.model_validate(s) for s in data["chain"]]


def describe(total: dict) -> str:
    """Human wording for a total: never shows a missing guarantee as ε = 0."""
    if total["guarantee"] == "dp":
        return f"(ε = {total['epsilon']:.2f}, δ = {total['delta']:.0e})-DP"
    if total["guarantee"] == "public":
        return "no private data used"
    return "no guarantee (private data used without DP)"
