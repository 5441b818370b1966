"""Augmentations of the images a GAN's discriminator sees.

- `flip_real`: random horizontal and vertical flips of real patches (the reference MCGAN's
  augmentation; a mass has no preferred orientation).
- `diff_augment`: DiffAugment (Zhao et al., NeurIPS 2020, "Differentiable Augmentation for
  Data-Efficient GAN Training"): the same random, differentiable transforms applied to real AND
  generated images before the discriminator, in both players' steps, so the discriminator cannot
  memorise a small training set while the generator still learns the un-augmented distribution.
  Policies as in the paper's code (color, translation 1/8, cutout 1/2), for grayscale images in
  [-1, 1]: color is brightness and contrast (no saturation in one channel).

All randomness comes from the caller as uniforms in [0, 1), one row per image
(dpmammo.randomness.keyed_uniform: a function of the seed, the step and the row's record, so the
transforms of an image never depend on what else the secret sampling put into the batch); every
transform acts on each sample alone, so per-sample DP gradients stay per sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


U_PER_TRANSFORM = 2  # uniforms each transform reads from its image's row
U_FLIPS = 2


def flip_real(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Horizontal and vertical flips, each with probability ½; u: (n, 2) uniforms."""
    h, v = (u[:, 0] < 0.5), (u[:, 1] < 0.5)
    x = torch.where(h.view(-1, 1, 1, 1).to(x.device), x.flip(3), x)
    return torch.where(v.view(-1, 1, 1, 1).to(x.device), x.flip(2), x)


def uniforms_needed(policy: list[str]) -> int:
    return U_PER_TRANSFORM * len(policy)


def diff_augment(x: torch.Tensor, policy: list[str], u: torch.Tensor) -> torch.Tensor:
    """The policy's transforms in order; u: (n, uniforms_needed(policy)) uniforms, one row per image."""
    if u.shape != (len(x), uniforms_needed(policy)):
        raise ValueError(f"diff_augment needs uniforms of shape {(len(x), uniforms_needed(policy))}, got {tuple(u.shape)}")
    for i, name in enumerate(policy):
        x = AUGMENTS[name](x, u[:, U_PER_TRANSFORM * i:U_PER_TRANSFORM * (i + 1)])
    return x


def _col(u: torch.Tensor, j: int, like: torch.Tensor) -> torch.Tensor:
    return u[:, j].view(-1, 1, 1, 1).to(like.device, like.dtype)


def _int_in(u: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """Integers uniform in [low, high] from uniforms in [0, 1)."""
    return (low + (u * (high - low + 1)).long()).clamp_(max=high)


def _color(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    x = x + (_col(u, 0, x) - 0.5)  # brightness: ± 0.5 of the [-1, 1] range's half
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_col(u, 1, x) + 0.5) + mean  # contrast × [0.5, 1.5]


def _translation(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Shift each image by up to 1/8 of its side in x and y, filling with zeros (as the paper's code)."""
    n, _, h, w = x.shape
    sy, sx = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    dy = _int_in(u[:, 0], -sy, sy).to(x.device)
    dx = _int_in(u[:, 1], -sx, sx).to(x.device)
    rows = (torch.arange(h, device=x.device).view(1, h, 1) - dy.view(n, 1, 1)).clamp(-1, h)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) - dx.view(n, 1, 1)).clamp(-1, w)
    padded = F.pad(x, (1, 1, 1, 1))  # index -1 and h land on the zero border
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows + 1, cols + 1].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Zero one square of half the side per image, at a random centre."""
    n, _, h, w = x.shape
    ch, cw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    cy = _int_in(u[:, 0], 0, h - ch % 2).to(x.device)
    cx = _int_in(u[:, 1], 0, w - cw % 2).to(x.device)
    y0 = (cy - ch // 2).view(n, 1, 1)
    x0 = (cx - cw // 2).view(n, 1, 1)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= y0) & (ys < y0 + ch) & (xs >= x0) & (xs < x0 + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


AUGMENTS = {"color": _color, "translation": _translation, "cutout": _cutout}
