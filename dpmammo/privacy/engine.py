"""DP-SGD on Opacus: per-unit clipping and Gaussian noise, Poisson sampling, virtual batches.

One entry point, `make_private`, in the spirit of Opacus's `PrivacyEngine.make_private`. It
differs in two respects. Batches come from a `PoissonUnits` sampler (dpmammo.privacy.sampling)
that the loop drives, so a logical batch can be split into physical chunks (virtual batches)
without plain gradient accumulation, which would clip the sum instead of each unit. And the unit
of privacy can be a patient: the per-sample gradients of one patient's patches are added up
before Opacus clips, so the noise covers everything one patient contributes.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple, Sequence

import torch
from opacus.grad_sample import AbstractGradSampleModule
from opacus.grad_sample.utils import wrap_model
from opacus.optimizers import (DistributedDPOptimizer, DistributedDPOptimizerFastGradientClipping, DPOptimizer,
                               DPOptimizerFastGradientClipping)
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from opacus.validators import ModuleValidator
from torch import nn

from dpmammo.errors import DpMammoError
from dpmammo.privacy.accounting import (EpsilonCurve, Segment, StepAccountant, calibrate_noise, epsilon_of,
                                        steps_for)
from dpmammo.privacy.bookkeeping import BookKeepingClipping, BookKeepingLoss, unsupported_layer
from dpmammo.privacy.config import PrivacyConfig
from dpmammo.privacy.events import DpSgdEvent, GaussianRelease, PrivacyEvent
from dpmammo.privacy.grad_samplers import UnitGhostClipping, prepare_for_dp
from dpmammo.privacy.noise import NoiseAheadMixin
from dpmammo.privacy.opacus_internals import flat_grad_sample
from dpmammo.privacy.sampling import Batch, PoissonUnits
from dpmammo.privacy.secret import SecretKey

# Opacus hooks every trainable layer; for the first one (its input is data, which needs no
# gradient) torch warns on every step that the hook sees output gradients only. That is all
# per-sample gradients need, so the warning says nothing here and floods the log.
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with respect "
                                          "to module outputs", category=UserWarning)


class UnitDPOptimizer(NoiseAheadMixin, DPOptimizer):
    """Opacus's DPOptimizer, clipping one *unit's* gradient: before the per-row clipping, the
    per-sample gradients of rows that share a unit (a patient's patches) are summed, so each
    patient's total contribution is clipped to C. Opacus has no user-level clipping of its own;
    everything after the grouping (clip, sum, noise, scale, accounting hook) is Opacus's."""

    groups: torch.Tensor | None = None  # unit number of each row of the current chunk; None: one row per unit
    records: torch.Tensor | None = None  # record index (in the sampler's records) of each row of the current chunk
    # Audits only (dpmammo.audit.whitebox): called with (records, per-sample gradients, one (rows, *shape) tensor
    # per parameter) before anything is summed or clipped; returns the gradients to use instead. Gradient
    # canaries enter here, so that they pass through the same grouping, clipping and noise as real units.
    sample_hook: Callable[[torch.Tensor, list[torch.Tensor]], list[torch.Tensor]] | None = None

    def clip_and_accumulate(self):
        if self.sample_hook is not None:
            grads = self.sample_hook(self.records, [flat_grad_sample(self, p) for p in self.params])
            for p, g in zip(self.params, grads):
                p.grad_sample = g
        if self.groups is not None:
            n_units = int(self.groups.max()) + 1 if len(self.groups) else 0
            for p in self.params:
                gs = flat_grad_sample(self, p)
                p.grad_sample = torch.zeros((n_units, *gs.shape[1:]), dtype=gs.dtype, device=gs.device).index_add_(
                    0, self.groups.to(gs.device), gs)
        super().clip_and_accumulate()


class FastClippingDPOptimizer(NoiseAheadMixin, DPOptimizerFastGradientClipping):
    """Opacus's optimizer for an already clipped sum in p.grad (ghost and book-keeping modes), with
    the noise drawn ahead (dpmammo.privacy.noise)."""

    def accumulate(self) -> None:
        # Opacus copies the first chunk's clipped sum with copy.deepcopy, a visible part of a small
        # head's step. The sum is taken as it is instead and p.grad let go, so that no later
        # backward pass or zero_grad(set_to_none=False) can write into the accumulated sum.
        for p in self.params:
            if p.summed_grad is None:
                p.summed_grad, p.grad = p.grad.detach(), None
            else:
                p.summed_grad.add_(p.grad)


class NoiseOnceAcrossRanks:
    """For a training over several processes (dpmammo.distributed), before Opacus's distributed
    optimizers in the MRO: each rank clips its own units and sums them, the sums are all-reduced
    (Opacus's `reduce_gradients`), and the secret noise is added once, by rank 0, so the step's
    noise has standard deviation σ·C whatever the number of ranks. The other ranks draw no noise
    (their `noise_ahead` only counts steps). The expected batch each rank divides by is the whole
    step's over the number of ranks: Opacus divides the all-reduced sum by the number of ranks again."""

    rank: int

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.noise_ahead.enabled = self.rank == 0

    def add_noise(self) -> None:
        if self.rank == 0:
            super().add_noise()  # NoiseAheadMixin: the secret noise, once per step
        else:
            for p in self.params:
                p.grad = p.summed_grad.view_as(p)


class DistributedUnitDPOptimizer(NoiseOnceAcrossRanks, UnitDPOptimizer, DistributedDPOptimizer):
    """UnitDPOptimizer on one rank of several: per-unit clipping here, the sum over ranks and the
    step from Opacus's DistributedDPOptimizer, the noise once (NoiseOnceAcrossRanks)."""


class DistributedFastClippingDPOptimizer(NoiseOnceAcrossRanks, FastClippingDPOptimizer,
                                         DistributedDPOptimizerFastGradientClipping):
    """FastClippingDPOptimizer (ghost and book-keeping modes) on one rank of several."""


class PrivacyCheckpoint(NamedTuple):
    accountant_history: list[Segment]  # the steps taken, with their σ and q
    draws: dict[str, int]  # batches ("sample") and noise vectors ("noise") drawn so far
    rate_units: float | None  # the noisy unit count the sample rate was set from


@dataclass
class DPSetup:
    """What a DP training loop needs: the wrapped model and optimizer, the sampler and the accounting.

    `criterion(logits, y)` returns a loss whose `.backward()` does what the mode needs (one
    backward pass for hooks/functorch/bookkeeping; two for ghost clipping), so a loop reads the same for
    every mode: for each chunk of `dp.chunks(batch, n)`: loss = dp.criterion(dp.model(x), y);
    loss.backward(); dp.optimizer.step().
    """

    model: AbstractGradSampleModule | BookKeepingClipping
    optimizer: DPOptimizer
    criterion: Callable
    grad_sample_mode: str
    accountant: StepAccountant
    noise_multiplier: float
    sampler: PoissonUnits
    planned_steps: int
    config: PrivacyConfig
    curve: EpsilonCurve | None = None  # cheap running ε of an RDP stage (a PRV stage asks its accountant)
    releases: tuple[GaussianRelease, ...] = ()  # the stage's releases before its steps, besides the count

    @property
    def sample_rate(self) -> float:
        return self.sampler.sample_rate

    def chunks(self, batch: Batch, max_physical: int) -> Iterator[tuple[slice, bool]]:
        """Split a logical batch into physical chunks that never split a unit.

        Yields (slice, is_last). For every chunk but the last the optimizer clips and
        accumulates without stepping: Opacus's virtual-batch mechanism (BatchMemoryManager)
        made explicit.
        """
        self.optimizer.noise_ahead.start(self.optimizer.noise_std())  # drawn while the chunks compute
        for part, last in batch.chunks(max_physical):
            self.optimizer.signal_skip_step(do_skip=not last)
            groups = batch.chunk_groups(part)
            if isinstance(self.optimizer, UnitDPOptimizer):
                self.optimizer.groups, self.optimizer.records = groups, batch.idx[part]
            if isinstance(self.model, (UnitGhostClipping, BookKeepingClipping)):
                self.model.groups = groups
            yield part, last

    def draw_next_noise(self) -> None:
        """Start drawing the next step's noise now, so that it overlaps the next batch's sampling and
        gathering too. A loop calls this only where another step of the same epoch follows, so no
        draw is pending when a checkpoint (taken at an epoch's end) records the step counts."""
        self.optimizer.noise_ahead.start(self.optimizer.noise_std())

    def step_empty(self) -> None:
        """A logical batch with no sample still releases a noisy (all-noise) step."""
        if isinstance(self.optimizer, UnitDPOptimizer):
            self.optimizer.groups, self.optimizer.records = None, torch.empty(0, dtype=torch.long)
        if isinstance(self.model, (UnitGhostClipping, BookKeepingClipping)):
            self.model.groups = None
        for p in self.optimizer.params:
            if isinstance(self.optimizer, DPOptimizerFastGradientClipping):  # reads the (already clipped) sum in p.grad
                p.grad = torch.zeros_like(p)
            else:
                p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def weigh(self, loss: torch.Tensor, rows: int, of_rows: int) -> torch.Tensor:
        """A chunk's mean loss as the loop backpropagates it: unchanged, since the per-row gradients
        are clipped and the optimizer divides their noisy sum by the expected batch (NonPrivate
        weighs each chunk by its share of the step instead)."""
        return loss

    def update(self, loss: torch.Tensor, last: bool) -> None:
        """Backpropagate a chunk of `chunks`: clip and accumulate; on the last chunk (the optimizer
        was told by `chunks`) also noise and step."""
        loss.backward()
        self.optimizer.step()  # on non-last chunks: clip and accumulate only (signal_skip_step)
        self.optimizer.zero_grad(set_to_none=True)

    @contextmanager
    def hooks_off(self) -> Iterator[None]:
        """No per-sample gradients within (a pass through the released model, as the GAN's generator
        step): they would leak into the model's next private step."""
        self.model.disable_hooks()
        try:
            yield
        finally:
            self.model.enable_hooks()

    @property
    def release_events(self) -> list[GaussianRelease]:
        """The Gaussian release of the noisy unit count the sample rate was set from ([] when the
        rate used an exact, public count), then the stage's other releases before its steps."""
        return [*count_release(self.sampler, self.config), *self.releases]

    def events(self) -> list[PrivacyEvent]:
        """What the stage has spent so far: the count and other releases, then the steps taken."""
        return [*self.release_events, *self.accountant.events()]

    def planned_events(self) -> list[PrivacyEvent]:
        """What the stage spends once it has taken its planned steps (what σ was calibrated for)."""
        return [*self.release_events, DpSgdEvent(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
                                              steps=self.planned_steps, max_grad_norm=self.config.max_grad_norm,
                                              unit=self.config.unit)]

    def epsilon(self) -> float:
        """The stage's ε from its accountant and its releases before the steps: what privacy.json records."""
        events = self.events()
        if not events:
            return 0.0
        return epsilon_of(events, self.config.delta, self.config.accountant)  # memoised

    def checkpoint_state(self) -> PrivacyCheckpoint:
        """What a checkpoint keeps of the stage's privacy (dpmammo.runs.RunDir.save_training_state), all
        public: a resume never re-spends or forgets ε, and continues the same streams with the same key."""
        return PrivacyCheckpoint(accountant_history=self.accountant.state(),
                                 draws={"sample": self.sampler.draws, "noise": self.optimizer.noise_ahead.draws},
                                 rate_units=self.sampler.rate_units)

    def restore_checkpoint_state(self, *, accountant_history: Sequence[Segment], draws: dict[str, int]) -> None:
        """Continue from a checkpoint's `checkpoint_state()` (its rate_units were given to the sampler
        when it was made: dpmammo.runs.RunDir.released_rate_units)."""
        self.accountant.load_state(accountant_history)
        self.sampler.draws, self.optimizer.noise_ahead.draws = draws["sample"], draws["noise"]

    def running_epsilon(self) -> float:
        """The stage's ε so far, for per-epoch logs: an RDP stage reads its precomputed curve, a PRV stage
        asks its accountant (memoised, so the record at the end reuses the last epoch's answer)."""
        return self.curve(self.steps_taken) if self.curve is not None else self.epsilon()

    @property
    def steps_taken(self) -> int:
        return self.accountant.steps


def count_release(sampler: PoissonUnits, config: PrivacyConfig) -> list[GaussianRelease]:
    """The release of the noisy unit count `sampler`'s rate was set from ([] for an exact, public count)."""
    sigma = sampler.unit_count_noise
    return [] if sigma is None else [GaussianRelease.unit_count(sigma, config.unit)]


def validate_for_dp(model: nn.Module) -> None:
    """Refuse layers Opacus cannot make private, with Opacus's own explanation."""
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise DpMammoError(f"model cannot be trained with DP: {errors[0]}")


def choose_grad_sample_mode(model: nn.Module) -> str:
    """bookkeeping when it can clip every trainable layer (linear layers and those with an Opacus
    grad sampler: conv, norms, the Swin bias table); otherwise ghost when linear layers hold most of
    the trainable weights, else hooks.

    Book-keeping needs one backward pass and forms no per-sample gradient where a ghost norm is
    cheaper, so it is the fastest mode wherever it applies (cnn-small, swin_t, heads on cached
    features; benchmarks/README.md, `dp_speed.py`). It keeps the layers' outputs and some
    per-sample gradients until the clipping factors are known: its peak memory is the highest of
    the modes (about twice a non-private step for swin_t); lower train.physical_batch_size if that matters.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if params and unsupported_layer(model) is None:
        return "bookkeeping"
    ghostable = sum(p.numel() for m in model.modules() if isinstance(m, nn.Linear)
                    for p in m.parameters(recurse=False) if p.requires_grad)
    return "ghost" if params and ghostable * 2 >= sum(p.numel() for p in params) else "hooks"


def make_private(*, model: nn.Module, optimizer: torch.optim.Optimizer, sampler: PoissonUnits, epochs: int,
                 config: PrivacyConfig, criterion: nn.Module | None = None, prior: Sequence[PrivacyEvent] = (),
                 world_size: int = 1, releases: Sequence[GaussianRelease] = ()) -> DPSetup:
    """Wrap `model` and `optimizer` for DP-SGD at `config.target_epsilon` over `epochs`.

    Args:
        model: the module to train; its trainable parameters get per-sample gradients. Modules
            that need another layout for that (Swin window attention) are converted in place,
            keeping their state-dict keys (see dpmammo.privacy.grad_samplers).
        optimizer: a plain torch optimizer over those parameters.
        sampler: the Poisson sampler of units (patients or patches); its rate q sets the
            accounting, its expected batch (in units) the scale of the noisy mean, and its
            secret key draws the noise too; a rate set from a noisy unit count adds that
            count's Gaussian release to the stage's accounting.
        epochs: planned epochs; the noise is calibrated so that ε after epochs/q steps is
            ≤ target_epsilon.
        config: the privacy block (target ε, δ, unit, clipping norm, accountant, grad-sample mode).
        criterion: the loss with mean reduction (default cross-entropy); DPSetup.criterion wraps it.
        prior: with `config.target == "total"`, the privacy events of the DP stages before this one
            (dpmammo.privacy.ledger.prior_history): the noise is calibrated to their composition
            with this stage in `config.accountant`.
        world_size: the number of processes of one training over several (dpmammo.distributed):
            each rank's sampler yields its share of the units, each rank clips its own, and the
            optimizer sums over the ranks and adds the noise once (NoiseOnceAcrossRanks).
        releases: Gaussian releases the stage made from its private units before its steps (the centre
            of a head's features, dpmammo.train.centre): part of the stage, so the steps' noise is
            calibrated to their composition with them whatever `config.target`.

    Returns:
        a DPSetup. Its accountant is attached to the optimizer and counts every real step.
    """
    validate_for_dp(model)
    criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
    if getattr(criterion, "reduction", "mean") != "mean":
        raise DpMammoError(f"the DP loss must use reduction='mean' (got {criterion.reduction!r})")
    steps = steps_for(epochs, sampler.sample_rate)
    own_releases = [*count_release(sampler, config), *releases]  # the stage's own, before its steps
    spent = epsilon_of(own_releases, config.delta, config.accountant) if releases else 0.0
    if spent >= config.target_epsilon:
        raise DpMammoError(
            f"the stage's releases before its steps ({', '.join(r.what or 'a release' for r in releases)}, with its "
            f"noisy unit count) already spend ε={spent:.3g} of its target ε={config.target_epsilon:g} per "
            f"{config.unit}: raise their noise multiplier (train.centre_features.noise_multiplier)")
    before = [*(prior if config.target == "total" else ()), *own_releases]
    sigma = calibrate_noise(target_epsilon=config.target_epsilon, delta=config.delta,
                            sample_rate=sampler.sample_rate, steps=steps, accountant=config.accountant, prior=before)
    prepare_for_dp(model)
    mode = choose_grad_sample_mode(model) if config.grad_sample_mode == "auto" else config.grad_sample_mode
    if world_size > 1 and not (torch.distributed.is_initialized() and torch.distributed.get_world_size() == world_size):
        raise DpMammoError(f"world_size={world_size} but this process is not in a process group of that size "
                           "(start it with dpmammo train --nproc or torchrun)")
    gsm, dp_opt, dp_criterion = _WRAPPERS[mode](model, optimizer, criterion, sigma, sampler.expected_units / world_size,
                                                config.max_grad_norm, sampler.key, world_size > 1)
    accountant = StepAccountant(config.accountant, max_grad_norm=config.max_grad_norm, unit=config.unit)
    dp_opt.attach_step_hook(accountant.optimizer_hook(sampler.sample_rate))
    curve = (EpsilonCurve(sigma, sampler.sample_rate, config.delta, before=own_releases) if config.accountant == "rdp"
             else None)
    return DPSetup(model=gsm, optimizer=dp_opt, criterion=dp_criterion, grad_sample_mode=mode,
                   accountant=accountant, noise_multiplier=sigma, sampler=sampler, planned_steps=steps, config=config,
                   curve=curve, releases=tuple(releases))


# The optimizers' noise comes from the sampler's secret key (dpmammo.privacy.noise.NoiseAhead):
# ChaCha20 with Opacus's secure-mode sum of four draws against floating-point attacks.
def _per_sample(mode: str):
    """hooks / functorch: instantiate per-sample gradients, sum them per unit, clip in the optimizer."""

    def wrap(model, optimizer, criterion, sigma, expected_units, max_grad_norm, key, distributed):
        gsm = wrap_model(model, grad_sample_mode=mode, batch_first=True, loss_reduction="mean")
        opt = (DistributedUnitDPOptimizer if distributed else UnitDPOptimizer)(optimizer, noise_multiplier=sigma, max_grad_norm=max_grad_norm,
                              expected_batch_size=expected_units, loss_reduction="mean",
                              secret_key=key)
        return gsm, opt, criterion

    return wrap


def _fast_clipping_optimizer(distributed: bool) -> type:
    return DistributedFastClippingDPOptimizer if distributed else FastClippingDPOptimizer


def _ghost(model, optimizer, criterion, sigma, expected_units, max_grad_norm, key, distributed):
    """Fast gradient clipping (Lee & Kifer 2021; Li et al. 2022 "ghost clipping"): a first
    backward pass computes only per-unit gradient norms, a second one back-propagates the
    per-sample losses scaled by their unit's clipping factor, giving the sum of clipped gradients."""
    gsm = UnitGhostClipping(model, batch_first=True, loss_reduction="mean", max_grad_norm=max_grad_norm,
                            use_ghost_clipping=True)
    opt = _fast_clipping_optimizer(distributed)(optimizer, noise_multiplier=sigma, max_grad_norm=max_grad_norm,
                                  expected_batch_size=expected_units, loss_reduction="mean",
                                  secret_key=key)
    return gsm, opt, DPLossFastGradientClipping(gsm, opt, criterion, loss_reduction="mean")


def _bookkeeping(model, optimizer, criterion, sigma, expected_units, max_grad_norm, key, distributed):
    """Book-keeping clipping (one backward pass): the clipped sum lands in p.grad, and Opacus's
    fast-gradient-clipping optimizer adds the noise, as in ghost mode."""
    module = BookKeepingClipping(model, max_grad_norm)
    opt = _fast_clipping_optimizer(distributed)(optimizer, noise_multiplier=sigma, max_grad_norm=max_grad_norm,
                                  expected_batch_size=expected_units, loss_reduction="mean",
                                  secret_key=key)
    return module, opt, BookKeepingLoss(module, criterion)


# grad_sample_mode → builder of (grad-sample module, DP optimizer, DP criterion).
_WRAPPERS = {"hooks": _per_sample("hooks"), "functorch": _per_sample("functorch"), "ghost": _ghost,
             "bookkeeping": _bookkeeping}
