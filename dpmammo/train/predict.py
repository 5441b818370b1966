"""Batched inference: P(malignant) for a uint8 patch tensor."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dpmammo.data.images import N_VIEWS, apply_views, to_float


@torch.no_grad()
def predict_proba(model: nn.Module, images: torch.Tensor, *, flips: bool = False, batch_size: int = 256,
                  device: torch.device | str = "cpu") -> np.ndarray:
    """Probability of the malignant class (index 1) for each image (N, 1, S, S) uint8; with `flips`,
    from the mean logits over the image's 4 flip views (train.test_flips)."""
    was_training = model.training
    model.eval()
    views = range(N_VIEWS) if flips else range(1)
    out = []
    for chunk in images.split(batch_size):
        chunk = chunk.to(device)
        view = lambda v: torch.full((len(chunk),), v, dtype=torch.long, device=chunk.device)  # noqa: E731
        logits = torch.stack([model(to_float(apply_views(chunk, view(v)))) for v in views]).float().mean(0)
        out.append(torch.softmax(logits, dim=1)[:, 1].cpu())
    model.train(was_training)
    return torch.cat(out).numpy().astype(np.float64)
