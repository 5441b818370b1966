"""DP-SGD on Opacus: per-sample clipping and Gaussian noise, Poisson sampling, virtual batches.

One entry point, `make_private`, in the spirit of Opacus's `PrivacyEngine.make_private`. It
differs in one respect: dpmammo draws the Poisson batches itself (`DPSetup.sample_batch`) from
its own seeded generator, so a resumed run continues the exact sample sequence and the caller
can split a logical batch into physical chunks (virtual batches) without plain gradient
accumulation, which would clip the sum instead of each sample.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from opacus.grad_sample import AbstractGradSampleModule, GradSampleModuleFastGradientClipping
from opacus.grad_sample.utils import wrap_model
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from opacus.validators import ModuleValidator
from torch import nn

from dpmammo.errors import DpMammoError
from dpmammo.privacy.accounting import accountant_kwargs, calibrate_noise, check_delta, new_accountant, steps_for
from dpmammo.privacy.config import PrivacyConfig
from dpmammo.privacy.grad_samplers import prepare_for_dp

# Opacus hooks every trainable layer; for the first one (its input is data, which needs no
# gradient) torch warns on every step that the hook sees output gradients only. That is all
# per-sample gradients need, so the warning says nothing here and floods the log.
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with respect "
                                          "to module outputs", category=UserWarning)


@dataclass
class DPSetup:
    """What a DP training loop needs: the wrapped model and optimizer and the accounting.

    `criterion(logits, y)` returns a loss whose `.backward()` does what the mode needs (one
    backward pass for hooks/functorch; two for ghost clipping), so a loop reads the same for
    every mode: loss = dp.criterion(dp.model(x), y); loss.backward(); dp.optimizer.step().
    """

    model: AbstractGradSampleModule
    optimizer: DPOptimizer
    criterion: Callable
    grad_sample_mode: str
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
            if self.grad_sample_mode == "ghost":  # that optimizer reads the (already clipped) summed p.grad
                p.grad = torch.zeros_like(p)
            else:
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


def choose_grad_sample_mode(model: nn.Module) -> str:
    """The fastest correct mode for `model` on its device, as measured (benchmarks/README.md).

    CPU: hooks. Measured on an idle 2-core CPU, batch 32, DP step time over the non-private one:
    cnn-small 128 px hooks 1.69×, functorch 1.86×, ghost 2.32×; swin_t 224 px hooks 1.51×,
    functorch 2.04×, ghost 1.93×. Ghost clipping pays a second backward pass and saves only the
    per-sample gradients of layers with a norm sampler, which does not pay off on a CPU.
    CUDA (not measured here): ghost when most trainable weights sit in layers with a ghost norm
    (linear layers: Swin, MLP heads), because there hooks' B × params per-sample gradients
    (swin_t: +8.1 GB at batch 32 vs +5.4 GB for ghost on the CPU) bound the physical batch.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or params[0].device.type != "cuda":
        return "hooks"
    ghostable = sum(p.numel() for m in model.modules() if type(m) in GradSampleModuleFastGradientClipping.NORM_SAMPLERS
                    for p in m.parameters(recurse=False) if p.requires_grad)
    return "ghost" if ghostable * 2 >= sum(p.numel() for p in params) else "hooks"


def make_private(*, model: nn.Module, optimizer: torch.optim.Optimizer, dataset_size: int,
                 batch_size: int, epochs: int, config: PrivacyConfig,
                 criterion: nn.Module | None = None) -> DPSetup:
    """Wrap `model` and `optimizer` for DP-SGD at `config.target_epsilon` over `epochs`.

    Args:
        model: the module to train; its trainable parameters get per-sample gradients. Modules
            that need another layout for that (Swin window attention) are converted in place,
            keeping their state-dict keys (see dpmammo.privacy.grad_samplers).
        optimizer: a plain torch optimizer over those parameters.
        dataset_size: N, the number of private training patches.
        batch_size: expected logical batch size; the Poisson sample rate is batch_size / N.
        epochs: planned epochs; the noise is calibrated so that ε after epochs·N/batch_size
            steps is ≤ target_epsilon.
        config: the privacy block (target ε, δ, clipping norm, accountant, grad-sample mode).
        criterion: the loss with mean reduction (default cross-entropy); DPSetup.criterion wraps it.

    Returns:
        a DPSetup. Its accountant is attached to the optimizer and counts every real step.
    """
    check_delta(config.delta, dataset_size)
    if batch_size > dataset_size:
        raise DpMammoError(f"batch_size={batch_size} exceeds the {dataset_size} private training patches")
    validate_for_dp(model)
    criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
    if getattr(criterion, "reduction", "mean") != "mean":
        raise DpMammoError(f"the DP loss must use reduction='mean' (got {criterion.reduction!r})")
    sample_rate = batch_size / dataset_size
    steps = steps_for(epochs, sample_rate)
    sigma = calibrate_noise(target_epsilon=config.target_epsilon, delta=config.delta,
                            sample_rate=sample_rate, steps=steps, accountant=config.accountant)
    prepare_for_dp(model)
    mode = choose_grad_sample_mode(model) if config.grad_sample_mode == "auto" else config.grad_sample_mode
    gsm, dp_opt, dp_criterion = _WRAPPERS[mode](model, optimizer, criterion, sigma, batch_size, config.max_grad_norm)
    accountant = new_accountant(config.accountant)
    dp_opt.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    return DPSetup(model=gsm, optimizer=dp_opt, criterion=dp_criterion, grad_sample_mode=mode,
                   accountant=accountant, noise_multiplier=sigma, sample_rate=sample_rate, planned_steps=steps,
                   dataset_size=dataset_size, config=config)


def _per_sample(mode: str):
    """hooks / functorch: instantiate per-sample gradients, clip them in the optimizer."""

    def wrap(model, optimizer, criterion, sigma, batch_size, max_grad_norm):
        gsm = wrap_model(model, grad_sample_mode=mode, batch_first=True, loss_reduction="mean")
        opt = DPOptimizer(optimizer, noise_multiplier=sigma, max_grad_norm=max_grad_norm,
                          expected_batch_size=batch_size, loss_reduction="mean")
        return gsm, opt, criterion

    return wrap


def _ghost(model, optimizer, criterion, sigma, batch_size, max_grad_norm):
    """Fast gradient clipping (Lee & Kifer 2021; Li et al. 2022 "ghost clipping"): a first
    backward pass computes only per-sample gradient norms, a second one back-propagates the
    per-sample losses scaled by their clipping factors, giving the sum of clipped gradients."""
    gsm = wrap_model(model, grad_sample_mode="ghost", batch_first=True, loss_reduction="mean",
                     max_grad_norm=max_grad_norm)
    opt = DPOptimizerFastGradientClipping(optimizer, noise_multiplier=sigma, max_grad_norm=max_grad_norm,
                                          expected_batch_size=batch_size, loss_reduction="mean")
    return gsm, opt, DPLossFastGradientClipping(gsm, opt, criterion, loss_reduction="mean")


# grad_sample_mode → builder of (grad-sample module, DP optimizer, DP criterion).
_WRAPPERS = {"hooks": _per_sample("hooks"), "functorch": _per_sample("functorch"), "ghost": _ghost}
