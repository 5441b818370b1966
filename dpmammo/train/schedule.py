"""Step bookkeeping shared by every training loop (classifier and GAN)."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def epoch_steps(sampler, epochs: int, dp) -> list[int]:
    """Steps in each epoch. Under DP the total equals the planned (calibrated) step count."""
    if dp is None:
        return [sampler.steps_per_epoch] * epochs
    base, extra = divmod(dp.planned_steps, epochs)
    return [base + (1 if e < extra else 0) for e in range(epochs)]


def make_progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=not enabled, transient=False)
