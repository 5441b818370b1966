"""DP-MERF: one Gaussian release of the labelled mean embedding, sensitivity 1 per patient, secret
noise, ε as dp-accounting computes it, and a generator that honours the condition and plugs into
`gan sample` and the privacy chain."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from dpmammo.config import parse_config
from dpmammo.errors import DpMammoError
from dpmammo.gan import sample
from dpmammo.gan.merf import (embedding_sum, fourier_features, fourier_frequencies, record_embeddings, train_merf,
                              unit_weights)
from dpmammo.gan.merf_config import MerfConfig, MerfFeatures, MerfOptim, MerfTrainSettings
from dpmammo.gan.registry import load_generator_config
from dpmammo.models import CnnSmallConfig
from dpmammo.privacy import read_privacy
from dpmammo.privacy.accounting import RDP_ORDERS, epsilon_of
from dpmammo.privacy.config import ReleasePrivacyConfig
from dpmammo.privacy.events import DpSgdEvent, GaussianRelease
from dpmammo.privacy.ledger import StageSpend, compose, release_stage
from dpmammo.privacy.mechanisms import gaussian_release
from dpmammo.privacy.sampling import secret_key, unit_ids
from dpmammo.train import DataConfig, TrainConfig, TrainSettings, fit
from tests.conftest import REPO, no_unit_count, stopped_after_first_checkpoint
from tests.test_cli import assert_one_line_error, dpmammo
from tests.test_gan import SIZE, class_fidelity, train_judge

GENEROUS = 100.0  # ε of the DP fidelity test: σ = 0.09 at δ = 1e-3; see test_conditioning_is_recovered


def merf_config(root: Path, **sections) -> MerfConfig:
    data = {
        "generator": "dp-merf",
        "data": {"root": str(root), "train": ["phantom/train"]},
        "model": {"image_size": SIZE, "g_width": 16},
        "features": {"n_features": 2000, "resolution": 32},
        "optim": {"epochs": 5, "steps_per_epoch": 40, "batch_size": 64, "lr": 1e-3},
        "train": {"device": "cpu", "sample_every": 5},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_config(MerfConfig, data, "test")


TINY = {"model": {"image_size": 16, "g_width": 8}, "features": {"n_features": 64, "resolution": 8},
        "optim": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8}, "train": {"device": "cpu", "sample_every": 0}}


def tiny_config(root: Path, **sections) -> MerfConfig:
    """A run that only makes its release and two generator steps: for privacy bookkeeping."""
    return merf_config(root, **{**TINY, **sections})


@pytest.fixture(scope="module")
def phantoms(phantom_root) -> Path:
    return phantom_root  # the session's 128 px phantoms (conftest), resized on load


@pytest.fixture(scope="module")
def classifier(phantoms, tmp_path_factory) -> Path:
    """The judge, trained on the same (shape-only) phantoms as the generators here."""
    out = tmp_path_factory.mktemp("clf") / "run"
    assert train_judge(phantoms, out) >= 0.8  # measured 0.848
    return out


@pytest.fixture(scope="module")
def merf_run(phantoms, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("merf") / "run"
    train_merf(merf_config(phantoms), out, progress=False)
    return out


@pytest.fixture(scope="module")
def dp_merf_run(phantoms, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dpmerf") / "run"
    # Seeded noise: the test is about utility at this noise level, and must not be flaky.
    cfg = merf_config(phantoms, privacy={"target_epsilon": GENEROUS, "delta": 1e-3, "seeded_noise_for_tests": True})
    train_merf(cfg, out, progress=False)
    return out


@pytest.mark.parametrize("which", ["merf_run", "dp_merf_run"])
def test_conditioning_is_recovered(which, classifier, request):
    """A phantom classifier recovers the intended labels of the samples. Without DP, and with DP at a
    generous ε. 200 phantoms per class give a per-class noise of √2·σ/200 per feature, which at ε ≤ 30
    (σ ≥ 0.2) outweighs the difference between the classes' embeddings (measured fidelity 0.27-0.66
    at ε = 30); at ε = 100 (σ = 0.09) the condition survives (0.92; 0.96 without DP)."""
    run = request.getfixturevalue(which)
    auroc = class_fidelity(run, classifier)
    assert auroc >= 0.8, f"{which}: a phantom classifier recovers the intended label with AUROC {auroc:.3f} only"
    assert (run / "samples" / "epoch_005.png").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["history"]) == 5 and all("loss_g" in row for row in metrics["history"])
    assert metrics["train_size"] == 400


def test_non_private_run_says_no_guarantee(merf_run):
    record = read_privacy(merf_run / "privacy.json")
    assert record.own.stage == "dp-merf" and record.total.reason == "non-private"
    assert json.loads((merf_run / "metrics.json").read_text())["noise_multiplier"] == 0.0


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_release_on_real_data_spends_what_dp_accounting_says(real_root, tmp_path, accountant):
    """cbis-ddsm/train: 1104 patches of 578 patients, one Gaussian release (q = 1, one step) with
    sensitivity 1 per patient. ε matches Google's dp-accounting for one Gaussian mechanism: its
    RDP accountant for `rdp`, its PLD accountant (near exact) for `prv`."""
    import dp_accounting

    cfg = tiny_config(real_root, data={"root": str(real_root), "train": ["cbis-ddsm/train"]},
                      privacy={"target_epsilon": 3.0, "delta": 1e-4, "accountant": accountant})
    metrics = train_merf(cfg, tmp_path / "run", progress=False)
    rec = read_privacy(tmp_path / "run" / "privacy.json")
    own = rec.own
    assert own.stage == "dp-merf" and own.guarantee == rec.total.guarantee == "dp"
    assert own.unit == rec.total.unit == "patient" and no_unit_count(tmp_path / "run" / "privacy.json")
    assert (own.mechanism, own.sensitivity) == ("gaussian-release", 1.0) and "sensitivity 1" in own.note
    assert (own.sample_rate, own.steps, own.max_grad_norm) == (None, None, None)  # not DP-SGD
    assert metrics["train_size"] == 1104 and "n_units" not in metrics
    assert metrics["noise_multiplier"] == own.noise_multiplier
    assert own.epsilon <= 3.0 and rec.total.epsilon == pytest.approx(own.epsilon)
    if accountant == "rdp":
        acc = dp_accounting.rdp.RdpAccountant(orders=RDP_ORDERS)
    else:
        acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dp_accounting.GaussianDpEvent(own.noise_multiplier))
    assert acc.get_epsilon(own.delta) == pytest.approx(own.epsilon, rel=0.01)
    # The class counts are the noisy ones of the release (per patient, so fractional).
    counts = metrics["class_counts"]
    assert len(counts) == 2 and abs(sum(counts) - 578) < 578 * 0.1


def test_one_patient_moves_the_released_sum_by_at_most_one():
    """Unit patient: a patient's patches contribute their mean embedding, so removing a patient with
    40 patches moves the sum by ≤ 1 (L2), the sensitivity the noise is calibrated for. Unit patch
    would move it by up to 40: patch-level DP says little about such a patient."""
    g = torch.Generator().manual_seed(0)
    patients = ["big"] * 40 + [f"p{i}" for i in range(60)] + [f"p{i}" for i in range(30)]
    n = len(patients)
    images = torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8, generator=g)
    images[:40] = images[0]  # the big patient's patches alike: the worst case for patch-level units
    labels = torch.randint(0, 2, (n,), generator=g)
    labels[:40] = 1
    freqs = fourier_frequencies(MerfFeatures(n_features=200, resolution=8, length_scale=0.5), seed=0)
    keep = torch.arange(40, n)

    def released_sum(idx: torch.Tensor, unit: str) -> torch.Tensor:
        units = unit_ids([patients[i] for i in idx], [True] * len(idx), unit)
        return embedding_sum(images[idx], labels[idx], unit_weights(units), freqs, 8)

    every = torch.arange(n)
    moved = (released_sum(every, "patient") - released_sum(keep, "patient")).norm()
    assert moved <= 1.0 + 1e-9
    assert (released_sum(every, "patch") - released_sum(keep, "patch")).norm() > 30
    # Each record's embedding has norm exactly 1 (φ of norm 1, label block of norm 1, over √2).
    phi = fourier_features(images.float() / 255, freqs, 8)
    assert torch.allclose(phi.norm(dim=1), torch.ones(n), atol=1e-5)
    assert torch.allclose(record_embeddings(phi, labels).norm(dim=1), torch.ones(n), atol=1e-5)


def test_random_features_approximate_the_gaussian_kernel():
    features = MerfFeatures(n_features=20000, resolution=8, length_scale=0.2)
    x = torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    phi = fourier_features(x, fourier_frequencies(features, seed=0), 8)
    ell = features.length_scale * features.resolution
    kernel = torch.exp(-torch.cdist(x.flatten(1), x.flatten(1)) ** 2 / (2 * ell ** 2))
    assert (phi @ phi.T - kernel).abs().max() < 0.03


def test_noise_has_the_calibrated_scale_and_is_secret():
    privacy = ReleasePrivacyConfig(target_epsilon=3.0)
    zeros = torch.zeros(40000, dtype=torch.float64)

    def release(p: ReleasePrivacyConfig) -> tuple[torch.Tensor, GaussianRelease]:
        return gaussian_release(lambda: zeros, sensitivity=1.5, privacy=p, n_private_units=578, key=secret_key(p, 0))

    (a, event), (b, _) = release(privacy), release(privacy)
    assert event == GaussianRelease(noise_multiplier=event.noise_multiplier, sensitivity=1.5, unit="patient")
    assert epsilon_of([event], privacy.delta) <= 3.0 and 1.3 < event.noise_multiplier < 1.5
    assert a.std().item() == pytest.approx(1.5 * event.noise_multiplier, rel=0.02) and abs(a.mean().item()) < 0.05
    assert a.dtype == torch.float64 and not torch.equal(a, b)  # OS entropy, not the seed
    seeded = privacy.model_copy(update={"seeded_noise_for_tests": True})
    assert torch.equal(release(seeded)[0], release(seeded)[0])


def test_two_runs_draw_different_noise_unless_seeded_which_is_no_guarantee(phantoms, tmp_path):
    secret = tiny_config(phantoms, privacy={"target_epsilon": 3.0, "delta": 1e-3})
    seeded = tiny_config(phantoms, privacy={"target_epsilon": 3.0, "delta": 1e-3, "seeded_noise_for_tests": True})
    counts = {}
    for name, cfg in [("a", secret), ("b", secret), ("s1", seeded), ("s2", seeded)]:
        counts[name] = train_merf(cfg, tmp_path / name, progress=False)["class_counts"]
    weights = {name: (tmp_path / name / "model.safetensors").read_bytes() for name in counts}
    assert counts["a"] != counts["b"] and weights["a"] != weights["b"]
    assert counts["s1"] == counts["s2"] and weights["s1"] == weights["s2"]
    rec = read_privacy(tmp_path / "a" / "privacy.json")
    assert rec.total.guarantee == "dp" and rec.own.epsilon <= 3.0
    # Recorded as what it is: one Gaussian release of sensitivity 1, not DP-SGD with q = 1.
    stage = json.loads((tmp_path / "a" / "privacy.json").read_text())["stages"][-1]
    assert (stage["mechanism"], stage["sensitivity"], stage["sample_rate"], stage["steps"]) == (
        "gaussian-release", 1.0, None, None)
    assert rec.own.events() == [GaussianRelease(noise_multiplier=rec.own.noise_multiplier, sensitivity=1.0,
                                                unit="patient")]
    assert rec.own.epsilon == pytest.approx(epsilon_of(rec.own.events(), 1e-3))
    rec = read_privacy(tmp_path / "s1" / "privacy.json")
    assert rec.own.guarantee == "none" and rec.own.reason == "seeded-noise" and rec.own.epsilon <= 3.0
    assert rec.describe() == "no guarantee (seeded noise (test-only switch))"
    assert "SEEDED NOISE" in (tmp_path / "s1" / "log.txt").read_text()


def test_gan_sample_carries_the_dp_merf_stage_into_a_classifier(phantoms, tmp_path):
    cfg = tiny_config(phantoms, model={"image_size": SIZE, "g_width": 8}, features={"n_features": 64, "resolution": 8},
                      privacy={"target_epsilon": 3.0, "delta": 1e-3})
    train_merf(cfg, tmp_path / "gen", progress=False)
    prov = sample(tmp_path / "gen", 40, tmp_path / "synth", balance=0.5, seed=0)
    merf_eps = read_privacy(tmp_path / "gen" / "privacy.json").own.epsilon
    assert [s["stage"] for s in prov["chain"]] == ["dp-merf"] and prov["chain"][0]["epsilon"] == merf_eps
    assert prov["total"]["guarantee"] == "dp" and prov["image_size"] == SIZE

    clf = TrainConfig(data=DataConfig(root=phantoms, train=[str(tmp_path / "synth")], val="phantom/val"),
                      model=CnnSmallConfig(input_size=SIZE, width=8),
                      train=TrainSettings(epochs=1, batch_size=20, device="cpu"))
    fit(clf, tmp_path / "clf", progress=False)
    rec = read_privacy(tmp_path / "clf" / "privacy.json")
    assert [s.stage for s in rec.stages] == ["dp-merf", "classifier"]
    assert rec.total.guarantee == "dp" and rec.total.epsilon == pytest.approx(merf_eps, rel=1e-6)


def test_release_composes_with_a_dp_sgd_stage_by_rdp():
    release = GaussianRelease(noise_multiplier=1.33, sensitivity=1.0, unit="patient")
    steps = DpSgdEvent(noise_multiplier=1.1, sample_rate=0.1, steps=100, max_grad_norm=1.0, unit="patient")
    merf = release_stage(stage="dp-merf", run="g", data=["x"], privacy=ReleasePrivacyConfig(target_epsilon=3.0),
                         release=release)
    sgd = StageSpend(stage="classifier", run="c", data=["x"], guarantee="dp", unit="patient",
                     epsilon=epsilon_of([steps], 1e-4), delta=1e-4, mechanism="dp-sgd", noise_multiplier=1.1,
                     sample_rate=0.1, steps=100, max_grad_norm=1.0, accountant="rdp")
    assert merf.events() == [release] and sgd.events() == [steps]
    total = compose([merf, sgd], delta=1e-4)
    assert total.guarantee == "dp" and total.unit == "patient" and total.method.startswith("RDP")
    assert total.epsilon == pytest.approx(epsilon_of([release, steps], 1e-4))
    assert max(merf.epsilon, sgd.epsilon) < total.epsilon < merf.epsilon + sgd.epsilon


def test_config_is_strict_and_the_example_config_loads(tmp_path):
    cfg = load_generator_config(REPO / "configs" / "dp-merf.yaml")
    assert isinstance(cfg, MerfConfig) and cfg.privacy is not None and cfg.privacy.unit == "patient"
    for model in (MerfConfig, MerfFeatures, MerfOptim, MerfTrainSettings, ReleasePrivacyConfig):
        assert all(f.description for f in model.model_fields.values()), model.__name__
    bad = yaml.safe_load((REPO / "configs" / "dp-merf.yaml").read_text())
    bad["privacy"]["max_grad_norm"] = 1.0  # DP-SGD's key: nothing is clipped here, so it would be ignored
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(DpMammoError, match=r"privacy.max_grad_norm: unknown key") as err:
        load_generator_config(path)
    assert "\n" not in str(err.value)
    with pytest.raises(DpMammoError, match="must be at most model.image_size"):
        load_generator_config(REPO / "configs" / "dp-merf.yaml", ["features.resolution=128"])
    with pytest.raises(DpMammoError, match="must be even"):
        load_generator_config(REPO / "configs" / "dp-merf.yaml", ["features.n_features=101"])
    assert_one_line_error(dpmammo("gan", "train", path, "--out", tmp_path / "run"), "privacy.max_grad_norm: unknown key")
    assert not (tmp_path / "run").exists()


def test_refused_start_leaves_nothing_and_an_interrupted_run_resumes_without_a_second_release(
        phantoms, tmp_path, monkeypatch):
    from dpmammo.privacy import secret
    from dpmammo.runs import RunDir

    with pytest.raises(DpMammoError, match=r"delta=0.01 must be in \(0, 1/N\)"):
        train_merf(tiny_config(phantoms, privacy={"target_epsilon": 3.0, "delta": 1e-2}), tmp_path / "refused",
                   progress=False)
    assert not (tmp_path / "refused").exists()

    # The secret key pinned, then changed for the resume: only a release read back from the
    # checkpoint (not drawn again) gives the straight run's generator.
    monkeypatch.setattr(secret.secrets, "token_bytes", lambda n: b"\x01" * n)
    cfg = tiny_config(phantoms, optim={"epochs": 3, "steps_per_epoch": 2, "batch_size": 8},
                      privacy={"target_epsilon": 3.0, "delta": 1e-3})
    train_merf(cfg, tmp_path / "straight", progress=False)
    with stopped_after_first_checkpoint(monkeypatch):
        train_merf(cfg, tmp_path / "resumed", progress=False)
    assert not RunDir(tmp_path / "resumed").is_finished and RunDir(tmp_path / "resumed").checkpoint.is_file()
    monkeypatch.setattr(secret.secrets, "token_bytes", lambda n: b"\x02" * n)
    train_merf(cfg, tmp_path / "resumed", progress=False)
    a, b = ((tmp_path / d / "model.safetensors").read_bytes() for d in ("straight", "resumed"))
    assert a == b
    assert not RunDir(tmp_path / "resumed").checkpoint.exists()  # finished: the checkpoint is gone
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("straight", "resumed"))
    assert ma["history"] == mb["history"] and ma["class_counts"] == mb["class_counts"]
    assert "not redone" in (tmp_path / "resumed" / "log.txt").read_text()
    assert math.isclose(read_privacy(tmp_path / "resumed" / "privacy.json").own.epsilon,
                        read_privacy(tmp_path / "straight" / "privacy.json").own.epsilon)
