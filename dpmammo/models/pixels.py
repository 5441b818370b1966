"""`pixels`: downsampled, per-image standardised pixels as fixed features, and a linear head.

The baseline any prior must beat under DP at small ε (Tramèr & Boneh, ICLR 2021, "Differentially
Private Learning Needs Better Features (or Much More Data)": at small ε a linear model on fixed,
well-normalised features beats end-to-end DP CNNs). The backbone has no parameters and touches no
data beyond the image it maps: average-pool to `resolution`, then zero mean and unit variance per
image (a per-sample operation, so DP-safe; no statistics of the data set enter it). Only the head
trains; with `train.feature_cache` the features are computed once per image and flip view.
"""

from __future__ import annotations

from torch import nn

from dpmammo.models.classifier import Classifier
from dpmammo.models.cnn import _Standardize
from dpmammo.models.config import PixelsConfig


class PixelFeatures(nn.Sequential):
    """(N, 1, S, S) → (N, resolution²): average-pooled, then standardised per image."""

    def __init__(self, *, input_size: int, resolution: int):
        super().__init__(nn.AdaptiveAvgPool2d(resolution), _Standardize(), nn.Flatten())
        self.input_size, self.resolution, self.num_features = input_size, resolution, resolution ** 2

    def extra_repr(self) -> str:
        # The feature cache and the public basis's cache key on the repr: everything that shapes the features shows.
        return f"input_size={self.input_size}, resolution={self.resolution}"


def pixels(cfg: PixelsConfig) -> Classifier:
    backbone = PixelFeatures(input_size=cfg.input_size, resolution=cfg.resolution)
    head = nn.Linear(cfg.resolution ** 2, 2)
    return Classifier(backbone, head, input_size=cfg.input_size, num_features=cfg.resolution ** 2)
