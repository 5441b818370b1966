"""The GAN config: one YAML file per generator run, every key validated (unknown keys are errors).

Defaults follow the reference MCGAN (Osuala et al., 2024): a conditional DCGAN (Radford et al.,
2016) for 128×128 grayscale patches, Adam with lr 1e-4 and betas (0.5, 0.999).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from dpmammo.config import Seed, StrictModel
from dpmammo.privacy.config import PrivacyConfig


class GanDataConfig(StrictModel):
    root: Optional[Path] = Field(None, description="data folder; default $DPMAMMO_DATA, then the fetch cache")
    train: list[str] = Field(["cbis-ddsm/train"], min_length=1,
                             description="training sets (`dataset/split` or a folder path); their union")


class GeneratorShape(StrictModel):
    """The conditional generator every registered generator trains (`dpmammo.gan.models.Generator`)."""

    image_size: int = Field(128, ge=16, le=256, description="patch side in pixels; a power of two")
    latent_dim: int = Field(100, ge=1, description="length of the noise vector z")
    embed_dim: int = Field(50, ge=1, description="label embedding size (generator and discriminator)")
    cond_dim: int = Field(50, ge=1, description="generator: the embedded label's linear map, concatenated with z")
    g_width: int = Field(64, ge=4, le=512, description="generator channels at the last upsampling; doubles per level up to 8×")
    g_upsample: Literal["transposed", "blurred"] = Field(
        "transposed", description="the generator's 2× steps: DCGAN's 4×4 transposed convolution, or that followed by "
                                  "a fixed binomial blur (removes its checkerboard artefacts)")
    sample_blur: float = Field(
        0.0, ge=0, le=2, description="σ in pixels of a Gaussian low-pass applied to sampled patches only (training "
                                     "never sees it): it damps the high frequencies the transposed convolutions "
                                     "add, which radiomics texture features (FRD) weigh heavily; 0: none")

    @field_validator("image_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"must be a power of two (16, 32, 64, 128, 256), got {v}")
        return v


class GanModelConfig(GeneratorShape):
    d_width: int = Field(64, ge=4, le=512, description="discriminator channels at the first conv; doubles per level up to 8×")
    d_norm: Literal["group", "none"] = Field(
        "group", description="discriminator normalisation; never BatchNorm (it mixes samples, which DP forbids)")
    d_kernel: Literal[4, 6] = Field(4, description="discriminator kernel size (the reference MCGAN uses 6)")
    d_projection: bool = Field(
        False, description="also condition the discriminator by projection (Miyato & Koyama, 2018): "
                           "logit + <embedding of the label, pooled last features>")
    spectral_norm: bool = Field(
        False, description="spectral normalisation of the discriminator's weights (Miyato et al., 2018); "
                           "non-private only (Opacus computes no per-sample gradients through it)")
    d_classifier: bool = Field(
        False, description="an auxiliary classifier on the discriminator's trunk (AC-GAN, Odena et al., 2017): "
                           "it learns the class of real patches, and the generator is also trained to make its "
                           "patches classified as their label; non-private only")
    d_twin_classifier: bool = Field(
        False, description="with d_classifier: a twin classifier learns the class of generated patches, and the "
                           "generator's classifier term becomes CE(classifier) - CE(twin) (TAC-GAN, Gong et al., "
                           "2019), which removes AC-GAN's pull towards patches that are easier to classify than "
                           "real ones")


class GanOptimConfig(StrictModel):
    lr_g: float = Field(1e-4, gt=0)
    lr_d: float = Field(1e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)


class GanTrainSettings(StrictModel):
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(64, ge=1, description="real patches per discriminator step; under DP the expected Poisson batch")
    physical_batch_size: int = Field(256, ge=1, description="most samples per forward pass (virtual batches)")
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    sample_every: int = Field(5, ge=0, description="write samples/epoch_XXX.png every N epochs (0: never)")
    flips: bool = Field(False, description="random horizontal and vertical flips of the real patches (the reference's augmentation)")
    diffaugment: list[Literal["color", "translation", "cutout"]] = Field(
        [], description="differentiable augmentation of every image the discriminator sees, real and generated "
                        "(DiffAugment, Zhao et al., 2020): keeps D from memorising a small training set")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="one-sided label smoothing: real target 1 - s")
    classifier_weight: float = Field(
        1.0, gt=0, description="weight of the auxiliary classifier's cross-entropy in both players' losses "
                               "(with model.d_classifier)")
    ema_decay: Optional[float] = Field(
        None, gt=0, lt=1, description="keep an exponential moving average of the generator's weights with this decay "
                                      "(e.g. 0.999) and save that one; absent: save the last generator")


class GanConfig(StrictModel):
    generator: Literal["mcgan"] = Field("mcgan", description="which generator (dpmammo.gan.registry)")
    data: GanDataConfig = GanDataConfig()
    model: GanModelConfig = GanModelConfig()
    optim: GanOptimConfig = GanOptimConfig()
    train: GanTrainSettings = GanTrainSettings()
    privacy: Optional[PrivacyConfig] = Field(
        None, description="absent: non-private GAN; present: DP discriminator (the generator is post-processing)")

    @model_validator(mode="after")
    def _dp_compatible(self):
        if self.privacy is not None and self.model.spectral_norm:
            raise ValueError("model.spectral_norm: not supported with a DP discriminator (Opacus has no per-sample "
                             "gradients through it); set model.spectral_norm=false or drop the privacy block")
        if self.model.d_twin_classifier and not self.model.d_classifier:
            raise ValueError("model.d_twin_classifier: needs model.d_classifier=true (the twin corrects that "
                             "classifier's term)")
        if self.privacy is not None and self.model.d_classifier:
            raise ValueError("model.d_classifier: not supported with a DP discriminator (its second forward pass "
                             "on private rows is not clipped per unit); set model.d_classifier=false or drop the "
                             "privacy block")
        return self
