"""Who trains on what: the member splits of an audit's models, drawn from the audit's seed.

- Target (the audited model of LiRA and RMIA): a uniformly random half of the pool's units.
  Exactly half, like every reference model: the number of members sets the number of steps
  (non-private) or the sampling rate (DP), and a target trained on more units than its
  references has systematically larger margins on *every* record, which online LiRA reads as
  membership (seen on phantoms: target 36 units, references 32, online LiRA AUC 0.66 vs 0.81
  for the loss attack).
- Reference models: in pairs, a random half and its complement (ML Privacy Meter's paired
  models), so every model holds half the pool and every unit is in exactly half of the models
  (Carlini et al.'s balanced in/out statistics per unit). Drawn independently of the target's
  half: knowing the reference models' members tells the attacker nothing about the target's.
  Equal sizes also give every model the same sampling rate and noise (one calibration).
- One-run (Steinke et al. 2023): m units become canaries; each is included with probability ½
  and, when included, trained on with the *other* label. The other units are always members.
  A mislabelled patch is the most memorable thing a classifier can see in this data: it has to
  be learnt against every similar patch, so its inclusion moves the model's output far more than
  a typical patch's (Steinke et al. and Nasr et al. 2021 found mislabelled input-space canaries
  among the strongest black-box ones). Real patches stay in-distribution, so the canaries audit
  the recipe as it runs, and the patient-level unit is kept (a canary is a whole patient).
"""

from __future__ import annotations

import numpy as np

from dpmammo.errors import DpMammoError
from dpmammo.privacy.config import Unit
from dpmammo.train.members import AuditSplit

_STREAM = 0xA0D1  # keeps the audit's stream apart from other uses of the same seed


def reference_splits(units: list[str], n_refs: int, *, seed: int, unit: Unit) -> list[AuditSplit]:
    """The target's split, then the K reference models' (roles target, reference-00, ...)."""
    if len(units) < 8:
        raise DpMammoError(f"the private pool has {len(units)} {unit}s; an audit needs at least 8")
    rng = np.random.default_rng([seed, _STREAM, 0])
    target = np.zeros(len(units), dtype=bool)
    target[rng.permutation(len(units))[:len(units) // 2]] = True
    refs = np.zeros((n_refs, len(units)), dtype=bool)
    for pair in range(n_refs // 2):
        refs[2 * pair, rng.permutation(len(units))[:len(units) // 2]] = True
        refs[2 * pair + 1] = ~refs[2 * pair]
    masks = [("target", target)] + [(f"reference-{k:02d}", refs[k]) for k in range(n_refs)]
    return [AuditSplit(unit=unit, members=[u for u, keep in zip(units, mask) if keep], seed=seed, role=role)
            for role, mask in masks]


def canary_split(units: list[str], m: int, *, seed: int, unit: Unit) -> tuple[AuditSplit, list[str], np.ndarray]:
    """The one-run target's split, the canary ids and which of them were included."""
    if m > len(units):
        raise DpMammoError(f"audit.canaries={m} exceeds the {len(units)} {unit}s of the private pool; "
                           "use fewer canaries")
    rng = np.random.default_rng([seed, _STREAM, 1])
    chosen = rng.choice(len(units), size=m, replace=False)
    included = rng.random(m) < 0.5
    canaries = [units[i] for i in chosen]
    is_canary = np.zeros(len(units), dtype=bool)
    is_canary[chosen] = True
    members = [u for u, c in zip(units, is_canary) if not c] + [c for c, inc in zip(canaries, included) if inc]
    mislabelled = [c for c, inc in zip(canaries, included) if inc]
    split = AuditSplit(unit=unit, members=members, mislabelled=mislabelled, seed=seed, role="target")
    return split, canaries, included
