"""The config of `dpmammo pretrain`: a backbone trained on procedural images only (a public stage)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Union

from pydantic import Field, field_validator, model_validator
from typing_extensions import Annotated

from dpmammo.config import StrictModel
from dpmammo.data.procedural.kinds import KINDS, check_kind_list
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
        return check_kind_list(v)

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


class Supervised(StrictModel):
    """Cross-entropy on the processes' own labels (which kind, and the class each process drew:
    shape family, spectral slope bin, activation, margin); the head has one output per kind/class."""

    name: Literal["supervised"] = "supervised"


class AlignUniform(StrictModel):
    """Self-supervised: two augmented views per image (random resized crop, flips, gamma, noise)
    through backbone + projection MLP, L2-normalised; loss = alignment + weight · uniformity (Wang &
    Isola, ICML 2020), as Baradad et al. and DP-RandP pretrain. Labels are not used (only the
    held-out k-NN accuracy reports them)."""

    name: Literal["align-uniform"]
    feature_dim: int = Field(128, ge=2, description="output of the projection MLP")
    alpha: float = Field(2.0, gt=0, description="alignment: E ||f(x) - f(y)||^alpha over positive pairs")
    t: float = Field(2.0, gt=0, description="uniformity: log E exp(-t ||f(x) - f(y)||²) over all pairs")
    uniform_weight: float = Field(1.0, gt=0)
    crop_scale: tuple[float, float] = Field((0.3, 1.0), description="area fraction of the random crop")

    @field_validator("crop_scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low ≤ high ≤ 1, got {list(v)}")
        return v


Objective = Annotated[Union[Supervised, AlignUniform], Field(discriminator="name")]


class PretrainConfig(StrictModel):
    """Pretraining on procedural images; `objective` picks supervised (default) or align-uniform.
    The saved model's head is the objective's (classes or projection), so a DP classifier loads the
    backbone with `init_from: RUN` and `init_weights: backbone` (or the whole model when the head
    has its two classes: supervised on mammo-phantom alone)."""

    objective: Objective = Supervised()
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
