"""The Gaussian noise of a DP-SGD step, drawn ahead on a worker thread while the step's gradients
are computed.

Opacus's secure-mode noise (four Gaussian draws per coordinate, against floating-point attacks)
takes 4.3 ms per step for a 768→384→2 head on this project's 2-core CPU: half of a book-keeping
step. The noise does not depend on the gradient, so `NoiseAhead.start` (called when a logical
batch begins, or by the training loop right after the previous step of the same epoch) draws it on
a second core while the first computes the clipped sum, and the optimizer's `add_noise` takes it.
CPU time is unchanged; the wall time overlaps the two (a third off the paper grid's head-only
runs, benchmarks/README.md).

Each step's noise comes from a fresh generator on the parameters' device, seeded with 63 bits
drawn from the stage's secret generator in the calling thread, in step order: the secret
generator stays the one source of randomness (never written down; its state is what a
checkpoint saves), and a resumed run draws exactly what an uninterrupted one would. The draw
itself is Opacus's `_generate_noise` with `secure_mode=True`, unchanged.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from opacus.optimizers.optimizer import _check_processed_flag, _generate_noise, _mark_as_processed


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
    """Secure-mode noise for `params`, one step ahead of the optimizer that adds it."""

    def __init__(self, secret: torch.Generator, params: list[torch.nn.Parameter]):
        self.secret, self.params = secret, params
        # A worker thread pays off on CPU only; CUDA kernels are asynchronous already.
        self.threaded = all(p.device.type == "cpu" for p in params)
        self._pending: Future | list[torch.Tensor] | None = None

    def start(self, std: float) -> None:
        """Begin drawing the next step's noise (standard deviation `std` per coordinate)."""
        if self._pending is not None:
            return  # already drawn for this step (a logical batch split into chunks starts once)
        seed = int(torch.randint(0, 2**63 - 1, (1,), generator=self.secret))
        self._pending = _pool().submit(self._draw, std, seed) if self.threaded else self._draw(std, seed)

    def take(self, std: float) -> list[torch.Tensor]:
        """The step's noise, one tensor per parameter (drawn now if no step started it)."""
        self.start(std)
        pending, self._pending = self._pending, None
        return pending.result() if isinstance(pending, Future) else pending

    def _draw(self, std: float, seed: int) -> list[torch.Tensor]:
        generators: dict[torch.device, torch.Generator] = {}
        noise = []
        for p in self.params:
            if p.device not in generators:
                generators[p.device] = torch.Generator(device=p.device).manual_seed(seed + len(generators))
            noise.append(_generate_noise(std=std, reference=p, generator=generators[p.device], secure_mode=True))
        return noise


class NoiseAheadMixin:
    """For Opacus DP optimizers: `add_noise` adds the noise `noise_ahead` drew, instead of drawing it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.noise_ahead = NoiseAhead(self.generator, self.params)  # Opacus keeps the generator it was given

    def noise_std(self) -> float:
        return self.noise_multiplier * self.max_grad_norm

    def add_noise(self) -> None:
        for p, noise in zip(self.params, self.noise_ahead.take(self.noise_std())):
            _check_processed_flag(p.summed_grad)
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)
