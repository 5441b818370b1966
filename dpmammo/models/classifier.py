"""The one model interface: backbone features, then a head (timm's forward_features/forward_head).

Inputs are grayscale patches as float in [0, 1], shape (N, 1, S, S) with S = `input_size`;
each model does its own normalisation, so data code never needs to know which model it feeds.
Outputs are two logits, index 1 = malignant.
"""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """backbone: (N, 1, S, S) → (N, F) features; head: (N, F) → (N, 2) logits."""

    def __init__(self, backbone: nn.Module, head: nn.Module, *, input_size: int, num_features: int):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.input_size = input_size
        self.num_features = num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def freeze_backbone(self) -> None:
        """Train the head only; the backbone runs in eval mode with no gradients."""
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone_frozen = True

    @property
    def is_backbone_frozen(self) -> bool:
        return getattr(self, "backbone_frozen", False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.is_backbone_frozen:
            self.backbone.eval()  # frozen means frozen: no dropout, no drop-path
        return self
