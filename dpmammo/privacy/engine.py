"""DP-SGD on Opacus: per-sample clipping and Gaussian noise, Poisson sampling, virtual batches.

One entry point, `make_private`, in the spirit of Opacus's `PrivacyEngine.make_private`. It
differs in one respect: dpmammo draws the Poisson batches itself (`DPSetup.sample_batch`) from
its own seeded generator, so a resumed run continues the exact sample sequence and the caller
can split a logical batch into physical chunks (virtual batches) without plain gradient
accumulation, which would clip the sum instead of each sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from opacus import GradSampleModule
from opacus.grad_sample.utils import wrap_model
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn

from dpmammo.errors import DpMammoError
from dpmammo.privacy.accounting import accountant_kwargs, calibrate_noise, check_delta, new_accountant, steps_for
from dpmammo.privacy.config import PrivacyConfig


@dataclass
class DPSetup:
    """What a DP training loop needs: the wrapped model and optimizer and the accounting."""

    model: GradSampleModule
    optimizer: DPOptimizer
    accountant: object
    noise_multiplier: float
    sample_rate: float
    planned_steps: int
    dataset_size: int
    config: PrivacyConfig

    def sample_batch(self, generator: torch.Generator) -> torch.Tensor:
        """Indices of one Poisson-sampled logical batch: each sample in with probability q."""
        mask = torch.rand(self.dataset_size, generator=generator) < self.sample_rate
        return mask.nonzero().squeeze(1)

    def physical_chunks(self, n: int, max_physical: int) -> Iterator[tuple[slice, bool]]:
        """Split a logical batch of n samples into chunks of at most `max_physical`.

        Yields (slice, is_last). For every chunk but the last the optimizer clips and
        accumulates without stepping: Opacus's virtual-batch mechanism (BatchMemoryManager)
        made explicit.
        """
        starts = list(range(0, n, max_physical))
        for i, start in enumerate(starts):
            last = i == len(starts) - 1
            self.optimizer.signal_skip_step(do_skip=not last)
            yield slice(start, start + max_physical), last

    def step_empty(self) -> None:
        """A logical batch with no sample still releases a noisy (all-noise) step."""
        for p in self.optimizer.params:
            p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def epsilon(self) -> float:
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(delta=self.config.delta, **accountant_kwargs(self.config.accountant)))

    @property
    def steps_taken(self) -> int:
        return sum(s for _, _, s in self.accountant.history)


def validate_for_dp(model: nn.Module) -> None:
    """Refuse layers Opacus cannot make private, with Opacus's own explanation."""
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise DpMammoError(f"model cannot be trained with DP: {errors[0]}")


def make_private(*, model: nn.Module, optimizer: torch.optim.Optimizer, dataset_size: int,
                 batch_size: int, epochs: int, config: PrivacyConfig,
                 grad_sample_mode: str = "hooks") -> DPSetup:
    """Wrap `model` and `optimizer` for DP-SGD at `config.target_epsilon` over `epochs`.

    Args:
        model: the module to train; its trainable parameters get per-sample gradients.
        optimizer: a plain torch optimizer over those parameters.
        dataset_size: N, the number of private training patches.
        batch_size: expected logical batch size; the Poisson sample rate is batch_size / N.
        epochs: planned epochs; the noise is calibrated so that ε after epochs·N/batch_size
            steps is ≤ target_epsilon.
        config: the privacy block (target ε, δ, clipping norm, accountant).

    Returns:
        a DPSetup. Its accountant is attached to the optimizer and counts every real step.
    """
    check_delta(config.delta, dataset_size)
    if batch_size > dataset_size:
        raise DpMammoError(f"batch_size={batch_size} exceeds the {dataset_size} private training patches")
    validate_for_dp(model)
    sample_rate = batch_size / dataset_size
    steps = steps_for(epochs, sample_rate)
    sigma = calibrate_noise(target_epsilon=config.target_epsilon, delta=config.delta,
                            sample_rate=sample_rate, steps=steps, accountant=config.accountant)
    gsm = wrap_model(model, grad_sample_mode=grad_sample_mode, batch_first=True, loss_reduction="mean")
    dp_opt = DPOptimizer(optimizer, noise_multiplier=sigma, max_grad_norm=config.max_grad_norm,
                         expected_batch_size=batch_size, loss_reduction="mean")
    accountant = new_accountant(config.accountant)
    dp_opt.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    return DPSetup(model=gsm, optimizer=dp_opt, accountant=accountant, noise_multiplier=sigma,
                   sample_rate=sample_rate, planned_steps=steps, dataset_size=dataset_size, config=config)
