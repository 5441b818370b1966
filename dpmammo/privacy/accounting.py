"""Noise calibration and ε accounting for Poisson-sampled Gaussian DP-SGD (Abadi et al., 2016).

Thin, validated wrappers over Opacus's accountants, so every stage calibrates and reports the
same way and a ledger can compose stages exactly (RDP composes by adding curves). A single
Gaussian release of a sum (DP-MERF) is the case sample_rate = 1, steps = 1.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Sequence

import numpy as np
from opacus.accountants import create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier

from dpmammo.errors import DpMammoError

# Opacus's default RDP orders stop at 63; short or low-ε runs have their optimum beyond that,
# which only loosens the bound. A wider grid gives the tighter (still valid) ε.
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [80, 96, 128, 192, 256, 384, 512, 1024]


# At very large or very small ε the best RDP order sits at an end of the grid; the ε reported is
# then a valid but slightly loose bound. Opacus warns on every call, which floods the log.
warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha", category=UserWarning)


def accountant_kwargs(accountant: str) -> dict:
    return {"alphas": RDP_ORDERS} if accountant == "rdp" else {}


def _full_batch_quiet(accountant: str, sample_rates) -> contextlib.AbstractContextManager:
    """Opacus's PRV of a subsampled Gaussian takes log(1 − q), −inf at q = 1 (one release of the
    whole data set): the branch it then selects is the right one (every t > −inf, the plain
    Gaussian), and ε matches dp-accounting's PLD, but numpy warns of a division by zero on every
    call. Silenced for exactly that case."""
    if accountant == "prv" and any(q == 1 for q in sample_rates):
        return np.errstate(divide="ignore")
    return contextlib.nullcontext()


def check_delta(delta: float, n_units: int, unit: str = "patient") -> None:
    """δ must be below 1/N: at δ ≥ 1/N, 'release one random record' would satisfy (ε, δ)-DP."""
    if not 0 < delta < 1.0 / n_units:
        raise DpMammoError(
            f"delta={delta:g} must be in (0, 1/N) = (0, {1.0 / n_units:.3g}) for N={n_units} "
            f"private units ({'patches' if unit == 'patch' else unit + 's'}); choose a smaller delta"
        )


def steps_for(epochs: int, sample_rate: float) -> int:
    """Opacus's convention: an epoch is 1/q Poisson steps."""
    return int(round(epochs / sample_rate))


# Memoised (pure functions of their arguments): a study calibrates the same (ε, δ, q, steps) once
# per seed, and the models of a membership-inference audit (dpmammo.audit) repeat one schedule
# 17-65 times; each call runs the accountant (σ: a search over many ε evaluations).
def calibrate_noise(*, target_epsilon: float, delta: float, sample_rate: float, steps: int,
                    accountant: str, prior: Sequence[tuple[float, float, int]] = ()) -> float:
    """Smallest σ (to 0.01 in ε) with ε(σ, q, steps, δ) ≤ target_epsilon; with `prior` (the
    (σ, q, steps) segments composed before this stage's steps: earlier DP stages of a chain, the
    stage's noisy unit count), of their composition."""
    return _calibrate_noise(float(target_epsilon), float(delta), float(sample_rate), int(steps), accountant,
                            tuple(tuple(h) for h in prior))


@functools.lru_cache(maxsize=256)
def _calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str,
                     prior: tuple[tuple[float, float, int], ...]) -> float:
    if target_epsilon <= 0:
        raise DpMammoError(f"target_epsilon={target_epsilon} must be > 0")
    if not 0 < sample_rate <= 1:
        raise DpMammoError(f"sample_rate={sample_rate} must be in (0, 1]")
    if prior:
        return _calibrate_after(list(prior), target_epsilon, delta, sample_rate, steps, accountant)
    try:
        with _full_batch_quiet(accountant, [sample_rate]):
            return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                              sample_rate=sample_rate, steps=steps, accountant=accountant,
                                              epsilon_tolerance=0.01, **accountant_kwargs(accountant)))
    except ValueError as e:
        raise DpMammoError(f"cannot reach epsilon={target_epsilon} with {steps} steps at q={sample_rate:.4g}: {e}") from None


def _calibrate_after(prior: list[tuple[float, float, int]], target: float, delta: float, q: float,
                     steps: int, accountant: str) -> float:
    """Opacus's get_noise_multiplier takes no history of earlier segments, so its bisection is done
    here on the composed ε: the σ returned keeps ε(prior + this stage) ≤ target, within 0.01."""
    spent = epsilon_of(prior, delta, accountant)
    if spent >= target:
        raise DpMammoError(f"the DP stages before this one already spend ε = {spent:.3g} of the chain's target "
                           f"{target:g} (privacy.target: total); raise target_epsilon or give them less")
    total = lambda sigma: epsilon_of([*prior, (sigma, q, steps)], delta, accountant)  # noqa: E731
    low, high = 0.0, 10.0
    while total(high) > target:
        low, high = high, 2 * high
        if high > 1e6:
            raise DpMammoError(f"cannot reach a chain total of ε = {target:g} with {steps} steps at q = {q:.4g}")
    while target - total(high) > 0.01:
        mid = (low + high) / 2
        low, high = (mid, high) if total(mid) > target else (low, mid)
    return high


def epsilon_of(history: list[tuple[float, float, int]], delta: float, accountant: str = "rdp") -> float:
    """ε after the given (noise_multiplier, sample_rate, steps) segments, composed."""
    return _epsilon_of(tuple(tuple(h) for h in history), float(delta), accountant)


@functools.lru_cache(maxsize=4096)
def _epsilon_of(history: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    acc = create_accountant(mechanism=accountant)
    acc.history = list(history)
    with _full_batch_quiet(accountant, [q for _, q, _ in history]):
        return float(acc.get_epsilon(delta=delta, **accountant_kwargs(accountant)))


class EpsilonCurve:
    """ε (RDP) after any number of steps of one Poisson-sampled Gaussian stage, cheaply.

    The RDP of one step is computed once (the costly part); RDP composes linearly in the steps,
    so ε after k steps is one conversion of k·RDP. A training loop shows ε every epoch, and asking
    the accountant from scratch each epoch would repeat that costly part every epoch.
    The recorded ε of a stage still comes from the stage's own accountant (`DPSetup.epsilon`).
    """

    def __init__(self, noise_multiplier: float, sample_rate: float, delta: float,
                 before: Sequence[tuple[float, float, int]] = ()):
        """`before`: segments composed ahead of the stage's steps (its noisy unit count)."""
        self.delta = delta
        self._orders = np.array(RDP_ORDERS)
        self._rdp_one = np.array(rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier,
                                                          steps=1, orders=RDP_ORDERS))
        self._rdp_before = sum((np.array(rdp_analysis.compute_rdp(q=q, noise_multiplier=s, steps=k, orders=RDP_ORDERS))
                                for s, q, k in before), np.zeros(len(RDP_ORDERS)))

    def __call__(self, steps: int) -> float:
        if steps == 0 and not self._rdp_before.any():
            return 0.0
        eps, _ = rdp_analysis.get_privacy_spent(orders=self._orders, rdp=self._rdp_before + self._rdp_one * steps,
                                                delta=self.delta)
        return float(eps)


def new_accountant(name: str):
    return create_accountant(mechanism=name)
