"""Study conditions as named recipes: (study, ε, seed) → the runs that produce the condition.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional

from dpmammo.config import parse_config
from dpmammo.errors import DpMammoError
from dpmammo.privacy.budget import epsilon_tag
from dpmammo.train.config import TrainConfig

if TYPE_CHECKING:
    from dpmammo.study.config import StudyConfig

STAGES = ("real", "real+synthetic", "pretrain", "finetune")
Stage = Literal[STAGES]  # type: ignore[valid-type]

# Weight sources a chained stage must not load again: init_from already holds the whole model.
WEIGHT_SOURCES = {"weights": None, "backbone_weights": None, "pretrained": False}


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study. `config.init_from` is left empty; `parent` names the run."""

    run_id: str
    config: TrainConfig
    parent: Optional[str]
    stage: str
    epsilon: float  # target ε of this stage; inf = non-private
    seed: int


Recipe = Callable[["StudyConfig", float, int], list[RunSpec]]
_RECIPES: dict[str, tuple[str, Recipe]] = {}


def register_recipe(name: str, slug: str):
    """Register a condition under `name`; `slug` is its run-id prefix (safe in a path)."""

    def deco(fn: Recipe) -> Recipe:
        if name in _RECIPES:
            raise ValueError(f"recipe {name!r} registered twice")
        _RECIPES[name] = (slug, fn)
        return fn

    return deco


def list_conditions() -> list[str]:
    return list(_RECIPES)


def condition_slug(name: str) -> str:
    return _RECIPES[name][0]


def build_runs(study: "StudyConfig", condition: str, eps: float, seed: int) -> list[RunSpec]:
    """The runs of `condition` at (ε, seed), parents first; the last one is the condition's result."""
    if condition not in _RECIPES:
        raise DpMammoError(f"unknown condition {condition!r}; known: {', '.join(_RECIPES)}")
    return _RECIPES[condition][1](study, eps, seed)


def stage_config(study: "StudyConfig", stage: str, *, train_sets: list[str], eps: float, seed: int,
                 model: Optional[dict[str, Any]] = None) -> TrainConfig:
    """The shared settings of `study`, then its `dp` block (DP stages only), then the stage's
    overrides; with this stage's data, ε and seed."""
    privacy = study.privacy_for(eps)
    model_block = dict(model if model is not None else study.model.model_dump())
    optim = study.optim.model_dump()
    train = study.train.model_dump() | {"seed": seed}
    for over in ([study.dp] if privacy is not None else []) + [study.stage(stage)]:
        model_block.update(over.model)
        if over.lr is not None:
            optim["lr"] = over.lr
        if over.epochs is not None:
            train["epochs"] = over.epochs
        if over.batch_size is not None:
            train["batch_size"] = over.batch_size
    data = {"root": study.data_root, "train": train_sets, "val": study.val_set}
    return parse_config(TrainConfig, {"data": data, "model": model_block, "optim": optim, "train": train,
                                      "privacy": None if privacy is None else privacy.model_dump()},
                        f"study {study.name}, stage {stage}")


def _private_run(study: "StudyConfig", condition: str, stage: str, train_sets: list[str], eps: float,
                 seed: int) -> RunSpec:
    cfg = stage_config(study, stage, train_sets=train_sets, eps=eps, seed=seed)
    return RunSpec(f"{condition_slug(condition)}/{epsilon_tag(eps)}/seed{seed}", cfg, None, stage, eps, seed)


@register_recipe("real", slug="real")
def real(study: "StudyConfig", eps: float, seed: int) -> list[RunSpec]:
    return [_private_run(study, "real", "real", [study.train_set], eps, seed)]


@register_recipe("real+synthetic", slug="real+synthetic")
def real_synthetic(study: "StudyConfig", eps: float, seed: int) -> list[RunSpec]:
    return [_private_run(study, "real+synthetic", "real+synthetic", [study.train_set, study.synthetic], eps, seed)]


@register_recipe("synthetic", slug="synthetic")
def synthetic(study: "StudyConfig", eps: float, seed: int) -> list[RunSpec]:
    """Whole model on synthetic data, no DP: it touches no private patch (ε does not apply)."""
    model = study.model.model_dump() | {"freeze_backbone": False}
    cfg = stage_config(study, "pretrain", train_sets=[study.synthetic], eps=math.inf, seed=seed, model=model)
    return [RunSpec(f"synthetic/pretrain/seed{seed}", cfg, None, "pretrain", math.inf, seed)]


@register_recipe("synthetic→real", slug="synthetic-to-real")
def synthetic_to_real(study: "StudyConfig", eps: float, seed: int) -> list[RunSpec]:
    """Pretrain (shared with `synthetic`), then fine-tune on the private set; head only by default."""
    (pretrain,) = synthetic(study, eps, seed)
    sources = {k: v for k, v in WEIGHT_SOURCES.items() if k in type(pretrain.config.model).model_fields}
    model = pretrain.config.model.model_dump() | sources | {"freeze_backbone": True}
    cfg = stage_config(study, "finetune", train_sets=[study.train_set], eps=eps, seed=seed, model=model)
    run_id = f"{condition_slug('synthetic→real')}/{epsilon_tag(eps)}/seed{seed}"
    return [pretrain, RunSpec(run_id, cfg, pretrain.run_id, "finetune", eps, seed)]


Condition = Literal[tuple(_RECIPES)]  # type: ignore[valid-type]
CONDITION_ALIASES = {"synthetic->real": "synthetic→real", "synthetic-to-real": "synthetic→real"}


@dataclass(frozen=True)
class ResultKey:
    """A row of the results: the condition and the run whose model it reports."""

    condition: str
    run_id: str


@dataclass
class Plan:
    runs: dict[str, RunSpec]  # by run id, every parent before its children
    results: list[ResultKey]


def expand(study: "StudyConfig") -> Plan:
    """Every run of the study once (shared stages deduplicated), and the runs each condition reports."""
    runs: dict[str, RunSpec] = {}
    results: list[ResultKey] = []
    for condition in study.conditions:
        for eps in study.epsilons:
            for seed in study.seeds:
                specs = build_runs(study, condition, eps, seed)
                for spec in specs:
                    seen = runs.setdefault(spec.run_id, spec)
                    if seen.config != spec.config or seen.parent != spec.parent:
                        raise DpMammoError(f"recipes disagree on run {spec.run_id}: two configs under one id")
                key = ResultKey(condition, specs[-1].run_id)
                if key not in results:
                    results.append(key)
    return Plan(runs, results)
