"""The DP-MERF config (Harder, Adamczewski & Park, AISTATS 2021): one YAML file per run, every key
validated (unknown keys are errors). `generator: dp-merf` picks it in dpmammo.gan.registry.

DP-MERF releases one noisy mean embedding of the private data in random Fourier features (a
Gaussian kernel) and trains the conditional generator to match it; see dpmammo.gan.merf.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from dpmammo.config import Seed, StrictModel
from dpmammo.gan.config import GanDataConfig, GeneratorShape
from dpmammo.privacy.config import ReleasePrivacyConfig

# The kernel's length-scale per pixel, chosen on public phantoms (dpmammo.data.phantoms; never
# on the private data, where a median heuristic would leak). The median root-mean-square pixel
# difference between two phantoms is 0.12 (0.118 at 16 px, 0.125 at 64 px), but at that scale,
# and at 0.25, non-private DP-MERF had not learned the condition after 400 steps at 32 px (class
# fidelity 0.59-0.78); at 0.5 it had after 200 (0.96-0.999). The reference code's MNIST value
# (rff_sigma 105 over 784 pixels) is 0.37 per pixel, close to MNIST's own median distance.
DEFAULT_LENGTH_SCALE = 0.5


class MerfFeatures(StrictModel):
    """The random Fourier features φ of a Gaussian kernel on downsampled images."""

    n_features: int = Field(2000, ge=2, le=100_000,
                            description="number of random Fourier features (cos and sin of n_features/2 "
                                        "frequencies); the release has 2·n_features + 2 numbers")
    resolution: int = Field(32, ge=4, le=256,
                            description="side the images are average-pooled to before the features; a power of "
                                        "two, at most model.image_size")
    length_scale: float = Field(
        DEFAULT_LENGTH_SCALE, gt=0,
        description="Gaussian kernel length-scale per pixel: ℓ = length_scale·resolution, i.e. in units of the "
                    "root-mean-square pixel difference (pixels in [0, 1]); fixed, never fitted to private data. "
                    "Default 0.5, chosen on public phantoms (see DEFAULT_LENGTH_SCALE)")

    @field_validator("n_features")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"must be even (a cos and a sin per frequency), got {v}")
        return v

    @field_validator("resolution")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"must be a power of two (8, 16, 32, 64, ...), got {v}")
        return v


class MerfOptim(StrictModel):
    """Adam on the generator; an epoch is `steps_per_epoch` steps (no data pass: the release is fixed)."""

    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the generator")
    epochs: int = Field(20, ge=1, description="epochs of steps_per_epoch generator steps")
    steps_per_epoch: int = Field(100, ge=1, description="generator steps per epoch (one log row, one checkpoint)")
    batch_size: int = Field(128, ge=4, description="generated patches per step, half of each class")


class MerfTrainSettings(StrictModel):
    seed: Seed = Field(0, description="initialisation, latents and the random frequencies (never the DP noise)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the generator trains")
    sample_every: int = Field(5, ge=0, description="write samples/epoch_XXX.png every N epochs (0: never)")


class MerfConfig(StrictModel):
    generator: Literal["dp-merf"] = Field(..., description="which generator (dpmammo.gan.registry)")
    data: GanDataConfig = Field(GanDataConfig(), description="the private sets whose mean embedding is released")
    model: GeneratorShape = Field(GeneratorShape(image_size=64),
                                  description="the conditional DCGAN generator (dpmammo.gan.models.Generator)")
    features: MerfFeatures = Field(MerfFeatures(), description="random Fourier features of the kernel")
    optim: MerfOptim = Field(MerfOptim(), description="generator training (post-processing of the release)")
    train: MerfTrainSettings = Field(MerfTrainSettings(), description="seed, device, sample grids")
    privacy: Optional[ReleasePrivacyConfig] = Field(
        None, description="absent: non-private (the embedding is released without noise); present: one Gaussian "
                          "release at target_epsilon")

    @model_validator(mode="after")
    def _resolution_fits(self):
        if self.features.resolution > self.model.image_size:
            raise ValueError(f"features.resolution={self.features.resolution} must be at most "
                             f"model.image_size={self.model.image_size} (images are pooled down to it)")
        return self
