"""The centre of a head's cached inputs, released under DP, and its folding into the head.

Why: the DP recipes train a linear head from zero in a few clipped, noisy steps on features that are
far from centred (the presets' projected ScatterNet features: mean vector of norm ~20 against
per-patch norms of ~32). The common component then dominates every unit's gradient, so clipping
binds on it and the steps spend their signal moving the bias. Centring the inputs removes it; the
centre is a statistic of private data, so under DP it is released with noise and counted (Tramèr &
Boneh 2021 normalise ScatterNet features with DP statistics the same way).

The release: each unit of privacy's mean feature vector (over its patches and views), clipped to
L2 norm `clip`, summed over units, plus Gaussian noise of std `noise_multiplier·clip` from the
stage's secret key; divided by the stage's noisy unit count, which the stage has released already
(dpmammo.privacy.sampling), so the division costs nothing. Adding or removing a unit moves the sum
by at most `clip`: one Gaussian release of that sensitivity, which `make_private` composes with the
stage's steps. Without DP: the plain mean over the records.

The head trains on `features − centre`; the weights released fold the centre into the head's bias
(`fold_into_head`), so the released model scores raw features and nothing downstream changes.
"""

from __future__ import annotations

import torch
from torch import nn

from dpmammo.errors import DpMammoError
from dpmammo.privacy.events import GaussianRelease
from dpmammo.privacy.sampling import PoissonUnits, ShuffledBatches
from dpmammo.train.config import FeatureCentreConfig

WHAT = "feature centre"


def clipped_unit_sum(features: torch.Tensor, units: list[torch.Tensor], clip: float) -> torch.Tensor:
    """Σ over units of the unit's mean feature vector, each scaled down to L2 norm ≤ clip.

    features: (N, views, F); units: the record indices of each unit."""
    per_record = features.double().mean(1)  # (N, F): a record's views averaged
    means = torch.stack([per_record[idx].mean(0) for idx in units])  # (U, F)
    norms = means.norm(dim=1, keepdim=True)
    return (means * torch.clamp(clip / norms.clamp_min(1e-12), max=1.0)).sum(0)


def feature_centre(features: torch.Tensor, sampler: PoissonUnits | ShuffledBatches, cfg: FeatureCentreConfig,
                   unit: str | None) -> tuple[torch.Tensor, GaussianRelease | None]:
    """The centre (F,) float32 of `features` (N, views, F) as the module docstring releases it, and
    the release (None without DP: the exact mean over the records)."""
    if not isinstance(sampler, PoissonUnits):
        return features.double().mean((0, 1)).float(), None
    total = clipped_unit_sum(features, sampler.records_of_units(), cfg.clip)
    noise, = sampler.key.gaussian_noise("release", 0, [total.shape], cfg.noise_multiplier * cfg.clip)
    centre = (total + noise) / sampler.rate_units
    return centre.float(), GaussianRelease(noise_multiplier=cfg.noise_multiplier, sensitivity=cfg.clip,
                                           unit=unit, what=WHAT)


@torch.no_grad()
def fold_into_head(head: nn.Module, centre: torch.Tensor) -> None:
    """head(x − centre) = W x + (b − W·centre): the same scores from raw features (post-processing)."""
    if not isinstance(head, nn.Linear):
        raise DpMammoError(f"train.centre_features folds the centre into a linear head; this model's head is "
                           f"{type(head).__name__}")
    head.bias -= head.weight @ centre.to(head.weight)
