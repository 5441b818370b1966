"""Training on phantoms: it learns, DP spends at most its budget, resume is exact, bad input refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dpmammo.config import parse_config
from dpmammo.errors import DpMammoError
from dpmammo.train import TrainConfig, fit
from dpmammo.train import loop
from tests.test_privacy import dp_accounting_epsilon


def phantom_config(root, **over) -> TrainConfig:
    d = {
        "data": {"root": str(root), "train": ["phantom/train"], "val": "phantom/val"},
        "model": {"name": "cnn-small", "input_size": 64, "width": 16},
        "optim": {"lr": 2e-3},
        "train": {"epochs": 15, "batch_size": 32, "seed": 0},
    }
    for key, value in over.items():
        section, name = key.split("__")
        d.setdefault(section, {})
        if name:
            d[section][name] = value
        else:
            d[section] = value
    return parse_config(TrainConfig, d, "test")


def test_non_private_cnn_learns_phantoms(phantom_root, tmp_path):
    m = fit(phantom_config(phantom_root), tmp_path / "run", progress=False)
    assert m["val"]["auroc"] >= 0.9
    assert m["epsilon"] is None and m["privacy_total"]["guarantee"] == "none"


def test_dp_cnn_learns_phantoms_within_budget(phantom_root, tmp_path):
    cfg = phantom_config(phantom_root, privacy__={"target_epsilon": 8.0, "delta": 1e-4},
                         train__epochs=20, train__batch_size=100, optim__lr=5e-3)
    m = fit(cfg, tmp_path / "run", progress=False)
    p = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert m["val"]["auroc"] >= 0.75
    assert p["epsilon"] <= 8.0
    assert p["steps"] == round(20 * 400 / 100) and p["dataset_size"] == 400
    # The recorded ε is what an independent accountant computes from the recorded parameters.
    theirs = dp_accounting_epsilon(p["noise_multiplier"], p["sample_rate"], p["steps"], p["delta"])
    assert p["epsilon"] == pytest.approx(theirs, rel=0.01)
    assert set(p) >= {"epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "accountant",
                      "max_grad_norm", "dataset_size"}


def test_virtual_batches_match_one_physical_batch(phantom_root, tmp_path):
    """Splitting the logical batch into physical chunks must not change the update."""
    base = dict(privacy__={"target_epsilon": 4.0}, train__epochs=1, train__batch_size=64)
    fit(phantom_config(phantom_root, **base, train__physical_batch_size=256), tmp_path / "a", progress=False)
    fit(phantom_config(phantom_root, **base, train__physical_batch_size=16), tmp_path / "b", progress=False)
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_interrupted_run_resumes_to_identical_weights(phantom_root, tmp_path, monkeypatch):
    cfg = phantom_config(phantom_root, privacy__={"target_epsilon": 4.0}, train__epochs=3)
    fit(cfg, tmp_path / "straight", progress=False)

    real_save = loop.save_checkpoint

    def crash_after_first_epoch(run_dir, model, optimizer, dp, gen, state):
        real_save(run_dir, model, optimizer, dp, gen, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    m = fit(cfg, tmp_path / "resumed", progress=False)
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    p = json.loads((tmp_path / "resumed" / "privacy.json").read_text())
    assert p["steps"] == json.loads((tmp_path / "straight" / "privacy.json").read_text())["steps"]
    assert len(m["history"]) == 3


def test_finished_run_is_not_overwritten(phantom_root, tmp_path):
    cfg = phantom_config(phantom_root, train__epochs=1)
    fit(cfg, tmp_path / "run", progress=False)
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(DpMammoError, match="already holds a finished run"):
        fit(cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("over,message", [
    ({"privacy__": {"target_epsilon": 0}}, "target_epsilon: Input should be greater than 0"),
    ({"privacy__": {"target_epsilon": 1, "delta": 0}}, "delta: Input should be greater than 0"),
    ({"model__": {"name": "resnet"}}, "does not match any of the expected tags: 'cnn-small', 'swin_t'"),
    ({"train__epochz": 3}, "train.epochz: unknown key"),
    ({"optim__momentum": 0.9}, "momentum applies to sgd only"),
])
def test_bad_config_is_refused_with_the_key_named(phantom_root, over, message):
    with pytest.raises(DpMammoError, match=message):
        phantom_config(phantom_root, **over)


def test_delta_at_or_above_one_over_n_is_refused_before_training(phantom_root, tmp_path):
    cfg = phantom_config(phantom_root, privacy__={"target_epsilon": 1, "delta": 1 / 400})
    with pytest.raises(DpMammoError, match=r"delta=0.0025 must be in \(0, 1/N\)"):
        fit(cfg, tmp_path / "run", progress=False)
