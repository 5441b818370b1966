"""Privacy-utility studies: conditions × ε × seeds, run locally or on Ray, collected into results.

Entry points: `StudyConfig`, `load_study` (a YAML file or a packaged preset), `run_study`.
"""

from dpmammo.study.config import StudyConfig
from dpmammo.study.presets import PRESETS, load_study
from dpmammo.study.recipes import RunSpec, expand, list_conditions
from dpmammo.study.runner import run_study

__all__ = ["StudyConfig", "PRESETS", "load_study", "RunSpec", "expand", "list_conditions", "run_study"]
