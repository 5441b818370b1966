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


def load_set(root: Path, name: str) -> list[PatchRecord]:
    """The records of set `name` (`<dataset>/<split>`), or a path to a synthetic folder."""
    if name.startswith(("/", "./", "../", "~")):
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
