"""The command line: one-line errors, exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


def dpmammo(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "dpmammo.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=120)


def assert_one_line_error(result, fragment):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


def test_index_prints_counts(real_root):
    r = dpmammo("data", "index", real_root)
    assert r.returncode == 0, r.stderr
    assert "cbis-ddsm/train" in r.stdout and "1104" in r.stdout and "bcdr/test" in r.stdout


@pytest.mark.parametrize("args,fragment", [
    (["data", "index", "/nonexistent/folder"], "data folder not found: /nonexistent/folder"),
    (["train", "/nonexistent.yaml"], "config file not found"),
    (["evaluate", "/nonexistent-run"], "is not a finished run"),
])
def test_bad_input_gives_one_line_error(args, fragment):
    assert_one_line_error(dpmammo(*args), fragment)


def test_misspelled_key_and_override(tmp_path, phantom_root):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  root: {phantom_root}\n  train: [phantom/train]\n  val: phantom/val\n"
                   "model:\n  name: cnn-small\n  input_size: 32\n  widht: 8\n")
    assert_one_line_error(dpmammo("train", cfg, "--out", tmp_path / "r"), "model.cnn-small.widht: unknown key")
    cfg.write_text(f"data:\n  root: {phantom_root}\n  train: [phantom/train]\n  val: phantom/val\n")
    assert_one_line_error(dpmammo("train", cfg, "--out", tmp_path / "r", "--set", "privacy.target_epsilon=-1"),
                          "privacy.target_epsilon")


def test_train_then_evaluate_then_refuse_overwrite(tmp_path, phantom_root):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  root: {phantom_root}\n  train: [phantom/train]\n  val: phantom/val\n"
                   "model:\n  name: cnn-small\n  input_size: 32\n  width: 8\ntrain:\n  epochs: 1\n"
                   "privacy:\n  target_epsilon: 3\n")
    r = dpmammo("train", cfg, "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    assert "ε = " in r.stdout and "-DP per patient" in r.stdout
    r = dpmammo("evaluate", tmp_path / "run", "--on", "phantom/test")
    assert r.returncode == 0, r.stderr
    import json
    m = json.loads((tmp_path / "run" / "eval" / "phantom_test.json").read_text())
    assert m["n"] == 200 and m["positive_class"] == "malignant" and 0 <= m["auroc"] <= 1
    assert m["auroc_ci95"][0] <= m["auroc"] <= m["auroc_ci95"][1]
    assert (tmp_path / "run" / "eval" / "phantom_test_roc.png").stat().st_size > 1000
    assert_one_line_error(dpmammo("train", cfg, "--out", tmp_path / "run"), "already holds a finished run")


def test_every_shipped_config_validates():
    """A typo in a shipped config (an unknown or misspelled key, a bad value) fails here, not in a user's run."""
    from dpmammo.config import load_config
    from dpmammo.gan.registry import load_generator_config
    from dpmammo.train import TrainConfig
    from dpmammo.train.pretrain_config import PretrainConfig

    generators = {"gan.yaml", "gan-dp.yaml", "mcgan-64.yaml", "dp-merf.yaml"}
    classifiers = {"cnn-small.yaml", "cnn-small-dp.yaml", "swin-t-dp.yaml"}
    pretraining = {"pretrain-procedural.yaml"}
    shipped = {p.name for p in (REPO / "configs").glob("*.yaml")}
    assert shipped == generators | classifiers | pretraining, "list a new config under its kind"
    for name in sorted(generators):
        load_generator_config(REPO / "configs" / name)
    for name in sorted(classifiers):
        load_config(TrainConfig, REPO / "configs" / name)
    for name in sorted(pretraining):
        load_config(PretrainConfig, REPO / "configs" / name)
    recipe = load_generator_config(REPO / "configs" / "mcgan-64.yaml")
    assert recipe.model.d_classifier and recipe.model.d_twin_classifier and recipe.train.classifier_weight == 1.0
    assert recipe.model.sample_blur == 0.6 and recipe.privacy is None
