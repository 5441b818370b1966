"""`dpmammo release`: one model with its ledger, privacy statement and model card; nothing else."""

from __future__ import annotations

import json

import pytest

from dpmammo.privacy import read_privacy
from dpmammo.train import fit
from tests.test_cli import assert_one_line_error, dpmammo
from tests.test_train import phantom_config


@pytest.fixture(scope="module")
def runs(phantom_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("release")
    small = dict(model__={"name": "cnn-small", "input_size": 32, "width": 8}, train__epochs=1)
    fit(phantom_config(phantom_root, privacy__={"target_epsilon": 3.0}, **small), base / "dp", progress=False)
    fit(phantom_config(phantom_root, **small), base / "non-private", progress=False)
    return base


def test_release_of_a_dp_run_holds_the_model_its_ledger_and_statement_only(runs, tmp_path):
    out = tmp_path / "release"
    result = dpmammo("release", runs / "dp", "--out", out)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.safetensors", "model.json", "privacy.json", "PRIVACY.md", "MODEL_CARD.md", "release.json"])
    assert (out / "model.safetensors").read_bytes() == (runs / "dp" / "model.safetensors").read_bytes()
    rec = read_privacy(out / "privacy.json")
    statement = (out / "PRIVACY.md").read_text()
    assert f"({rec.total.epsilon:.2f}, 1e-04)-differentially private per patient" in statement
    assert rec.total.epsilon <= 3.0
    for caveat in ("Model selection", "Composition", "feature caches"):
        assert caveat in statement
    model = json.loads((out / "model.json").read_text())
    assert model["name"] == "cnn-small" and "root" not in json.dumps(model)
    assert json.loads((out / "release.json").read_text())["test_flips"] is False  # the patch alone
    # Nothing of the run's research record travels: no log, no metrics (exact set sizes), no config paths.
    released = " ".join(p.read_text() for p in out.iterdir() if p.suffix in (".json", ".md"))
    assert "train_size" not in released and "val_auroc" not in released and "n_units" not in released
    # A second release into the same folder needs --force and replaces only the release's own files.
    assert_one_line_error(dpmammo("release", runs / "dp", "--out", out), "holds a release already")
    assert dpmammo("release", runs / "dp", "--out", out, "--force").returncode == 0


def test_release_refuses_a_run_without_guarantee_and_folders_it_did_not_write(runs, tmp_path):
    assert_one_line_error(dpmammo("release", runs / "non-private", "--out", tmp_path / "r"), "no privacy guarantee")
    assert not (tmp_path / "r").exists()
    ok = dpmammo("release", runs / "non-private", "--out", tmp_path / "r", "--no-guarantee-ok")
    assert ok.returncode == 0
    assert (tmp_path / "r" / "PRIVACY.md").read_text().splitlines()[2].startswith(
        "**This model carries no privacy guarantee")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert_one_line_error(dpmammo("release", runs / "dp", "--out", foreign, "--force"), "holds no dpmammo release")
    assert (foreign / "notes.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1
    before = sorted(p.name for p in (runs / "dp").iterdir())
    assert_one_line_error(dpmammo("release", runs / "dp", "--out", runs / "dp" / "inside"), "inside the run")
    assert sorted(p.name for p in (runs / "dp").iterdir()) == before


def test_a_dp_generator_run_is_released_with_its_statement(phantom_root, tmp_path):
    from dpmammo.gan.train import train_gan
    from tests.test_guarantees import tiny_gan

    train_gan(tiny_gan(phantom_root, ["phantom/train"], target_epsilon=3.0), tmp_path / "gan", progress=False)
    result = dpmammo("release", tmp_path / "gan", "--out", tmp_path / "release")
    assert result.returncode == 0, result.stderr
    card = (tmp_path / "release" / "MODEL_CARD.md").read_text()
    assert "conditional generator" in card and "per patient" in card
    total = read_privacy(tmp_path / "release" / "privacy.json").total
    assert total.guarantee == "dp" and total.epsilon <= 3.0
    assert json.loads((tmp_path / "release" / "release.json").read_text())["test_flips"] is None  # predicts nothing


def test_the_model_card_says_when_the_prediction_is_the_same_in_every_orientation(runs):
    """A symmetrised scatter model (`model.symmetrize`) predicts without test-time flips, and its card
    says why: its features are averaged over the 8 flips and transposes."""
    from dpmammo.models.config import ScatterConfig
    from dpmammo.release import model_card
    from dpmammo.runs import RunDir

    run, record = RunDir(runs / "dp"), read_privacy(runs / "dp" / "privacy.json")
    sym = model_card(run, ScatterConfig(symmetrize="dihedral", public_pca={"components": 8}), record, test_flips=False)
    plain = model_card(run, ScatterConfig(), record, test_flips=False)
    assert "the same for the patch in each of its 8 flips and transposes" in sym
    assert "flips and transposes" not in plain and "mean logit over the patch's 4 flips" not in sym
