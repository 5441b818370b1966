"""Each registry is one table: a new generator is one module and one registry line, and the
names that validation, help and errors give are the table's."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from dpmammo.errors import DpMammoError
from dpmammo.gan import registry


@pytest.fixture
def untrained_registered(monkeypatch):
    """The toy generator of tests/untrained_generator.py, registered for this test only."""
    monkeypatch.setattr(registry, "GENERATORS", dict(registry.GENERATORS))
    # The one line a new generator adds (docs/extending.md):
    registry.register_generator("untrained", "tests.untrained_generator:UntrainedConfig",
                                "tests.untrained_generator:train_untrained")


def test_a_toy_generator_trains_and_samples_through_the_cli(untrained_registered, phantom_root, tmp_path):
    from dpmammo.cli import app

    config = tmp_path / "untrained.yaml"
    config.write_text(f"generator: untrained\nmodel: {{image_size: 32, g_width: 8}}\ndata: {{root: {phantom_root}}}\n")
    run, samples = tmp_path / "runs" / "untrained", tmp_path / "synth"
    cli = CliRunner()
    trained = cli.invoke(app, ["gan", "train", str(config), "--out", str(run)])
    assert trained.exit_code == 0, trained.output
    assert json.loads((run / "privacy.json").read_text())["stages"][0]["guarantee"] == "public"
    sampled = cli.invoke(app, ["gan", "sample", str(run), "--n", "6", "--balance", "0.5", "--out", str(samples)])
    assert sampled.exit_code == 0, sampled.output
    with open(samples / "manifest.csv") as f:
        labels = [int(row["label"]) for row in csv.DictReader(f)]
    assert sorted(labels) == [0, 0, 0, 1, 1, 1]
    prov = json.loads((samples / "provenance.json").read_text())
    assert prov["image_size"] == 32 and prov["chain"][0]["stage"] == "untrained"


def test_the_registry_names_a_new_generator_in_its_errors(untrained_registered):
    with pytest.raises(DpMammoError, match="unknown generator 'nope'; registered generators: mcgan, dp-merf, untrained"):
        registry.parse_generator_config({"generator": "nope"}, "x.yaml")
    with pytest.raises(DpMammoError, match="registered already"):
        registry.register_generator("untrained", "a:B", "a:c")
    assert registry.is_generator_config({"generator": "untrained", "model": {"image_size": 32}})
    assert not registry.is_generator_config({"generator": "untrained", "data": {"train": ["cbis-ddsm/train"]}})


def test_each_model_of_the_table_builds_from_its_name_at_its_input_size():
    """Every entry of MODELS: a config naming it validates to the entry's config class, and its
    builder's classifier has the config's input size, the default and 32, and takes (N, 1, 32, 32)
    patches to its features and two logits (a builder that ignored input_size would fail at 32)."""
    import torch

    from dpmammo.models import MODELS, create_model
    from dpmammo.train.config import TrainConfig

    for name, (config_class, _) in MODELS.items():
        default = TrainConfig.model_validate({"model": {"name": name}}).model
        assert default.__class__ is config_class
        if name == "swin_t":  # its timm backbone is large: tests/test_models.py builds it at its one size, 224
            assert default.input_size == 224
            continue
        assert create_model(default).input_size == default.input_size
        model = create_model(config_class(name=name, input_size=32))
        features = model.forward_features(torch.rand(2, 1, 32, 32))
        assert model.input_size == 32 and features.shape == (2, model.num_features), name
        assert model.forward_head(features).shape == (2, 2), name


def test_the_grad_sample_modes_of_the_config_are_the_engines():
    from dpmammo.privacy import engine
    from dpmammo.privacy.config import GRAD_SAMPLE_MODES, PrivacySettings

    assert set(engine._WRAPPERS) == set(GRAD_SAMPLE_MODES)
    for mode in GRAD_SAMPLE_MODES:
        assert mode in PrivacySettings.model_fields["grad_sample_mode"].description
    with pytest.raises(ValueError, match="'auto', 'hooks', 'functorch', 'ghost' or 'bookkeeping'"):
        PrivacySettings(grad_sample_mode="fast")


def test_the_audit_methods_are_one_table():
    from dpmammo.audit.config import METHOD_WORDS, AuditSettings, method_help
    from dpmammo.audit.record import AuditRecord
    from dpmammo.audit.attacks import ATTACKS, attacks_of
    from dpmammo.audit.run import METHOD_PRIMARY

    assert METHOD_PRIMARY.keys() == METHOD_WORDS.keys()
    assert all(set(a.reported_by) <= set(METHOD_WORDS) for a in ATTACKS.values())
    assert [n for n, _ in attacks_of("lira")] == ["lira-online", "lira-offline", "loss"]
    assert [n for n, _ in attacks_of("rmia")] == ["rmia", "loss"]
    assert all(f"{m}: " in method_help() for m in (*METHOD_WORDS, "auto"))
    assert AuditSettings(method="one-run").method == "one-run"
    with pytest.raises(ValueError, match="'gradient-canary' or 'auto'"):
        AuditSettings(method="shadow")
    with pytest.raises(ValueError, match="'one-run' or 'gradient-canary'"):
        AuditRecord.model_validate({"method": "auto"})


def test_the_study_conditions_are_one_table():
    from dpmammo.study.conditions import CONDITION_ALIASES, CONDITIONS, PRIOR_CONDITIONS
    from dpmammo.lazy import load_spec

    assert all(callable(load_spec(e.recipe)) for e in CONDITIONS.values())
    assert CONDITION_ALIASES["synthetic->real"] == "synthetic→real"
    assert PRIOR_CONDITIONS == ("prior→real", "prior→probe→real")
