"""Public randomness addressed by (seed, stream, step, record), never by draw order.

Augmentation views, flips, DiffAugment and a GAN's latents are public: they come from
`train.seed`, which config.yaml records. Drawn from one sequential generator, they would depend
on how many records the secret Poisson sampling put into earlier steps (a flip per sampled
record moves the stream), so what a run releases (a generator that learnt from those latents)
would depend on the private batch sizes in a way the accountant does not model. Here every value
is a pure function of its address: the views of record r at step t are the same whether the
step held 3 units or 300.

Values are a counter-based hash (SplitMix64's finaliser, Steele et al. 2014) of the address: a
statistically sound, vectorised, non-cryptographic generator; these values are public, so they
need no secrecy (the secret ones come from dpmammo.privacy.secret).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 values (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _address(seed: int, stream: str, step: int) -> np.uint64:
    with np.errstate(over="ignore"):
        h = _mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) + _GOLDEN)
        h = _mix(h ^ np.uint64(zlib.crc32(stream.encode())) + _GOLDEN)
        h = _mix(h ^ np.uint64(step & 0xFFFFFFFFFFFFFFFF) + _GOLDEN)
    return h[0]


def keyed_uniform(seed: int, stream: str, step: int, keys: torch.Tensor, k: int = 1) -> torch.Tensor:
    """float32 uniforms in [0, 1), shape (len(keys), k): row i depends only on (seed, stream, step,
    keys[i]) (e.g. a record's index in the training set, or a generated row's slot)."""
    base = _address(seed, stream, step)
    rows = keys.detach().cpu().numpy().astype(np.uint64).reshape(-1, 1)
    cols = np.arange(k, dtype=np.uint64).reshape(1, -1)
    with np.errstate(over="ignore"):
        h = _mix(_mix(base ^ (rows * _GOLDEN + np.uint64(1))) ^ (cols + _GOLDEN))
    return torch.from_numpy(((h >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)))


def step_generator(seed: int, stream: str, step: int) -> torch.Generator:
    """A torch generator for a step's draws of a fixed, data-independent size (a GAN's latents)."""
    return torch.Generator().manual_seed(int(_address(seed, stream, step) >> np.uint64(1)))
