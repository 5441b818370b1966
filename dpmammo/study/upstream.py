"""A study's upstream runs (generators, procedural pretraining): each kind's spec and how it is
executed, in one table. They run in the driver process, in plan order, before any classifier run
(locally and on Ray): every run that needs one waits for it anyway, and a study has few of them."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from dpmammo.study.config import StudyConfig
from dpmammo.study.generators import execute_generator
from dpmammo.study.outcome import Outcome
from dpmammo.study.priors import execute_prior
from dpmammo.study.recipes import GeneratorSpec, Plan, PriorSpec

EXECUTE: dict[type, Callable[..., Outcome]] = {GeneratorSpec: execute_generator, PriorSpec: execute_prior}


def run_upstream(cfg: StudyConfig, plan: Plan, study_dir: Path, report: Callable[[Outcome], None],
                 announce: Callable[[str], None]) -> dict[str, Outcome]:
    """Every upstream run of the plan, in order; their outcomes by run id."""
    done: dict[str, Outcome] = {}
    for run_id, spec in plan.upstream.items():
        announce(run_id)
        done[run_id] = EXECUTE[type(spec)](spec, study_dir, num_threads=cfg.resources.num_cpus)
        report(done[run_id])
    return done
