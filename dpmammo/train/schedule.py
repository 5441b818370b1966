"""Step bookkeeping shared by every training loop (classifier and GAN)."""

from __future__ import annotations

from typing import Iterator

from dpmammo.progress import StepProgress


def epoch_steps(n: int, batch_size: int, epochs: int, dp) -> list[int]:
    """Steps in each epoch. Under DP the total equals the planned (calibrated) step count."""
    if dp is None:
        return [-(-n // batch_size)] * epochs
    base, extra = divmod(dp.planned_steps, epochs)
    return [base + (1 if e < extra else 0) for e in range(epochs)]


def plain_chunks(n: int, max_physical: int) -> Iterator[tuple[slice, bool]]:
    """Non-private physical chunks of a batch of n: (slice, is_last)."""
    starts = list(range(0, n, max_physical))
    return ((slice(s, s + max_physical), i == len(starts) - 1) for i, s in enumerate(starts))


def make_progress(enabled: bool) -> StepProgress:
    """A bar on a terminal, a plain line per 10% of the steps in a log file; nothing when not enabled."""
    return StepProgress(enabled=enabled)
