"""Privacy events as typed values: they compose to the ε Google's dp-accounting computes, a Gaussian
release is recorded as one (older records still read), and the one Gaussian-release entry point
checks, calibrates and draws in that order."""

from __future__ import annotations

import json
from types import SimpleNamespace

import dp_accounting
import pytest
import torch

from dpmammo.errors import DpMammoError
from dpmammo.privacy import (DpSgdEvent, GaussianRelease, StageSpend, calibrate_noise, compose, epsilon_of,
                             gaussian_release, read_privacy)
from dpmammo.privacy.accounting import RDP_ORDERS, EpsilonCurve, StepAccountant, opacus_history
from dpmammo.privacy.config import ReleasePrivacyConfig
from dpmammo.privacy.secret import SecretKey


def sgd(sigma: float, q: float, steps: int, unit: str = "patient") -> DpSgdEvent:
    return DpSgdEvent(noise_multiplier=sigma, sample_rate=q, steps=steps, max_grad_norm=1.0, unit=unit)


@pytest.mark.parametrize("sigma", [0.8, 1.33, 2.5])
@pytest.mark.parametrize("sensitivity", [1.0, 2.5])
def test_a_gaussian_release_costs_what_dp_accounting_says_for_its_noise_multiplier(sigma, sensitivity):
    """Noise std σ·Δ on a sum of sensitivity Δ: Google's Gaussian mechanism of noise multiplier σ,
    by RDP (same orders) and by PLD against the PRV accountant; the sensitivity scales both alike."""
    event = GaussianRelease(noise_multiplier=sigma, sensitivity=sensitivity, unit="patient")
    rdp = dp_accounting.rdp.RdpAccountant(orders=RDP_ORDERS)
    rdp.compose(dp_accounting.GaussianDpEvent(sigma))
    assert epsilon_of([event], 1e-4) == pytest.approx(rdp.get_epsilon(1e-4), rel=0.01)
    pld = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    pld.compose(dp_accounting.GaussianDpEvent(sigma))
    assert epsilon_of([event], 1e-4, "prv") == pytest.approx(pld.get_epsilon(1e-4), rel=0.01)


def test_a_chain_of_events_composes_as_dp_accounting_composes_it():
    """A noisy unit count, DP-SGD steps, then a Gaussian release: one RDP composition, as Google's
    accountant composes the same mechanisms."""
    events = [GaussianRelease.unit_count(20.0, "patient"), sgd(1.1, 64 / 578, 540),
              GaussianRelease(noise_multiplier=2.0, sensitivity=1.0, unit="patient")]
    acc = dp_accounting.rdp.RdpAccountant(orders=RDP_ORDERS)
    acc.compose(dp_accounting.GaussianDpEvent(20.0))
    acc.compose(dp_accounting.PoissonSampledDpEvent(64 / 578, dp_accounting.GaussianDpEvent(1.1)), 540)
    acc.compose(dp_accounting.GaussianDpEvent(2.0))
    assert epsilon_of(events, 1e-4) == pytest.approx(acc.get_epsilon(1e-4), rel=0.01)
    # The running curve of a stage agrees with the accountant on the same events.
    curve = EpsilonCurve(1.1, 64 / 578, 1e-4, before=events[:1])
    assert curve(540) == pytest.approx(epsilon_of(events[:2], 1e-4), rel=1e-9)


def test_events_translate_into_opacus_history_in_one_place():
    assert opacus_history([GaussianRelease(noise_multiplier=1.5, sensitivity=3.0, unit="patch"),
                           sgd(0.9, 0.25, 40)]) == ((1.5, 1.0, 1), (0.9, 0.25, 40))
    with pytest.raises(TypeError, match="not a privacy event"):
        opacus_history([(1.5, 1.0, 1)])  # the old raw tuple is refused, not guessed at


@pytest.mark.parametrize("make,message", [
    (lambda: sgd(0.0, 0.1, 10), "noise_multiplier=0.0 must be"),
    (lambda: sgd(1.0, 1.5, 10), r"sample_rate=1.5 must be in \(0, 1\]"),
    (lambda: sgd(1.0, 0.1, -1), "steps=-1"),
    (lambda: sgd(1.0, 0.1, 10, unit="study"), "unit 'study' is not a unit of privacy"),
    (lambda: GaussianRelease(noise_multiplier=1.0, sensitivity=float("inf"), unit="patient"), "sensitivity=inf"),
])
def test_events_refuse_impossible_values(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_the_step_accountant_counts_optimizer_steps_and_resumes_in_place():
    acc = StepAccountant("rdp", max_grad_norm=0.5, unit="patch")
    hook = acc.optimizer_hook(0.1)
    for _ in range(3):
        hook(SimpleNamespace(noise_multiplier=1.2, accumulated_iterations=1))
    assert acc.steps == 3 and acc.events() == [DpSgdEvent(noise_multiplier=1.2, sample_rate=0.1, steps=3,
                                                           max_grad_norm=0.5, unit="patch")]
    saved = acc.state()
    resumed = StepAccountant("rdp", max_grad_norm=0.5, unit="patch")
    hook = resumed.optimizer_hook(0.1)  # attached before the checkpoint is read, as make_private does
    resumed.load_state(saved)
    hook(SimpleNamespace(noise_multiplier=1.2, accumulated_iterations=1))
    assert resumed.steps == 4 and resumed.state() == [(1.2, 0.1, 4)]


def _release_record(**changes) -> dict:
    """A DP-MERF stage as privacy.json holds it."""
    return {"stage": "dp-merf", "run": "g", "data": ["cbis-ddsm/train"], "guarantee": "dp", "reason": None,
            "unit": "patient", "epsilon": 3.0, "delta": 1e-4, "target_epsilon": 3.0, "mechanism": "gaussian-release",
            "noise_multiplier": 1.33, "sample_rate": None, "steps": None, "accountant": "rdp", "max_grad_norm": None,
            "sensitivity": 1.0, "unit_count_noise": None, "note": "", **changes}


def test_records_written_before_the_mechanism_field_read_as_dp_sgd_with_the_same_epsilon():
    """The older DP-MERF record (no `mechanism`: a release written as DP-SGD with q = 1, one step,
    C = 1) reads as DP-SGD, and composes to the ε of the same release recorded as one."""
    old = {key: value for key, value in _release_record(sample_rate=1.0, steps=1, max_grad_norm=1.0).items()
           if key not in ("mechanism", "sensitivity")}
    old_stage, new_stage = StageSpend.model_validate(old), StageSpend.model_validate(_release_record())
    assert old_stage.mechanism == "dp-sgd" and new_stage.mechanism == "gaussian-release"
    assert old_stage.events() == [sgd(1.33, 1.0, 1)]
    assert new_stage.events() == [GaussianRelease(noise_multiplier=1.33, sensitivity=1.0, unit="patient")]
    assert compose([old_stage]).epsilon == compose([new_stage]).epsilon == epsilon_of(new_stage.events(), 1e-4)
    assert StageSpend.model_validate(json.loads(new_stage.model_dump_json())) == new_stage


@pytest.mark.parametrize("changes,message", [
    ({"sample_rate": 1.0, "steps": 1}, "a gaussian-release stage has no sample_rate, steps or max_grad_norm"),
    ({"sensitivity": None}, "a gaussian-release stage records sensitivity"),
    ({"mechanism": "dp-sgd"}, "a dp-sgd stage records sample_rate, steps, max_grad_norm"),
    ({"mechanism": None, "noise_multiplier": None, "sensitivity": None}, "a dp stage records its mechanism"),
])
def test_a_stage_record_holds_the_numbers_of_its_mechanism(changes, message):
    with pytest.raises(ValueError, match=message):
        StageSpend.model_validate(_release_record(**changes))


def test_the_ledger_reads_a_release_in_a_chain_file(tmp_path):
    """A privacy.json with a Gaussian release then a DP-SGD stage: the total is their RDP composition."""
    sgd_stage = _release_record(stage="classifier", run="c", mechanism="dp-sgd", sensitivity=None, sample_rate=0.1,
                                steps=100, max_grad_norm=1.0, noise_multiplier=1.1, unit_count_noise=20.0)
    stages = [StageSpend.model_validate(s) for s in (_release_record(), sgd_stage)]
    total = compose(stages, delta=1e-4)
    path = tmp_path / "privacy.json"
    path.write_text(json.dumps({"stages": [s.model_dump(mode="json") for s in stages],
                                "total": total.model_dump(mode="json")}))
    rec = read_privacy(path)
    expected = [GaussianRelease(noise_multiplier=1.33, sensitivity=1.0, unit="patient"),
                GaussianRelease.unit_count(20.0, "patient"), sgd(1.1, 0.1, 100)]
    assert [e for s in rec.stages for e in s.events()] == expected
    assert rec.total.epsilon == pytest.approx(epsilon_of(expected, 1e-4))


def test_gaussian_release_checks_delta_before_reading_the_values_and_meets_its_target():
    reads = []

    def values() -> torch.Tensor:
        reads.append(1)
        return torch.zeros(20000, dtype=torch.float64)

    privacy = ReleasePrivacyConfig(target_epsilon=2.0, delta=1e-3, unit="patch")
    with pytest.raises(DpMammoError, match=r"delta=0.001 must be in \(0, 1/N\)"):
        gaussian_release(values, sensitivity=1.0, privacy=privacy, n_private_units=2000, key=SecretKey.for_tests(0))
    assert reads == []  # refused before a value was computed

    noisy, event = gaussian_release(values, sensitivity=2.0, privacy=privacy, n_private_units=500,
                                    key=SecretKey.for_tests(0))
    assert reads == [1] and event.unit == "patch" and event.sensitivity == 2.0
    sigma = calibrate_noise(target_epsilon=2.0, delta=1e-3, sample_rate=1.0, steps=1, accountant="rdp")
    assert event.noise_multiplier == sigma and 2.0 - 0.011 <= epsilon_of([event], 1e-3) <= 2.0
    assert noisy.std().item() == pytest.approx(2.0 * sigma, rel=0.03)
    # The same key and index draw the same noise; another index draws other noise.
    again, _ = gaussian_release(values, sensitivity=2.0, privacy=privacy, n_private_units=500,
                                key=SecretKey.for_tests(0))
    other, _ = gaussian_release(values, sensitivity=2.0, privacy=privacy, n_private_units=500,
                                key=SecretKey.for_tests(0), index=1)
    assert torch.equal(noisy, again) and not torch.equal(noisy, other)


def test_gaussian_release_after_prior_events_meets_the_chain_total():
    """With the events of earlier stages, σ is calibrated to the composition of all of them."""
    prior = [sgd(1.5, 0.05, 300)]
    privacy = ReleasePrivacyConfig(target_epsilon=4.0, delta=1e-4)
    _, alone = gaussian_release(lambda: torch.zeros(3), sensitivity=1.0, privacy=privacy, n_private_units=578,
                                key=SecretKey.for_tests(1))
    _, chained = gaussian_release(lambda: torch.zeros(3), sensitivity=1.0, privacy=privacy, n_private_units=578,
                                  key=SecretKey.for_tests(1), prior=prior)
    assert chained.noise_multiplier > alone.noise_multiplier
    assert 4.0 - 0.011 <= epsilon_of([*prior, chained], 1e-4) <= 4.0
