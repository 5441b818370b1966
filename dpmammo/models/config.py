"""The models' one table, `MODELS` (name → config class, builder), and their configs: pydantic
only, so a config file is validated without torch.

A builder is named "module:function" and imported on use (dpmammo.models.registry): cnn, swin,
pixels and scatter need torch. Config validation (the `ModelConfig` union), `create_model`,
`list_models` and their error messages read the table; a new model is its config class here, its
builder module and one line of `MODELS` (docs/extending.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

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


def scattering_channels(J: int, L: int) -> int:
    """Channels of a 2-d scattering transform of order 2 on one input channel: the low-pass (order
    0), J·L first-order and L²·J(J−1)/2 second-order paths (j1 < j2) — 81 for J = 2, L = 8."""
    return 1 + J * L + L * L * J * (J - 1) // 2


class PublicPcaConfig(StrictModel):
    """A projection of the scattering features fitted on procedural images only (public: a program
    with a seed made every image, dpmammo.data.procedural), so it spends no privacy."""

    kinds: list[str] = Field(["mammo-phantom", "spectral", "dead-leaves", "random-generator"], min_length=1,
                             description="procedural kinds whose images the basis is fitted on, in equal numbers")
    images_per_kind: int = Field(1000, ge=64, le=100_000, description="images of each kind (indices 0..n-1)")
    seed: int = Field(0, ge=0, description="the procedural processes' seed")
    components: int = Field(32, ge=1, description="principal components kept: the features the head sees")

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, v: list[str]) -> list[str]:
        from dpmammo.data.procedural.kinds import check_kind_list  # torch-free table

        return check_kind_list(v, what="procedural kind")


class PublicPixelsConfig(StrictModel):
    """The `pixels` model's features (downsampled, per-image standardised) projected on their top
    principal components over the same procedural images as `public_pca` (its kinds, images and
    seed: public), appended to the projected scattering features: the patch's coarse shape beside
    the scattering's texture. Chosen on cbis-ddsm/val (benchmarks/README.md)."""

    resolution: int = Field(16, ge=4, le=128, description="side the patch is average-pooled to before the projection")
    components: int = Field(16, ge=1, description="principal components kept of the resolution² pixels")


class ScatterConfig(StrictModel):
    name: Literal["scatter"] = "scatter"
    input_size: int = Field(64, ge=16, le=256, description="patch side in pixels as loaded (resized on load)")
    J: int = Field(2, ge=1, le=5, description="wavelet scales: the coefficients are input_size / 2^J a side")
    L: int = Field(8, ge=1, le=16, description="wavelet orientations per scale")
    pool: int = Field(4, ge=1, le=128, description="side the coefficients are average-pooled to: the features are "
                                                   "K·pool² with K = 1 + J·L + L²·J(J−1)/2 channels")
    groups: int = Field(27, ge=1, description="GroupNorm groups over the K channels, per sample and without affine "
                                              "(Tramèr & Boneh's data-independent normalisation; 27 for K = 81 as "
                                              "theirs); must divide K")
    symmetrize: Literal["none", "dihedral"] = Field(
        "none", description="dihedral: average the features over the patch's 8 flips and transposes, so they are "
                            "invariant to them (8× the transform's cost; train.augment and train.test_flips then "
                            "add nothing: set them to none and false)")
    public_pca: Optional[PublicPcaConfig] = Field(
        None, description="project the normalised features on their top principal components over procedural "
                          "images (whitened there): fewer, better-scaled coordinates for DP-SGD's noise, fitted on "
                          "no private data")
    with_pixels: Optional[PublicPixelsConfig] = Field(
        None, description="append the patch's downsampled pixels, projected on their own public principal components "
                          "(needs public_pca, whose procedural images fit both bases)")
    head: Literal["linear", "cnn"] = Field(
        "linear", description="linear: one layer on the features; cnn: a small CNN on the K coefficient maps of side "
                              "`pool` (Tramèr & Boneh's ScatterNet+CNN; the maps unpooled when pool is the "
                              "coefficients' side)")
    head_width: Optional[int] = Field(None, ge=8, le=512, description="cnn head: channels of its three conv layers (a "
                                                                      "multiple of 8, its GroupNorm groups); absent: 64")
    weights: Optional[Path] = Field(None, description="whole-model weight file (the head; with public_pca also "
                                                      "the projection), loaded strictly")
    freeze_backbone: Literal[True] = Field(True, description="the backbone has no parameters: only the head trains")

    @property
    def num_features(self) -> int:
        if self.public_pca is not None:
            return self.public_pca.components + (self.with_pixels.components if self.with_pixels is not None else 0)
        return scattering_channels(self.J, self.L) * self.pool ** 2

    @property
    def cnn_width(self) -> int:
        """The cnn head's channels: `head_width`, 64 when absent."""
        return 64 if self.head_width is None else self.head_width

    @model_validator(mode="after")
    def _shapes_fit(self):
        side = self.input_size >> self.J
        if side << self.J != self.input_size:
            raise ValueError(f"input_size {self.input_size} must be a multiple of 2^J = {2 ** self.J}")
        if side % self.pool:
            raise ValueError(f"pool {self.pool} must divide the coefficients' side input_size / 2^J = {side}")
        k = scattering_channels(self.J, self.L)
        if k % self.groups:
            divisors = [d for d in range(1, k + 1) if k % d == 0]
            raise ValueError(f"groups {self.groups} must divide the K = {k} scattering channels of J = {self.J}, "
                             f"L = {self.L}; choose one of {divisors}")
        if (k // self.groups) * self.pool ** 2 < 2:
            raise ValueError(f"groups = K = {k} with pool 1 normalises single numbers to zero; "
                             "use fewer groups or a larger pool")
        if self.public_pca is not None:
            pca, full = self.public_pca, k * self.pool ** 2
            most = min(full, pca.images_per_kind * len(pca.kinds) - 1)
            if pca.components > most:
                raise ValueError(f"public_pca.components {pca.components} exceeds {most}, the most that "
                                 f"{pca.images_per_kind * len(pca.kinds)} images of {full} features can give")
        if self.head == "linear" and self.head_width is not None:
            raise ValueError("head_width sets the cnn head's channels: remove it, or set head: cnn")
        if self.head == "cnn":
            if self.public_pca is not None:
                raise ValueError("head: cnn reads the coefficient maps, which public_pca projects away: use head: linear "
                                 "with public_pca, or remove public_pca")
            if self.pool < 2 or self.pool % 2:
                raise ValueError(f"head: cnn halves the maps once (max-pool 2): pool must be an even divisor of the "
                                 f"coefficients' side input_size / 2^J = {side}, got {self.pool}"
                                 + ("; that side is odd: raise input_size or lower J" if side % 2 else ""))
            width = self.cnn_width
            if width % 8:
                raise ValueError(f"head_width must be a multiple of 8 (its GroupNorm groups), got {width}")
            if (width // 8) * (self.pool // 2) ** 2 < 2:
                raise ValueError(f"the cnn head's last GroupNorm would normalise single numbers to zero (head_width "
                                 f"{width} in 8 groups on maps of side {self.pool // 2} after its max-pool): use a larger "
                                 "pool or head_width")
        if self.with_pixels is not None:
            px = self.with_pixels
            if self.symmetrize != "none":
                raise ValueError("with_pixels appends pixels that are not symmetrised: use symmetrize: none with it")
            if self.public_pca is None:
                raise ValueError("with_pixels needs public_pca: both parts are projected on procedural images")
            if px.resolution > self.input_size:
                raise ValueError(f"with_pixels.resolution {px.resolution} exceeds input_size {self.input_size}")
            # Standardised per image, the pixels sum to zero: they span resolution² − 1 directions at most.
            most = min(px.resolution ** 2 - 1, self.public_pca.images_per_kind * len(self.public_pca.kinds) - 1)
            if px.components > most:
                raise ValueError(f"with_pixels.components {px.components} exceeds {most}, the most that "
                                 f"{px.resolution}² standardised pixels of "
                                 f"{self.public_pca.images_per_kind * len(self.public_pca.kinds)} images can give")
        return self


# name → (config class, "module:function" building the Classifier from a config of that class).
MODELS: dict[str, tuple[type[StrictModel], str]] = {
    "cnn-small": (CnnSmallConfig, "dpmammo.models.cnn:cnn_small"),
    "swin_t": (SwinTConfig, "dpmammo.models.swin:swin_t"),
    "pixels": (PixelsConfig, "dpmammo.models.pixels:pixels"),
    "scatter": (ScatterConfig, "dpmammo.models.scatter:scatter"),
}
for _name, (_config, _) in MODELS.items():  # a config's `name` is its key: configs are told apart by it
    if _config.model_fields["name"].default != _name:
        raise TypeError(f"MODELS[{_name!r}]: {_config.__name__}.name defaults to "
                        f"{_config.model_fields['name'].default!r}; give it Literal[{_name!r}] = {_name!r}")
ModelConfig = Union[tuple(config for config, _ in MODELS.values())]  # type: ignore[valid-type]


def flip_invariant(model: ModelConfig) -> bool:
    """Whether the model's features are the same in every flip of the patch (`scatter` with
    `symmetrize`), so that flip views of a patch only repeat them."""
    return isinstance(model, ScatterConfig) and model.symmetrize != "none"


def has_linear_head(model: ModelConfig) -> bool:
    """Whether the model's head is one linear layer (features → 2 logits): Swin-T's and scatter's only
    with `head: linear`, every other model's always."""
    if isinstance(model, (SwinTConfig, ScatterConfig)):
        return model.head == "linear"
    return True
