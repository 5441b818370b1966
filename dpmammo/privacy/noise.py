"""The Gaussian noise of a DP-SGD step, drawn ahead on a worker thread while the step's gradients
are computed.

Opacus's secure-mode noise (four Gaussian draws per coordinate, against floating-point attacks)
costs about as much as the rest of a book-keeping step of a small head on a CPU. The noise does
not depend on the gradient, so `NoiseAhead.start` (called when a logical batch begins, or by the
training loop right after the previous step of the same epoch) draws it on a second core while the
first computes the clipped sum, and the optimizer's `add_noise` takes it. CPU time is unchanged;
the wall time overlaps the two (benchmarks/README.md has the paper grid's figures).

Step t's noise is the keystream of ("noise", t) under the stage's `SecretKey`
(dpmammo.privacy.secret): ChaCha20 with a 256-bit key from the OS, Box–Muller in float64 and
Opacus's secure-mode sum of four draws. Draws are addressed by step, so a resume with the same
key (tests only: a seeded key) draws exactly what an uninterrupted run would.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from dpmammo.privacy.opacus_internals import check_processed_flag, mark_as_processed
from dpmammo.privacy.secret import SecretKey


_worker: ThreadPoolExecutor | None = None  # one thread for every DP stage of the process (they run one at a time)


def _pool() -> ThreadPoolExecutor:
    global _worker
    if _worker is None:
        _worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dp-noise")
    return _worker


def _forget_worker_after_fork() -> None:
    # A forked child inherits the executor but not its thread: work submitted there would never run.
    global _worker
    _worker = None


os.register_at_fork(after_in_child=_forget_worker_after_fork)


class NoiseAhead:
    """Secure noise for `params`, one step ahead of the optimizer that adds it."""

    def __init__(self, key: SecretKey, params: list[torch.nn.Parameter]):
        self.key, self.params = key, params
        self.draws = 0  # noise draws started so far: the step index of the next one (public)
        # A worker thread pays off on CPU only; CUDA kernels are asynchronous already.
        self.threaded = all(p.device.type == "cpu" for p in params)
        # False on the ranks of a training over several processes that add no noise (rank 0 adds it
        # once: dpmammo.privacy.engine.NoiseOnceAcrossRanks): they count steps and draw nothing.
        self.enabled = True
        self._pending: Future | list[torch.Tensor] | None = None

    def start(self, std: float) -> None:
        """Begin drawing the next step's noise (standard deviation `std` per coordinate)."""
        if self._pending is not None:
            return  # already drawn for this step (a logical batch split into chunks starts once)
        index, self.draws = self.draws, self.draws + 1
        if not self.enabled:
            return
        self._pending = _pool().submit(self._draw, std, index) if self.threaded else self._draw(std, index)

    def take(self, std: float) -> list[torch.Tensor]:
        """The step's noise, one tensor per parameter (drawn now if no step started it)."""
        if not self.enabled:
            raise RuntimeError("this rank adds no noise: rank 0 adds it once per step")
        self.start(std)
        pending, self._pending = self._pending, None
        return pending.result() if isinstance(pending, Future) else pending

    def _draw(self, std: float, index: int) -> list[torch.Tensor]:
        if std == 0:
            return [torch.zeros_like(p) for p in self.params]
        noise = self.key.gaussian_noise("noise", index, [p.shape for p in self.params], std)
        return [n.to(device=p.device, dtype=p.dtype) for n, p in zip(noise, self.params)]


class NoiseAheadMixin:
    """For Opacus DP optimizers: `add_noise` adds the noise `noise_ahead` drew from `secret_key`,
    instead of Opacus's own draw from a torch.Generator (which is never created: generator=None)."""

    def __init__(self, *args, secret_key: SecretKey, **kwargs):
        super().__init__(*args, generator=None, secure_mode=False, **kwargs)
        self.noise_ahead = NoiseAhead(secret_key, self.params)

    def noise_std(self) -> float:
        return self.noise_multiplier * self.max_grad_norm

    def add_noise(self) -> None:
        for p, noise in zip(self.params, self.noise_ahead.take(self.noise_std())):
            check_processed_flag(p.summed_grad)
            p.grad = (p.summed_grad + noise).view_as(p)
            mark_as_processed(p.summed_grad)
