"""The guarantee a run prints holds: patient-level accounting on the real data matches Google's
dp-accounting (RDP and PLD), and whatever enters a run (weights, a parent run, synthetic data)
brings its privacy chain into the total."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import dp_accounting
import pytest
import torch

from dpmammo.privacy import DpSgdEvent, GaussianRelease, epsilon_of, read_privacy
from dpmammo.privacy.accounting import RDP_ORDERS
from dpmammo.runs import RunDir
from dpmammo.train import fit
from tests.conftest import no_unit_count
from tests.test_train import phantom_config


def pld_epsilon(sigma: float, q: float, steps: int, delta: float, count_noise: float) -> float:
    """Independent PLD accounting (Google's dp-accounting), the tightest known for this mechanism:
    the Gaussian release of the unit count, then the Poisson-sampled steps."""
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dp_accounting.GaussianDpEvent(count_noise))
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return acc.get_epsilon(delta)


def rdp_epsilon(sigma: float, q: float, steps: int, delta: float, count_noise: float) -> float:
    acc = dp_accounting.rdp.RdpAccountant(orders=RDP_ORDERS)
    acc.compose(dp_accounting.GaussianDpEvent(count_noise))
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("accountant,independent", [("rdp", rdp_epsilon), ("prv", pld_epsilon)])
def test_patient_level_run_on_real_data_matches_dp_accounting(real_root, tmp_path, accountant, independent):
    """cbis-ddsm/train: 1104 patches of 578 patients. Patient-level DP samples and accounts patients."""
    cfg = phantom_config(real_root, data__={"root": str(real_root), "train": ["cbis-ddsm/train"],
                                            "val": "cbis-ddsm/val"},
                         model__={"name": "cnn-small", "input_size": 32, "width": 8},
                         privacy__={"target_epsilon": 2.0, "delta": 1e-4, "accountant": accountant},
                         train__epochs=2, train__batch_size=64)
    fit(cfg, tmp_path / "run", progress=False)
    rec = read_privacy(tmp_path / "run" / "privacy.json")
    p = rec.own
    assert p.unit == rec.total.unit == "patient"
    # q = 64 / N̂ for a noisy count N̂ of the 578 patients (σ_N = 20); 578 itself is never written.
    assert abs(64 / p.sample_rate - 578) < 4 * 20 and p.steps == round(2 / p.sample_rate)
    assert no_unit_count(tmp_path / "run" / "privacy.json") and p.sample_rate != 64 / 578
    assert p.epsilon <= 2.0
    assert p.epsilon == pytest.approx(independent(p.noise_multiplier, p.sample_rate, p.steps, p.delta,
                                                  p.unit_count_noise), rel=0.01)


@pytest.mark.parametrize("unit,delta,message", [("patient", 1 / 500, r"N=578 private units \(patients\)"),
                                                ("patch", 1 / 1000, r"N=1104 private units \(patches\)")])
def test_delta_is_checked_against_the_number_of_units(real_root, tmp_path, unit, delta, message):
    """δ < 1/N for N private units: 578 patients, or 1104 patches."""
    from dpmammo.errors import DpMammoError

    cfg = phantom_config(real_root, data__={"root": str(real_root), "train": ["cbis-ddsm/train"],
                                            "val": "cbis-ddsm/val"},
                         privacy__={"target_epsilon": 2.0, "delta": delta, "unit": unit})
    with pytest.raises(DpMammoError, match=message):
        fit(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def non_private_run(phantom_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("np") / "run"
    fit(phantom_config(phantom_root, train__epochs=1), out, progress=False)
    return out


@pytest.fixture(scope="module")
def dp_run(phantom_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("dp") / "run"
    fit(phantom_config(phantom_root, train__epochs=1, privacy__={"target_epsilon": 2.0}), out, progress=False)
    return out


def test_weights_of_a_non_private_run_make_the_total_no_guarantee(phantom_root, non_private_run, tmp_path):
    cfg = phantom_config(phantom_root, train__epochs=1, privacy__={"target_epsilon": 4.0},
                         model__={"name": "cnn-small", "input_size": 64, "width": 16,
                                  "weights": str(non_private_run / "model.safetensors")})
    fit(cfg, tmp_path / "run", progress=False)
    rec = read_privacy(tmp_path / "run" / "privacy.json")
    assert rec.own.guarantee == "dp"  # the stage itself was DP ...
    assert rec.total.guarantee == "none" and rec.total.reason == "non-private"  # ... its start was not
    assert [s.stage for s in rec.stages] == ["classifier", "classifier"]


def test_a_weight_file_of_unknown_origin_is_no_guarantee_unless_declared_public(phantom_root, non_private_run,
                                                                                  tmp_path):
    loose = tmp_path / "somewhere" / "weights.safetensors"
    loose.parent.mkdir()
    shutil.copy(non_private_run / "model.safetensors", loose)
    model = {"name": "cnn-small", "input_size": 64, "width": 16, "weights": str(loose)}
    fit(phantom_config(phantom_root, train__epochs=1, privacy__={"target_epsilon": 4.0}, model__=model),
        tmp_path / "unknown", progress=False)
    rec = read_privacy(tmp_path / "unknown" / "privacy.json")
    assert rec.total.guarantee == "none" and rec.total.reason == "unknown-origin"
    assert str(loose) in rec.stages[0].note
    fit(phantom_config(phantom_root, train__epochs=1, privacy__={"target_epsilon": 4.0}, model__=model,
                       public_weights__=[str(loose)]), tmp_path / "public", progress=False)
    rec = read_privacy(tmp_path / "public" / "privacy.json")
    assert rec.total.guarantee == "dp" and rec.total.epsilon == pytest.approx(rec.own.epsilon)


def test_init_from_a_dp_run_composes_both_stages(phantom_root, dp_run, tmp_path):
    cfg = phantom_config(phantom_root, train__epochs=1, privacy__={"target_epsilon": 2.0},
                         init_from__=str(dp_run))
    fit(cfg, tmp_path / "run", progress=False)
    rec = read_privacy(tmp_path / "run" / "privacy.json")
    first, second = rec.stages
    assert rec.total.guarantee == "dp" and rec.total.unit == "patient"
    # Each stage: its noisy unit count (one Gaussian release, σ_N), then its Poisson-sampled steps.
    events = [e for s in (first, second) for e in (
        GaussianRelease(noise_multiplier=s.unit_count_noise, sensitivity=1.0, unit="patient"),
        DpSgdEvent(noise_multiplier=s.noise_multiplier, sample_rate=s.sample_rate, steps=s.steps,
                   max_grad_norm=s.max_grad_norm, unit="patient"))]
    assert [e for s in (first, second) for e in s.events()] == events
    assert rec.total.epsilon == pytest.approx(epsilon_of(events, second.delta))
    assert max(first.epsilon, second.epsilon) < rec.total.epsilon < first.epsilon + second.epsilon


def test_the_chain_total_is_composed_before_the_first_step(phantom_root, dp_run, tmp_path, monkeypatch):
    """The loop composes the chain from the stage's planned record before it trains (check_planned_total,
    so an accountant that cannot evaluate the total refuses then): the same record and total that
    privacy.json holds after training. Each epoch logs the stage's ε so far, PRV stages too."""
    import dpmammo.train.loop as loop
    from dpmammo.privacy.ledger import compose

    checked, real_check = [], loop.check_planned_total

    def spy(upstream, own):
        checked.append((upstream, own, (tmp_path / "run" / "log.txt").read_text()))
        real_check(upstream, own)

    monkeypatch.setattr(loop, "check_planned_total", spy)
    cfg = phantom_config(phantom_root, train__epochs=2, init_from__=str(dp_run),
                         privacy__={"target_epsilon": 2.0, "accountant": "prv"})
    fit(cfg, tmp_path / "run", progress=False)
    rec = read_privacy(tmp_path / "run" / "privacy.json")
    (upstream, planned, log_then), = checked
    assert "epoch 1" not in log_then and "epoch 1" in (tmp_path / "run" / "log.txt").read_text()
    assert [*upstream, planned] == rec.stages and planned.steps > 0
    assert compose([*upstream, planned], delta=planned.delta) == rec.total
    # A PRV stage logs its ε every epoch too (its accountant's, memoised): rising, ending on the record's.
    eps = [row["epsilon"] for row in RunDir(tmp_path / "run").read_metrics()["history"]]
    assert len(eps) == 2 and 0 < eps[0] < eps[1] == rec.own.epsilon


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_a_stage_calibrated_to_the_chain_total_lands_on_it(phantom_root, dp_run, tmp_path, accountant):
    """privacy.target: total after a DP run (init_from, RDP): the composed total is the target (within
    the calibration's 0.01) in the accountant the chain composes in (PRV once this stage uses it)."""
    cfg = phantom_config(phantom_root, train__epochs=1, init_from__=str(dp_run),
                         privacy__={"target_epsilon": 4.0, "target": "total", "accountant": accountant})
    fit(cfg, tmp_path / "run", progress=False)
    rec = read_privacy(tmp_path / "run" / "privacy.json")
    first, second = rec.stages
    assert (first.accountant, second.accountant) == ("rdp", accountant)
    assert second.target_epsilon == 4.0 and second.epsilon < 4.0
    assert 4.0 - 0.011 <= rec.total.epsilon <= 4.0 + 1e-9
    assert rec.total.method.startswith(accountant.upper())
    assert rec.total.epsilon == pytest.approx(epsilon_of([e for s in (first, second) for e in s.events()],
                                                         second.delta, accountant))


def test_a_patch_level_stage_makes_the_chain_total_patch_level(phantom_root, dp_run, tmp_path):
    """Patient-level DP implies patch-level DP, not the reverse: a chain with one patch-level stage
    is stated per patch."""
    cfg = phantom_config(phantom_root, train__epochs=1, privacy__={"target_epsilon": 2.0, "unit": "patch"},
                         init_from__=str(dp_run))
    fit(cfg, tmp_path / "run", progress=False)
    rec = read_privacy(tmp_path / "run" / "privacy.json")
    assert [s.unit for s in rec.stages] == ["patient", "patch"] and rec.total.unit == "patch"
    assert "per lesion patch" in rec.describe()


# --- second pass: what enters a ledger, what a released file holds, the strength of the secret ---

def provenance_less_folder(path: Path, n: int = 64, size: int = 32) -> Path:
    """A synthetic-looking folder with no provenance.json (as the shipped c-dcgan set): unknown origin."""
    from PIL import Image

    path.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        img = torch.randint(0, 256, (size, size), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(img, mode="L").save(path / f"{i:05d}_{'malignant' if i % 2 else 'benign'}.png")
    return path


def tiny_gan(root: Path, train: list[str], **privacy):
    from dpmammo.config import parse_config
    from dpmammo.gan.config import GanConfig

    data = {"data": {"root": str(root), "train": train}, "model": {"image_size": 16, "g_width": 8, "d_width": 8},
            "train": {"epochs": 1, "batch_size": 16, "sample_every": 0, "device": "cpu"}}
    if privacy:
        data["privacy"] = {"delta": 1e-3, **privacy}
    return parse_config(GanConfig, data, "test")


def classifier_on(folder: Path, root: Path, out: Path):
    cfg = phantom_config(root, data__={"root": str(root), "train": [str(folder)], "val": "phantom/val"},
                         model__={"name": "cnn-small", "input_size": 32, "width": 8}, train__epochs=1,
                         train__batch_size=16)
    fit(cfg, out, progress=False)
    return read_privacy(out / "privacy.json")


def test_a_generator_brings_the_chain_of_its_inputs_into_every_consumer(phantom_root, tmp_path):
    """Laundering closed: an MCGAN or DP-MERF trained on a folder of unknown origin, its samples, and
    a classifier on those samples all say "no guarantee"; a DP generator's ε composes downstream."""
    from dpmammo.gan import sample
    from dpmammo.gan.merf import train_merf
    from dpmammo.gan.train import train_gan
    from tests.test_merf import tiny_config

    unknown = provenance_less_folder(tmp_path / "unknown")
    train_gan(tiny_gan(phantom_root, [str(unknown)]), tmp_path / "gan", progress=False)
    rec = read_privacy(tmp_path / "gan" / "privacy.json")
    assert rec.total.guarantee == "none" and rec.total.reason == "unknown-origin"
    assert [s.stage for s in rec.stages] == ["generator", "gan"]
    prov = sample(tmp_path / "gan", 32, tmp_path / "gan-samples", seed=0)
    assert prov["total"]["guarantee"] == "none"
    assert classifier_on(tmp_path / "gan-samples", phantom_root, tmp_path / "clf").total.reason == "unknown-origin"

    merf = tiny_config(phantom_root, data={"root": str(phantom_root), "train": [str(unknown)]},
                       privacy={"target_epsilon": 3.0, "delta": 1e-3})
    train_merf(merf, tmp_path / "merf-unknown", progress=False)
    assert read_privacy(tmp_path / "merf-unknown" / "privacy.json").total.reason == "unknown-origin"

    # A DP-MERF set (ε ≈ 3 per patient) feeding a DP MCGAN (ε ≤ 2 for its own stage): the chain composes.
    train_merf(tiny_config(phantom_root, privacy={"target_epsilon": 3.0, "delta": 1e-3}), tmp_path / "merf",
               progress=False)
    sample(tmp_path / "merf", 64, tmp_path / "merf-samples", seed=0)
    merf_eps = read_privacy(tmp_path / "merf" / "privacy.json").total.epsilon
    train_gan(tiny_gan(phantom_root, [str(tmp_path / "merf-samples"), "phantom/train"], target_epsilon=2.0),
              tmp_path / "dp-gan", progress=False)
    rec = read_privacy(tmp_path / "dp-gan" / "privacy.json")
    assert [s.stage for s in rec.stages] == ["dp-merf", "gan"] and rec.total.guarantee == "dp"
    assert rec.own.epsilon <= 2.0 and max(merf_eps, rec.own.epsilon) < rec.total.epsilon <= merf_eps + rec.own.epsilon
    sample(tmp_path / "dp-gan", 32, tmp_path / "dp-gan-samples", seed=0)
    downstream = classifier_on(tmp_path / "dp-gan-samples", phantom_root, tmp_path / "clf-dp")
    assert downstream.total.epsilon == pytest.approx(rec.total.epsilon, rel=1e-6)


def test_secret_keys_have_256_bits_and_seeds_equal_mod_2_32_give_other_noise():
    from dpmammo.privacy.secret import KEY_BYTES, SecretKey

    assert KEY_BYTES * 8 == 256
    a, b = SecretKey.for_tests(7), SecretKey.for_tests(7 + 2**32)
    assert not torch.equal(a.normal("noise", 0, 1000), b.normal("noise", 0, 1000))
    assert not torch.equal(a.uniform("sample", 0, 1000), b.uniform("sample", 0, 1000))
    fresh = [SecretKey.fresh() for _ in range(2)]
    assert not torch.equal(fresh[0].normal("noise", 0, 100), fresh[1].normal("noise", 0, 100))
    # Draws are addressed by (purpose, step), independent of each other and of order.
    assert torch.equal(a.normal("noise", 3, 100), a.normal("noise", 3, 100))
    assert not torch.equal(a.normal("noise", 3, 100), a.normal("noise", 4, 100))
    assert not torch.equal(a.uniform("noise", 3, 100), a.uniform("sample", 3, 100))
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(fresh[0])
    # The secure Gaussian: std as asked, mean 0 (a distribution test that a wrong transform fails).
    noise, = SecretKey.fresh().gaussian_noise("noise", 0, [torch.Size([200_000])], 1.5)
    assert noise.std().item() == pytest.approx(1.5, rel=0.01) and abs(noise.mean().item()) < 0.015
    assert abs(((noise / 1.5) ** 4).mean().item() - 3.0) < 0.1  # Gaussian kurtosis


def test_public_views_of_a_record_do_not_depend_on_the_batch_around_it():
    """Augmentation views of record r at step t are the same whether the step held 3 units or 300."""
    from dpmammo.train.loop import flip_views

    big = torch.arange(300)
    small = torch.tensor([5, 150, 299])
    assert torch.equal(flip_views(0, 7, big)[small], flip_views(0, 7, small))
    assert not torch.equal(flip_views(0, 7, big), flip_views(0, 8, big))  # another step, other views
    counts = torch.bincount(flip_views(0, 7, torch.arange(40_000)), minlength=4)
    assert counts.min() > 9_500 and counts.max() < 10_500  # each of the 4 views ~ 1/4


def test_provenance_carries_no_exact_private_count(phantom_root, tmp_path):
    """Samples travel with provenance.json: its keys are fixed, and no stage of its chain records the
    number of private units (under add/remove adjacency that number is private)."""
    from dpmammo.gan import sample
    from dpmammo.gan.train import train_gan

    train_gan(tiny_gan(phantom_root, ["phantom/train"], target_epsilon=3.0), tmp_path / "gan", progress=False)
    sample(tmp_path / "gan", 20, tmp_path / "s", seed=0)
    prov = json.loads((tmp_path / "s" / "provenance.json").read_text())
    assert set(prov) == {"folder", "generator_run", "training_data", "n", "n_malignant", "balance", "seed",
                         "image_size", "guarantee", "total", "chain", "dpmammo_version"}
    stage_keys = {"stage", "run", "data", "guarantee", "reason", "unit", "epsilon", "delta", "target_epsilon",
                  "mechanism", "noise_multiplier", "sample_rate", "steps", "accountant", "max_grad_norm",
                  "sensitivity", "unit_count_noise", "releases", "note"}
    assert all(set(s) == stage_keys for s in prov["chain"])
    # phantom/train has 400 patients: no count field, and not the exact rate 16/400.
    text = (tmp_path / "s" / "provenance.json").read_text() + (tmp_path / "gan" / "log.txt").read_text()
    assert "n_units" not in text and "n_private" not in text and "400 units" not in text
    assert prov["chain"][0]["sample_rate"] != 16 / 400  # the rate came from the noisy count


def test_report_grids_show_only_pixels_that_carry_a_guarantee(phantom_root, tmp_path):
    from dpmammo.data.sets import load_set
    from dpmammo.gan import sample
    from dpmammo.gan.train import train_gan
    from dpmammo.study.quality import pixels_may_be_shown

    assert not pixels_may_be_shown(load_set(phantom_root, "phantom/val"))  # private patches
    unknown = provenance_less_folder(tmp_path / "unknown", n=8)
    assert not pixels_may_be_shown(load_set(phantom_root, str(unknown)))
    train_gan(tiny_gan(phantom_root, ["phantom/train"]), tmp_path / "gan", progress=False)  # non-private
    sample(tmp_path / "gan", 8, tmp_path / "non-dp", seed=0)
    assert not pixels_may_be_shown(load_set(phantom_root, str(tmp_path / "non-dp")))
    train_gan(tiny_gan(phantom_root, ["phantom/train"], target_epsilon=3.0), tmp_path / "dp-gan", progress=False)
    sample(tmp_path / "dp-gan", 8, tmp_path / "dp", seed=0)
    assert pixels_may_be_shown(load_set(phantom_root, str(tmp_path / "dp")))
