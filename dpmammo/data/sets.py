"""Resolve named sets (`cbis-ddsm/train`) under a data root into records, tensors and provenance."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Optional

from dpmammo.data.manifest import PROVENANCE_FILE, PatchRecord, index_folder, select
from dpmammo.errors import DpMammoError


def default_cache_dir() -> Path:
    return Path(os.environ.get("DPMAMMO_CACHE", Path.home() / ".cache" / "dpmammo"))


def resolve_root(root: Optional[str | Path]) -> Path:
    """Config value, else $DPMAMMO_DATA, else the folder `dpmammo data fetch` fills."""
    if root is not None:
        path = Path(root).expanduser()
    elif os.environ.get("DPMAMMO_DATA"):
        path = Path(os.environ["DPMAMMO_DATA"]).expanduser()
    else:
        path = default_cache_dir() / "mammo_dp"
    if not path.is_dir():
        raise DpMammoError(f"data folder not found: {path} (set data.root or DPMAMMO_DATA, or run `dpmammo data fetch`)")
    return path.resolve()


@lru_cache(maxsize=8)
def _index(root: Path) -> tuple[PatchRecord, ...]:
    return tuple(index_folder(root))


def is_folder_set(name: str) -> bool:
    """Whether a set name is a path to a folder (a synthetic set) rather than `dataset/split`."""
    return name.startswith(("/", "./", "../", "~"))


def data_inputs(root: Optional[str | Path], names: list[str]) -> list[tuple[str, Path]]:
    """The folders a command reads for data `root` and sets `names`, for `dpmammo.files.check_out`."""
    inputs = [("the data folder", resolve_root(root))]
    return inputs + [(f"the set {name}", Path(name)) for name in names if is_folder_set(name)]


def load_set(root: Path, name: str) -> list[PatchRecord]:
    """The records of set `name` (`<dataset>/<split>`), or a path to a synthetic folder."""
    if is_folder_set(name):
        return list(_index(Path(name).expanduser().resolve()))
    return select(list(_index(root)), name)


def synthetic_provenance(records: list[PatchRecord]) -> list[dict]:
    """Provenance records of the synthetic folders among `records` (one per folder).

    A folder made by `dpmammo gan sample` carries provenance.json with its generator's privacy
    chain; a folder without one is reported as such (the shipped c-dcgan set came from a GAN
    trained on CBIS-DDSM without DP).
    """
    folders = sorted({str(Path(r.path).parent) for r in records if r.source == "synthetic"})
    out = []
    for folder in folders:
        p = Path(folder) / PROVENANCE_FILE
        if p.is_file():
            out.append(json.loads(p.read_text()))
        else:
            out.append({"folder": folder, "provenance": None})
    return out


def generator_training_records(root: Path, names: list[str]) -> list[PatchRecord]:
    """The records a generator trains on; test patients are refused.

    A generator that saw a test patient leaks that patient into every classifier trained on its
    samples, and the test AUROC of those classifiers is then contaminated. The check is on the
    patients of the resolved records (see `check_training_sets`), so a path to a test split, or to
    the whole data root, is refused like the set name; a study also checks the generator's patients
    against its own test sets.
    """
    return check_training_sets(root, names, None, consumer="a generator")


TEST_SPLIT = "test"
Unit = tuple[str, str]


def unit_of(record: PatchRecord) -> Unit:
    """Whose data a record is: (data set, patient) where its file name carries a patient; otherwise
    the file itself, resolved (symlinks, `.`/`..`), so the same file reached by two paths is one."""
    return (record.dataset, record.patient) if record.patient else ("", os.path.realpath(record.path))


def check_training_sets(root: Path, train: list[str], val: Optional[str], *, test_sets: tuple[str, ...] = (),
                        consumer: str = "a model") -> list[PatchRecord]:
    """The records of the training sets `train`, after refusing what would make a result or a
    guarantee wrong. Judged on the records each name resolves to, never on the names:

    - a patch that enters training twice (a set listed twice, or a path and a set name that are the
      same files): it would count as two units under `unit: patch` and weigh double otherwise;
    - a training patient who is a test patient: one in a test split of the data root or of a folder
      a training set names, or in one of `test_sets` (a study's); a test result would then be on
      training patients;
    - a validation patient who is a training patient (`val`): selection on training patients
      overstates the selected model, and under DP the training patients' data would be used beyond
      what the accountant counts.
    """
    records: list[PatchRecord] = []
    seen: dict[str, str] = {}  # resolved file → the training set that brought it
    units: dict[Unit, str] = {}  # whose data → the training set that brought it
    for name in train:
        for r in load_set(root, name):
            path = os.path.realpath(r.path)
            if path in seen:
                raise DpMammoError(
                    f"data.train: {_short(name)} and {_short(seen[path])} hold the same patches (e.g. {r.path}), so "
                    "each would count twice (as two units of privacy under unit: patch); list each set once")
            seen[path] = name
            units.setdefault(unit_of(r), name)
            records.append(r)
    tests = {unit_of(r): r.set_name for r in (*_index(root), *records) if r.source == "real" and r.split == TEST_SPLIT}
    tests.update({unit_of(r): name for name in test_sets for r in load_set(root, name) if r.source == "real"})
    shared = sorted(units.keys() & tests.keys())
    if shared:
        raise DpMammoError(
            f"data.train: {_short(units[shared[0]])} holds {len(shared)} patient(s) of test set {_short(tests[shared[0]])} "
            f"(e.g. {_unit_name(shared[0])}); {consumer} must not see test patients (a test result would then be on "
            "patients seen in training): use training sets patient-disjoint from the test sets")
    if val is not None:
        both = sorted({unit_of(r) for r in load_set(root, val)} & units.keys())
        if both:
            raise DpMammoError(
                f"data.val {_short(val)} shares {len(both)} patient(s) with data.train (e.g. {_unit_name(both[0])}): "
                "selecting the model on patients it trained on overstates it (and is outside any DP guarantee); "
                "use a validation set patient-disjoint from the training sets")
    return records


def _unit_name(unit: Unit) -> str:
    dataset, patient = unit
    return f"patient {patient!r} of {dataset}" if dataset else f"file {patient}"


def _short(name: str, limit: int = 120) -> str:
    return name if len(name) <= limit else name[:limit] + "…"


def training_data_record(records: list[PatchRecord], root: Path) -> dict:
    """Exactly which patches a generator saw: counts per set and class, and a SHA-256 of the sorted
    relative paths that whoever holds the data can recompute to check. Exact statistics of the
    private set: they go into the generator run's metrics.json, never into what is released with
    its samples (provenance.json)."""
    import hashlib

    rel = sorted(str(Path(r.path).resolve().relative_to(root)) if Path(r.path).resolve().is_relative_to(root)
                 else str(Path(r.path).resolve()) for r in records)
    sets: dict[str, dict[str, int]] = {}
    for r in records:
        counts = sets.setdefault(r.set_name, {"patches": 0, "malignant": 0, "patients": 0})
        counts["patches"] += 1
        counts["malignant"] += r.label
    for name in sets:
        sets[name]["patients"] = len({r.patient for r in records if r.set_name == name and r.patient})
    return {"sets": sets, "patches_sha256": hashlib.sha256("\n".join(rel).encode()).hexdigest(),
            "digest_of": "SHA-256 of the sorted patch paths relative to the data root, one per line"}
