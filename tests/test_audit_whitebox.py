"""White-box audit: the Gaussian-DP estimate against closed forms and a naive simulation of the
Gaussian mechanism; gradient canaries through the real sampler, clipping and secret noise; and
mutation tests (each deliberately broken mechanism is caught in one run, the correct one never
is)."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from scipy import integrate, stats as sps

from dpmammo.audit import gdp, one_run


# --- Gaussian DP: closed form, independent routes, simulation --------------------------------

@pytest.mark.parametrize("mu,eps", [(0.5, 0.3), (1.0, 1.0), (2.0, 3.0), (3.0, 8.0), (0.2, 0.05)])
def test_gdp_delta_matches_numerical_integration_of_the_privacy_loss(mu, eps):
    """δ(ε) = E_{x~N(μ,1)}[(1 − e^{ε − L(x)})₊] with the privacy loss L(x) = μx − μ²/2, integrated
    numerically: no Φ formula involved."""
    loss = lambda x: mu * x - mu * mu / 2  # noqa: E731
    start = (eps + mu * mu / 2) / mu  # L(x) > ε from here on
    naive, _ = integrate.quad(lambda x: (1 - math.exp(eps - loss(x))) * sps.norm.pdf(x, mu, 1), start, np.inf,
                              epsabs=1e-14, epsrel=1e-10)
    assert gdp.gdp_delta(eps, mu) == pytest.approx(naive, rel=1e-6, abs=1e-13)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-3])
def test_gdp_epsilon_of_the_gaussian_mechanism_matches_dp_accounting_pld(sigma, delta):
    """The Gaussian mechanism with sensitivity 1 and noise σ is (1/σ)-GDP: our ε(δ) equals what
    Google's PLD accountant (a discretised privacy-loss distribution) computes for it."""
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dp_accounting.GaussianDpEvent(sigma))
    ours = gdp.gdp_epsilon(1 / sigma, delta)
    assert ours == pytest.approx(acc.get_epsilon(delta), rel=2e-3, abs=2e-3)
    assert gdp.gdp_delta(ours, 1 / sigma) == pytest.approx(delta, rel=1e-6)
    assert gdp.gdp_epsilon(0.0, delta) == 0.0 and gdp.gdp_epsilon(1e-6, delta) == 0.0


@pytest.mark.parametrize("sigma", [0.7, 1.5, 3.0])
def test_gdp_estimate_recovers_a_simulated_gaussian_mechanism(sigma):
    """Canaries of a naive Gaussian mechanism (score N(1, σ²) when in, N(0, σ²) when out): μ̂ lands
    within 0.05 of 1/σ (3.5 standard errors at m = 20000), its bootstrap interval holds 1/σ, and ε̂ follows; the Steinke bound on the
    same scores stays below the mechanism's true ε and (strong mechanisms) proves something."""
    rng = np.random.default_rng(int(sigma * 10))
    m, delta = 20000, 1e-5
    included = rng.random(m) < 0.5
    scores = included + sigma * rng.normal(size=m)
    mu, eps = gdp.gdp_estimate(scores, included, delta=delta, n_boot=200, seed=1)
    assert mu.value == pytest.approx(1 / sigma, abs=0.05)
    assert mu.low < 1 / sigma < mu.high and eps.low < gdp.gdp_epsilon(1 / sigma, delta) < eps.high
    true_eps = gdp.gdp_epsilon(1 / sigma, delta)
    k_grid = [100, 200, 500, 1000, 2000, 5000, 10000]
    bound = one_run.best_bound(scores, included, k_grid, delta=delta)[0]
    assert bound < true_eps
    if sigma < 1:
        assert bound > 0.3 * true_eps
    assert gdp.gdp_mu(scores, ~included) == 0.0  # a shift the wrong way is floored, not flipped
