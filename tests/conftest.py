"""Shared fixtures: the real patch data (found as `real_data_candidates` says), and phantom data made once.

A test that needs the real patch set asks for the `real_root` fixture and is marked `real_data`
(here, at collection: `pytest -m "not real_data"` leaves those out). Where the data is absent such
a test is skipped with what to do, except where DPMAMMO_REQUIRE_DATA=1 (scripts/test.sh, hence CI):
there it fails, so that CI never passes by skipping.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


# Read before `_private_cache` points the package at a temporary cache: where the user keeps data.
_USER_ENV = {k: os.environ.get(k) for k in ("DPMAMMO_TEST_DATA", "DPMAMMO_DATA", "DPMAMMO_CACHE")}


def real_data_candidates() -> list[tuple[str, Path]]:
    """Where the published patch set is looked for, in order: DPMAMMO_TEST_DATA, the folder beside
    the repository (as in CI), DPMAMMO_DATA, the folder `dpmammo data fetch` fills (as the package does)."""
    env = {k: Path(v).expanduser() for k, v in _USER_ENV.items() if v}
    if "DPMAMMO_TEST_DATA" in env:  # set on purpose: the only place looked at
        return [("DPMAMMO_TEST_DATA", env["DPMAMMO_TEST_DATA"])]
    cache = env.get("DPMAMMO_CACHE", Path.home() / ".cache" / "dpmammo")
    found = [("beside the repository", REPO.parent / "shared" / "data" / "mammo_dp")]
    if "DPMAMMO_DATA" in env:
        found.append(("DPMAMMO_DATA", env["DPMAMMO_DATA"]))
    return found + [("the fetch cache", cache / "mammo_dp")]


def find_real_data() -> Optional[Path]:
    return next((path for _, path in real_data_candidates() if path.is_dir()), None)


REQUIRE_DATA = "DPMAMMO_REQUIRE_DATA"  # "1": a test whose real data is absent fails instead of skipping


def real_data_root() -> Path:
    """The published patch set (see `real_data_candidates`). Where it is absent, a test that needs
    it is skipped saying what to do, or fails so where DPMAMMO_REQUIRE_DATA=1 (CI)."""
    root = find_real_data()
    if root is None:
        looked = "; ".join(f"{what}: {path}" for what, path in real_data_candidates())
        message = (f"the real patch set is not here (looked at {looked}); run `dpmammo data fetch` (it fills the "
                   "fetch cache) or set DPMAMMO_TEST_DATA to a copy")
        if os.environ.get(REQUIRE_DATA) == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def real_root() -> Path:
    return real_data_root()


def pytest_collection_modifyitems(items):
    """Every test that asks for the real patch set is marked `real_data`, in one place."""
    for item in items:
        if "real_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_data)


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


@contextmanager
def stopped_after_first_checkpoint(monkeypatch):
    """Within the block, training (any RunDir stage: classifier, GAN, DP-MERF, pretrain) stops as
    Ctrl-C would, right after it writes its first checkpoint; the block expects that interrupt."""
    from dpmammo.runs import RunDir

    real_save = RunDir.save_training_state

    def save_then_stop(run, *args):
        real_save(run, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "save_training_state", save_then_stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(RunDir, "save_training_state", real_save)


# --- tiny phantom studies (tests/test_study*.py) --------------------------------------------
TINY_MODEL = {"name": "cnn-small", "input_size": 32, "width": 8}


def tiny_study_block(data_root: Path, **over) -> dict:
    """The shared keys of a tiny phantom study (2 epochs of a width-8 cnn-small at 32 px on CPU);
    `over` adds or replaces top-level keys (name, conditions, epsilons, synthetic, ...)."""
    d = {
        "data_root": str(data_root),
        "train_set": "phantom/train", "val_set": "phantom/val", "test_sets": ["phantom/test"],
        "model": dict(TINY_MODEL),
        "optim": {"lr": 3e-3},
        "train": {"epochs": 2, "batch_size": 32, "device": "cpu"},
        "resources": {"num_cpus": 2},
    }
    d.update(over)
    return d


def study_config(d: dict, source: str = "test"):
    """A StudyConfig validated from mapping `d` (errors as the CLI words them, from `source`)."""
    from dpmammo.config import parse_config
    from dpmammo.study.config import StudyConfig

    return parse_config(StudyConfig, d, source)


def read_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def study_phantoms(tmp_path_factory) -> Path:
    """96 phantom patients at 64 px: the private set of a tiny study, made once per test module."""
    from dpmammo.data.phantoms import make_phantoms

    return make_phantoms(tmp_path_factory.mktemp("study-data"), n=96, seed=0, size=64)
