"""Parameter EMA: an exponential moving average of the weights a training stage visits.

Post-processing of the released DP iterates, so free under DP; averaging the noisy iterates
cancels part of their noise (De et al. 2022, "Unlocking High-Accuracy Differentially Private
Image Classification through Scale", §3: EMA of the parameters). The decay warms up as in
TensorFlow's ExponentialMovingAverage with num_updates, min(decay, (1 + t) / (10 + t)), so the
average is not dominated by the initial weights in a short run.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class ParameterEMA:
    """The running average of a module's floating-point state (parameters and buffers)."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items() if v.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """shadow ← d·shadow + (1 − d)·weights, after one optimizer step."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for key, value in module.state_dict().items():
            if key in self.shadow:
                self.shadow[key].mul_(d).add_(value.detach(), alpha=1 - d)

    @contextmanager
    def applied(self, module: nn.Module) -> Iterator[None]:
        """Within the block `module` holds the averaged weights; its own come back after."""
        own = copy.deepcopy(module.state_dict())
        module.load_state_dict({**own, **self.shadow})
        try:
            yield
        finally:
            module.load_state_dict(own)

    def averaged_state(self, module: nn.Module) -> dict:
        """The module's state dict with the averaged weights (for selection and saving)."""
        return {**copy.deepcopy(module.state_dict()), **{k: v.clone() for k, v in self.shadow.items()}}

    # checkpointed with the run's other parts (RunDir.save_training_state)
    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.updates, self.shadow = state["updates"], {k: v.clone() for k, v in state["shadow"].items()}
