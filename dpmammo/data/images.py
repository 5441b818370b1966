"""Load patches as tensors, and the flip views used as augmentation.

Images are decoded once (by dpmammo.data.pixels, which names a bad file and says why), resized
to the model's input size, and kept as uint8 in memory (1104 patches at 128 px are 18 MB), so a
training step indexes a tensor instead of reading files.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from dpmammo.data.manifest import PatchRecord
from dpmammo.data.pixels import read_patch

# The four views produced by random horizontal/vertical flips: (flip_h, flip_v).
VIEWS = ((False, False), (True, False), (False, True), (True, True))
N_VIEWS = len(VIEWS)


@lru_cache(maxsize=16)
def _load_cached(paths: tuple[str, ...], size: int) -> torch.Tensor:
    arr = np.stack([read_patch(p, size) for p in paths])
    return torch.from_numpy(arr).unsqueeze(1)  # N, 1, H, W


def load_images(records: list[PatchRecord], size: int) -> torch.Tensor:
    """uint8 tensor (N, 1, size, size) in record order. Cached per process."""
    return _load_cached(tuple(r.path for r in records), size)


def load_labels(records: list[PatchRecord]) -> torch.Tensor:
    return torch.tensor([r.label for r in records], dtype=torch.long)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float [0, 1]; models normalise further themselves."""
    return x.float().div_(255.0)


def apply_views(x: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """Flip each sample of x (N, C, H, W) to its view index in 0..3 (see VIEWS)."""
    out = x.clone()
    h = (views == 1) | (views == 3)
    v = (views == 2) | (views == 3)
    if h.any():
        out[h] = out[h].flip(-1)
    if v.any():
        out[v] = out[v].flip(-2)
    return out
