"""The study config: conditions × ε × seeds over shared training settings, every key validated.

A study is what answers "how much utility do I keep at privacy budget ε, and does synthetic
data help?" (the question of Osuala et al., MICCAI 2024 Deep Breath, arXiv 2407.12669). The
training blocks (`model`, `optim`, `train`) are the ones of `dpmammo.train.TrainConfig`; the
`privacy` block holds everything of `PrivacyConfig` except the target ε, which the study varies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from dpmammo.audit.config import AuditSettings
from dpmammo.config import StrictModel
from dpmammo.privacy.budget import Epsilon, is_private
from dpmammo.privacy.config import PrivacyConfig, PrivacySettings
from dpmammo.study.recipes import CONDITION_ALIASES, Condition, STAGES, Stage
from dpmammo.train.config import ModelConfig, OptimConfig, TrainSettings
from dpmammo.models.config import CnnSmallConfig

class StageOverride(StrictModel):
    """Per-stage changes to the shared training settings (only what a recipe stage needs)."""

    epochs: Optional[int] = Field(None, ge=1)
    batch_size: Optional[int] = Field(None, ge=1)
    lr: Optional[float] = Field(None, gt=0)
    model: dict[str, Any] = Field(default_factory=dict,
                                  description="keys of the model block to change, e.g. {freeze_backbone: false}")


class Resources(StrictModel):
    """What one run asks of a Ray worker (and how many torch threads a local run uses)."""

    num_cpus: int = Field(2, ge=1)
    num_gpus: float = Field(0, ge=0)


class StudyConfig(StrictModel):
    name: str = Field("study", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    data_root: Optional[Path] = Field(None, description="data folder; default $DPMAMMO_DATA, then the fetch cache")
    train_set: str = Field("cbis-ddsm/train", description="the private training set")
    val_set: str = Field("cbis-ddsm/val", description="validation set for model selection (not DP-accounted)")
    test_sets: list[str] = Field(["cbis-ddsm/test", "bcdr/test"], min_length=1)
    synthetic: str = Field("synthetic/c-dcgan",
                           description="synthetic set: `dataset/split` under data_root or a folder from `dpmammo gan sample`")
    conditions: list[Condition] = Field(..., min_length=1)
    epsilons: list[Epsilon] = Field(..., min_length=1, description="target ε per DP stage; inf/∞ = non-private")
    seeds: list[int] = Field([0], min_length=1)
    model: ModelConfig = CnnSmallConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainSettings = TrainSettings()
    privacy: PrivacySettings = Field(PrivacySettings(),
                                     description="the privacy block of every DP stage, except target_epsilon (set by `epsilons`)")
    dp: StageOverride = Field(StageOverride(),
                              description="changes for every DP stage (finite ε), applied before `stages`")
    stages: dict[Stage, StageOverride] = Field(default_factory=dict,
                                               description=f"per-stage overrides; stages: {', '.join(STAGES)}")
    resources: Resources = Resources()
    compare_with: Optional[Literal["osuala2024"]] = Field(
        None, description="show the published numbers beside ours (only for the paper's setup)")
    roc_epsilon: Optional[Epsilon] = Field(None, description="ε of the ROC-curve plot; default the largest finite ε")
    audit: Optional[AuditSettings] = Field(
        None, description="membership-inference audit of every condition × ε (first seed) after the runs, e.g. "
                          "{method: auto, models: 16}; absent: no audit")

    @field_validator("conditions", mode="before")
    @classmethod
    def _ascii_aliases(cls, v):
        return [CONDITION_ALIASES.get(c, c) if isinstance(c, str) else c for c in v] if isinstance(v, list) else v

    @field_validator("privacy", mode="before")
    @classmethod
    def _budget_not_here(cls, v):
        if isinstance(v, dict) and "target_epsilon" in v:
            raise ValueError("target_epsilon: set the budgets in `epsilons`, not here")
        return v

    @model_validator(mode="after")
    def _check(self):
        for what, items in (("conditions", self.conditions), ("epsilons", self.epsilons), ("seeds", self.seeds)):
            if len(set(items)) != len(items):
                raise ValueError(f"{what} lists a value twice: {items}")
        if self.compare_with == "osuala2024" and self.model.name != "swin_t":
            raise ValueError("compare_with: osuala2024 needs the paper's model (swin_t); remove it for other setups")
        if self.roc_epsilon is not None and self.roc_epsilon not in self.epsilons:
            raise ValueError(f"roc_epsilon {self.roc_epsilon} is not one of epsilons {self.epsilons}")
        return self

    def privacy_for(self, eps: float) -> Optional[PrivacyConfig]:
        """The privacy block of a stage at target `eps`; None (non-private) for ε = ∞."""
        return None if not is_private(eps) else PrivacyConfig(target_epsilon=eps, **self.privacy.model_dump())

    def stage(self, name: Stage) -> StageOverride:
        return self.stages.get(name, StageOverride())
