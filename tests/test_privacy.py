"""Accounting: calibrated noise never overshoots; ε matches Google's dp-accounting; ledger rules."""

from __future__ import annotations

import dp_accounting
import pytest

from dpmammo.errors import DpMammoError
from dpmammo.privacy import (DpSgdEvent, GaussianRelease, StageSpend, calibrate_noise, check_delta, check_planned_total,
                             compose, epsilon_of, steps_for)
from dpmammo.privacy.accounting import RDP_ORDERS


def sgd(sigma: float, q: float, steps: int) -> DpSgdEvent:
    """DP-SGD steps of one patient-level stage (C = 1: the clipping norm does not change ε)."""
    return DpSgdEvent(noise_multiplier=sigma, sample_rate=q, steps=steps, max_grad_norm=1.0, unit="patient")


def dp_accounting_epsilon(sigma: float, q: float, steps: int, delta: float, count_noise: float | None = None,
                          releases: tuple[float, ...] = ()) -> float:
    """Independent RDP computation (Mironov et al. 2019) with Google's library; `count_noise`: the
    Gaussian release of the unit count (sensitivity 1) composed before the steps; `releases`: the
    noise multipliers of other Gaussian releases composed before them."""
    acc = dp_accounting.rdp.RdpAccountant(orders=RDP_ORDERS)
    for noise in ([count_noise] if count_noise is not None else []) + list(releases):
        acc.compose(dp_accounting.GaussianDpEvent(noise))
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("target", [0.5, 1.0, 6.0, 20.0, 60.0])
@pytest.mark.parametrize("q,epochs", [(128 / 1104, 30), (64 / 4104, 5)])
def test_calibrated_noise_meets_but_does_not_overshoot_target(target, q, epochs):
    steps = steps_for(epochs, q)
    sigma = calibrate_noise(target_epsilon=target, delta=1e-4, sample_rate=q, steps=steps, accountant="rdp")
    eps = epsilon_of([sgd(sigma, q, steps)], 1e-4)
    assert eps <= target
    assert eps >= target - 0.011  # binary search tolerance 0.01: not wastefully noisy


@pytest.mark.parametrize("sigma,q,steps", [(0.7, 0.058, 34), (1.1, 0.116, 260), (3.0, 0.01, 1000)])
def test_epsilon_matches_dp_accounting_within_one_percent(sigma, q, steps):
    ours = epsilon_of([sgd(sigma, q, steps)], 1e-4)
    theirs = dp_accounting_epsilon(sigma, q, steps, 1e-4)
    assert ours == pytest.approx(theirs, rel=0.01)


@pytest.mark.parametrize("target", [1.0, 6.0])
def test_noise_calibrated_after_the_unit_count_release_meets_its_target_by_dp_accounting(target):
    """A stage's noisy unit count (σ_N = 20, sensitivity 1) and its steps compose to at most the
    target, as Google's accountant computes it independently; the count costs a little σ."""
    q, steps = 64 / 578, steps_for(30, 64 / 578)
    plain = calibrate_noise(target_epsilon=target, delta=1e-4, sample_rate=q, steps=steps, accountant="rdp")
    sigma = calibrate_noise(target_epsilon=target, delta=1e-4, sample_rate=q, steps=steps, accountant="rdp",
                            prior=[GaussianRelease.unit_count(20.0, "patient")])
    theirs = dp_accounting_epsilon(sigma, q, steps, 1e-4, count_noise=20.0)
    assert target - 0.02 <= theirs <= target + 1e-6
    assert plain < sigma < 1.05 * plain


def test_prv_accountant_is_at_most_rdp():
    h = [sgd(1.0, 0.1, 200)]
    assert epsilon_of(h, 1e-4, "prv") <= epsilon_of(h, 1e-4, "rdp")


def test_an_accountant_that_cannot_resolve_delta_says_what_to_change():
    """Opacus's PRV raises a bare ValueError at a δ it cannot resolve in floating point; the user
    gets the settings to change, in calibration and in accounting alike."""
    advice = "privacy.delta or privacy.accountant: rdp"
    h = [sgd(5.0, 0.9, 11)]
    assert epsilon_of(h, 1e-12, "prv") > 0
    with pytest.raises(DpMammoError, match=advice):
        epsilon_of(h, 1e-20, "prv")
    with pytest.raises(DpMammoError, match=advice):
        calibrate_noise(target_epsilon=1.0, delta=1e-20, sample_rate=0.5, steps=20, accountant="prv")
    # The limit grows with the history: a chain's total can fail at a δ where its last stage alone
    # does not. check_planned_total composes it before the stage's first step (dpmammo.train.loop).
    at = {"delta": 1e-14}
    upstream = _dp("gan", 1.0, 0.2, 150, 1.0, "prv").model_copy(update=at)
    own = _dp("clf", 5.0, 0.9, 11, 1.0, "prv").model_copy(update=at)
    check_planned_total([], own)
    with pytest.raises(DpMammoError, match=advice):
        check_planned_total([upstream], own)


@pytest.mark.parametrize("delta,n", [(0.0, 1104), (-1e-5, 1104), (1 / 1104, 1104), (0.01, 1104)])
def test_delta_must_be_below_one_over_n(delta, n):
    with pytest.raises(DpMammoError, match="delta"):
        check_delta(delta, n)


def test_epsilon_must_be_positive():
    with pytest.raises(DpMammoError, match="target_epsilon"):
        calibrate_noise(target_epsilon=0, delta=1e-4, sample_rate=0.1, steps=10, accountant="rdp")


def _dp(run, sigma, q, steps, eps, accountant="rdp"):
    return StageSpend(stage="s", run=run, data=["cbis-ddsm/train"], guarantee="dp", epsilon=eps, delta=1e-4,
                      mechanism="dp-sgd", noise_multiplier=sigma, sample_rate=q, steps=steps, max_grad_norm=1.0,
                      accountant=accountant, unit="patient")


def pld_epsilon(events: list[tuple[float, float, int]], delta: float) -> float:
    """Independent PLD accounting (Google's dp-accounting) of (σ, q, steps) segments in order."""
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    for sigma, q, steps in events:
        acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return acc.get_epsilon(delta)


def test_chain_composes_rdp_tighter_than_adding_epsilons():
    a, b = (1.0, 0.1, 100), (1.5, 0.05, 300)
    ea, eb = epsilon_of([sgd(*a)], 1e-4), epsilon_of([sgd(*b)], 1e-4)
    total = compose([_dp("gan", *a, ea), _dp("clf", *b, eb)], delta=1e-4)
    assert total.guarantee == "dp"
    assert max(ea, eb) < total.epsilon < ea + eb
    assert total.epsilon == pytest.approx(epsilon_of([sgd(*a), sgd(*b)], 1e-4))


@pytest.mark.parametrize("accountants", [("prv", "prv"), ("rdp", "prv"), ("prv", "rdp")])
def test_a_chain_with_a_prv_stage_composes_its_events_in_prv(accountants):
    """Any PRV stage makes the chain compose all its events by PRV (the events, not the stages' ε:
    valid whichever accountant calibrated each stage), at one δ, as Google's PLD accountant does."""
    a, b = (1.0, 0.1, 100), (1.5, 0.05, 300)
    ea, eb = (epsilon_of([sgd(*e)], 1e-4, acc) for e, acc in zip((a, b), accountants))
    total = compose([_dp("gan", *a, ea, accountants[0]), _dp("clf", *b, eb, accountants[1])], delta=1e-4)
    assert total.guarantee == "dp" and total.delta == 1e-4 and total.method.startswith("PRV")
    assert total.epsilon == pytest.approx(pld_epsilon([a, b], 1e-4), rel=0.01)
    # Tighter than the same events by RDP, and above either stage alone by PRV.
    assert max(epsilon_of([sgd(*e)], 1e-4, "prv") for e in (a, b)) < total.epsilon < epsilon_of([sgd(*a), sgd(*b)], 1e-4)


def test_noise_calibrated_to_a_prv_chain_total_meets_it():
    """A PRV stage that targets its chain's total leaves the PRV composition at the target."""
    from dpmammo.privacy import PrivacyConfig, prior_history

    a = (1.0, 0.1, 100)
    gen = _dp("gen", *a, epsilon_of([sgd(*a)], 1e-4, "prv"), "prv")
    prior = prior_history([gen], PrivacyConfig(target_epsilon=6.0, target="total", accountant="prv"))
    q, steps = 0.2, steps_for(30, 0.2)
    sigma = calibrate_noise(target_epsilon=6.0, delta=1e-4, sample_rate=q, steps=steps, accountant="prv", prior=prior)
    own = _dp("clf", sigma, q, steps, epsilon_of([sgd(sigma, q, steps)], 1e-4, "prv"), "prv")
    total = compose([gen, own], delta=1e-4)
    assert 6.0 - 0.02 <= total.epsilon <= 6.0
    assert total.epsilon == pytest.approx(pld_epsilon([a, (sigma, q, steps)], 1e-4), rel=0.01)


def test_chain_with_a_non_private_stage_has_no_guarantee():
    none = StageSpend(stage="generator", run="c-dcgan", data=["cbis-ddsm/train"], guarantee="none",
                      reason="non-private")
    total = compose([none, _dp("clf", 1.0, 0.1, 100, 3.0)], delta=1e-4)
    assert total.guarantee == "none" and total.epsilon is None


def test_public_stages_add_nothing():
    pub = StageSpend(stage="pretrain", run="p", data=["synthetic/x"], guarantee="public")
    assert compose([pub]).guarantee == "public"
    eps = epsilon_of([sgd(1.0, 0.1, 100)], 1e-4)
    assert compose([pub, _dp("clf", 1.0, 0.1, 100, eps)], delta=1e-4).epsilon == pytest.approx(eps)


@pytest.mark.parametrize("target", [2.0, 6.0])
def test_noise_calibrated_to_a_chain_total_meets_it(target):
    """privacy.target: total: with a DP stage before (a generator at ε/2), the composed ε lands in
    [target − 0.01, target], and needs less noise than a linear split (the stage alone at ε/2) would."""
    gen_sigma = calibrate_noise(target_epsilon=target / 2, delta=1e-4, sample_rate=1.0, steps=1, accountant="rdp")
    prior = [GaussianRelease(noise_multiplier=gen_sigma, sensitivity=1.0, unit="patient")]
    q, steps = 0.2, steps_for(30, 0.2)
    sigma = calibrate_noise(target_epsilon=target, delta=1e-4, sample_rate=q, steps=steps, accountant="rdp",
                            prior=prior)
    total = epsilon_of([*prior, sgd(sigma, q, steps)], 1e-4)
    assert target - 0.01 <= total <= target
    split = calibrate_noise(target_epsilon=target / 2, delta=1e-4, sample_rate=q, steps=steps, accountant="rdp")
    assert sigma < split * 0.95


def test_a_chain_total_already_spent_is_refused():
    prior = [GaussianRelease(noise_multiplier=0.5, sensitivity=1.0, unit="patient")]  # ε ≈ 10 at δ = 1e-4
    with pytest.raises(DpMammoError, match=r"already spend ε = .* of the chain's target 2"):
        calibrate_noise(target_epsilon=2.0, delta=1e-4, sample_rate=0.1, steps=100, accountant="rdp", prior=prior)


def test_prior_history_refuses_what_a_total_cannot_compose():
    from dpmammo.privacy import PrivacyConfig, prior_history

    gen = _dp("gan", 1.0, 0.1, 100, 3.0)
    total = PrivacyConfig(target_epsilon=6.0, target="total")
    assert prior_history([gen], total) == [sgd(1.0, 0.1, 100)]
    assert prior_history([gen], PrivacyConfig(target_epsilon=6.0)) == []  # a stage-only target needs none
    with pytest.raises(DpMammoError, match="a total needs one unit"):
        prior_history([gen], PrivacyConfig(target_epsilon=6.0, target="total", unit="patch"))
    # The chain composes in PRV as soon as one stage used it: a PRV stage may follow an RDP one, an RDP
    # stage (which would calibrate in RDP) may not follow a PRV one.
    assert prior_history([gen], PrivacyConfig(target_epsilon=6.0, target="total", accountant="prv")) == [sgd(1.0, 0.1, 100)]
    prv_gen = _dp("gan", 1.0, 0.1, 100, 3.0, "prv")
    with pytest.raises(DpMammoError, match="set privacy.accountant: prv"):
        prior_history([prv_gen], total)
    none = StageSpend(stage="generator", run="c-dcgan", data=["cbis-ddsm/train"], guarantee="none",
                      reason="non-private")
    with pytest.raises(DpMammoError, match="no DP guarantee"):
        prior_history([none, gen], total)
