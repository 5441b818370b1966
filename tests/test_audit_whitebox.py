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
from scipy.optimize import brentq

from dpmammo.audit import fdp, gdp, one_run, whitebox


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


# --- the f-DP one-run bound (Mahloujifar, Melis & Chaudhuri) --------------------------------

def pure_dp_inverse_blow_up(eps: float):
    """f̄⁻¹ of (ε, 0)-DP, f(α) = max(0, 1 − e^ε α, e^{−ε}(1 − α)): the smallest type-I error at power x."""
    return lambda x: np.maximum(0.0, np.maximum(x * math.exp(-eps), 1 - math.exp(eps) * (1 - x)))


def critical_level(inverse_blow_up, m: int, guesses: int, correct: int) -> float:
    """The smallest significance at which the recursion rejects: its bound on P[≥ correct right]."""
    lo, hi = 0.0, 1.0 - 1e-12
    if not fdp.rejects(inverse_blow_up, m=m, guesses=guesses, correct=correct, significance=hi):
        return 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if fdp.rejects(inverse_blow_up, m=m, guesses=guesses, correct=correct,
                                          significance=mid) else (mid, hi)
    return hi


@pytest.mark.parametrize("eps", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("m,guesses", [(1000, 10), (200, 30), (64, 64)])
def test_fdp_bound_when_every_guess_is_right_is_randomized_responses_closed_form(eps, m, guesses):
    """All c′ guesses right under (ε, 0)-DP: the recursion's bound on its probability is exactly
    (e^ε / (1 + e^ε))^{c′}, the probability for randomized response (each guess independently right
    with that chance), the mechanism that attains it; ε = 0 is a coin, 2^{−c′}."""
    exact = (math.exp(eps) / (1 + math.exp(eps))) ** guesses
    assert critical_level(pure_dp_inverse_blow_up(eps), m, guesses, guesses) == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("m,guesses,correct", [(1000, 100, 65), (1000, 1000, 560), (200, 50, 35), (1000, 200, 130),
                                               (100, 100, 60)])
def test_fdp_bound_under_perfect_privacy_covers_the_exact_binomial_of_guessing(m, guesses, correct):
    """0-GDP (μ = 0): the guesses are independent of membership, so the number right is exactly
    Binomial(c′, ½). The recursion's bound on P[≥ c right] must cover that tail (validity) and is
    close to it (within 20 %); the μ-GDP bound is then the μ = 0 boundary, and ε follows."""
    tail = sps.binom.sf(correct - 1, guesses, 0.5)
    level = critical_level(fdp.gdp_inverse_blow_up(0.0), m, guesses, correct)
    assert tail <= level <= 1.2 * tail
    assert fdp.mu_lower_bound(m=m, guesses=guesses, correct=correct, confidence=1 - 0.99 * level) == 0.0
    assert fdp.mu_lower_bound(m=m, guesses=guesses, correct=correct, confidence=1 - 1.01 * level) > 0.0


def test_fdp_mu_bound_is_the_boundary_of_the_rejected_gaussian_curves():
    """μ̂ is itself rejected and μ̂ + 10⁻⁶ is not (the test is monotone in μ); every guess wrong or none
    made proves nothing; more right guesses prove more; ε is that of μ̂-GDP at δ."""
    m, guesses, correct = 1000, 200, 150
    mu = fdp.mu_lower_bound(m=m, guesses=guesses, correct=correct)
    test = lambda v: bool(fdp.rejects(fdp.gdp_inverse_blow_up(v), m=m, guesses=guesses, correct=correct,  # noqa: E731
                                      significance=0.05))
    assert 0.3 < mu < 2 and test(mu) and not test(mu + 1e-6) and test(mu / 2) and not test(2 * mu)
    assert fdp.mu_lower_bound(m=m, guesses=guesses, correct=correct + 10) > mu
    assert fdp.mu_lower_bound(m=m, guesses=guesses, correct=0) == 0.0
    assert fdp.mu_lower_bound(m=m, guesses=0, correct=0) == 0.0
    eps = fdp.epsilon_lower_bound(m=m, guesses=guesses, correct=correct, delta=1e-5)
    assert eps == pytest.approx(gdp.gdp_epsilon(mu, 1e-5)) and gdp.gdp_delta(eps, mu) == pytest.approx(1e-5, rel=1e-6)
    with pytest.raises(ValueError, match="correct ≤ guesses"):
        fdp.mu_lower_bound(m=m, guesses=10, correct=11)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_fdp_bound_holds_on_a_simulated_gaussian_mechanism_and_beats_steinke(sigma):
    """200 runs of a naive Gaussian mechanism with known σ (a canary's score N(1, σ²) when in,
    N(0, σ²) when out; exactly (1/σ)-GDP), 1000 canaries, one pre-set k = 100 per side: at 95 %
    the bound μ̂ exceeds the true μ = 1/σ in at most 5 % of runs. Over the audit's k grid
    (Bonferroni), the f-DP ε never exceeds the true ε and is above Steinke et al.'s bound on the
    same scores in every run, by a quarter on average."""
    m, delta = 1000, 1e-5
    true_eps = gdp.gdp_epsilon(1 / sigma, delta)
    over, ratios = 0, []
    for rep in range(200):
        rng = np.random.default_rng([rep, int(10 * sigma)])
        included = rng.random(m) < 0.5
        scores = included + sigma * rng.normal(size=m)
        guesses, correct = one_run.guesses_from_scores(scores, included, 100, 100)
        over += fdp.mu_lower_bound(m=m, guesses=guesses, correct=correct) > 1 / sigma
        if rep < 30:
            grid = one_run.k_grid(m)
            f = fdp.best_bound(scores, included, grid, delta=delta, two_sided=True)
            steinke = one_run.best_bound(scores, included, grid, delta=delta, two_sided=True)[0]
            assert steinke < f.epsilon < true_eps and f.mu < 1 / sigma
            ratios.append(f.epsilon / steinke)
    assert over <= 10
    assert np.mean(ratios) > 1.25


# --- the Gaussian-pair bound (premise: Gaussian scores) ---------------------------------------

def pair_epsilon(shift: float, s_in: float, s_out: float, delta: float) -> float:
    """The exact ε(δ) of the pair N(0, s_out²) vs N(shift, s_in²), both directions, by integrating the
    hockey-stick divergence (p − e^ε·p′)₊ on a fine grid: no GDP formula involved."""
    x = np.linspace(-12 * max(s_in, s_out), shift + 12 * max(s_in, s_out), 400_001)
    p_in, p_out = sps.norm.pdf(x, shift, s_in), sps.norm.pdf(x, 0, s_out)

    def delta_of(eps):
        return max(integrate.trapezoid(np.clip(p_in - math.exp(eps) * p_out, 0, None), x),
                   integrate.trapezoid(np.clip(p_out - math.exp(eps) * p_in, 0, None), x))

    if delta_of(0.0) <= delta:
        return 0.0
    return brentq(lambda e: delta_of(e) - delta, 0.0, 60.0, xtol=1e-6)


@pytest.mark.parametrize("shift,s_in,s_out", [(1.0, 1.0, 1.0), (0.5, 1.0, 1.0), (1.0, 1.6, 1.0), (1.0, 1.0, 1.6)])
def test_gaussian_pair_bound_holds_on_simulated_gaussian_scores_and_beats_the_guess_bounds(shift, s_in, s_out):
    """200 simulated audits of 1000 canaries whose scores are N(shift, s_in²) when in and N(0, s_out²)
    when out: at 95 % the bound exceeds the pair's exact ε (numerical integration, unequal spreads
    included: the bound reads the larger spread) in at most 15 runs (10 expected at most), and it
    recovers at least 0.75 of that ε on average at shift 1 / spread 1, where on the same scores it
    is, in the median, over 1.5× the f-DP bound of the thresholded guesses (which discards all but
    the top and bottom k)."""
    m, delta = 1000, 1e-5
    true_eps = pair_epsilon(shift, s_in, s_out, delta)
    got, over, ratio = [], 0, []
    for rep in range(200):
        rng = np.random.default_rng([rep, int(10 * shift), int(10 * s_in), int(10 * s_out)])
        included = rng.random(m) < 0.5
        scores = np.where(included, rng.normal(shift, s_in, m), rng.normal(0, s_out, m))
        g = gdp.gaussian_pair_bound(scores, included, delta=delta, confidence=0.95)
        assert g.epsilon == pytest.approx(gdp.gdp_epsilon(g.mu, delta))
        got.append(g.epsilon)
        over += g.epsilon > true_eps
        if rep < 20:
            f = fdp.best_bound(scores, included, one_run.k_grid(m), delta=delta, two_sided=True)
            ratio.append(g.epsilon / max(f.epsilon, 1e-9))
    assert over <= 15, (over, true_eps)
    if (shift, s_in, s_out) == (1.0, 1.0, 1.0):
        assert np.mean(got) > 0.75 * true_eps, (np.mean(got), true_eps)
        assert np.median(ratio) > 1.5


def test_ideal_mu_is_where_the_sum_scores_of_the_ideal_mechanism_land_and_the_standard_error_is_their_spread():
    """The ideal mechanism at the quick recipe's ε = 2 settings (σ 3.44, q 0.118, 253 steps; 1000
    canaries): an included canary adds 1 with probability q at each step, every canary gets N(0, σ²).
    Over 200 simulated runs the Gaussian-pair μ̂ of the sum scores averages whitebox.ideal_mu to
    within 0.025 below and 0.01 above (μ̂ reads the larger of two sample spreads, which sits ~2 % above
    the true one: 0.537 against 0.545 in a 400-run simulation), and its spread across runs is the
    recorded standard error to within 15 % (the width that the bound's 95 % rests on)."""
    sigma, q, steps, m = 3.4375, 0.1184, 253, 1000
    ideal = whitebox.ideal_mu(sigma, q, steps)
    assert ideal == pytest.approx(q * math.sqrt(steps) / math.sqrt(sigma ** 2 + q * (1 - q)))
    mu_hat, se = [], []
    for rep in range(200):
        rng = np.random.default_rng([rep, 2])
        included = rng.random(m) < 0.5
        joins = rng.binomial(steps, q, m) * included  # steps at which each included canary was sampled
        scores = joins + rng.normal(0.0, sigma * math.sqrt(steps), m)  # the sum of T N(0, σ²) draws
        g = gdp.gaussian_pair_bound(scores, included, delta=1e-4, confidence=0.95)
        mu_hat.append(g.mu_hat)
        se.append(g.standard_error)
        assert g.mu == pytest.approx(max(0.0, g.mu_hat - 1.6449 * g.standard_error), abs=1e-4)
    assert ideal - 0.025 < np.mean(mu_hat) < ideal + 0.01, (np.mean(mu_hat), ideal)
    assert np.std(mu_hat) == pytest.approx(np.mean(se), rel=0.15), (np.std(mu_hat), np.mean(se))


def test_gaussian_pair_bound_reads_the_larger_spread_and_refuses_too_few_canaries():
    """The same shift with a wider "in" side proves less (μ in units of the wider spread), never
    more; fewer than 8 canaries on a side is refused, and an audit of so few canaries records no
    Gaussian-pair bound rather than failing."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=2000)
    included = np.arange(2000) < 1000
    narrow = np.where(included, 1.0 + z, z)
    wide = np.where(included, 1.0 + 2 * z, z)
    a = gdp.gaussian_pair_bound(narrow, included, delta=1e-5, confidence=0.95)
    b = gdp.gaussian_pair_bound(wide, included, delta=1e-5, confidence=0.95)
    shift = (wide[included].mean() - wide[~included].mean()) / wide[included].std(ddof=1)  # the "in" spread, ≈ 2
    assert shift == pytest.approx(0.5, abs=0.05)
    assert b.mu == pytest.approx(shift - 1.6449 * math.sqrt(2 / 1000 + shift ** 2 / 2000), rel=1e-4)
    assert b.mu < 0.6 * a.mu and b.epsilon < a.epsilon
    assert a.normality_p_in > 0.01 and a.normality_p_out > 0.01
    with pytest.raises(ValueError, match="at least 8"):
        gdp.gaussian_pair_bound(narrow[:1005], included[:1005], delta=1e-5, confidence=0.95)
    few = synthetic_canary_run(canaries=10, epochs=2)
    assert min(few.canaries.included.sum(), (~few.canaries.included).sum()) < gdp.MIN_SIDE
    assert all(r.gaussian_bound is None for r, _ in whitebox.score_canaries(few, confidence=0.95, seed=0, n_boot=20))


# --- gradient canaries through the real DP-SGD path ------------------------------------------

import torch  # noqa: E402
from torch import nn  # noqa: E402

from dpmammo.data.manifest import PatchRecord  # noqa: E402
from dpmammo.privacy import PrivacyConfig  # noqa: E402

FEATURES = 1024


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_canary_run(*, epsilon: float = 2.0, canaries: int = 1000, patches: int = 1, epochs: int = 10,
                         seeded: bool = False, knows_seed: bool = False, mutate=None,
                         directions: whitebox.Directions = "dirac", seed: int = 0,
                         batch_fraction: float = 1.0, views: int = 1) -> whitebox.CanaryRun:
    """A linear map on synthetic features of 200 patients (1–3 patches each), trained with DP-SGD per
    patient through make_private and the loop's train_step, plus `canaries` gradient canaries; the
    expected batch is `batch_fraction` of the units (1: q ≈ 1, the noisy unit count sets it a little
    below, and `epochs` steps); `views` rows of each sampled record (train.augment_multiplicity).

    The features are small and use 8 of 1024 dimensions, so the real patients' gradients hardly
    touch the weights where Dirac canaries sit: a canary's score is its own gradient and DP noise."""
    gen = torch.Generator().manual_seed(seed)
    sizes = (torch.rand(200, generator=gen) * 3).long() + 1
    records, rows = [], []
    for i, k in enumerate(sizes.tolist()):
        label = i % 2
        for j in range(k):
            records.append(PatchRecord(path=f"p{i}_{j}.png", label=label, patient=str(i), dataset="synthetic-features",
                                       split="train", source="real"))
            x = torch.zeros(FEATURES)
            x[:8] = 0.005 * (torch.randn(8, generator=gen) + (1.0 if label else -1.0))
            rows.append(x)
    inputs, labels = torch.stack(rows), torch.tensor([r.label for r in records])
    torch.manual_seed(seed)
    model = nn.Linear(FEATURES, 2, bias=False)
    privacy = PrivacyConfig(target_epsilon=epsilon, delta=1e-4, grad_sample_mode="hooks", seeded_noise_for_tests=seeded)
    design = whitebox.GradientCanaries.draw(canaries, sum(p.numel() for p in model.parameters()), patches=patches,
                                            directions=directions, seed=seed)
    return whitebox.canary_training(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), criterion=nn.CrossEntropyLoss(),
        inputs=inputs, labels=labels, records=records, privacy=privacy, epochs=epochs,
        batch_size=int(batch_fraction * (len(sizes) + int(design.included.sum()))), physical=100_000, seed=seed, canaries=design,
        adversary_knows_seed=knows_seed, mutate=mutate, views_per_record=views)


def bounds(run: whitebox.CanaryRun) -> dict[str, float]:
    return {r.attack: r.epsilon_lower_bound for r, _ in whitebox.score_canaries(run, confidence=0.95, seed=0, n_boot=50)}


def quarter_noise(dp):
    """Mutation: σ/4 in the optimizer, while the record states the calibrated σ."""
    dp.optimizer.noise_multiplier /= 4


def clip_per_patch(dp):
    """Mutation: each patch clipped on its own while the sampler and the record say per patient."""
    chunks = dp.chunks

    def per_patch(batch, max_physical):
        for part, last in chunks(batch, max_physical):
            dp.optimizer.groups = None
            yield part, last

    dp.chunks = per_patch


def test_canary_gradients_pass_the_real_sampler_and_clipping():
    """Seeded noise that the adversary replays leaves each step's clipped sum: an included canary of
    4 patches, each of gradient norm C, shows exactly 1 (its sum 4C clipped to C per patient) at the
    steps the Poisson sampler drew it, about a fraction q of them, and 0 otherwise; an excluded one
    shows 0. With per-patch clipping it shows 4."""
    run = synthetic_canary_run(patches=4, seeded=True, knows_seed=True, batch_fraction=0.3, epochs=3)
    # Canaries whose coordinate is not a weight of the 8 used features: nothing but the canary moves it.
    alone = (run.canaries.coords % FEATURES >= 8).numpy()
    x, inc = run.updates, run.canaries.included
    assert run.steps == pytest.approx(3 / run.sample_rate, abs=1) and 0.2 < run.sample_rate < 0.4
    drawn = np.abs(x[:, inc & alone] - 1) < 1e-4
    assert (drawn | (np.abs(x[:, inc & alone]) < 1e-4)).all()
    n = drawn.size
    assert abs(drawn.mean() - run.sample_rate) < 4 * math.sqrt(run.sample_rate * (1 - run.sample_rate) / n)
    assert (np.abs(x[:, ~inc & alone]) < 1e-4).all()
    broken = synthetic_canary_run(patches=4, seeded=True, knows_seed=True, batch_fraction=0.3, epochs=3,
                                  mutate=clip_per_patch)
    xb = broken.updates[:, broken.canaries.included & alone]
    assert (np.abs(xb - 4) < 1e-3).mean() == pytest.approx(broken.sample_rate, abs=0.05)
    assert ((np.abs(xb - 4) < 1e-3) | (np.abs(xb) < 1e-3)).all()


def test_canary_views_under_augmentation_multiplicity_are_summed_before_the_one_clip():
    """train.augment_multiplicity = 2: each sampled record enters a step twice (Batch.repeated), so a
    canary of 4 patches has 8 rows of gradient norm C; its unit is still clipped once, to exactly 1
    in units of C, at a fraction q of the steps. Clipped per row instead (the mutation), it shows 8."""
    run = synthetic_canary_run(patches=4, seeded=True, knows_seed=True, batch_fraction=0.3, epochs=3, views=2)
    alone = (run.canaries.coords % FEATURES >= 8).numpy()
    x = run.updates[:, run.canaries.included & alone]
    drawn = np.abs(x - 1) < 1e-4
    assert (drawn | (np.abs(x) < 1e-4)).all() and drawn.mean() == pytest.approx(run.sample_rate, abs=0.05)
    broken = synthetic_canary_run(patches=4, seeded=True, knows_seed=True, batch_fraction=0.3, epochs=3, views=2,
                                  mutate=clip_per_patch)
    xb = broken.updates[:, broken.canaries.included & alone]
    assert (np.abs(xb - 8) < 1e-3).mean() == pytest.approx(broken.sample_rate, abs=0.05)
    assert ((np.abs(xb - 8) < 1e-3) | (np.abs(xb) < 1e-3)).all()


@pytest.mark.parametrize("mutation", ["none", "noise σ/4", "clip per patch", "replayed seed"])
def test_one_run_catches_each_broken_mechanism_and_never_the_correct_one(mutation):
    """One run at a promised ε = 2 per patient, 1000 canaries: each deliberately broken mechanism,
    run through the same code with a test-only switch, yields a Steinke lower bound above the
    promise (the f-DP bound alone does; Steinke et al.'s at 97.5 % misses σ/4 narrowly); the correct
    mechanism's bounds stay below it. The bound reported is the larger of the two, each proved at
    97.5 % so that the larger holds at 95 %. The Gaussian-pair bound of the sum score (95 % on its
    own) is above the promise for each mutation, and for the correct mechanism above the f-DP bound
    and below the promise (1.07 against 0.47 and 2 in one run)."""
    kwargs = {"none": {}, "noise σ/4": {"mutate": quarter_noise}, "clip per patch": {"mutate": clip_per_patch},
              "replayed seed": {"seeded": True, "knows_seed": True}}[mutation]
    patches = 4 if mutation in ("none", "clip per patch") else 1  # a patient of many patches
    run = synthetic_canary_run(patches=patches, **kwargs)
    assert run.epsilon == pytest.approx(2.0, abs=0.02)  # the promise the record would state
    results = {r.attack: r for r, _ in whitebox.score_canaries(run, confidence=0.95, seed=0, n_boot=100)}
    primary = results[whitebox.PRIMARY_BOUND].epsilon_lower_bound
    for r in results.values():
        assert r.epsilon_lower_bound == max(r.bound.epsilon, r.fdp_bound.epsilon)
        assert r.bound.confidence == r.fdp_bound.confidence == pytest.approx(0.975)
    steinke, f = results[whitebox.PRIMARY_BOUND].bound.epsilon, results[whitebox.PRIMARY_BOUND].fdp_bound.epsilon
    assert f > steinke  # on the same guesses, the whole Gaussian curve proves more than one (ε, δ) point
    pair = results[whitebox.PRIMARY_ESTIMATE].gaussian_bound
    assert [n for n, r in results.items() if r.gaussian_bound] == list(whitebox.GAUSSIAN_SCORES)
    # μ̂ against the shift the stated σ, q and T give (record.CanaryMechanism): a broken mechanism lands
    # far above it, the correct one does not (z = 17.8 / 16.7 / 28.8 for the mutations, −0.1 correct).
    z = (pair.mu_hat - whitebox.ideal_mu(run.sigma, run.sample_rate, run.steps)) / pair.standard_error
    assert z > 3 if mutation != "none" else z < 3, (mutation, z)
    if mutation == "none":
        assert all(r.epsilon_lower_bound < run.epsilon for r in results.values()), results
        assert primary > 0.1  # the canaries are seen: a bound, just not above the promise
        # every score counts: more than the guesses prove, still below the promise
        assert f < pair.epsilon < run.epsilon, (f, pair)
    else:
        assert primary == f > run.epsilon, (mutation, primary)
        assert results[whitebox.PRIMARY_ESTIMATE].gdp_estimate.epsilon.value > 2 * run.epsilon
        assert pair.epsilon > run.epsilon, (mutation, pair)


# --- the recipe-level audit -------------------------------------------------------------------

def test_gradient_canary_audit_of_a_phantom_recipe_writes_bound_and_estimate(tmp_path):
    """`dpmammo audit CONFIG --method gradient-canary` on a DP head-only phantom recipe: audit.json
    states the promise per patient, the bound (the larger of Steinke et al.'s and the f-DP bound,
    never above the promise) and the GDP estimate per threat model, and says which is which. The
    recipe trains on two flip views of each sampled patch (train.augment_multiplicity), canaries too."""
    import os
    import subprocess
    import sys

    import yaml

    from dpmammo.audit import read_audit
    from dpmammo.data.phantoms import make_phantoms

    data = make_phantoms(tmp_path / "data", n=64, seed=3, size=32)
    cfg = {"data": {"root": str(data), "train": ["phantom/train"], "val": "phantom/val"},
           "model": {"name": "cnn-small", "input_size": 32, "width": 64, "freeze_backbone": True},
           "optim": {"lr": 5e-2}, "train": {"epochs": 4, "batch_size": 16, "augment": "flips", "augment_multiplicity": 2,
                                                  "device": "cpu"},
           "privacy": {"target_epsilon": 4.0, "delta": 1e-3}}
    cfg_file = tmp_path / "recipe.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "audit"
    proc = subprocess.run([sys.executable, "-m", "dpmammo.cli", "audit", str(cfg_file), "--out", str(out),
                           "--method", "gradient-canary", "--canaries", "300", "--canary-patches", "2"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "260"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = read_audit(out / "audit.json")
    assert rec.method == "gradient-canary" and rec.primary == "all-iterates" and rec.unit == "patient"
    assert rec.promised.guarantee == "dp" and rec.promised.unit == "patient" and 3.9 < rec.stage_epsilon <= 4.0
    assert rec.units == 300 and 110 < rec.target_members < 190
    threat = {a.attack: a.threat_model for a in rec.attacks}
    assert threat == {"all-iterates": "white-box all iterates", "all-iterates-sum": "white-box all iterates",
                      "final-model": "white-box final model"}
    assert all(a.epsilon_lower_bound <= rec.stage_epsilon and a.gdp_estimate.kind == "gdp-estimate"
               for a in rec.attacks)
    assert rec.measured_epsilon == rec.attacks[0].epsilon_lower_bound
    for a in rec.attacks:
        f = a.fdp_bound
        assert f.kind == "f-dp-gaussian" and f.delta == rec.delta and f.confidence == pytest.approx(0.975)
        assert a.epsilon_lower_bound == max(a.bound.epsilon, f.epsilon)
        assert f.two_sided and f.guesses // 2 in f.k_grid and f.guesses % 2 == 0 and f.correct <= f.guesses
        assert f.epsilon == (0.0 if f.mu == 0 else pytest.approx(gdp.gdp_epsilon(f.mu, rec.delta)))
    summed = next(a for a in rec.attacks if a.attack == "all-iterates-sum")
    assert rec.estimated_epsilon == summed.gdp_estimate.epsilon.value
    assert rec.gaussian_epsilon == summed.gaussian_bound.epsilon <= rec.stage_epsilon
    assert summed.gaussian_bound.confidence == 0.95 and "Gaussian-pair bound" in proc.stdout
    # The audited DP-SGD and the shift its ideal mechanism gives, beside the measured μ̂ and its spread.
    # The correct mechanism never lands 3 standard errors above the ideal; below it may (the phantom
    # recipe's small noise, σ 0.87, leaves the real gradients' drift on the canary coordinates visible:
    # z = −1.3, −0.6, −3.3 in three runs).
    mech, g = rec.mechanism, summed.gaussian_bound
    assert 0 < mech.sample_rate <= 1 and mech.steps > 0 and mech.noise_multiplier > 0
    assert mech.ideal_mu == pytest.approx(whitebox.ideal_mu(mech.noise_multiplier, mech.sample_rate, mech.steps))
    assert g.mu == pytest.approx(max(0.0, g.mu_hat - 1.6449 * g.standard_error), abs=1e-4)
    assert g.mu_hat < mech.ideal_mu + 3 * g.standard_error, (g.mu_hat, mech.ideal_mu, g.standard_error)
    assert "the ideal mechanism's μ" in proc.stdout
    # 300 canaries see a budget of 4 per patient: the estimate is well above nothing, whatever the bound.
    # 300, not 100: μ̂'s sampling spread falls as 1/√M, and at 100 canaries a run with fresh secret
    # noise can land below the threshold (its μ̂ = 0.25) by chance alone.
    assert rec.estimated_epsilon > 0.5
    assert any("BOUND" in n for n in rec.notes) and any("ESTIMATE" in n for n in rec.notes)
    assert "ε GDP estimate" in proc.stdout and "ε f-DP (GDP)" in proc.stdout and "ε Steinke" in proc.stdout
    from types import SimpleNamespace

    from dpmammo.report.audit import audit_table

    p = rec.attacks[0]  # the study report's row names both bounds beside the measured one
    row = audit_table([(SimpleNamespace(condition="real", epsilon=4.0, status="done", error=None), rec)])
    assert f"{rec.measured_epsilon:.2f}/patient (Steinke {p.bound.epsilon:.2f}, f-DP {p.fdp_bound.epsilon:.2f})" in row
    assert (out / "roc.png").stat().st_size > 0
