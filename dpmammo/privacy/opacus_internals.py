"""Every use of Opacus's private or internal API, in one place, each with why dpmammo needs it.

Opacus documents `PrivacyEngine`, its optimizers, grad-sample modules, accountants and the
`register_grad_sampler` / `register_norm_sampler` decorators; dpmammo uses those where they are
(dpmammo.privacy.engine, grad_samplers, bookkeeping, accounting). What is here is not public:
names with a leading underscore, helpers in internal module paths, attributes Opacus keeps on
parameters and modules for itself. They may change in any release, so pyproject.toml pins
`opacus>=1.6,<1.7`, the versions the tests ran against; moving the pin means re-running
tests/test_fast_dp.py, tests/test_guarantees.py and tests/test_privacy.py, then fixing this file.

Why each is needed:
- `check_processed_flag`, `mark_as_processed` (opacus.optimizers.optimizer): the optimizer's
  guard that a summed gradient is noised exactly once. dpmammo's `add_noise` (noise drawn ahead
  from the stage's secret key, dpmammo.privacy.noise) replaces Opacus's and keeps that guard.
- `generate_noise` (opacus.optimizers.optimizer._generate_noise): Opacus's own secure-mode noise,
  used only by benchmarks/paper_grid.py to time it against dpmammo's ChaCha20 noise.
- `flat_grad_sample` (DPOptimizer._get_flat_grad_sample): a parameter's per-sample gradients as
  one tensor, as Opacus's clipping reads them; per-unit clipping sums them per patient first
  (engine.UnitDPOptimizer).
- `ft_compute_per_sample_gradient` (opacus.grad_sample.functorch): the functorch per-sample
  gradient of a layer without a grad sampler, the fallback Opacus's ghost clipping uses; the
  per-unit ghost clipping (grad_samplers.UnitGhostClipping) falls back the same way.
- `compute_linear_norm_sample` (opacus.grad_sample.linear): ghost norms of a linear layer,
  reused for inputs with more than one token dimension (grad_samplers).
- `unfold2d` (opacus.utils.tensor_utils): im2col with Opacus's conventions, for the per-sample
  gradients of weight-standardised convolutions (grad_samplers).
- `trainable_parameters` (opacus.utils.module_utils): the (name, parameter) pairs Opacus hooks.
- `set_norm_sample`, `end_of_backward_hook` (the `_norm_sample` and `_forward_counter`
  attributes Opacus keeps on parameters, `activations`/`max_batch_len` on modules): what Opacus's
  fast-gradient-clipping backward hook records and resets; UnitGhostClipping's hook, which
  clips per unit instead of per row, must leave the same state behind.
"""

from __future__ import annotations

import torch
from opacus.grad_sample.functorch import ft_compute_per_sample_gradient
from opacus.grad_sample.linear import compute_linear_norm_sample
from opacus.optimizers.optimizer import _check_processed_flag, _generate_noise, _mark_as_processed
from opacus.utils.module_utils import trainable_parameters
from opacus.utils.tensor_utils import unfold2d
from torch import nn

__all__ = ["check_processed_flag", "compute_linear_norm_sample", "end_of_backward_hook", "flat_grad_sample",
           "ft_compute_per_sample_gradient", "generate_noise", "mark_as_processed", "set_norm_sample",
           "trainable_parameters", "unfold2d"]

check_processed_flag = _check_processed_flag
mark_as_processed = _mark_as_processed
generate_noise = _generate_noise


def flat_grad_sample(optimizer, p: nn.Parameter) -> torch.Tensor:
    """p's per-sample gradients (rows × *p.shape), as the DPOptimizer `optimizer` clips them."""
    return optimizer._get_flat_grad_sample(p)


def set_norm_sample(param: nn.Parameter, norm: torch.Tensor) -> None:
    """Record per-row gradient norms where Opacus's fast gradient clipping reads them."""
    param._norm_sample = norm


def end_of_backward_hook(module: nn.Module) -> None:
    """What Opacus's backward hook resets once a module's gradients are captured: one forward pass
    of each trainable parameter accounted for, the batch length dropped after the last one."""
    for _, p in trainable_parameters(module):
        p._forward_counter -= 1
    if not module.activations and hasattr(module, "max_batch_len"):
        del module.max_batch_len
