"""The study conditions' one table, `CONDITIONS`: name → run-id slug, recipe, config spellings,
whether it needs a `prior:`; and the stage names that `stages:` overrides may name.

Pure data, so that the study config validates `conditions:` and `stages:` from it without the
recipes (dpmammo.study.recipes, which plan a condition's runs and read the study config). A
recipe is named "module:function" and imported on use. Config validation, the error for an
unknown condition and `list_conditions` read the table; a new condition is its recipe function
and one line here (docs/extending.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

STAGES = ("real", "real+synthetic", "pretrain", "finetune", "prior-finetune", "prior-probe", "probe-finetune")
Stage = Literal[STAGES]  # type: ignore[valid-type]


@dataclass(frozen=True)
class ConditionEntry:
    slug: str  # run-id prefix, safe in a path (also accepted as a name in a config)
    recipe: str  # "module:function": (study, ε, seed, study_dir) → its runs, parents first
    aliases: tuple[str, ...] = ()  # ASCII spellings accepted in a config
    needs_prior: bool = False  # plans the study's `prior:` pretrain runs
    uses_synthetic: bool = False  # trains on the study's `synthetic:` set (directly or through pretraining)


_RECIPES = "dpmammo.study.recipes"
CONDITIONS: dict[str, ConditionEntry] = {
    "real": ConditionEntry("real", f"{_RECIPES}:real"),
    "real+synthetic": ConditionEntry("real+synthetic", f"{_RECIPES}:real_synthetic", uses_synthetic=True),
    "synthetic": ConditionEntry("synthetic", f"{_RECIPES}:synthetic", uses_synthetic=True),
    "synthetic→real": ConditionEntry("synthetic-to-real", f"{_RECIPES}:synthetic_to_real",
                                     aliases=("synthetic->real",), uses_synthetic=True),
    "prior→real": ConditionEntry("prior-to-real", f"{_RECIPES}:prior_to_real", aliases=("prior->real",),
                                 needs_prior=True),
    "prior→probe→real": ConditionEntry("prior-probe-real", f"{_RECIPES}:prior_probe_real",
                                       aliases=("prior->probe->real",), needs_prior=True),
}

Condition = Literal[tuple(CONDITIONS)]  # type: ignore[valid-type]
# Other spellings of a condition in a config: its slug and its aliases.
CONDITION_ALIASES = {alias: name for name, e in CONDITIONS.items() for alias in (e.slug, *e.aliases) if alias != name}
PRIOR_CONDITIONS = tuple(name for name, e in CONDITIONS.items() if e.needs_prior)
SYNTHETIC_CONDITIONS = tuple(name for name, e in CONDITIONS.items() if e.uses_synthetic)


def list_conditions() -> list[str]:
    return list(CONDITIONS)


def condition_slug(name: str) -> str:
    return CONDITIONS[name].slug
