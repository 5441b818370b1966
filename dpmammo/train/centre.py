"""The centre of a head's cached inputs, released under DP, and its folding into the head.

Why: the DP recipes train a linear head from zero in a few clipped, noisy steps on features that are
far from centred (the presets' projected ScatterNet features: mean vector of norm ~20 against
per-patch norms of ~32). The common component then dominates every unit's gradient, so clipping
binds on it and the steps spend their signal moving the bias. Centring the inputs removes it; the
centre is a statistic of private data, so under DP it is released with noise and counted (Tramèr &
Boneh 2021 normalise ScatterNet features with DP statistics the same way).

The release: each unit of privacy's mean feature vector (over its patches and views), clipped to
L2 norm `clip`, summed over units, plus Gaussian noise of std `noise_multiplier·clip` from the
stage's secret key (dpmammo.privacy.mechanisms.noisy_sum); divided by the unit count the stage's
sample rate uses (its public units plus the noisy count of its private ones, at least the batch
size: released already, so the division costs nothing). Adding or removing a unit moves the sum
by at most `clip`: one Gaussian release of that sensitivity, which `make_private` composes with the
stage's steps. Without DP: the plain mean over the records (each record's views averaged).

The head trains on `features − centre`; the weights released fold the centre into the head's bias
(`fold_into_head`), so the released model scores raw features and nothing downstream changes.
"""

from __future__ import annotations

import torch
from torch import nn

from dpmammo.errors import DpMammoError
from dpmammo.privacy.config import Unit
from dpmammo.privacy.events import GaussianRelease
from dpmammo.privacy.mechanisms import noisy_sum
from dpmammo.privacy.sampling import PoissonUnits
from dpmammo.train.config import FeatureCentreConfig

CENTRE_RELEASE = "feature centre"  # the release's name in the ledger
CENTRE_DRAW = 0  # its index among the stage's "release" draws (a training stage makes no other)


def centre_release(cfg: FeatureCentreConfig, unit: Unit) -> GaussianRelease:
    """The privacy event of the centre's release (the same whether drawn now or read from a checkpoint)."""
    return GaussianRelease(noise_multiplier=cfg.noise_multiplier, sensitivity=cfg.clip, unit=unit, what=CENTRE_RELEASE)


def clipped_unit_sum(features: torch.Tensor, units: list[torch.Tensor], clip: float) -> torch.Tensor:
    """Σ over units of the unit's mean feature vector, each scaled down to L2 norm ≤ clip.

    features: (N, views, F); units: the record indices of each unit."""
    per_record = features.double().mean(1)  # (N, F): a record's views averaged
    means = torch.stack([per_record[idx].mean(0) for idx in units])  # (U, F)
    norms = means.norm(dim=1, keepdim=True)
    return (means * torch.clamp(clip / norms.clamp_min(1e-12), max=1.0)).sum(0)


def dp_feature_centre(features: torch.Tensor, sampler: PoissonUnits, cfg: FeatureCentreConfig,
                      unit: Unit) -> tuple[torch.Tensor, GaussianRelease]:
    """The centre (F,) float32 of `features` (N, views, F) as the module docstring releases it under
    DP, drawn with the sampler's secret key, and its release."""
    total, release = noisy_sum(clipped_unit_sum(features, sampler.records_of_units(), cfg.clip),
                               centre_release(cfg, unit), key=sampler.key, index=CENTRE_DRAW)
    return (total / sampler.rate_units).float(), release


def exact_feature_centre(features: torch.Tensor) -> torch.Tensor:
    """Without DP: the mean over records of `features` (N, views, F), each record's views averaged."""
    return features.double().mean((0, 1)).float()


@torch.no_grad()
def fold_into_head(head: nn.Module, centre: torch.Tensor) -> None:
    """head(x − centre) = W x + (b − W·centre): the same scores from raw features (post-processing)."""
    if not isinstance(head, nn.Linear):
        raise DpMammoError(f"train.centre_features folds the centre into a linear head; this model's head is "
                           f"{type(head).__name__}")
    head.bias -= head.weight @ centre.to(head.weight)
