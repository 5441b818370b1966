"""Book-keeping clipping for models whose trainable layers are all linear (a head on cached features).

Bu et al. (2023), "Differentially Private Optimization on Large Model at Small Cost" (ICML): one
backward pass computes only the gradients of the layers' *outputs*; each unit's gradient norm
follows from those and the stored inputs (ghost norms, per unit as in
`dpmammo.privacy.grad_samplers.linear_unit_norms`), and the sum of clipped gradients of a linear
layer is then one matrix product, Σ_i c_{u(i)} g_i a_iᵀ = (c ⊙ G)ᵀ A. Against Opacus's ghost
clipping this drops the second backward pass and the weight gradients the first one computes for
nothing; for a 768→384→2 head at batch 128 the step is two 128×768×384 products plus the noise.

Opacus has no book-keeping mode, so the clipping is written here (40 lines, tested against a
per-example loop in tests/test_fast_dp.py). Everything after it is Opacus's: the clipped sum is
handed to `DPOptimizerFastGradientClipping`, which adds the secure-mode noise, divides by the
expected batch and calls the accountant's hook, exactly as in ghost mode.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from dpmammo.errors import DpMammoError
from dpmammo.privacy.grad_samplers import compute_linear_norm_sample_mixed, linear_unit_norms


def all_trainable_linear(model: nn.Module) -> bool:
    """True when every trainable parameter belongs to an nn.Linear (book-keeping applies)."""
    owned = {id(p) for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    return bool(trainable) and all(id(p) in owned for p in trainable)


class BookKeepingClipping(nn.Module):
    """Wraps a model of linear layers (and parameter-free modules between them) for book-keeping
    clipping. `groups` (set per chunk by DPSetup.chunks) gives each row's unit; None: one row per unit.

    Forward hooks keep each linear layer's input and output while this wrapper runs (not while the
    wrapped model scores validation data on its own).
    """

    groups: torch.Tensor | None = None
    unit_gradient_norms: torch.Tensor | None = None  # of the last chunk, before clipping (diagnostics, tests)

    def __init__(self, model: nn.Module, max_grad_norm: float):
        super().__init__()
        if not all_trainable_linear(model):
            raise DpMammoError("grad_sample_mode=bookkeeping needs every trainable layer to be nn.Linear "
                               "(a head on cached features); use auto, ghost or hooks for this model")
        self._module = model
        self.max_grad_norm = max_grad_norm
        self.layers = [m for m in model.modules() if isinstance(m, nn.Linear)
                       and any(p.requires_grad for p in m.parameters(recurse=False))]
        self._records: dict[nn.Linear, tuple[torch.Tensor, torch.Tensor]] = {}
        self._recording = False
        for layer in self.layers:
            layer.register_forward_hook(self._keep)

    def _keep(self, layer: nn.Linear, inputs, output: torch.Tensor) -> None:
        if not self._recording:
            return
        if layer in self._records:
            raise DpMammoError("a linear layer ran twice in one forward pass (shared weights): book-keeping clipping "
                               "keeps one input per layer; use grad_sample_mode ghost or hooks")
        self._records[layer] = (inputs[0].detach(), output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._records = {}
        self._recording = True
        try:
            return self._module(x)
        finally:
            self._recording = False

    def clipped_backward(self, per_sample_loss: torch.Tensor) -> None:
        """Set p.grad of every trainable parameter to the sum over units of the unit's gradient
        scaled by min(1, C / (‖unit gradient‖ + 1e-6)), Opacus's clipping factor."""
        layers = [m for m in self.layers if m in self._records]
        outputs = [self._records[m][1] for m in layers]
        grads = torch.autograd.grad(per_sample_loss.sum(), outputs, allow_unused=True)
        grads = [torch.zeros_like(o) if g is None else g for o, g in zip(outputs, grads)]
        groups = self.groups.to(per_sample_loss.device) if self.groups is not None else None
        n_units = int(groups.max()) + 1 if groups is not None else len(per_sample_loss)
        sq_norm = torch.zeros(n_units, dtype=per_sample_loss.dtype, device=per_sample_loss.device)
        for layer, g in zip(layers, grads):
            a = self._records[layer][0]
            norms = (compute_linear_norm_sample_mixed(layer, [a], g) if groups is None
                     else linear_unit_norms(layer, [a], g, groups, n_units))
            for norm in norms.values():
                sq_norm += norm.square()
        self.unit_gradient_norms = sq_norm.sqrt()
        coef = (self.max_grad_norm / (self.unit_gradient_norms + 1e-6)).clamp(max=1.0)
        row_coef = coef[groups] if groups is not None else coef
        for layer, g in zip(layers, grads):
            a = self._records[layer][0]
            g2 = (g * row_coef.view(-1, *([1] * (g.dim() - 1)))).reshape(-1, g.shape[-1])
            if layer.weight.requires_grad:
                layer.weight.grad = g2.T @ a.reshape(-1, a.shape[-1]).to(g2.dtype)
            if layer.bias is not None and layer.bias.requires_grad:
                layer.bias.grad = g2.sum(0)
        self._records = {}


class BookKeepingLoss:
    """DP criterion of book-keeping mode: `crit(logits, y).backward()` leaves the clipped sum in p.grad."""

    def __init__(self, module: BookKeepingClipping, criterion: nn.Module):
        self.module = module
        self.per_sample = copy.copy(criterion)
        self.per_sample.reduction = "none"

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> "_ClippedLoss":
        return _ClippedLoss(self.module, self.per_sample(logits, target))


class _ClippedLoss:
    def __init__(self, module: BookKeepingClipping, per_sample: torch.Tensor):
        self.module, self.per_sample = module, per_sample

    def item(self) -> float:
        return self.per_sample.mean().item()

    def backward(self) -> None:
        self.module.clipped_backward(self.per_sample)
