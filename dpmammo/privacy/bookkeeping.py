"""Book-keeping clipping: per-unit clipped gradients from one backward pass.

Bu et al. (2023), "Differentially Private Optimization on Large Model at Small Cost" (ICML). One
backward pass computes only the gradients of the trainable layers' *outputs* (no weight gradient);
each unit's gradient norm follows from those and the layers' stored inputs, and the sum of clipped
gradients is formed afterwards:

- a linear layer on (batch, features) inputs, or on few tokens, never forms per-sample gradients:
  its norms are ghost norms (per unit as in `dpmammo.privacy.grad_samplers.linear_unit_norms`), and
  its clipped sum Σ_i c_{u(i)} g_i a_iᵀ = (c ⊙ G)ᵀ A is one matrix product; on many tokens, where
  the ghost norm would cost more, its per-sample gradients are formed (`_instantiate`);
- any other layer with an Opacus grad sampler (conv, group/layer norm, the Swin bias table) forms
  its per-sample gradients with that sampler, sums them per unit, and weights them by the unit's
  clipping factor.

Against Opacus's ghost clipping this drops the second backward pass and the weight gradients its
first pass computes for nothing; against hooks, the weight gradients autograd computes beside the
per-sample ones. Opacus has no book-keeping mode, so the clipping is written here (tested against
a per-example loop in tests/test_fast_dp.py). Everything after it is Opacus's: the clipped sum is
handed to `DPOptimizerFastGradientClipping`, which adds the secure-mode noise, divides by the
expected batch and calls the accountant's hook, exactly as in ghost mode.
"""

from __future__ import annotations

import copy

import torch
from opacus.grad_sample import GradSampleModule
from torch import nn

from dpmammo.errors import DpMammoError
from dpmammo.privacy.grad_samplers import _unit_sum, compute_linear_norm_sample_mixed, linear_unit_norms


def trainable_layers(model: nn.Module) -> list[nn.Module]:
    """The modules that hold trainable parameters directly."""
    return [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]


def unsupported_layer(model: nn.Module) -> str | None:
    """The type name of the first trainable layer book-keeping cannot clip (None: all supported)."""
    for m in trainable_layers(model):
        if not isinstance(m, nn.Linear) and type(m) not in GradSampleModule.GRAD_SAMPLERS:
            return type(m).__name__
    return None


class BookKeepingClipping(nn.Module):
    """Wraps a model for book-keeping clipping. `groups` (set per chunk by DPSetup.chunks) gives
    each row's unit; None: one row per unit.

    Forward hooks keep each trainable layer's input and output while this wrapper runs (not while
    the wrapped model scores validation data on its own).
    """

    groups: torch.Tensor | None = None
    unit_gradient_norms: torch.Tensor | None = None  # of the last chunk, before clipping (diagnostics, tests)

    def __init__(self, model: nn.Module, max_grad_norm: float):
        super().__init__()
        bad = unsupported_layer(model)
        if bad is not None or not trainable_layers(model):
            raise DpMammoError(f"grad_sample_mode=bookkeeping cannot clip a trainable {bad or 'nothing'} layer "
                               "(it needs nn.Linear or a layer with an Opacus grad sampler); use auto, ghost or hooks")
        self.layers = trainable_layers(model)
        owned = [p for m in self.layers for p in m.parameters(recurse=False) if p.requires_grad]
        if len(owned) != len({id(p) for p in owned}):
            raise DpMammoError("a trainable parameter is shared by two layers (tied weights): book-keeping clipping "
                               "sets each layer's gradient on its own; use grad_sample_mode ghost or hooks")
        self._module = model
        self.max_grad_norm = max_grad_norm
        self._records: dict[nn.Module, tuple[list[torch.Tensor], torch.Tensor, list[int]]] = {}  # inputs, output, versions
        self._recording, self._hooks_enabled = False, True
        for layer in self.layers:
            layer.register_forward_hook(self._keep)

    def _keep(self, layer: nn.Module, inputs, output: torch.Tensor) -> None:
        if not self._recording:
            return None
        if layer in self._records:
            raise DpMammoError(f"a {type(layer).__name__} layer ran twice in one forward pass (shared weights): "
                               "book-keeping clipping keeps one input per layer; use grad_sample_mode ghost or hooks")
        # An in-place op downstream (ReLU(inplace=True), `h += x`) would change a recorded tensor, and
        # the gradient taken at the output would silently be that of the changed tensor: the versions
        # of inputs and output are checked at backward time (cheaper than copying every output).
        tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
        self._records[layer] = ([t.detach() for t in tensors], output, [t._version for t in (*tensors, output)])
        return None

    def forward(self, *args, **kwargs) -> torch.Tensor:
        self._records = {}
        self._recording = self._hooks_enabled
        try:
            return self._module(*args, **kwargs)
        finally:
            self._recording = False

    def disable_hooks(self) -> None:
        """Run forward passes that record nothing (Opacus's GradSampleModule API; the GAN's generator step)."""
        self._hooks_enabled = False

    def enable_hooks(self) -> None:
        self._hooks_enabled = True

    def clipped_backward(self, per_sample_loss: torch.Tensor) -> None:
        """Set p.grad of every trainable parameter to the sum over units of the unit's gradient
        scaled by min(1, C / (‖unit gradient‖ + 1e-6)), Opacus's clipping factor."""
        layers = [m for m in self.layers if m in self._records]
        for m in layers:
            inputs, output, versions = self._records[m]
            if any(t._version != v for t, v in zip((*inputs, output), versions)):
                raise DpMammoError(f"the input or output of a {type(m).__name__} layer was changed in place after the "
                                   "layer ran (e.g. ReLU(inplace=True)); book-keeping clipping needs them unchanged: "
                                   "use out-of-place operations, or grad_sample_mode ghost or hooks")
        outputs = [self._records[m][1] for m in layers]
        grads = torch.autograd.grad(per_sample_loss.sum(), outputs, allow_unused=True)
        grads = [torch.zeros_like(o) if g is None else g for o, g in zip(outputs, grads)]
        groups = self.groups.to(per_sample_loss.device) if self.groups is not None else None
        n_units = int(groups.max()) + 1 if groups is not None else len(per_sample_loss)
        sq_norm = torch.zeros(n_units, dtype=per_sample_loss.dtype, device=per_sample_loss.device)
        unit_grads: dict[nn.Parameter, torch.Tensor] = {}  # layers with formed per-sample gradients: (U, numel)
        ghosted = [isinstance(m, nn.Linear) and not _instantiate(m, g, grouped=groups is not None)
                   for m, g in zip(layers, grads)]
        for layer, g, ghost in zip(layers, grads, ghosted):
            inputs = self._records[layer][0]
            if ghost:
                norms = (compute_linear_norm_sample_mixed(layer, inputs, g) if groups is None
                         else linear_unit_norms(layer, inputs, g, groups, n_units))
            else:
                sampler = _linear_grad_sample if isinstance(layer, nn.Linear) else GradSampleModule.GRAD_SAMPLERS[type(layer)]
                per_sample = sampler(layer, inputs, g)
                norms = {}
                for p, gs in per_sample.items():
                    if p.requires_grad:
                        gs = gs.flatten(1) if groups is None else _unit_sum(gs.flatten(1), groups, n_units)
                        unit_grads[p], norms[p] = gs, gs.norm(2, dim=1)
            for norm in norms.values():
                sq_norm += norm.square()
        self.unit_gradient_norms = sq_norm.sqrt()
        coef = (self.max_grad_norm / (self.unit_gradient_norms + 1e-6)).clamp(max=1.0)
        row_coef = coef[groups] if groups is not None else coef
        for layer, g, ghost in zip(layers, grads, ghosted):
            if ghost:
                a = self._records[layer][0][0]
                g2 = (g * row_coef.view(-1, *([1] * (g.dim() - 1)))).reshape(-1, g.shape[-1])
                if layer.weight.requires_grad:
                    layer.weight.grad = g2.T @ a.reshape(-1, a.shape[-1]).to(g2.dtype)
                if layer.bias is not None and layer.bias.requires_grad:
                    layer.bias.grad = g2.sum(0)
        for p, gs in unit_grads.items():
            p.grad = (coef.to(gs.dtype) @ gs).view_as(p)
        self._records = {}


# Ghost norm against formed per-sample gradients, for a linear layer d_in → d_out on T tokens: the
# ghost norm costs ≈ 2·T²·(d_in + d_out) multiply-adds per sample on top of the weight gradient;
# forming the per-sample gradients replaces the weight gradient (same work) and costs writing and
# reading B·d_in·d_out numbers. The threshold on T²(d_in + d_out)/(d_in·d_out) lies between the
# ratios at which each won when timed per layer on Swin-T's shapes (benchmarks/README.md, the
# per-layer table of `dp_speed.py`).
INSTANTIATE_ABOVE = 20.0


def _instantiate(layer: nn.Linear, g: torch.Tensor, grouped: bool) -> bool:
    """Form this linear layer's per-sample gradients instead of its ghost norm (mixed clipping,
    Bu et al. 2022): on tokens where the ghost norm costs more (see INSTANTIATE_ABOVE), and on
    tokens whenever units group rows (linear_unit_norms forms them for the norms anyway, and
    formed, they give the clipped sum as a B-term weighted sum)."""
    tokens = g[0].numel() // g.shape[-1]
    if tokens == 1:
        return False
    d_in, d_out = layer.in_features, layer.out_features
    return grouped or tokens * tokens * (d_in + d_out) > INSTANTIATE_ABOVE * d_in * d_out


def _linear_grad_sample(layer: nn.Linear, inputs: list[torch.Tensor], g: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of a linear layer on token inputs (B, ..., d)."""
    b = g.shape[0]
    g3, a3 = g.reshape(b, -1, g.shape[-1]), inputs[0].reshape(b, -1, inputs[0].shape[-1]).to(g.dtype)
    out = {}
    if layer.weight.requires_grad:
        out[layer.weight] = torch.einsum("nti,ntj->nij", g3, a3)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = g3.sum(dim=1)
    return out


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
