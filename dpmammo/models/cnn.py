"""`cnn-small`: a GroupNorm CNN that trains from scratch on CPU, DP or not.

No BatchNorm: under DP-SGD each sample's gradient must depend on that sample alone, and
BatchNorm mixes samples in a batch. GroupNorm normalises within a sample.
"""

from __future__ import annotations

from torch import nn

from dpmammo.models.classifier import Classifier
from dpmammo.models.config import CnnSmallConfig
from dpmammo.models.registry import register_model


def _block(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(min(8, cout // 4), cout), nn.ReLU()]
    return nn.Sequential(*layers, nn.MaxPool2d(2)) if pool else nn.Sequential(*layers)


class _Standardize(nn.Module):
    """Per-image zero mean, unit variance. Mass margins are low-contrast (a [0, 1] input left as
    is learnt far slower on phantoms), and scanners differ in contrast (CBIS-DDSM vs BCDR).
    Per image, so it is a per-sample operation and DP-safe."""

    def forward(self, x):
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        return (x - mean) / (std + 1e-3)


@register_model("cnn-small", CnnSmallConfig)
def cnn_small(cfg: CnnSmallConfig) -> Classifier:
    # Three conv blocks, two 2x poolings, then a global max: spicules and irregular margins are
    # small, sparse cues, and a global average over a coarse map dilutes them (measured on phantoms:
    # average pooling after four poolings learnt far slower than this).
    w = cfg.width
    backbone = nn.Sequential(
        _Standardize(),
        _block(1, w, pool=True), _block(w, 2 * w, pool=True), _block(2 * w, 4 * w, pool=False),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
    )
    head = nn.Linear(4 * w, 2)
    return Classifier(backbone, head, input_size=cfg.input_size, num_features=4 * w)
