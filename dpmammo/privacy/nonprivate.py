"""The non-private counterpart of `DPSetup` (dpmammo.privacy.engine): the same questions a training
loop asks of its privacy, answered for a run without DP, so that a loop reads the same either way.

Without DP nothing is clipped, so a logical batch's gradient is the plain sum of its chunks'
gradients, each chunk's mean loss weighed by its share of the step's rows; no noise is drawn, no
ε is spent, and the optimizer steps once per logical batch. On one rank of a training over several
(dpmammo.distributed) the step's gradients are summed over the ranks before that step.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

import torch

from dpmammo.privacy.sampling import Batch

if TYPE_CHECKING:  # dpmammo.distributed imports dpmammo.privacy
    from dpmammo.distributed import Ranks


class NonPrivate:
    """A training without DP: `criterion` and `optimizer` as the loop built them; `ranks`, the
    processes of a training over several (None: this one only)."""

    planned_steps = None  # epochs take the sampler's own length (dpmammo.privacy.sampling.epoch_steps)

    def __init__(self, criterion: Callable, optimizer: torch.optim.Optimizer, ranks: Ranks | None = None):
        self.criterion, self.optimizer, self.ranks = criterion, optimizer, ranks

    def chunks(self, batch: Batch, max_physical: int) -> Iterator[tuple[slice, bool]]:
        """Physical chunks of `batch` (dpmammo.privacy.sampling.Batch.chunks): (slice, is_last)."""
        return batch.chunks(max_physical)

    def weigh(self, loss: torch.Tensor, rows: int, of_rows: int) -> torch.Tensor:
        """A chunk's mean loss weighed by its share of the step: plain accumulation is exact when
        nothing is clipped."""
        return loss * rows / of_rows

    def update(self, loss: torch.Tensor, last: bool) -> None:
        """Backpropagate a chunk; after the last one, sum over the ranks and step."""
        loss.backward()
        if last:
            self._step()

    def step_empty(self) -> None:
        """This rank's share of a step is empty (the other ranks' is not): it steps with them."""
        self._step()

    def _step(self) -> None:
        if self.ranks is not None:
            self.ranks.sum_gradients([p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def draw_next_noise(self) -> None:
        """No noise to draw."""

    def checkpoint_state(self) -> None:
        """Nothing is accounted or drawn in secret, so a checkpoint keeps no privacy state."""
        return None

    def restore_checkpoint_state(self, *, accountant_history: None, draws: None) -> None:
        """Nothing to restore."""

    def running_epsilon(self) -> None:
        """No ε is spent (the run's privacy record says what it guarantees: nothing)."""
        return None

    @contextmanager
    def hooks_off(self) -> Iterator[None]:
        """No per-sample hooks to turn off."""
        yield
