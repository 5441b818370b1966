"""A known member split of the private training sets, for membership-inference audits.

`dpmammo audit` trains a target and reference models of one recipe, each on a chosen subset of
the private pool (split by the unit of privacy: patients, or patches), and scores every pool
unit. It can only do that for models whose member set it knows, so the subset is part of the
training config (`data.audit_split`, written to config.yaml) and `fit` applies it right after
loading the records. Synthetic (public) records are never filtered.

The split's randomness is the audit's (seeded, recorded): it decides which units an attacker
must tell apart, not the DP noise or sampling, which stay secret.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pydantic import Field, model_validator

from dpmammo.config import Seed, StrictModel
from dpmammo.data.manifest import PatchRecord
from dpmammo.errors import DpMammoError
from dpmammo.privacy.config import Unit


def member_id(record: PatchRecord, unit: Unit) -> str:
    """The id of a private record's unit of privacy: its patient, or (unit patch) its file name."""
    return record.patient if unit == "patient" else Path(record.path).name


class AuditSplit(StrictModel):
    """Which private units a run trains on, and which of them are mislabelled canaries."""

    unit: Unit = Field(..., description="what an id names: a patient, or a patch (file name)")
    members: list[str] = Field(..., description="ids of the private units kept for training; the others are left out")
    mislabelled: list[str] = Field(
        [], description="ids among `members` trained with the other label (one-run audit canaries)")
    seed: Seed = Field(..., description="the audit's seed that drew the split (not DP randomness)")
    role: str = Field(..., min_length=1, description="which model of the audit this is, e.g. target or reference-03")

    @model_validator(mode="after")
    def _canaries_are_members(self):
        if len(set(self.members)) != len(self.members):
            raise ValueError("members lists an id twice")
        stray = sorted(set(self.mislabelled) - set(self.members))
        if stray:
            raise ValueError(f"mislabelled ids must be members; not members: {stray[:3]}")
        return self


def apply_audit_split(records: list[PatchRecord], split: AuditSplit | None) -> list[PatchRecord]:
    """Keep the private records of member units (labels of mislabelled units flipped) and every
    synthetic record; `split` None keeps everything. An id naming no private unit is refused:
    a silently smaller member set would make the audit score the wrong units."""
    if split is None:
        return records
    private = {member_id(r, split.unit) for r in records if r.source == "real"}
    unknown = [m for m in split.members if m not in private]
    if unknown:
        raise DpMammoError(f"data.audit_split names {len(unknown)} {split.unit} id(s) not in the private training "
                           f"sets, e.g. {unknown[0]!r}; was the split drawn for other data?")
    keep, flip = set(split.members), set(split.mislabelled)
    out = []
    for r in records:
        if r.source != "real":
            out.append(r)
            continue
        uid = member_id(r, split.unit)
        if uid in keep:
            out.append(dataclasses.replace(r, label=1 - r.label) if uid in flip else r)
    return out
