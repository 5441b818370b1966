"""`cnn-small`: a GroupNorm CNN that trains from scratch on CPU, DP or not.

No BatchNorm: under DP-SGD each sample's gradient must depend on that sample alone, and
BatchNorm mixes samples in a batch. GroupNorm normalises within a sample.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator
from torch import nn

from dpmammo.config import StrictModel
from dpmammo.models.classifier import Classifier
from dpmammo.models.registry import register_model
from pathlib import Path


class CnnSmallConfig(StrictModel):
    name: Literal["cnn-small"] = "cnn-small"
    input_size: int = Field(64, ge=32, le=256, description="patch side in pixels (resized on load)")
    width: int = Field(32, ge=8, le=256, description="channels of the first block; doubles twice")
    weights: Optional[Path] = Field(None, description="whole-model weight file, loaded strictly")
    freeze_backbone: bool = False

    @field_validator("input_size")
    @classmethod
    def _multiple_of_16(cls, v: int) -> int:
        if v % 16:
            raise ValueError(f"must be a multiple of 16 (four 2× poolings), got {v}")
        return v


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.GroupNorm(min(8, cout // 4), cout),
        nn.ReLU(inplace=False),
        nn.MaxPool2d(2),
    )


class _Normalize(nn.Module):
    def forward(self, x):
        return x * 2.0 - 1.0


@register_model("cnn-small", CnnSmallConfig)
def cnn_small(cfg: CnnSmallConfig) -> Classifier:
    w = cfg.width
    backbone = nn.Sequential(
        _Normalize(),
        _block(1, w), _block(w, 2 * w), _block(2 * w, 4 * w), _block(4 * w, 4 * w),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    head = nn.Linear(4 * w, 2)
    return Classifier(backbone, head, input_size=cfg.input_size, num_features=4 * w)
