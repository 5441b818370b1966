"""The config of `dpmammo pretrain`: a backbone trained on procedural images only (a public stage)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from dpmammo.config import StrictModel
from dpmammo.data.procedural.kinds import KINDS
from dpmammo.models.config import CnnSmallConfig
from dpmammo.train.config import OptimConfig


class ProceduralData(StrictModel):
    kinds: list[str] = Field([], description=f"processes generated on the fly (no disk): {', '.join(KINDS)}")
    folders: list[Path] = Field([], description="sets written by `dpmammo data procedural` (checked against their "
                                                "provenance before use)")
    n: int = Field(20000, ge=1, description="training images per kind in `kinds` (indices 0..n-1)")
    n_val: int = Field(1000, ge=1, description="held-out images per kind or folder: the next indices of the same "
                                               "process, generated on the fly")
    seed: int = Field(0, ge=0, description="the processes' seed for `kinds` (a folder carries its own)")

    @field_validator("kinds")
    @classmethod
    def _registered(cls, v: list[str]) -> list[str]:
        unknown = [k for k in v if k not in KINDS]
        if unknown:
            raise ValueError(f"unknown kind {unknown[0]!r}; registered kinds: {', '.join(KINDS)}")
        if len(set(v)) != len(v):
            raise ValueError("a kind is listed twice")
        return v

    @model_validator(mode="after")
    def _some_data(self):
        if not self.kinds and not self.folders:
            raise ValueError("data: give kinds (generated on the fly) or folders (from `dpmammo data procedural`)")
        return self


class PretrainSettings(StrictModel):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    augment: Literal["flips", "none"] = "flips"
    seed: int = Field(0, description="initialisation, batch order and flips")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every_s: float = Field(60.0, ge=0, description="resume checkpoint at an epoch's end after this long")


class PretrainConfig(StrictModel):
    """Supervised pretraining on the processes' own labels (which kind, and the class each process
    drew: shape family, spectral slope bin, activation, margin); the head has one output per
    kind/class. A DP classifier loads the backbone with `init_from: RUN` and `init_weights: backbone`
    (or the whole model when the head has its two classes, e.g. mammo-phantom alone)."""

    data: ProceduralData
    model: CnnSmallConfig = CnnSmallConfig()
    optim: OptimConfig = OptimConfig()
    train: PretrainSettings = PretrainSettings()

    @model_validator(mode="after")
    def _from_scratch(self):
        if self.model.weights is not None or self.model.freeze_backbone:
            raise ValueError("model: pretraining starts from random initialisation (no weights, no frozen backbone), "
                             "so its only privacy stage is public")
        return self
