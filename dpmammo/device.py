"""Which torch device a run uses: `auto` (CUDA when visible), `cpu` or `cuda` (refused without a GPU)."""

from __future__ import annotations

import torch

from dpmammo.errors import DpMammoError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DpMammoError("train.device is cuda but no CUDA GPU is visible; use device: cpu or auto")
    return torch.device(name)
