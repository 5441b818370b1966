"""Batched inference: P(malignant) for a uint8 patch tensor."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dpmammo.data.images import N_VIEWS, apply_views, to_float


def malignant_proba(view_logits: list[torch.Tensor]) -> np.ndarray:
    """P(malignant) (class 1) from the logits of one or more views of the same images, each (N, 2):
    the softmax of their mean. predict_proba and features.head_proba both score this way, so a run's
    validation and its evaluation agree whether it saw images or cached features."""
    logits = torch.stack(view_logits).float().mean(0)
    return torch.softmax(logits, dim=1)[:, 1].cpu().numpy().astype(np.float64)


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
        out.append(malignant_proba([model(to_float(apply_views(chunk, view(v)))) for v in views]))
    model.train(was_training)
    return np.concatenate(out)
