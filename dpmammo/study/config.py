"""The study config: conditions × ε × seeds over shared training settings, every key validated.

A study is what answers "how much utility do I keep at privacy budget ε, and does synthetic
data help?" (the question of Osuala et al., MICCAI 2024 Deep Breath, arXiv 2407.12669). The
training blocks (`model`, `optim`, `train`) are the ones of `dpmammo.train.TrainConfig`; the
`privacy` block holds everything of `PrivacyConfig` except the target ε, which the study varies.

`synthetic:` is either a fixed set (`dataset/split` or a folder) or a generator the study trains
and samples itself (`SyntheticFromGenerator`). A DP generator takes `generator_share` of each
study ε; every DP classifier stage that uses its samples targets the chain's total (its
`privacy.target` is `total`): its noise is calibrated so that the composition of generator and
stage (in the study's accountant) is the study ε. A condition's total then equals the study ε and
compares with `real` at the same ε (splitting ε linearly instead left a composed total well below
it: 4.45 at ε = 6).

`prior:` is a procedural pretraining (`dpmammo pretrain`) the study runs once per seed for the
`prior→real` condition: images of public random processes only, a `public` stage that spends no
ε, so the DP fine-tune on the private set has the whole study ε and its total is that ε.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Discriminator, Field, PrivateAttr, Tag, field_validator, model_validator

from dpmammo.audit.config import AuditSettings
from dpmammo.config import Seed, StrictModel, apply_overrides, parse_config, read_yaml
from dpmammo.errors import DpMammoError
from dpmammo.privacy.budget import Epsilon, format_epsilon, is_private
from dpmammo.privacy.config import PrivacyConfig, PrivacySettings
from dpmammo.study.conditions import CONDITION_ALIASES, PRIOR_CONDITIONS, Condition, STAGES, Stage
from dpmammo.train.config import FeatureCentreConfig, ModelConfig, OptimConfig, TrainSettings
from dpmammo.train.pretrain_config import PretrainConfig
from dpmammo.models.config import CnnSmallConfig

STUDY_FILE = "study.yaml"  # the config a study folder records (dpmammo.study.runner writes it first)


class StageOverride(StrictModel):
    """Per-stage changes to the shared training settings (only what a recipe stage needs)."""

    epochs: Optional[int] = Field(None, ge=1)
    batch_size: Optional[int] = Field(None, ge=1)
    lr: Optional[float] = Field(None, gt=0)
    select: Optional[Literal["best-val-auroc", "last"]] = Field(None, description="train.select for this stage")
    test_flips: Optional[bool] = Field(None, description="train.test_flips for this stage")
    augment: Optional[Literal["flips", "none"]] = Field(None, description="train.augment for this stage")
    centre_features: Optional[FeatureCentreConfig] = Field(
        None, description="train.centre_features for this stage (a head on cached features): its inputs centred on "
                          "their DP training mean, e.g. {clip: 40, noise_multiplier: 12}")
    optim: dict[str, Any] = Field(default_factory=dict,
                                  description="keys of the optim block to change, e.g. {momentum: 0.9}; with another "
                                              "optimiser's name, its whole block, e.g. {name: sgd, lr: 0.1, momentum: 0.9}")
    model: dict[str, Any] = Field(default_factory=dict,
                                  description="keys of the model block to change, e.g. {freeze_backbone: false}; "
                                              "with another model's name, that model's whole block, e.g. "
                                              "{name: pixels, resolution: 32}")
    dp: Optional["StageOverride"] = Field(
        None, description="changes for this stage's DP runs only (finite ε), applied after the others: e.g. a DP "
                          "`real` on fixed features while its ε = ∞ run trains the study's model")


class Resources(StrictModel):
    """What one run asks of a Ray worker (and how many torch threads a local run uses)."""

    num_cpus: int = Field(2, ge=1, description="CPU cores of one run (shared by its processes)")
    num_gpus: float = Field(0, ge=0, description="GPUs of one run; with processes > 1, one per process")
    processes: int = Field(1, ge=1, description="train each run over this many processes (dpmammo train --nproc)")

    @model_validator(mode="after")
    def _fits(self):
        if self.processes > self.num_cpus:
            raise ValueError(f"processes={self.processes} needs num_cpus >= {self.processes} (a core per process)")
        if self.processes > 1 and self.num_gpus and self.num_gpus != self.processes:
            raise ValueError(f"processes={self.processes} on GPUs needs num_gpus={self.processes} (one per process), "
                             f"got {self.num_gpus:g}")
        return self


class QualitySettings(StrictModel):
    """What the quality step scores after the runs (dpmammo.study.quality)."""

    frd: bool = Field(True, description="also FRD, when the frd extra is installed (radiomics features of every "
                                        "patch of every set and the reference: the slowest score)")
    max_patches: int = Field(1000, ge=10, description="patches per set at most; every set is subsampled to the same "
                                                      "number, the reference to this one")


class SyntheticFromGenerator(StrictModel):
    """`synthetic:` as a generator: the study trains it (once per distinct budget), samples `n`
    patches into the study directory and trains the synthetic conditions on them.

    The study owns two keys of the generator config, which every registered generator has:
    `privacy.target_epsilon` (set to `generator_share` × each study ε, replacing any value in the
    config, so that a file written for `dpmammo gan train` serves as it is; the block is dropped at
    ε = ∞) and `data.root` (the study's data root where the config names none).
    """

    generator: Union[Path, dict[str, Any]] = Field(
        ..., description="the generator config: a YAML file as for `dpmammo gan train` (relative to the working "
                         "directory) or the same keys inline; a `privacy:` block makes it DP (its target_epsilon is "
                         "set by the study)")
    overrides: list[str] = Field([], description="`key=value` changes to the generator config, as `gan train --set`")
    n: int = Field(3000, ge=2, description="patches sampled from each generator run")
    balance: float = Field(0.5, gt=0, lt=1, description="malignant fraction of the sampled patches")
    seed: Seed = Field(0, description="sampling seed (latents); the generator's own seed is in its config")
    generator_share: Optional[float] = Field(
        None, gt=0, lt=1, description="DP generator only: the part s of each study ε the generator spends; the DP "
                                      "classifier stages that use its samples are calibrated so that the chain's "
                                      "composed total is ε")

    _data: dict[str, Any] = PrivateAttr(default_factory=dict)  # the generator config, overrides applied

    @model_validator(mode="after")
    def _load(self):
        try:
            data = read_yaml(self.generator) if isinstance(self.generator, Path) else copy.deepcopy(self.generator)
            self._data = apply_overrides(data, self.overrides)
        except DpMammoError as e:  # re-raised as a validation error, so the message names this key
            raise ValueError(f"generator: {e}") from None
        if self.is_private and self.generator_share is None:
            raise ValueError("the generator is DP (its config has a privacy: block): set generator_share in (0, 1), "
                             "the part of each study ε it spends (e.g. 0.5); the classifier stages that use its "
                             "samples are calibrated to what it leaves of each ε")
        if not self.is_private and self.generator_share is not None:
            raise ValueError("generator_share: the generator has no privacy: block (it is non-private), so there is "
                             "no budget to share; remove generator_share or add a privacy: block to its config")
        try:  # every key validated now, not mid-study
            for eps in ((1.0, math.inf) if self.is_private else (math.inf,)):
                self.config_at(eps, None)
        except DpMammoError as e:
            raise ValueError(str(e)) from None
        return self

    @property
    def is_private(self) -> bool:
        return self._data.get("privacy") is not None

    def inlined(self) -> "SyntheticFromGenerator":
        """The same block with the generator config inline and its overrides applied: what a study
        directory records (study.yaml then holds everything, and an edited file is noticed)."""
        return self.model_copy(update={"generator": copy.deepcopy(self._data), "overrides": []})

    def config_at(self, epsilon: float, root: Optional[Path]):
        """The typed generator config trained for target `epsilon` (∞: without its privacy block),
        reading data from `root` unless it names its own."""
        from dpmammo.gan.registry import parse_generator_config

        data = copy.deepcopy(self._data)
        if is_private(epsilon):
            if not self.is_private:
                raise DpMammoError(f"a non-private generator has no budget to set (asked for ε={epsilon:g})")
            data["privacy"] = {**data["privacy"], "target_epsilon": epsilon}
        else:
            data["privacy"] = None
        if root is not None and (data.get("data") or {}).get("root") is None:
            data["data"] = {**(data.get("data") or {}), "root": str(root)}
        try:
            return parse_generator_config(data, f"generator config at ε={format_epsilon(epsilon)}")
        except ImportError as e:  # a registered generator whose module this installation lacks
            raise DpMammoError(f"generator {data.get('generator')!r} is not available in this installation ({e}); "
                               "update dpmammo or choose another generator") from None


class PriorSettings(StrictModel):
    """`prior:` a backbone pretrained on procedural images (`dpmammo pretrain`), trained by the
    study once per seed into `prior/pretrain/seed<s>` and fine-tuned with DP on the private set by
    the `prior→real` condition (stage `prior-finetune` of `stages:`: head only with
    `{model: {freeze_backbone: true}}`, else the whole model as the study's `model:` says).

    The study owns one key of the pretrain config: `train.seed`, set to each study seed (replacing
    any value in the config, so that a file written for `dpmammo pretrain` serves as it is). The
    processes' own seed (`data.seed`) stays the config's: every seed pretrains on the same images.
    """

    pretrain: Union[Path, dict[str, Any]] = Field(
        ..., description="the pretrain config: a YAML file as for `dpmammo pretrain` (relative to the working "
                         "directory) or the same keys inline; its model must be the study's")
    overrides: list[str] = Field([], description="`key=value` changes to the pretrain config, as `pretrain --set`")
    init_weights: Literal["all", "backbone"] = Field(
        "backbone", description="what the fine-tune loads from the pretrain run: backbone (the head starts fresh; "
                                "the pretrain head has one output per process class) or all (only for a pretrain "
                                "head with the task's two classes)")
    probe_share: float = Field(
        0.3, gt=0, lt=1, description="prior→probe→real only: the part of each study ε the DP linear probe spends; "
                                     "the whole-model fine-tune after it is calibrated to what the probe left, so "
                                     "that their composition is ε")

    _data: dict[str, Any] = PrivateAttr(default_factory=dict)  # the pretrain config, overrides applied

    @model_validator(mode="after")
    def _load(self):
        try:  # re-raised as validation errors, so that the message names this block
            data = read_yaml(self.pretrain) if isinstance(self.pretrain, Path) else copy.deepcopy(self.pretrain)
            self._data = apply_overrides(data, self.overrides)
        except DpMammoError as e:
            raise ValueError(f"pretrain: {e}") from None
        try:
            self.config_for(0)  # every key validated now, not mid-study
        except DpMammoError as e:
            raise ValueError(str(e)) from None
        return self

    def inlined(self) -> "PriorSettings":
        """The same block with the pretrain config inline, its overrides applied and its folders
        absolute: what a study directory records (study.yaml then holds everything)."""
        data = copy.deepcopy(self._data)
        folders = (data.get("data") or {}).get("folders")
        if folders:
            data["data"]["folders"] = [str(Path(f).expanduser().resolve()) for f in folders]
        return self.model_copy(update={"pretrain": data, "overrides": []})

    def config_for(self, seed: int) -> PretrainConfig:
        """The typed pretrain config of study seed `seed`."""
        data = copy.deepcopy(self._data)
        data["train"] = {**(data.get("train") or {}), "seed": seed}
        return parse_config(PretrainConfig, data, "pretrain")


def _synthetic_kind(v: Any) -> str:
    return "generator" if isinstance(v, (dict, SyntheticFromGenerator)) else "set"


# The error location names the form: `synthetic.generator.n` for the block, `synthetic.set` for a string.
Synthetic = Annotated[Union[Annotated[str, Tag("set")], Annotated[SyntheticFromGenerator, Tag("generator")]],
                      Discriminator(_synthetic_kind)]


class UtilityTarget(StrictModel):
    """A test AUROC the study aims for on one test set at one ε per unit: the report sets the cell
    chosen on validation beside it and shows the gap (so a preset states what it is measured
    against, and a reader sees where it falls short)."""

    test_set: str = Field(..., description="a test set (reported as not run where it is not one of test_sets)")
    epsilon: Epsilon = Field(..., description="ε per unit, or inf (non-private); reported as not run where the "
                                              "study has no such ε")
    auroc: float = Field(..., gt=0.0, lt=1.0, description="the test AUROC aimed for (mean over seeds)")


class StudyConfig(StrictModel):
    name: str = Field("study", min_length=1, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
                      description="the default study folder runs/<name>: letters, digits, _ . - (not a leading dot)")
    data_root: Optional[Path] = Field(None, description="data folder; default $DPMAMMO_DATA, then the fetch cache")
    train_set: str = Field("cbis-ddsm/train", description="the private training set")
    val_set: str = Field("cbis-ddsm/val", description="validation set for model selection (not DP-accounted)")
    test_sets: list[str] = Field(["cbis-ddsm/test", "bcdr/test"], min_length=1)
    synthetic: Synthetic = Field(
        "synthetic/c-dcgan", description="synthetic set: `dataset/split` under data_root, a folder from `dpmammo gan "
                                         "sample`, or {generator: CONFIG, n, balance, generator_share} to train one")
    prior: Optional[PriorSettings] = Field(
        None, description="{pretrain: CONFIG, overrides, init_weights}: the procedural pretraining of the prior→real "
                          "condition (public: costs no ε), once per seed")
    conditions: list[Condition] = Field(..., min_length=1)
    epsilons: list[Epsilon] = Field(..., min_length=1, description="target ε per DP stage; inf/∞ = non-private")
    seeds: list[Seed] = Field([0], min_length=1)
    model: ModelConfig = CnnSmallConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainSettings = TrainSettings()
    privacy: PrivacySettings = Field(PrivacySettings(),
                                     description="the privacy block of every DP stage, except target_epsilon (set by `epsilons`)")
    dp: StageOverride = Field(StageOverride(),
                              description="changes for every DP stage (finite ε), applied before `stages`")

    @field_validator("dp")
    @classmethod
    def _dp_is_flat(cls, v: StageOverride) -> StageOverride:
        if v.dp is not None:
            raise ValueError("dp.dp: the top-level dp block applies to DP stages already; move its keys up one level")
        return v
    stages: dict[Stage, StageOverride] = Field(default_factory=dict,
                                               description=f"per-stage overrides; stages: {', '.join(STAGES)}")
    resources: Resources = Resources()
    compare_with: Optional[Literal["osuala2024"]] = Field(
        None, description="compare with the published study: a table of our best guaranteed cell against its best "
                          "cell at each ε (any model), and its numbers beside each of ours (its model, swin_t, only)")
    targets: list[UtilityTarget] = Field(
        default_factory=list, description="test AUROC aims, e.g. [{test_set: cbis-ddsm/test, epsilon: 1, auroc: "
                                          "0.66}]: the report shows the cell chosen on validation against each")
    roc_epsilon: Optional[Epsilon] = Field(None, description="ε of the ROC-curve plot; default the largest finite ε")
    audit: Optional[AuditSettings] = Field(
        None, description="membership-inference audit of every condition × ε (first seed) after the runs, e.g. "
                          "{method: auto, models: 16}; absent: no audit")
    quality: Optional[Union[bool, QualitySettings]] = Field(
        None, description="score the synthetic sets (Fréchet distances, class fidelity, sample grids) after the runs: "
                          "true, false or {frd: false, max_patches: 500}; default: true when `synthetic` names a "
                          "generator")

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
        if self.roc_epsilon is not None and self.roc_epsilon not in self.epsilons:
            raise ValueError(f"roc_epsilon {self.roc_epsilon} is not one of epsilons {self.epsilons}")
        # A target outside the study's test sets or ε is kept (a narrowed preset still states its aims)
        # and reported as not run there; only a target given twice is refused.
        seen = set()
        for t in self.targets:
            if (t.test_set, t.epsilon) in seen:
                raise ValueError(f"targets: {t.test_set} at ε = {format_epsilon(t.epsilon)} is given twice")
            seen.add((t.test_set, t.epsilon))
        if self.generator is not None and self.generator.is_private:
            self._check_generator_privacy()
        self._check_prior()
        return self

    def _check_prior(self) -> None:
        """A prior is planned only for a condition that fine-tunes it, on the study's own model
        (the fine-tune loads its backbone strictly: any other shape would fail every run alike)."""
        uses = [c for c in self.conditions if c in PRIOR_CONDITIONS]
        if uses and self.prior is None:
            raise ValueError(f"conditions: {uses[0]} needs a prior: block, e.g. prior: {{pretrain: "
                             "configs/pretrain-procedural.yaml}")
        if self.prior is None:
            return
        if not uses:
            raise ValueError(f"prior: no condition uses it; add {PRIOR_CONDITIONS[0]} to conditions or remove prior")
        pre = self.prior.config_for(0).model
        shape = lambda m: (m.name, m.input_size, getattr(m, "width", None))  # noqa: E731
        if shape(pre) != shape(self.model):
            raise ValueError(f"prior: the pretrain model ({_describe(pre)}) differs from the study's "
                             f"({_describe(self.model)}); set the same name, input_size and width in both")

    def _check_generator_privacy(self) -> None:
        """A DP generator accounts like the study's DP stages. Why: a chain's total is per patient
        only if every stage protects patients; it is stated at the last stage's δ (a generator
        calibrated at a larger δ would overshoot its share there); and the consumer calibrates its
        noise to the total in the study's accountant, which must be the one the chain composes in
        (dpmammo.privacy.ledger.chain_accountant)."""
        from dpmammo.privacy.ledger import chain_accountant

        gen = self.generator.config_at(1.0, None).privacy
        for key in ("unit", "delta"):
            mine, study = getattr(gen, key), getattr(self.privacy, key)
            if mine != study:
                raise ValueError(f"synthetic.generator: privacy.{key} {mine} differs from the study's privacy.{key} "
                                 f"{study}; set both to the same value (the chain total composes both stages)")
        if chain_accountant([gen.accountant, self.privacy.accountant]) != self.privacy.accountant:
            raise ValueError(f"synthetic.generator: privacy.accountant {gen.accountant}: the chain then composes in "
                             "prv, and the study's DP stages would calibrate in rdp; set the study's privacy.accountant "
                             "to prv (or the generator's to rdp)")

    @property
    def model_names(self) -> list[str]:
        """Every model the study trains: its own, then those that stage overrides name."""
        names = [self.model.name]
        for over in (self.dp, *self.stages.values()):
            for block in (over, over.dp):
                if block is not None and block.model.get("name") not in (None, *names):
                    names.append(block.model["name"])
        return names

    @property
    def same_setup_as_published(self) -> bool:
        """Whether the published numbers may stand beside ours cell by cell: the paper's model."""
        return self.compare_with == "osuala2024" and self.model.name == "swin_t"

    @property
    def generator(self) -> Optional[SyntheticFromGenerator]:
        """The generator block of `synthetic`, or None when it names a fixed set."""
        return self.synthetic if isinstance(self.synthetic, SyntheticFromGenerator) else None

    @property
    def quality_settings(self) -> Optional[QualitySettings]:
        """What the quality step scores, or None when it is off."""
        on = self.quality if self.quality is not None else self.generator is not None
        if on is False:
            return None
        return QualitySettings() if on is True else on

    def generator_epsilon(self, eps: float) -> float:
        """The generator's target at study ε: generator_share·ε for a DP generator; ∞ (non-private)
        at ε = ∞ or for a generator without a privacy block."""
        gen = self.generator
        if gen is None:
            raise DpMammoError("this study's synthetic set is fixed; it trains no generator")
        return eps * gen.generator_share if gen.is_private and is_private(eps) else math.inf

    def consumer_target(self) -> Literal["stage", "total"]:
        """What the ε of a DP classifier stage whose chain includes the synthetic set bounds: with a
        DP generator, the chain's composed total (the stage takes what the generator left, by
        composition in the study's accountant, which is tighter than splitting ε), else the stage alone."""
        gen = self.generator
        return "total" if gen is not None and gen.is_private else "stage"

    def privacy_for(self, eps: float, target: Literal["stage", "total"] = "stage") -> Optional[PrivacyConfig]:
        """The privacy block of a stage at target `eps`; None (non-private) for ε = ∞."""
        return None if not is_private(eps) else PrivacyConfig(target_epsilon=eps, target=target,
                                                              **self.privacy.model_dump())

    def stage(self, name: Stage) -> StageOverride:
        return self.stages.get(name, StageOverride())


def _describe(model) -> str:
    width = getattr(model, "width", None)
    return f"{model.name}, input_size {model.input_size}" + (f", width {width}" if width is not None else "")
