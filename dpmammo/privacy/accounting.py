"""Noise calibration and ε accounting for the privacy events of dpmammo.privacy.events.

Thin, validated wrappers over Opacus's accountants, so every stage calibrates and reports the
same way and a ledger can compose stages exactly (RDP composes by adding curves). Events cross
every API here as typed values; `opacus_history` is the one translation into Opacus's history
of (σ, q, steps) segments. A Gaussian release of noise multiplier σ is, for the accountant, a
subsampled Gaussian with q = 1 and one step: the same RDP curve and PRV.
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
from dpmammo.privacy.config import Unit
from dpmammo.privacy.events import DpSgdEvent, GaussianRelease, PrivacyEvent

# Opacus's default RDP orders stop at 63; short or low-ε runs have their optimum beyond that,
# which only loosens the bound. A wider grid gives the tighter (still valid) ε.
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [80, 96, 128, 192, 256, 384, 512, 1024]


# At very large or very small ε the best RDP order sits at an end of the grid; the ε reported is
# then a valid but slightly loose bound. Opacus warns on every call, which floods the log.
warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha", category=UserWarning)


# Opacus's accountant history: one (noise multiplier, sample rate, steps) per segment.
Segment = tuple[float, float, int]


def opacus_history(events: Sequence[PrivacyEvent]) -> tuple[Segment, ...]:
    """The events as Opacus's accountant history, in order (the one place that knows that format).

    A DP-SGD event is its own segment. A Gaussian release of noise multiplier σ (noise std σ·Δ on
    a sum of sensitivity Δ) has the RDP curve and privacy-loss distribution of the Gaussian
    mechanism of noise multiplier σ, which Opacus's subsampled Gaussian is at q = 1, one step."""
    history = []
    for e in events:
        if isinstance(e, DpSgdEvent):
            history.append((float(e.noise_multiplier), float(e.sample_rate), int(e.steps)))
        elif isinstance(e, GaussianRelease):
            history.append((float(e.noise_multiplier), 1.0, 1))
        else:
            raise TypeError(f"not a privacy event: {e!r} (use DpSgdEvent or GaussianRelease)")
    return tuple(history)


def _opacus_accountant(name: str, history: Sequence[Segment] = ()):
    acc = create_accountant(mechanism=name)
    _load_history(acc, history)
    return acc


def _load_history(acc, history: Sequence[Segment]) -> None:
    # In place: an optimizer hook from acc.get_optimizer_hook_fn keeps appending to this accountant.
    acc.history = [(float(s), float(q), int(k)) for s, q, k in history]


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
                    accountant: str, prior: Sequence[PrivacyEvent] = ()) -> float:
    """Smallest σ (to 0.01 in ε) with ε(σ, q, steps, δ) ≤ target_epsilon; with `prior` (the events
    composed before this stage's steps: earlier DP stages of a chain, the stage's noisy unit
    count), of their composition. A single Gaussian release is sample_rate = 1, steps = 1."""
    return _calibrate_noise(float(target_epsilon), float(delta), float(sample_rate), int(steps), accountant,
                            opacus_history(prior))


@functools.lru_cache(maxsize=256)
def _calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str,
                     prior: tuple[Segment, ...]) -> float:
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
        if "delta" in str(e):  # Opacus's PRV: "Floating point errors will dominate for such small values of delta"
            raise DpMammoError(_unresolvable_delta(accountant, delta, e)) from None
        raise DpMammoError(f"cannot reach epsilon={target_epsilon} with {steps} steps at q={sample_rate:.4g}: {e}") from None


def _unresolvable_delta(accountant: str, delta: float, e: Exception) -> str:
    return (f"the {accountant} accountant cannot compute ε at delta={delta:g}: {e} "
            "Choose a larger privacy.delta or privacy.accountant: rdp (for every stage of the chain).")


def _calibrate_after(prior: list[Segment], target: float, delta: float, q: float,
                     steps: int, accountant: str) -> float:
    """Opacus's get_noise_multiplier takes no history of earlier segments, so its bisection is done
    here on the composed ε: the σ returned keeps ε(prior + this stage) ≤ target, within 0.01."""
    spent = _epsilon_of(tuple(prior), delta, accountant)
    if spent >= target:
        raise DpMammoError(f"the DP stages before this one already spend ε = {spent:.3g} of the chain's target "
                           f"{target:g} (privacy.target: total); raise target_epsilon or give them less")
    total = lambda sigma: _epsilon_of((*prior, (sigma, q, steps)), delta, accountant)  # noqa: E731
    low, high = 0.0, 10.0
    while total(high) > target:
        low, high = high, 2 * high
        if high > 1e6:
            raise DpMammoError(f"cannot reach a chain total of ε = {target:g} with {steps} steps at q = {q:.4g}")
    while target - total(high) > 0.01:
        mid = (low + high) / 2
        low, high = (mid, high) if total(mid) > target else (low, mid)
    return high


def epsilon_of(events: Sequence[PrivacyEvent], delta: float, accountant: str = "rdp") -> float:
    """ε of the given events, composed."""
    return _epsilon_of(opacus_history(events), float(delta), accountant)


@functools.lru_cache(maxsize=4096)
def _epsilon_of(history: tuple[Segment, ...], delta: float, accountant: str) -> float:
    acc = _opacus_accountant(accountant, history)
    try:
        with _full_batch_quiet(accountant, [q for _, q, _ in history]):
            return float(acc.get_epsilon(delta=delta, **accountant_kwargs(accountant)))
    except ValueError as e:
        # Opacus's PRV refuses a δ it cannot resolve in floating point: the limit grows with the
        # history's length (about 1e-15 for one short stage, 1e-14 already failing with a longer one).
        raise DpMammoError(_unresolvable_delta(accountant, delta, e)) from None


class EpsilonCurve:
    """ε (RDP) after any number of steps of one Poisson-sampled Gaussian stage, cheaply.

    The RDP of one step is computed once (the costly part); RDP composes linearly in the steps,
    so ε after k steps is one conversion of k·RDP. A training loop shows ε every epoch, and asking
    the accountant from scratch each epoch would repeat that costly part every epoch.
    The recorded ε of a stage still comes from the stage's own accountant (`DPSetup.epsilon`).
    """

    def __init__(self, noise_multiplier: float, sample_rate: float, delta: float,
                 before: Sequence[PrivacyEvent] = ()):
        """`before`: events composed ahead of the stage's steps (its noisy unit count, its other releases)."""
        self.delta = delta
        self._orders = np.array(RDP_ORDERS)
        self._rdp_one = np.array(rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier,
                                                          steps=1, orders=RDP_ORDERS))
        self._rdp_before = sum((np.array(rdp_analysis.compute_rdp(q=q, noise_multiplier=s, steps=k, orders=RDP_ORDERS))
                                for s, q, k in opacus_history(before)), np.zeros(len(RDP_ORDERS)))

    def __call__(self, steps: int) -> float:
        if steps == 0 and not self._rdp_before.any():
            return 0.0
        eps, _ = rdp_analysis.get_privacy_spent(orders=self._orders, rdp=self._rdp_before + self._rdp_one * steps,
                                                delta=self.delta)
        return float(eps)


class StepAccountant:
    """The steps a DP-SGD stage has taken, counted by Opacus's accountant (attached to the
    optimizer by `optimizer_hook`) and read back as typed events of the stage's C and unit."""

    def __init__(self, name: str, *, max_grad_norm: float, unit: Unit):
        self.max_grad_norm, self.unit = max_grad_norm, unit
        self._opacus = _opacus_accountant(name)

    def optimizer_hook(self, sample_rate: float):
        """For DPOptimizer.attach_step_hook: records one step of the optimizer's σ at `sample_rate`."""
        return self._opacus.get_optimizer_hook_fn(sample_rate=sample_rate)

    def events(self) -> list[DpSgdEvent]:
        """The steps taken, one event per run of steps at one (σ, q), in order."""
        return [DpSgdEvent(noise_multiplier=s, sample_rate=q, steps=k, max_grad_norm=self.max_grad_norm, unit=self.unit)
                for s, q, k in self._opacus.history]

    @property
    def steps(self) -> int:
        return sum(k for _, _, k in self._opacus.history)

    def state(self) -> list[Segment]:
        """What a checkpoint keeps (public: the step counts and their σ, q)."""
        return [tuple(h) for h in self._opacus.history]

    def load_state(self, state: Sequence[Segment]) -> None:
        """Continue from a checkpoint's `state()`: a resume never forgets the steps it took."""
        _load_history(self._opacus, state)
