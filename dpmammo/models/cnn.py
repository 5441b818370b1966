"""`cnn-small`: a GroupNorm CNN that trains from scratch on CPU, DP or not.

No BatchNorm: under DP-SGD each sample's gradient must depend on that sample alone, and
BatchNorm mixes samples in a batch. GroupNorm normalises within a sample. With
`weight_standardization` each conv standardises its own filters (`WSConv2d`), a function of the
weights alone, so it stays a per-sample network.
"""

from __future__ import annotations

import torch
from torch import nn

from dpmammo.models.classifier import Classifier
from dpmammo.models.config import CnnSmallConfig


def standardize_weight(weight: torch.Tensor, eps: float) -> torch.Tensor:
    """(w − mean) / sqrt(var + eps) per output channel, over (cin, kh, kw); var is the biased one."""
    flat = weight.flatten(1)
    mean = flat.mean(dim=1, keepdim=True)
    var = flat.var(dim=1, unbiased=False, keepdim=True)
    return ((flat - mean) * torch.rsqrt(var + eps)).view_as(weight)


class WSConv2d(nn.Conv2d):
    """A Conv2d whose filters are standardised at every forward (weight standardisation, Qiao et al.
    2019, "Micro-Batch Training with Batch-Channel Normalization and Weight Standardization"; with
    GroupNorm, the DP-SGD practice of De et al. 2022, "Unlocking High-Accuracy Differentially
    Private Image Classification through Scale").

    The parameter is the raw weight; the conv sees its standardised version. Opacus's conv grad
    sampler would give the gradient with respect to the standardised weight, so
    dpmammo.privacy.grad_samplers registers one for this class that pulls each sample's gradient
    back through the standardisation.
    """

    eps = 1e-5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, standardize_weight(self.weight, self.eps), self.bias)


def _block(cin: int, cout: int, pool: bool, ws: bool = False) -> nn.Sequential:
    conv = (WSConv2d if ws else nn.Conv2d)(cin, cout, 3, padding=1)
    layers = [conv, nn.GroupNorm(min(8, cout // 4), cout), nn.ReLU()]
    return nn.Sequential(*layers, nn.MaxPool2d(2)) if pool else nn.Sequential(*layers)


class _Standardize(nn.Module):
    """Per-image zero mean, unit variance. Mass margins are low-contrast (a [0, 1] input left as
    is learnt far slower on phantoms), and scanners differ in contrast (CBIS-DDSM vs BCDR).
    Per image, so it is a per-sample operation and DP-safe."""

    def forward(self, x):
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        return (x - mean) / (std + 1e-3)


def cnn_small(cfg: CnnSmallConfig) -> Classifier:
    # Three conv blocks, two 2x poolings, then a global max: spicules and irregular margins are
    # small, sparse cues, and a global average over a coarse map dilutes them (measured on phantoms:
    # average pooling after four poolings learnt far slower than this).
    w, ws = cfg.width, cfg.weight_standardization
    backbone = nn.Sequential(
        _Standardize(),
        _block(1, w, pool=True, ws=ws), _block(w, 2 * w, pool=True, ws=ws), _block(2 * w, 4 * w, pool=False, ws=ws),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
    )
    head = nn.Linear(4 * w, 2)
    return Classifier(backbone, head, input_size=cfg.input_size, num_features=4 * w)
