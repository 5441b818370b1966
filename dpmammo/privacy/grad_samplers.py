"""Per-sample gradients Opacus does not provide out of the box: Swin window attention,
weight-standardised convolutions, ghost-clipping norms of linear layers on inputs with more than
one token dimension, and ghost clipping per unit of privacy (a patient's rows clipped together,
`UnitGhostClipping`).

Swin (Liu et al., 2021) runs attention on windows: timm's `WindowAttention` sees a tensor of
shape (B·nW, N, C), one row per *window*. Opacus takes dim 0 as the sample dimension, so the
`qkv`/`proj` layers would get per-window gradients (clipping windows, not patches: a privacy
bug) and the raw `relative_position_bias_table` parameter has no grad sampler at all.
`prepare_for_dp` swaps each WindowAttention for `DPWindowAttention`: the same arithmetic
(tested against timm's module), with the linear layers fed batch-first (B, nW·N, C) and the
bias lookup in a small `RelativePositionBias` module whose per-sample gradient is a
scatter-add of the attention-logit gradients (`compute_rel_pos_bias_grad_sample`). It never
uses the fused attention kernel, whose internals per-sample hooks cannot see. State-dict keys
stay timm's, so weights move freely between private and non-private models.
"""

from __future__ import annotations

from typing import Callable

import torch
from opacus.grad_sample import GradSampleModuleFastGradientClipping, register_grad_sampler, register_norm_sampler
from timm.models.swin_transformer import SwinTransformerBlock, WindowAttention
from torch import nn

from dpmammo.models.cnn import WSConv2d
from dpmammo.privacy.opacus_internals import (compute_linear_norm_sample, end_of_backward_hook,
                                              ft_compute_per_sample_gradient, set_norm_sample, unfold2d)


class RelativePositionBias(nn.Module):
    """Adds the relative position bias table, looked up per head, to attention logits.

    Input and output: logits (B, nW, heads, N, N), batch-first so per-sample gradients are per
    image. The index is a plain tensor, not a buffer: Opacus refuses trainable modules with
    buffers (BatchNorm-style state), and the index is a constant, not state.
    """

    def __init__(self, table: nn.Parameter, index: torch.Tensor):
        super().__init__()
        self.relative_position_bias_table = table
        self.index = index.reshape(-1).clone()

    def bias(self) -> torch.Tensor:
        if self.index.device != self.relative_position_bias_table.device:
            self.index = self.index.to(self.relative_position_bias_table.device)
        n = int(round(self.index.numel() ** 0.5))
        return self.relative_position_bias_table[self.index].view(n, n, -1).permute(2, 0, 1)  # heads, N, N

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        return attn + self.bias()


@register_grad_sampler(RelativePositionBias)
def compute_rel_pos_bias_grad_sample(layer: RelativePositionBias, activations, backprops: torch.Tensor):
    """d loss_b / d table = Σ over windows of the logit gradients, scattered by the index."""
    g = backprops.sum(dim=1)  # B, heads, N, N: the same bias is added in every window
    b, heads = g.shape[:2]
    g = g.reshape(b, heads, -1).transpose(1, 2)  # B, N·N, heads
    table = layer.relative_position_bias_table
    out = torch.zeros((b, *table.shape), device=g.device, dtype=g.dtype)
    out.index_add_(1, layer.index.to(g.device), g)
    return {table: out}


class DPWindowAttention(nn.Module):
    """timm's WindowAttention, rearranged so that every trainable layer sees one row per image."""

    def __init__(self, attn: WindowAttention, num_windows: int):
        super().__init__()
        self.num_heads, self.scale, self.num_windows = attn.num_heads, attn.scale, num_windows
        self.qkv, self.proj = attn.qkv, attn.proj
        self.attn_drop, self.proj_drop = attn.attn_drop, attn.proj_drop
        self.rel_pos = RelativePositionBias(attn.relative_position_bias_table, attn.relative_position_index)
        # Keep timm's state-dict key `<prefix>relative_position_bias_table` (strict loading both ways).
        self.register_state_dict_post_hook(_table_key_out)
        self.register_load_state_dict_pre_hook(_table_key_in)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b_, n, c = x.shape
        nw = self.num_windows
        if b_ % nw or (mask is not None and mask.shape[0] != nw):
            raise RuntimeError(f"DPWindowAttention built for {nw} windows per image got {b_} windows "
                               f"(mask {None if mask is None else tuple(mask.shape)}); input size changed?")
        b = b_ // nw
        qkv = self.qkv(x.reshape(b, nw * n, c))  # batch-first: Opacus sees one row per image
        q, k, v = qkv.reshape(b, nw, n, 3, self.num_heads, -1).permute(3, 0, 1, 4, 2, 5).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # B, nW, heads, N, N
        attn = self.rel_pos(attn)
        if mask is not None:
            attn = attn + mask.view(1, nw, 1, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = (attn @ v).permute(0, 1, 3, 2, 4).reshape(b, nw * n, -1)
        out = self.proj_drop(self.proj(out))
        return out.reshape(b_, n, -1)


_TABLE_INNER, _TABLE_OUTER = "rel_pos.relative_position_bias_table", "relative_position_bias_table"


def _table_key_out(module, state_dict, prefix, local_metadata):
    if prefix + _TABLE_INNER in state_dict:
        state_dict[prefix + _TABLE_OUTER] = state_dict.pop(prefix + _TABLE_INNER)


def _table_key_in(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    if prefix + _TABLE_OUTER in state_dict:
        state_dict[prefix + _TABLE_INNER] = state_dict.pop(prefix + _TABLE_OUTER)


def _windows_per_image(block: SwinTransformerBlock) -> int:
    (h, w), (wh, ww) = block.input_resolution, block.window_size
    return -(-h // wh) * -(-w // ww)


def _convert_swin_block(block: SwinTransformerBlock) -> None:
    if isinstance(block.attn, WindowAttention):
        block.attn = DPWindowAttention(block.attn, _windows_per_image(block))


# Module type → in-place conversion making it DP-trainable (a registry, after Opacus's fixers).
DP_CONVERSIONS: dict[type[nn.Module], Callable[[nn.Module], None]] = {SwinTransformerBlock: _convert_swin_block}


def prepare_for_dp(model: nn.Module) -> nn.Module:
    """Convert, in place, the modules of `model` whose per-sample gradients need another layout."""
    for module in list(model.modules()):
        convert = DP_CONVERSIONS.get(type(module))
        if convert is not None and any(p.requires_grad for p in module.parameters()):
            convert(module)
    return model


def _conv2d_grad_sample(layer: nn.Conv2d, activations: torch.Tensor, backprops: torch.Tensor) -> torch.Tensor:
    """(B, *weight.shape): each sample's gradient with respect to the kernel the conv applied.

    Opacus's conv grad sampler computes the same, but picks its unfolding by `type(layer) is
    nn.Conv2d`, so it cannot serve a subclass."""
    if layer.padding_mode != "zeros":
        raise RuntimeError(f"per-sample gradients of {type(layer).__name__} need padding_mode='zeros', "
                           f"got {layer.padding_mode!r}")
    b = activations.shape[0]
    cols = unfold2d(activations.to(backprops.dtype), kernel_size=layer.kernel_size, padding=layer.padding,
                    stride=layer.stride, dilation=layer.dilation)  # B, cin·kh·kw, positions
    positions, groups = cols.shape[-1], layer.groups
    g = backprops.reshape(b, groups, -1, positions)  # B, groups, cout / groups, positions
    per_sample = torch.einsum("bgop,bgip->bgoi", g, cols.reshape(b, groups, -1, positions))
    return per_sample.reshape(b, *layer.weight.shape)


@register_grad_sampler(WSConv2d)
def compute_ws_conv_grad_sample(layer: WSConv2d, activations, backprops: torch.Tensor):
    """Per-sample gradients of a weight-standardised conv with respect to its *raw* weight.

    The conv applies ŵ = (w − μ)·r per output channel, r = (var + eps)^−½ over its m = cin·kh·kw
    entries. Each sample's gradient g with respect to ŵ comes from the conv (as for any conv); the
    standardisation's Jacobian depends on w alone, so each sample's gradient with respect to w is
    its g pulled back through it, as in a normalisation layer's backward pass:
    ∂ℓ/∂w = r·(g − mean(g) − ŵ·mean(g ⊙ ŵ)), means over the m entries of the output channel.
    """
    b = backprops.shape[0]
    ret = {}
    if layer.weight.requires_grad:
        g = _conv2d_grad_sample(layer, activations[0], backprops).flatten(2)  # B, cout, m
        w = layer.weight.detach().flatten(1).to(g.dtype)
        mean = w.mean(dim=1, keepdim=True)
        r = torch.rsqrt(w.var(dim=1, unbiased=False, keepdim=True) + layer.eps)
        w_hat = (w - mean) * r
        pulled = r * (g - g.mean(dim=2, keepdim=True) - w_hat * (g * w_hat).mean(dim=2, keepdim=True))
        ret[layer.weight] = pulled.reshape(b, *layer.weight.shape)
    if layer.bias is not None and layer.bias.requires_grad:
        ret[layer.bias] = backprops.reshape(b, backprops.shape[1], -1).sum(dim=2)
    return ret


@register_norm_sampler(nn.Linear)
def compute_linear_norm_sample_mixed(layer: nn.Linear, activations, backprops: torch.Tensor):
    """Per-sample gradient norms of a linear layer for any number of token dimensions.

    Opacus's ghost norm handles (B, F) and (B, T, F) only, and its (B, T, F) path builds T×T
    Gram matrices: cheap for short sequences, ruinous for Swin's first stage (T = 3136 tokens,
    a 3136² matrix per image per layer). Following the mixed ghost clipping of Bu et al. (2022,
    "Scalable and Efficient Training of Large Convolutional Neural Networks with Differential
    Privacy"), each layer takes the cheaper of the ghost norm (≈T² work) and the instantiated
    per-sample gradient (≈d_in·d_out).
    """
    a = activations[0].to(backprops.dtype)
    if backprops.dim() <= 2:
        return compute_linear_norm_sample(layer, [a], backprops)
    a = a.reshape(a.shape[0], -1, a.shape[-1])
    g = backprops.reshape(backprops.shape[0], -1, backprops.shape[-1])
    tokens = g.shape[1]
    if tokens * tokens <= layer.in_features * layer.out_features:
        return compute_linear_norm_sample(layer, [a], g)
    ret = {}
    if layer.weight.requires_grad:
        ret[layer.weight] = torch.einsum("nti,ntj->nij", g, a).flatten(1).norm(2, dim=1)
    if layer.bias is not None and layer.bias.requires_grad:
        ret[layer.bias] = g.sum(dim=1).norm(2, dim=1)
    return ret


def linear_unit_norms(layer: nn.Linear, activations, backprops: torch.Tensor, groups: torch.Tensor,
                      n_units: int) -> dict[nn.Parameter, torch.Tensor]:
    """Gradient norms of a linear layer per *unit* (the sum of the per-sample gradients of a unit's
    rows), without materialising per-sample gradients where that is cheaper.

    Ghost clipping generalised to groups: for rows i, j of one unit, ⟨g_i a_iᵀ, g_j a_jᵀ⟩ =
    (a_i·a_j)(g_i·g_j), so ‖Σ_{i∈u} g_i a_iᵀ‖² = Σ_{i,j∈u} (a_i·a_j)(g_i·g_j): two B×B Gram matrices,
    masked to same-unit pairs (≈B²(d_in + d_out) work). For token inputs (B, T, d) the pairwise
    sum runs over T² token pairs as well, so there (and whenever it is cheaper, ≈B·d_in·d_out) the
    per-sample gradients are formed and summed per unit instead (mixed clipping, Bu et al. 2022).
    """
    a = activations[0].to(backprops.dtype)
    b = backprops.shape[0]
    a3, g3 = a.reshape(b, -1, a.shape[-1]), backprops.reshape(b, -1, backprops.shape[-1])
    tokens = g3.shape[1]
    ret = {}
    if layer.weight.requires_grad:
        if tokens == 1 and b * (layer.in_features + layer.out_features) <= layer.in_features * layer.out_features:
            a2, g2 = a3[:, 0], g3[:, 0]
            same_unit = groups[:, None] == groups[None, :]
            pair = (a2 @ a2.T) * (g2 @ g2.T) * same_unit
            sq = torch.zeros(n_units, dtype=pair.dtype, device=pair.device).index_add_(0, groups, pair.sum(1))
            ret[layer.weight] = sq.clamp_min(0).sqrt()
        else:
            per_sample = torch.einsum("nti,ntj->nij", g3, a3).flatten(1)
            ret[layer.weight] = _unit_sum(per_sample, groups, n_units).norm(2, dim=1)
    if layer.bias is not None and layer.bias.requires_grad:
        ret[layer.bias] = _unit_sum(g3.sum(dim=1), groups, n_units).norm(2, dim=1)
    return ret


def _unit_sum(per_sample: torch.Tensor, groups: torch.Tensor, n_units: int) -> torch.Tensor:
    """(B, ...) → (U, ...): per-sample tensors summed per unit."""
    out = torch.zeros((n_units, *per_sample.shape[1:]), dtype=per_sample.dtype, device=per_sample.device)
    return out.index_add_(0, groups, per_sample)


class UnitGhostClipping(GradSampleModuleFastGradientClipping):
    """Opacus's fast-gradient / ghost clipping module, clipping per *unit* when `groups` is set.

    The first backward pass records, for every trainable parameter, the norm of each unit's
    summed gradient: `linear_unit_norms` for linear layers, per-sample gradients summed per unit
    for the others (conv, norms, the Swin bias table). The clipping coefficient of a unit then
    scales each of its rows' losses in Opacus's second backward pass, which yields
    Σ_units clip(Σ_rows ∇ℓ) without any per-sample gradient kept in memory.
    """

    groups: torch.Tensor | None = None  # unit number of each row of the current chunk

    def capture_backprops_hook(self, module, _forward_input, forward_output, loss_reduction, batch_first):
        if self.groups is None:
            return super().capture_backprops_hook(module, _forward_input, forward_output, loss_reduction, batch_first)
        if not self.hooks_enabled:
            return
        activations, backprops = self.rearrange_grad_samples(
            module=module, backprops=forward_output[0].detach(), loss_reduction=loss_reduction, batch_first=batch_first)
        groups = self.groups.to(backprops.device)
        n_units = int(groups.max()) + 1
        if isinstance(module, nn.Linear) and self.use_ghost_clipping:
            norms = linear_unit_norms(module, activations, backprops, groups, n_units)
        else:
            sampler = self.GRAD_SAMPLERS.get(type(module)) if not self.force_functorch else None
            grad_samples = (sampler or ft_compute_per_sample_gradient)(module, activations, backprops)
            norms = {p: _unit_sum(gs.flatten(1), groups, n_units).norm(2, dim=1) for p, gs in grad_samples.items()}
        for param, norm in norms.items():
            if param.requires_grad:
                set_norm_sample(param, norm)
        end_of_backward_hook(module)

    def get_clipping_coef(self) -> torch.Tensor:
        """Per-row coefficients: each row takes its unit's clipping factor."""
        coef = super().get_clipping_coef()
        return coef if self.groups is None else coef[self.groups.to(coef.device)]
