"""Release mechanisms other than DP-SGD: one Gaussian release of a sum, the one entry point for it
(`gaussian_release` calibrates σ to a target; `noisy_sum` adds the noise of a σ already set).

A stage that releases a statistic once (DP-MERF's labelled mean embedding; any later release
mechanism) calls `gaussian_release` and records the `GaussianRelease` it returns with
`dpmammo.privacy.ledger.release_stage`. It does what such a stage must do, in order: check δ
against the number of private units, calibrate σ to the target ε (after the events of earlier
stages when the target is a chain total), and only then compute the values and add noise from
the stage's secret key (dpmammo.privacy.secret: ChaCha20 keyed with 256 bits of OS entropy, four
draws per value against floating-point attacks, as the DP-SGD stages' noise).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from dpmammo.privacy.accounting import calibrate_noise, check_delta
from dpmammo.privacy.config import ReleasePrivacyConfig
from dpmammo.privacy.events import GaussianRelease, PrivacyEvent
from dpmammo.privacy.secret import SecretKey


def gaussian_release(values: Callable[[], torch.Tensor], *, sensitivity: float, privacy: ReleasePrivacyConfig,
                     n_private_units: int, key: SecretKey, prior: Sequence[PrivacyEvent] = (),
                     index: int = 0) -> tuple[torch.Tensor, GaussianRelease]:
    """values() + N(0, (σ·sensitivity)² I), σ the smallest noise multiplier that meets the target ε.

    Args:
        values: computes the sum to release, whose L2 norm moves by at most `sensitivity` when one
            unit is added or removed; called only after δ is checked and σ calibrated, so a
            refused release reads no private data.
        sensitivity: that bound (the caller's construction guarantees it; nothing is clipped here).
        privacy: the stage's privacy block (target ε, δ, unit, accountant).
        n_private_units: the number of private units behind the values (for the δ < 1/N check;
            0 when none is private). Never released.
        key: the stage's secret key (dpmammo.privacy.sampling.secret_key); seeded keys are for
            tests only, and the ledger records them as no guarantee.
        prior: events composed before this release, when its target is a chain's total; the
            noise is then calibrated to their composition with this release (its accountant's).
        index: which release of the stage this is: each draws its own noise from the key.

    Returns:
        the noisy values (dtype of `values()`) and the release as a privacy event.
    """
    if n_private_units:
        check_delta(privacy.delta, n_private_units, privacy.unit)
    sigma = calibrate_noise(target_epsilon=privacy.target_epsilon, delta=privacy.delta, sample_rate=1.0, steps=1,
                            accountant=privacy.accountant, prior=prior)
    return noisy_sum(values(), GaussianRelease(noise_multiplier=sigma, sensitivity=sensitivity, unit=privacy.unit),
                     key=key, index=index)


def noisy_sum(exact: torch.Tensor, release: GaussianRelease, *, key: SecretKey, index: int = 0
              ) -> tuple[torch.Tensor, GaussianRelease]:
    """exact + N(0, (σ·Δ)² I) for a release whose σ is already set (by `gaussian_release`'s calibration,
    or by its stage, which then composes it with its other events: dpmammo.train.centre). `exact`
    must move by at most Δ = release.sensitivity in L2 when one unit is added or removed.
    `index`: which release of the stage this is (each draws its own noise from the key)."""
    noise, = key.gaussian_noise("release", index, [exact.shape], release.noise_multiplier * release.sensitivity)
    return exact + noise.to(device=exact.device, dtype=exact.dtype), release
