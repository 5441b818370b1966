"""Privacy-utility studies: conditions × ε × seeds, run locally or on Ray, collected into results.

Entry points: `StudyConfig`, `load_study` (a YAML file or a packaged preset), `run_study`.
Exports load on first use (dpmammo.lazy): configs and presets need no torch, running does.
"""

from dpmammo.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "dpmammo.study.config": ["StudyConfig"],
    "dpmammo.study.presets": ["PRESETS", "load_study"],
    "dpmammo.study.conditions": ["CONDITIONS", "list_conditions"],
    "dpmammo.study.recipes": ["RunSpec", "expand"],
    "dpmammo.study.runner": ["run_study"],
})
