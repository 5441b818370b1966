"""Patient-disjoint splits, stratified by label.

A patient's lesions always land in one split. Patients are grouped by what their lesions are
(all malignant, all benign, mixed); within each group, in a seeded random order, each patient
goes to the split furthest below its target share of that group's lesions. So every split gets
close to its share of each class, and the same seed gives the same split.

Mode `source` keeps the source's own test set as it is, draws val from the source's training
patients the same way, and drops the training lesions of any patient who is also in the source
test set (their lesions would otherwise be in two splits); the drops are reported.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from dpmammo.data.extract.config import SPLITS, SplitConfig
from dpmammo.data.manifest import BENIGN, MALIGNANT
from dpmammo.errors import DpMammoError

_GROUPS = ("malignant", "benign", "mixed")


@dataclass(frozen=True)
class LesionKey:
    """What a split decision needs to know of one lesion."""

    patient: str
    label: int
    source_split: str | None


def _group(labels: list[int]) -> str:
    if all(label == MALIGNANT for label in labels):
        return "malignant"
    if all(label == BENIGN for label in labels):
        return "benign"
    return "mixed"


def stratified_patient_split(patients: dict[str, list[int]], names: tuple[str, ...], fractions: tuple[float, ...],
                             seed: int) -> dict[str, str]:
    """patient → split name, given each patient's lesion labels; fractions of lesions per split."""
    groups: dict[str, list[str]] = defaultdict(list)
    for p in sorted(patients):
        groups[_group(patients[p])].append(p)
    rng = np.random.default_rng([seed, 7_919])
    chosen: dict[str, str] = {}
    for g in _GROUPS:
        members = groups.get(g, [])
        order = [members[i] for i in rng.permutation(len(members))]
        total = sum(len(patients[p]) for p in members)
        have = np.zeros(len(names))
        target = np.asarray(fractions, dtype=float) * total
        for p in order:
            deficit = np.where(np.asarray(fractions) > 0, target - have, -np.inf)
            k = int(np.argmax(deficit))  # ties go to the earlier split (train, then val, then test)
            chosen[p] = names[k]
            have[k] += len(patients[p])
    return chosen


def assign_splits(lesions: list[LesionKey], cfg: SplitConfig) -> tuple[list[str | None], int]:
    """The split of each lesion (None = dropped) and how many were dropped (source mode overlap)."""
    by_patient: dict[str, list[int]] = defaultdict(list)
    if cfg.mode == "fractions":
        for les in lesions:
            by_patient[les.patient].append(les.label)
        chosen = stratified_patient_split(by_patient, SPLITS, cfg.fractions, cfg.seed)
        return [chosen[les.patient] for les in lesions], 0

    missing = sum(les.source_split is None for les in lesions)
    if missing:
        raise DpMammoError(f"--split source: {missing} lesion(s) have no source split")
    source_of: dict[str, set[str]] = defaultdict(set)
    for les in lesions:
        source_of[les.patient].add(les.source_split)  # type: ignore[arg-type]
    out: list[str | None] = []
    has_val = any(les.source_split == "val" for les in lesions)
    train_labels: dict[str, list[int]] = defaultdict(list)
    for les in lesions:
        if les.source_split == "train" and not ({"val", "test"} & source_of[les.patient]):
            train_labels[les.patient].append(les.label)
    drawn = {} if has_val else stratified_patient_split(
        train_labels, ("train", "val"), (1.0 - cfg.val_fraction, cfg.val_fraction), cfg.seed)
    dropped = 0
    for les in lesions:
        if les.source_split == "train" and ({"val", "test"} & source_of[les.patient]):
            out.append(None)
            dropped += 1
        elif les.source_split == "train":
            out.append(drawn.get(les.patient, "train"))
        elif les.source_split == "val" and "test" in source_of[les.patient]:
            out.append(None)
            dropped += 1
        else:
            out.append(les.source_split)
    return out, dropped


def check_both_classes(lesions: list[LesionKey], splits: list[str | None]) -> None:
    """Every split that holds lesions must hold both classes (AUROC needs both)."""
    counts: dict[str, set[int]] = defaultdict(set)
    for les, s in zip(lesions, splits):
        if s is not None:
            counts[s].add(les.label)
    for s in SPLITS:
        if s in counts and len(counts[s]) < 2:
            have = "malignant" if MALIGNANT in counts[s] else "benign"
            n = len({les.patient for les, x in zip(lesions, splits) if x == s})
            raise DpMammoError(f"split {s!r} holds only {have} lesions ({n} patient(s)); with this few patients "
                               "choose other --split fractions or add data")
