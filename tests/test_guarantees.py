"""The guarantee a run prints holds: patient-level accounting on the real data matches Google's
dp-accounting (RDP and PLD), and whatever enters a run (weights, a parent run, synthetic data)
brings its privacy chain into the total."""

from __future__ import annotations

import shutil

import dp_accounting
import pytest

from dpmammo.privacy import epsilon_of, read_privacy
from dpmammo.privacy.accounting import RDP_ORDERS
from dpmammo.train import fit
from tests.test_train import phantom_config


def pld_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    """Independent PLD accounting (Google's dp-accounting), the tightest known for this mechanism."""
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return acc.get_epsilon(delta)


def rdp_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    acc = dp_accounting.rdp.RdpAccountant(orders=RDP_ORDERS)
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
    assert p.unit == rec.total.unit == "patient" and p.n_units == p.n_private == 578
    assert p.sample_rate == pytest.approx(64 / 578) and p.steps == round(2 * 578 / 64)
    assert p.epsilon <= 2.0
    assert p.epsilon == pytest.approx(independent(p.noise_multiplier, p.sample_rate, p.steps, p.delta), rel=0.01)


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
    history = [(s.noise_multiplier, s.sample_rate, s.steps) for s in (first, second)]
    assert rec.total.epsilon == pytest.approx(epsilon_of(history, second.delta))
    assert max(first.epsilon, second.epsilon) < rec.total.epsilon < first.epsilon + second.epsilon


def test_a_stage_calibrated_to_the_chain_total_lands_on_it(phantom_root, dp_run, tmp_path):
    """privacy.target: total after a DP run (init_from): the composed total is the target (within
    the calibration's 0.01), with less noise than the same stage calibrated alone to the rest."""
    cfg = phantom_config(phantom_root, train__epochs=1, privacy__={"target_epsilon": 4.0, "target": "total"},
                         init_from__=str(dp_run))
    fit(cfg, tmp_path / "run", progress=False)
    rec = read_privacy(tmp_path / "run" / "privacy.json")
    first, second = rec.stages
    assert second.target_epsilon == 4.0 and second.epsilon < 4.0
    assert 4.0 - 0.011 <= rec.total.epsilon <= 4.0 + 1e-9
    assert rec.total.epsilon == pytest.approx(epsilon_of([(s.noise_multiplier, s.sample_rate, s.steps)
                                                          for s in (first, second)], second.delta))


def test_a_patch_level_stage_makes_the_chain_total_patch_level(phantom_root, dp_run, tmp_path):
    """Patient-level DP implies patch-level DP, not the reverse: a chain with one patch-level stage
    is stated per patch."""
    cfg = phantom_config(phantom_root, train__epochs=1, privacy__={"target_epsilon": 2.0, "unit": "patch"},
                         init_from__=str(dp_run))
    fit(cfg, tmp_path / "run", progress=False)
    rec = read_privacy(tmp_path / "run" / "privacy.json")
    assert [s.unit for s in rec.stages] == ["patient", "patch"] and rec.total.unit == "patch"
    assert "per lesion patch" in rec.describe()
