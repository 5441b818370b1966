"""The privacy events a stage spends, as typed values: what the accountant and the ledger compose.

Two mechanisms spend budget in dpmammo:
- `DpSgdEvent`: `steps` steps of DP-SGD, each unit Poisson-sampled with probability q, its
  gradient clipped to C, Gaussian noise of standard deviation σ·C on the sum (Abadi et al., 2016);
- `GaussianRelease`: one release of a sum whose L2 sensitivity to adding or removing a unit is
  Δ, with Gaussian noise of standard deviation σ·Δ (DP-MERF's mean embedding; the noisy unit count
  a DP-SGD stage sets its sample rate from, Δ = 1; the centre of a head's features,
  dpmammo.train.centre).

σ is a noise multiplier in both: the noise over the sensitivity, so an event's privacy cost
depends on σ (and q, steps) only. C, Δ and the unit say what the guarantee covers. Frozen and
hashable: the accounting memoises on them. Turning them into Opacus's accountant history is
`dpmammo.privacy.accounting.opacus_history`, the one place that knows that format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union, get_args

from dpmammo.privacy.config import Unit


def _check_unit(unit: str) -> None:
    if unit not in get_args(Unit):
        raise ValueError(f"unit {unit!r} is not a unit of privacy; use one of {', '.join(get_args(Unit))}")


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value} must be a finite number > 0")


@dataclass(frozen=True)
class DpSgdEvent:
    """`steps` Poisson-sampled Gaussian steps: σ = noise_multiplier, q = sample_rate, C = max_grad_norm."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    unit: Unit

    def __post_init__(self):
        _check_positive("noise_multiplier", self.noise_multiplier)
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate={self.sample_rate} must be in (0, 1]")
        if self.steps < 0 or self.steps != int(self.steps):
            raise ValueError(f"steps={self.steps} must be a whole number ≥ 0")
        _check_positive("max_grad_norm", self.max_grad_norm)
        _check_unit(self.unit)


@dataclass(frozen=True)
class GaussianRelease:
    """One Gaussian release of a sum of L2 sensitivity `sensitivity`, noise std noise_multiplier·sensitivity.
    `what` names it for the ledger (the accounting ignores it)."""

    noise_multiplier: float
    sensitivity: float
    unit: Unit
    what: str = ""

    def __post_init__(self):
        _check_positive("noise_multiplier", self.noise_multiplier)
        _check_positive("sensitivity", self.sensitivity)
        _check_unit(self.unit)

    @classmethod
    def unit_count(cls, noise: float, unit: Unit) -> "GaussianRelease":
        """The noisy number of private units, N + N(0, noise²): adding or removing a unit moves N by 1."""
        return cls(noise_multiplier=noise, sensitivity=1.0, unit=unit)


PrivacyEvent = Union[DpSgdEvent, GaussianRelease]
