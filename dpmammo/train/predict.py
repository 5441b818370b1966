"""Batched inference: P(malignant) for a uint8 patch tensor."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dpmammo.data.images import to_float


@torch.no_grad()
def predict_proba(model: nn.Module, images: torch.Tensor, *, batch_size: int = 256,
                  device: torch.device | str = "cpu") -> np.ndarray:
    """Probability of the malignant class (index 1) for each image (N, 1, S, S) uint8."""
    was_training = model.training
    model.eval()
    out = []
    for chunk in images.split(batch_size):
        logits = model(to_float(chunk.to(device)))
        out.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu())
    model.train(was_training)
    return torch.cat(out).numpy().astype(np.float64)
