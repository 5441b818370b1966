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
    """The records a generator trains on; a test split is refused.

    A generator that saw a test patient leaks that patient into every classifier trained on its
    samples, and the test AUROC of those classifiers is then contaminated. Patients are disjoint
    across the splits of one data set (the index checks it), so refusing `*/test` sets suffices
    within a data root; a study also checks the generator's patients against its own test sets.
    """
    for name in names:
        if name.rstrip("/").split("/")[-1] == "test":
            raise DpMammoError(f"data.train names {name!r}: a generator must not see test patients (their "
                               "synthetic patches would contaminate every test result); train it on a train split")
    return [r for name in names for r in load_set(root, name)]


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
