"""The data of every run of a study, checked before the study directory is written.

A study reports test AUROCs: a run that trains on a patient of one of its `test_sets` (the training
split named as a test set, `synthetic:` pointing at a test split, a path to the data root) would
report a result on its own training patients as a test result. Each distinct set of training data
is resolved to its records once and checked by patient (dpmammo.data.sets.check_training_sets);
the samples of a generator the study trains do not exist yet (their generator's training data is
checked in dpmammo.study.generators).
"""

from __future__ import annotations

from pathlib import Path

from dpmammo.data.sets import check_training_sets, load_set, resolve_root
from dpmammo.errors import DpMammoError
from dpmammo.study.config import StudyConfig
from dpmammo.study.recipes import Plan


def check_study_data(cfg: StudyConfig, plan: Plan, study_dir: Path) -> None:
    """Refuse a study whose runs would train on a test patient, a patch twice, or a validation patient."""
    root = resolve_root(cfg.data_root)
    sampled = {str(study_dir / g.samples_id) for g in plan.generators.values()}
    checked: set[tuple[str, ...]] = set()
    for spec in plan.runs.values():
        train = tuple(name for name in spec.config.data.train if name not in sampled)
        if train in checked or not train:
            continue
        checked.add(train)
        if not all(_loads(root, name) for name in train):
            continue  # that run fails alone, with its reason, and the study goes on (dpmammo.study.runner)
        try:
            check_training_sets(root, list(train), cfg.val_set, test_sets=tuple(cfg.test_sets))
        except DpMammoError as e:
            raise DpMammoError(f"run {spec.run_id}: {e}") from None


def _loads(root: Path, name: str) -> bool:
    try:
        load_set(root, name)
    except DpMammoError:
        return False
    return True
