"""Secret randomness of a DP stage: a ChaCha20 key of 256 bits from the operating system.

A DP stage's Poisson sampling and Gaussian noise must be unpredictable to anyone who holds its
files: whoever can replay them can subtract the noise and see which patients were sampled. A
`torch.Generator` cannot carry that: it is a Mersenne Twister seeded with one integer, and on the
CPU only its low 32 bits set the stream (`manual_seed(s & 0xFFFFFFFF)` replays it), so a seed is
a secret of 2³² candidates, a few core-days to enumerate; and a state saved in a checkpoint is
the whole secret in the clear.

`SecretKey` is instead a 256-bit key drawn with `secrets.token_bytes` (the OS CSPRNG) and used
as the key of ChaCha20 (RFC 8439; the OpenSSL implementation of the `cryptography` package),
a stream cipher whose keystream is indistinguishable from uniform bytes without the key. Each
draw is addressed by (purpose, index): the noise of step t is the keystream of nonce
("noise", t), the Poisson mask of step t that of ("sample", t), so no state but the key exists,
draws do not depend on their order, and a resumed run needs only the step counts, which are
public. The key lives in memory only: it cannot be pickled, saved or printed. A resumed run
draws a fresh key (its remaining steps use fresh secret randomness, which the accountant's
composition covers exactly as before).

Gaussian values are made from 53-bit uniforms by the Box–Muller transform in float64 and, as
Opacus's `secure_mode` does against floating-point attacks (Jin et al. 2021, arXiv 2107.10138,
§5.1), each noise value is the sum of four such draws divided by 2.

The test-only switch `seeded_noise_for_tests` keys the same construction with SHA-256 of the
seed: runs repeat exactly, and the ledger records them as having no guarantee.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from typing import Literal

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

KEY_BYTES = 32  # 256-bit ChaCha20 key
Purpose = Literal["sample", "noise", "count", "release"]
_PURPOSE_ID: dict[str, int] = {"sample": 1, "noise": 2, "count": 3, "release": 4}
_TWO_PI = 2 * math.pi


class SecretKey:
    """The secret of one DP stage (see the module docstring). Never leaves memory."""

    __slots__ = ("_key", "seeded")

    def __init__(self, key: bytes, *, seeded: bool):
        if len(key) != KEY_BYTES:
            raise ValueError(f"a secret key has {KEY_BYTES} bytes, got {len(key)}")
        self._key, self.seeded = bytes(key), seeded

    @classmethod
    def fresh(cls) -> "SecretKey":
        """A key from the operating system's CSPRNG: the only kind that gives a guarantee."""
        return cls(secrets.token_bytes(KEY_BYTES), seeded=False)

    @classmethod
    def for_tests(cls, seed: int) -> "SecretKey":
        """TESTS ONLY: a key anyone who knows `seed` can rebuild (the whole seed, not 32 bits of it)."""
        return cls(hashlib.sha256(f"dpmammo seeded noise for tests {int(seed)}".encode()).digest(), seeded=True)

    def __repr__(self) -> str:
        return f"SecretKey({'seeded, for tests' if self.seeded else 'secret'})"

    def bytes_for_other_ranks(self) -> bytes:
        """The key itself, for one use only: rank 0 of a training over several processes hands it over
        the process group to the other ranks of the same training (dpmammo.distributed), which hold
        the same private data. Nothing else reads it."""
        return self._key

    def __reduce__(self):
        raise TypeError("a SecretKey is never pickled or saved: it exists only in the memory of its stage")

    # --- draws ---------------------------------------------------------------------------------

    def random_bytes(self, purpose: Purpose, index: int, n: int) -> bytes:
        """n bytes of the keystream addressed by (purpose, index)."""
        if not 0 <= index < 2**64:
            raise ValueError(f"draw index {index} out of range")
        # cryptography's ChaCha20 nonce: 4-byte block counter (0) then 12 bytes: purpose and index.
        nonce = bytes(4) + _PURPOSE_ID[purpose].to_bytes(4, "little") + index.to_bytes(8, "little")
        return Cipher(algorithms.ChaCha20(self._key, nonce), mode=None).encryptor().update(bytes(n))

    def uniform(self, purpose: Purpose, index: int, n: int) -> torch.Tensor:
        """n float64 values uniform in (0, 1) (53-bit, never 0 or 1)."""
        return torch.from_numpy(self._uniform(purpose, index, n))

    def normal(self, purpose: Purpose, index: int, n: int) -> torch.Tensor:
        """n float64 standard normal values (Box–Muller: both outputs of each pair are used)."""
        return torch.from_numpy(self._normal(purpose, index, n))

    # numpy, single-threaded: torch's OpenMP ops on these float64 vectors cost 10-100x more on a
    # busy 2-core machine (threads spin while the other core is taken).
    def _uniform(self, purpose: Purpose, index: int, n: int) -> np.ndarray:
        words = np.frombuffer(self.random_bytes(purpose, index, 8 * n), dtype=np.uint64)
        return ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53

    def _normal(self, purpose: Purpose, index: int, n: int) -> np.ndarray:
        pairs = (n + 1) // 2
        u = self._uniform(purpose, index, 2 * pairs)
        radius = np.sqrt(-2.0 * np.log(u[:pairs]))
        angle = _TWO_PI * u[pairs:]
        return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n]

    def gaussian_noise(self, purpose: Purpose, index: int, shapes: list[torch.Size], std: float) -> list[torch.Tensor]:
        """Float64 noise of standard deviation `std` for tensors of `shapes`, each value the sum of
        four standard normal draws divided by 2 (Opacus's secure mode)."""
        sizes = [math.prod(s) for s in shapes]
        total = sum(sizes)
        flat = torch.from_numpy(self._normal(purpose, index, 4 * total).reshape(4, total).sum(0) * (std / 2))
        return [part.view(s) for part, s in zip(flat.split(sizes), shapes)]
