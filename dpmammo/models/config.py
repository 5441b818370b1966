"""The config of each registered model: pydantic only, so a config file is validated without torch.

`dpmammo.models.cnn` and `dpmammo.models.swin` build the modules; they register these classes
with their builders (see `dpmammo.models.registry`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from dpmammo.config import StrictModel


class CnnSmallConfig(StrictModel):
    name: Literal["cnn-small"] = "cnn-small"
    input_size: int = Field(64, ge=32, le=256, description="patch side in pixels (resized on load)")
    width: int = Field(16, ge=4, le=256, description="channels of the first block; doubles twice")
    weight_standardization: bool = Field(
        False, description="standardise each conv filter (zero mean, unit variance per output channel) at every "
                           "forward, before its GroupNorm: De et al. (2022) found weight standardisation with group "
                           "norm the better-conditioned network for DP-SGD, whose clipped, noisy steps suit "
                           "scale-invariant layers")
    weights: Optional[Path] = Field(None, description="whole-model weight file, loaded strictly")
    freeze_backbone: bool = False

    @field_validator("input_size")
    @classmethod
    def _multiple_of_16(cls, v: int) -> int:
        if v % 16:
            raise ValueError(f"must be a multiple of 16, got {v}")
        return v


class SwinTConfig(StrictModel):
    name: Literal["swin_t"] = "swin_t"
    input_size: Literal[224] = 224
    pretrained: bool = Field(False, description="ImageNet-1k weights from timm's download cache")
    backbone_weights: Optional[Path] = Field(
        None, description="local timm Swin-T checkpoint (ImageNet), loaded strictly; its classifier keys are dropped")
    weights: Optional[Path] = Field(None, description="whole-model weight file, loaded strictly")
    head: Literal["mlp", "linear"] = Field("mlp", description="mlp: 768→384→2 as in the paper; linear: 768→2")
    freeze_backbone: bool = False

    @model_validator(mode="after")
    def _one_weight_source(self):
        if self.pretrained and self.backbone_weights is not None:
            raise ValueError("give either pretrained: true or backbone_weights: PATH, not both")
        return self


class PixelsConfig(StrictModel):
    name: Literal["pixels"] = "pixels"
    input_size: int = Field(64, ge=16, le=256, description="patch side in pixels as loaded (resized on load)")
    resolution: int = Field(32, ge=4, le=128, description="side the patch is average-pooled to: the features "
                                                          "are resolution² standardised pixels")
    weights: Optional[Path] = Field(None, description="whole-model weight file (the head), loaded strictly")
    freeze_backbone: Literal[True] = Field(True, description="the backbone has no parameters: only the head trains")

    @model_validator(mode="after")
    def _pools_down(self):
        if self.resolution > self.input_size:
            raise ValueError(f"resolution {self.resolution} exceeds input_size {self.input_size}")
        return self


ModelConfig = CnnSmallConfig | SwinTConfig | PixelsConfig
