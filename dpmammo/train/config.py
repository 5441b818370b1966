"""The training config: one YAML file per run, every key validated (unknown keys are errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator
from typing_extensions import Annotated

from dpmammo.config import Seed, StrictModel
from dpmammo.models.config import CnnSmallConfig, flip_invariant, has_linear_head
from dpmammo.models.config import ModelConfig as AnyModelConfig
from dpmammo.privacy.config import PrivacyConfig
from dpmammo.train.members import AuditSplit

ModelConfig = Annotated[AnyModelConfig, Field(discriminator="name")]  # the models' one union, by `name`


class DataConfig(StrictModel):
    root: Optional[Path] = Field(None, description="data folder; default $DPMAMMO_DATA, then the fetch cache")
    train: list[str] = Field(["cbis-ddsm/train"], min_length=1,
                             description="training sets (`dataset/split` or a synthetic folder path); their union")
    val: str = Field("cbis-ddsm/val", description="validation set for model selection")
    audit_split: Optional[AuditSplit] = Field(
        None, description="a known member split, written by `dpmammo audit` (membership inference) or by "
                          "benchmarks/cv_select.py (cross-validation folds): the private units this run trains on; "
                          "absent: all of them")


class OptimConfig(StrictModel):
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: Optional[float] = Field(None, ge=0, lt=1, description="sgd only (default 0.9 there)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)

    @model_validator(mode="after")
    def _momentum_only_for_sgd(self):
        if self.name != "sgd" and self.momentum is not None:
            raise ValueError("momentum applies to sgd only; remove it or set name: sgd")
        return self


class FeatureCentreConfig(StrictModel):
    """Centre a head's inputs on the training set's mean feature vector (Tramèr & Boneh 2021 normalise
    ScatterNet features with DP statistics). Under DP: each unit of privacy's mean feature vector (over
    its patches and views) clipped to `clip` in L2, summed, with Gaussian noise of std
    noise_multiplier·clip (one release of sensitivity `clip`, composed with the stage's steps: their σ
    is calibrated so that the stage as a whole meets its target ε), divided by the unit count the
    sample rate uses (dpmammo.train.centre). Without DP: the plain mean over the records (`clip` and
    `noise_multiplier` unused). The head trains on centred features; the released head folds the
    centre into its bias (post-processing), so it scores raw features. A linear head only."""

    clip: float = Field(gt=0, description="under DP: L2 bound on a unit's mean feature vector (the release's "
                                          "sensitivity)")
    noise_multiplier: float = Field(gt=0, description="under DP: the release's noise std over `clip`; the larger, "
                                                      "the less of the stage's ε it takes from the steps")


class TrainSettings(StrictModel):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1, description="logical batch; under DP the expected Poisson batch")
    physical_batch_size: int = Field(256, ge=1, description="most samples per forward pass (virtual batches); a head "
                                                          "on cached features takes each batch in one pass")
    augment: Literal["flips", "none"] = "flips"
    augment_multiplicity: int = Field(
        1, ge=1, le=4, description="K distinct flip views of every sampled patch in a step (De et al. 2022): under DP a "
                                   "unit's K·n views are summed before its one clip, so the sensitivity stays C; "
                                   "without DP the loss averages them. 1: one random view")
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    feature_cache: bool = Field(
        True, description="frozen backbone: compute its features once per image and flip view, cache them on disk "
                          "and train the head on them (same result as recomputing, far faster)")
    checkpoint_every_s: float = Field(
        60.0, ge=0, description="write the resume checkpoint at the end of an epoch once this many seconds have "
                                "passed since the last one (0: every epoch)")
    ema_decay: Optional[float] = Field(
        None, gt=0, lt=1, description="keep an exponential moving average of the weights (post-processing: free under "
                                      "DP); each epoch scores both the weights and their average on validation, and "
                                      "selection may pick either (`last`: the average); absent: no average")
    centre_features: Optional[FeatureCentreConfig] = Field(
        None, description="a head on cached features: train it on features centred on their (DP) training mean "
                          "(FeatureCentreConfig); absent: the features as the backbone gives them")
    select: Literal["best-val-auroc", "last"] = Field(
        "best-val-auroc", description="which epoch's weights to keep; validation data is not DP-accounted")
    test_flips: bool = Field(
        False, description="predict with the mean logit over each image's 4 flips (test-time augmentation) wherever "
                           "the run scores images: validation during training, `dpmammo evaluate`; a function of the "
                           "released weights and the image only, so it costs no privacy")


class TrainConfig(StrictModel):
    data: DataConfig = DataConfig()
    model: ModelConfig = CnnSmallConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainSettings = TrainSettings()
    privacy: Optional[PrivacyConfig] = Field(None, description="absent: non-private training")
    init_from: Optional[Path] = Field(
        None, description="a finished run directory: its weights are loaded strictly and its privacy chain extended")
    init_weights: Literal["all", "backbone"] = Field(
        "all", description="which weights of init_from are loaded, strictly: all (the whole model) or backbone (the "
                           "head starts fresh, e.g. after `dpmammo pretrain` with other classes)")
    public_weights: list[Path] = Field(
        [], description="weight files (model.weights, model.backbone_weights) you declare trained on public data only; "
                        "any other weight file must lie in a finished dpmammo run (its privacy chain is carried on), "
                        "or the run's total is 'no guarantee'")

    @model_validator(mode="after")
    def _init_weights_need_a_parent(self):
        if self.init_weights != "all" and self.init_from is None:
            raise ValueError(f"init_weights: {self.init_weights} needs init_from (the run to load from)")
        return self

    @model_validator(mode="after")
    def _multiplicity_needs_views(self):
        if self.train.augment_multiplicity > 1 and self.train.augment != "flips":
            raise ValueError(f"train.augment_multiplicity={self.train.augment_multiplicity} needs train.augment: flips "
                             "(the views are the flips)")
        return self

    @model_validator(mode="after")
    def _no_views_of_invariant_features(self):
        # Features the same in every flip (a symmetrised scatter model): the 4 views of train.augment /
        # train.test_flips would compute them 4 times (8 transforms each) for nothing.
        if flip_invariant(self.model) and (self.train.augment != "none" or self.train.test_flips):
            raise ValueError(f"model.symmetrize: {self.model.symmetrize}: the features are the same in every "
                             "flip; set train.augment: none and train.test_flips: false")
        return self

    @model_validator(mode="after")
    def _centre_needs_cached_features(self):
        if self.train.centre_features is None:
            return self
        if not (self.model.freeze_backbone and self.train.feature_cache):
            raise ValueError("train.centre_features centres a head's cached inputs: it needs model.freeze_backbone: "
                             "true and train.feature_cache: true")
        if not has_linear_head(self.model):
            raise ValueError("train.centre_features folds the centre into a linear head: set model.head: linear")
        return self

    @model_validator(mode="after")
    def _audit_split_unit(self):
        split = self.data.audit_split
        if split is not None and self.privacy is not None and split.unit != self.privacy.unit:
            raise ValueError(f"data.audit_split.unit={split.unit} must be the privacy unit ({self.privacy.unit})")
        return self


def input_paths(cfg: TrainConfig) -> list[tuple[str, Optional[Path]]]:
    """Every path a training run reads (data, weights, the run it starts from): its --out must not
    overlap any of them (dpmammo.files.check_out)."""
    from dpmammo.data.sets import data_inputs

    weights = [(f"model.{k}", getattr(cfg.model, k, None)) for k in ("weights", "backbone_weights")]
    return [*data_inputs(cfg.data.root, [*cfg.data.train, cfg.data.val]), ("init_from", cfg.init_from), *weights]
