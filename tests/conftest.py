"""Shared fixtures: the real patch data beside the repository, and phantom data made once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def real_data_root() -> Path:
    """The published patch set: ../shared/data/mammo_dp beside the repository (as in CI)."""
    return Path(os.environ.get("DPMAMMO_TEST_DATA", REPO.parent / "shared" / "data" / "mammo_dp"))


@pytest.fixture(scope="session")
def real_root() -> Path:
    root = real_data_root()
    assert root.is_dir(), f"real test data missing at {root}: set DPMAMMO_TEST_DATA"
    return root


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """400 train / 200 val / 200 test phantom patches, made once per session."""
    from dpmammo.data.phantoms import make_phantoms

    return make_phantoms(tmp_path_factory.mktemp("phantoms"), n=400, seed=0, size=128)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Feature caches and fetched data go to a temporary cache, never the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DPMAMMO_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.delenv("DPMAMMO_DATA", raising=False)
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)
    yield


def no_unit_count(privacy_json: Path) -> bool:
    """A privacy.json records no exact count of private units (under add/remove adjacency that
    count is private): no count field in any stage."""
    stages = json.loads(privacy_json.read_text())["stages"]
    return all(not {"n_units", "n_private"} & set(s) for s in stages)
