"""Study conditions as named recipes: (study, ε, seed) → the runs that produce the condition.
Each is named by one line of `dpmammo.study.conditions.CONDITIONS`.

The conditions are those of Osuala et al. (MICCAI 2024 Deep Breath, arXiv 2407.12669):

- ``real``: train on the private set, DP at ε (non-private at ε = ∞);
- ``real+synthetic``: private and synthetic patches together, DP over the union;
- ``synthetic``: synthetic patches only; no private patch is touched by training, so the run
  does not depend on ε (it is the same run as the pretrain stage below);
- ``synthetic→real``: pretrain the whole model on synthetic data, then fine-tune on the private
  set with DP at ε (head only by default, as in the paper).

A chained stage names its parent by run id (recipe, stage, seed), never by a path or a
timestamp; the runner resolves the id to a directory inside the study. The pretrain run is
shared by every ε and by the ``synthetic`` condition, so it is trained once per seed.

When `synthetic:` names a generator, the synthetic set of study ε is sampled from the generator
run ``generator/<tag of the generator's own target>`` into ``generator/<tag>-samples`` (e.g.
``generator/eps3`` at study ε = 6 with share 0.5; ``generator/epsinf`` when non-private). A DP
generator makes the synthetic runs depend on ε: the pretrain run is then
``synthetic/<study ε tag>/seed<s>`` (∞ included) instead of one shared
``synthetic/pretrain/seed<s>``, and every DP stage that consumes the samples (directly or through
the pretrained weights) is calibrated to a chain total of ε (`StudyConfig.consumer_target`).
Classifier run ids carry the study ε (their column in the tables); a generator run id carries
its own target.

``prior→real`` starts from a backbone pretrained on procedural images (`study.prior`, run by
`dpmammo.train.pretrain`), then fine-tunes on the private set with DP at ε. The pretrain run
``prior/pretrain/seed<s>`` touches no private data (a `public` stage, ε = 0), so it is one run per
seed for every ε, and the fine-tune's own ε is its chain's total (its target is the stage).

``prior→probe→real`` is DP-RandP's three phases (Tang et al., NeurIPS 2023): (I) the same
procedural pretrain run, (II) a DP linear probe on its frozen features (cached) at
`prior.probe_share`·ε, run id ``prior-probe/<ε>/seed<s>``, (III) a DP fine-tune of the whole model
from the probe, calibrated to what the probe left (`privacy.target: total`), so that the
composition of (II) and (III) is the study ε per patient.

Generator and pretrain runs are the study's upstream runs (`Plan.upstream`): planned once by id,
run before every classifier run, and named by the classifier runs that need them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from dpmammo.config import parse_config
from dpmammo.errors import DpMammoError
from dpmammo.lazy import load_spec
from dpmammo.privacy.budget import epsilon_tag
from dpmammo.study.conditions import CONDITIONS, condition_slug
from dpmammo.study.config import StudyConfig
from dpmammo.train.config import TrainConfig

# Weight sources a chained stage must not load again: init_from already holds the whole model.
WEIGHT_SOURCES = {"weights": None, "backbone_weights": None, "pretrained": False}
GENERATOR_DIR = "generator"  # generator runs and their sampled sets, inside the study directory
PRIOR_DIR = "prior"  # procedural pretrain runs, inside the study directory


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study. `config.init_from` is left empty; `parent` names the run."""

    run_id: str
    config: TrainConfig
    parent: Optional[str]
    stage: str
    epsilon: float  # the study ε (the table column) this run belongs to; inf = non-private
    seed: int
    generator: Optional[str] = None  # the generator run whose samples are among its training sets
    prior: Optional[str] = None  # the procedural pretrain run (Plan.priors) it starts from; also its parent


@dataclass(frozen=True)
class GeneratorSpec:
    """A generator run of the study and the set sampled from it (both named by id, in the study dir)."""

    run_id: str  # generator/eps3
    samples_id: str  # generator/eps3-samples
    config: Any  # the typed generator config (dpmammo.gan.registry), privacy.target_epsilon = epsilon
    epsilon: float  # the generator's own target; inf = non-private
    n: int
    balance: float
    seed: int


def generator_spec(study: StudyConfig, eps: float) -> GeneratorSpec:
    """The generator run behind the synthetic set at study ε (the same run for every ε whose
    generator budget is the same, e.g. every ε of a non-private generator)."""
    gen_eps = study.generator_epsilon(eps)
    run_id = f"{GENERATOR_DIR}/{epsilon_tag(gen_eps)}"
    block = study.generator
    return GeneratorSpec(run_id, f"{run_id}-samples", block.config_at(gen_eps, study.data_root), gen_eps,
                         block.n, block.balance, block.seed)


@dataclass(frozen=True)
class PriorSpec:
    """A procedural pretrain run of the study (dpmammo.train.pretrain): public, one per seed."""

    run_id: str  # prior/pretrain/seed0
    config: Any  # the typed PretrainConfig, train.seed = seed
    seed: int


def prior_spec(study: StudyConfig, seed: int) -> PriorSpec:
    """The pretrain run of seed `seed`, shared by every ε (no private data enters it)."""
    if study.prior is None:
        raise DpMammoError("this study has no prior: block; add prior: {pretrain: CONFIG} to use a procedural prior")
    return PriorSpec(f"{PRIOR_DIR}/pretrain/seed{seed}", study.prior.config_for(seed), seed)


@dataclass(frozen=True)
class SyntheticInput:
    """The synthetic training set at one study ε: a `data.train` entry and the generator behind it."""

    train_set: str
    generator: Optional[GeneratorSpec]


def synthetic_input(study: StudyConfig, eps: float, study_dir: Optional[Path]) -> SyntheticInput:
    if study.generator is None:
        return SyntheticInput(study.synthetic, None)
    if study_dir is None:
        raise DpMammoError("a study whose synthetic set comes from a generator is planned inside its study "
                           "directory (the samples live there): pass study_dir")
    spec = generator_spec(study, eps)
    return SyntheticInput(str(Path(study_dir) / spec.samples_id), spec)


def build_runs(study: StudyConfig, condition: str, eps: float, seed: int,
               study_dir: Optional[Path] = None) -> list[RunSpec]:
    """The runs of `condition` at (ε, seed), parents first; the last one is the condition's result.
    `study_dir` is needed only when the synthetic set comes from a generator."""
    if condition not in CONDITIONS:
        raise DpMammoError(f"unknown condition {condition!r}; known: {', '.join(CONDITIONS)}")
    return load_spec(CONDITIONS[condition].recipe)(study, eps, seed, study_dir)


def stage_config(study: StudyConfig, stage: str, *, train_sets: list[str], eps: float, seed: int,
                 model: Optional[dict[str, Any]] = None, target: Literal["stage", "total"] = "stage") -> TrainConfig:
    """The shared settings of `study`, then its `dp` block (DP stages only), then the stage's
    overrides, then the stage's own `dp` block (DP stages only); with this stage's data, ε (for
    the stage, or its chain's `total`) and seed."""
    privacy = study.privacy_for(eps, target)
    model_block = dict(model if model is not None else study.model.model_dump())
    optim = study.optim.model_dump()
    train = study.train.model_dump() | {"seed": seed}
    own = study.stage(stage)
    overs = [study.dp, own, own.dp] if privacy is not None else [own]
    for over in (o for o in overs if o is not None):
        model_block = _changed(model_block, over.model)  # another model's block replaces (keys differ per model)
        optim = _changed(optim, over.optim)
        if over.lr is not None:
            optim["lr"] = over.lr
        if over.epochs is not None:
            train["epochs"] = over.epochs
        if over.batch_size is not None:
            train["batch_size"] = over.batch_size
        if over.select is not None:
            train["select"] = over.select
        if over.test_flips is not None:
            train["test_flips"] = over.test_flips
        if over.augment is not None:
            train["augment"] = over.augment
        if over.centre_features is not None:
            train["centre_features"] = over.centre_features.model_dump()
    data = {"root": study.data_root, "train": train_sets, "val": study.val_set}
    return parse_config(TrainConfig, {"data": data, "model": model_block, "optim": optim, "train": train,
                                      "privacy": None if privacy is None else privacy.model_dump()},
                        f"study {study.name}, stage {stage}")


def _changed(block: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """`block` with the keys of `change`; a change naming another model or optimiser replaces it whole."""
    if change.get("name", block.get("name")) != block.get("name"):
        return dict(change)
    return {**block, **change}


def _run_id(condition: str, eps: float, seed: int) -> str:
    return f"{condition_slug(condition)}/{epsilon_tag(eps)}/seed{seed}"


def real(study: StudyConfig, eps: float, seed: int, study_dir: Optional[Path]) -> list[RunSpec]:
    cfg = stage_config(study, "real", train_sets=[study.train_set], eps=eps, seed=seed)
    return [RunSpec(_run_id("real", eps, seed), cfg, None, "real", eps, seed)]


def real_synthetic(study: StudyConfig, eps: float, seed: int, study_dir: Optional[Path]) -> list[RunSpec]:
    """DP over the union; with a DP generator calibrated to what it left, so that the chain total is ε."""
    syn = synthetic_input(study, eps, study_dir)
    cfg = stage_config(study, "real+synthetic", train_sets=[study.train_set, syn.train_set],
                       eps=eps, seed=seed, target=study.consumer_target())
    return [RunSpec(_run_id("real+synthetic", eps, seed), cfg, None, "real+synthetic", eps, seed,
                    generator=syn.generator.run_id if syn.generator else None)]


def synthetic(study: StudyConfig, eps: float, seed: int, study_dir: Optional[Path]) -> list[RunSpec]:
    """Whole model on synthetic data, no DP: it touches no private patch. It depends on ε only
    through a DP generator's budget (one run per ε, ∞ included); otherwise one run serves every ε."""
    syn = synthetic_input(study, eps, study_dir)
    model = study.model.model_dump() | {"freeze_backbone": False}
    cfg = stage_config(study, "pretrain", train_sets=[syn.train_set], eps=math.inf, seed=seed, model=model)
    if study.generator is not None and study.generator.is_private:  # its samples differ per ε
        return [RunSpec(_run_id("synthetic", eps, seed), cfg, None, "pretrain", eps, seed,
                        generator=syn.generator.run_id)]
    return [RunSpec(f"synthetic/pretrain/seed{seed}", cfg, None, "pretrain", math.inf, seed,
                    generator=syn.generator.run_id if syn.generator else None)]


def synthetic_to_real(study: StudyConfig, eps: float, seed: int, study_dir: Optional[Path]) -> list[RunSpec]:
    """Pretrain (shared with `synthetic`), then fine-tune on the private set; head only by default.
    The fine-tune inherits the generator's chain through the pretrained weights, hence its budget."""
    (pretrain,) = synthetic(study, eps, seed, study_dir)
    model = _without_weight_sources(pretrain.config.model.model_dump()) | {"freeze_backbone": True}
    cfg = stage_config(study, "finetune", train_sets=[study.train_set], eps=eps, seed=seed, model=model,
                       target=study.consumer_target())
    return [pretrain, RunSpec(_run_id("synthetic→real", eps, seed), cfg, pretrain.run_id, "finetune", eps, seed)]


def prior_to_real(study: StudyConfig, eps: float, seed: int, study_dir: Optional[Path]) -> list[RunSpec]:
    """Fine-tune on the private set (DP at ε) from the procedural pretrain run of `seed`. The
    study's model block, then `dp`, then `stages.prior-finetune` say what trains (whole model by
    default). The pretrain's chain is public, so the stage's ε is the chain total: target stage."""
    prior = prior_spec(study, seed)
    model = _without_weight_sources(study.model.model_dump())
    cfg = stage_config(study, "prior-finetune", train_sets=[study.train_set], eps=eps, seed=seed, model=model)
    # init_weights is set after validation: it needs init_from, which the runner fills from `parent`.
    cfg = cfg.model_copy(update={"init_weights": study.prior.init_weights})
    return [RunSpec(_run_id("prior→real", eps, seed), cfg, prior.run_id, "prior-finetune", eps, seed,
                    prior=prior.run_id)]


def prior_probe_real(study: StudyConfig, eps: float, seed: int, study_dir: Optional[Path]) -> list[RunSpec]:
    """(II) DP linear probe on the frozen procedural backbone at probe_share·ε (stage `prior-probe`),
    then (III) the whole model fine-tuned from the probe (stage `probe-finetune`) with its noise
    calibrated so that the chain's total is ε. At ε = ∞ both stages are non-private."""
    prior = prior_spec(study, seed)
    base = _without_weight_sources(study.model.model_dump())
    probe_eps = eps * study.prior.probe_share if math.isfinite(eps) else eps
    probe = stage_config(study, "prior-probe", train_sets=[study.train_set], eps=probe_eps, seed=seed,
                         model=base | {"freeze_backbone": True})
    probe = probe.model_copy(update={"init_weights": study.prior.init_weights})
    probe_id = f"{condition_slug('prior→probe→real')}/probe/{epsilon_tag(eps)}/seed{seed}"
    whole = stage_config(study, "probe-finetune", train_sets=[study.train_set], eps=eps, seed=seed,
                         model=base | {"freeze_backbone": False}, target="total")
    return [RunSpec(probe_id, probe, prior.run_id, "prior-probe", eps, seed, prior=prior.run_id),
            RunSpec(_run_id("prior→probe→real", eps, seed), whole, probe_id, "probe-finetune", eps, seed)]


def _without_weight_sources(model: dict[str, Any]) -> dict[str, Any]:
    """A model block whose weights come from `init_from` alone (no weight file, no ImageNet)."""
    return model | {k: v for k, v in WEIGHT_SOURCES.items() if k in model}


@dataclass(frozen=True)
class ResultKey:
    """A row of the results: the condition and the run whose model it reports."""

    condition: str
    run_id: str


@dataclass
class Plan:
    runs: dict[str, RunSpec]  # by run id, every parent before its children
    results: list[ResultKey]
    generators: dict[str, GeneratorSpec] = field(default_factory=dict)  # by run id; run before any classifier
    priors: dict[str, PriorSpec] = field(default_factory=dict)  # by run id; run before any classifier

    @property
    def upstream(self) -> dict[str, GeneratorSpec | PriorSpec]:
        """The runs that come before every classifier run (generators, then pretrain runs), by id."""
        return {**self.generators, **self.priors}


def expand(study: StudyConfig, study_dir: Optional[Path] = None) -> Plan:
    """Every run of the study once (shared stages deduplicated), and the runs each condition reports.
    `study_dir` (absolute) is needed only when the synthetic set comes from a generator."""
    runs: dict[str, RunSpec] = {}
    results: list[ResultKey] = []
    generators: dict[str, GeneratorSpec] = {}
    priors: dict[str, PriorSpec] = {}
    for condition in study.conditions:
        for eps in study.epsilons:
            for seed in study.seeds:
                specs = build_runs(study, condition, eps, seed, study_dir)
                for spec in specs:
                    seen = runs.setdefault(spec.run_id, spec)
                    if seen.config != spec.config or seen.parent != spec.parent:
                        raise DpMammoError(f"recipes disagree on run {spec.run_id}: two configs under one id")
                    if spec.generator is not None:
                        gen = generator_spec(study, eps)
                        if generators.setdefault(gen.run_id, gen) != gen:
                            raise DpMammoError(f"two generator configs under one id {gen.run_id}")
                    if spec.prior is not None:
                        prior = prior_spec(study, seed)
                        if priors.setdefault(prior.run_id, prior) != prior:
                            raise DpMammoError(f"two pretrain configs under one id {prior.run_id}")
                key = ResultKey(condition, specs[-1].run_id)
                if key not in results:
                    results.append(key)
    return Plan(runs, results, generators, priors)
